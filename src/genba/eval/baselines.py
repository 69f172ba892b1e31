"""Run the per-task MLP baseline in closed loop (trained by :mod:`genba.train.baseline`).

:class:`BaselinePolicy` has ``BatchedPolicy``'s ``reset(n, embodiment,
instruction)`` / ``act(obs)``: the instruction (en, ja or the task id) picks
the MLP (:mod:`genba.model.baseline`); chunks run with the same temporal
ensembling or re-planning.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

from genba.eval.chunking import ChunkExecutor
from genba.data.stats import stats_from_json
from genba.data.transforms import Normalize, Unnormalize
from genba.model.baseline import MARKER, BaselineError, TaskMLP, load_baseline


# ---- the policy -------------------------------------------------------------------
class BaselinePolicy(ChunkExecutor):
    """N lockstep envs of one task, its MLP called once per step for all of them (BatchedPolicy's interface)."""

    def __init__(self, mlps: dict[str, TaskMLP], manifest: dict[str, Any], *, execute: str = "ensemble",
                 replan_every: int | None = None, ensemble_m: float = 0.1) -> None:
        if execute not in ("ensemble", "replan"):
            raise ValueError(f"execute {execute!r}: expected 'ensemble' or 'replan'")
        self.mlps, self.manifest = mlps, manifest
        self.history, self.chunk = int(manifest["config"]["history"]), int(manifest["config"]["chunk"])
        self.execute, self.ensemble_m = execute, ensemble_m
        self.replan_every = replan_every if replan_every is not None else max(1, self.chunk // 2)
        stats = {n: stats_from_json(s, source=f"{MARKER} stats[{n!r}]") for n, s in manifest["stats"].items()}
        mode = manifest.get("normalization", {}).get("mode", "mean_std")
        self._normalize, self._unnormalize = Normalize(stats, mode=mode), Unnormalize(stats, mode=mode)
        self._by_text = {(t["embodiment"], key): t["id"] for t in manifest["tasks"]
                         for key in (t["id"], t["en"], t["ja"])}

    def reset(self, n: int, embodiment: str, instruction: str) -> None:
        """Start N episodes of the task ``instruction`` (en, ja or its id) names on ``embodiment``."""
        tid = self._by_text.get((embodiment, instruction))
        if tid is None:
            known = sorted(t["id"] for t in self.manifest["tasks"] if t["embodiment"] == embodiment)
            raise BaselineError(f"instruction {instruction!r} names no task of embodiment {embodiment!r} in this "
                                f"baseline (its tasks there: {known or 'none'})")
        self.n, self.embodiment, self.task, self.t = n, embodiment, tid, 0
        self._frames: list[np.ndarray] = []  # per step (N, obs)
        self._chunks: list[tuple[int, np.ndarray]] = []  # (start step, (N, C, A))

    @torch.inference_mode()
    def _predict(self) -> np.ndarray:
        H = self.history
        frames = self._frames[-H:]
        hist = np.stack([frames[0]] * (H - len(frames)) + frames, axis=1)  # (N, H, obs), oldest first
        norm = self._normalize({"embodiment": self.embodiment, "observation.state": hist})["observation.state"]
        x = torch.as_tensor(np.asarray(norm, np.float32)).reshape(self.n, -1)  # (N, H*obs)
        out = self.mlps[self.task](x).reshape(self.n, self.chunk, -1).numpy()  # (N, C, A)
        act = self._unnormalize({"embodiment": self.embodiment, "action": out})["action"]
        return np.asarray(act, dtype=np.float32)


_POLICIES: dict[Any, BaselinePolicy] = {}  # per worker process


def load_baseline_policy(directory: str | os.PathLike, execute: str = "ensemble",
                         replan_every: int | None = None) -> BaselinePolicy:
    """The baseline at ``directory`` as a :class:`BaselinePolicy` (cached per process)."""
    key = (str(directory), execute, replan_every)
    if key not in _POLICIES:
        mlps, manifest = load_baseline(directory)
        _POLICIES[key] = BaselinePolicy(mlps, manifest, execute=execute, replan_every=replan_every)
    return _POLICIES[key]
