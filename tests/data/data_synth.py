"""Synthetic episodes and specs for the data-layer tests (no envs needed)."""

from __future__ import annotations

import numpy as np

from genba.data.layout import Episode
from genba.data.spec import EmbodimentSpec
from tests.fixtures import plain_spec


def make_spec(name: str = "toy", obs_dim: int = 3, act_dim: int = 2, period: float = 0.0125,
              robot_type: str | None = None, obs_names=None, act_names=None) -> EmbodimentSpec:
    """A toy spec whose entry 0 of obs and action carries :func:`coded_episodes`' (episode, frame) code."""
    return plain_spec(name, obs_dim, act_dim, period, robot_type=robot_type, obs_names=obs_names,
                      act_names=act_names, wide_first=True)


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
