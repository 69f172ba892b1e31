"""Tiny synthetic datasets for the trainer tests (written with the data layer, no envs)."""

from __future__ import annotations

import numpy as np
import pytest

from genba.data.layout import Episode, write_dataset
from genba.data.spec import EmbodimentSpec
from tests.fixtures import plain_spec


def toy_spec(name: str, obs_dim: int, act_dim: int, period: float) -> EmbodimentSpec:
    return plain_spec(name, obs_dim, act_dim, period)


TASKS = [{"id": "toy/reach", "en": "reach the goal", "ja": "目標に到達する"},
         {"id": "toy/push", "en": "push the block", "ja": "ブロックを押す"}]


def toy_episodes(spec: EmbodimentSpec, n_episodes: int, length: int, seed: int) -> list[Episode]:
    """Learnable episodes: the action is a fixed linear map of the state (plus the task)."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(spec.obs_dim, spec.action_dim)) / np.sqrt(spec.obs_dim)
    eps = []
    for e in range(n_episodes):
        obs = np.cumsum(rng.normal(scale=0.3, size=(length, spec.obs_dim)), axis=0).astype(np.float32)
        act = np.tanh(obs @ w + 0.3 * (e % 2)).astype(np.float32)
        eps.append(Episode(obs, act, task_index=e % 2, seed=e))
    return eps


@pytest.fixture(scope="session")
def toy_data(tmp_path_factory):
    """Two embodiments of different shapes and rates: ``[arm_dir, drive_dir]``."""
    root = tmp_path_factory.mktemp("toydata")
    out = []
    for name, o, a, period, seed in (("toyarm", 5, 3, 0.0125, 0), ("toydrive", 4, 2, 0.001, 1)):
        spec = toy_spec(name, o, a, period)
        out.append(write_dataset(root / name, toy_episodes(spec, 6, 30, seed), spec, TASKS))
    return out
