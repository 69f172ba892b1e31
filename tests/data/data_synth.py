"""Synthetic episodes and specs for the data-layer tests (no envs needed)."""

from __future__ import annotations

import numpy as np

from genba.data.layout import Episode
from genba.data.spec import EmbodimentSpec


def make_spec(name: str = "toy", obs_dim: int = 3, act_dim: int = 2, period: float = 0.0125,
              robot_type: str | None = None, obs_names=None, act_names=None) -> EmbodimentSpec:
    """A toy spec; entry 0 of obs and action carries :func:`coded_episodes`' (episode, frame) code
    (up to a few thousand), so its limits span that code: the opener refuses values far outside a spec's limits."""
    obs_names = tuple(obs_names or (f"o{i}" for i in range(obs_dim)))
    act_names = tuple(act_names or (f"a{i}" for i in range(act_dim)))
    return EmbodimentSpec(
        name=name, robot_type=robot_type or f"{name}_robot",
        obs_names=obs_names, obs_units=("m",) * len(obs_names),
        obs_low=(-1e4,) + (-10.0,) * (len(obs_names) - 1), obs_high=(1e4,) + (10.0,) * (len(obs_names) - 1),
        action_names=act_names, action_units=("V",) * len(act_names),
        action_low=(-1e4,) + (-1.0,) * (len(act_names) - 1), action_high=(1e4,) + (1.0,) * (len(act_names) - 1),
        control_period=period, action_meaning="joint velocity")


TASKS = [{"id": "toy/reach", "en": "reach the goal", "ja": "目標に到達する"},
         {"id": "toy/push", "en": "push the block", "ja": "ブロックを押す"}]


def coded_episodes(spec: EmbodimentSpec, lengths, n_tasks: int = 2) -> list[Episode]:
    """Episodes whose values encode (episode, frame) so windows can be checked exactly.

    observation[t, 0] = 1000*e + t ; action[t, 0] = -(1000*e + t); other dims random.
    """
    rng = np.random.default_rng(0)
    eps = []
    for e, n in enumerate(lengths):
        obs = rng.normal(size=(n, spec.obs_dim)).astype(np.float32)
        act = rng.uniform(-1, 1, size=(n, spec.action_dim)).astype(np.float32)
        obs[:, 0] = 1000 * e + np.arange(n)
        act[:, 0] = -(1000 * e + np.arange(n))
        eps.append(Episode(obs, act, task_index=e % n_tasks, seed=100 + e))
    return eps
