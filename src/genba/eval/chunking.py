"""Chunk execution shared by every batched evaluation policy.

A policy that predicts action chunks for N environments in lockstep subclasses
:class:`ChunkExecutor`, keeps ``self._frames`` / ``self._chunks`` / ``self.t``
(reset per episode batch) and implements ``_predict() -> (N, C, A)``. ``act``
then plays the chunks: re-planned every ``replan_every`` steps, or temporally
ensembled with weights exp(-m * age) over every chunk that covers this step.
"""

from __future__ import annotations

import math

import numpy as np


class ChunkExecutor:
    execute: str
    replan_every: int
    ensemble_m: float

    def _predict(self) -> np.ndarray:  # (N, C, A)
        raise NotImplementedError

    def act(self, obs: np.ndarray) -> np.ndarray:
        """Actions (N, A) for observations (N, obs_dim) of this step (finished envs may pass anything)."""
        self._frames.append(np.array(obs, dtype=np.float32))  # a copy: run_lockstep reuses its obs buffer
        t, self.t = self.t, self.t + 1
        if self.execute == "replan":
            if not self._chunks or t - self._chunks[-1][0] >= self.replan_every:
                self._chunks = [(t, self._predict())]
            start, chunk = self._chunks[-1]
            return chunk[:, t - start].copy()
        self._chunks = [(s, c) for s, c in self._chunks if t - s < c.shape[1]] + [(t, self._predict())]
        weights = np.array([math.exp(-self.ensemble_m * (t - s)) for s, _ in self._chunks])
        preds = np.stack([c[:, t - s] for s, c in self._chunks])  # (K, N, A)
        return (preds * (weights / weights.sum())[:, None, None]).sum(0).astype(np.float32)
