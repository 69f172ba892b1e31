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

from genba.data.stats import stats_from_json
from genba.model.baseline import MARKER, BaselineError, TaskMLP, load_baseline
from genba.model.runtime import Execution, Runtime


# ---- the policy -------------------------------------------------------------------
class BaselinePolicy:
    """N lockstep envs of one task, its MLP called once per step for all of them (BatchedPolicy's interface),
    through the policy runtime (``genba.model.runtime``: history, transforms, chunk execution)."""

    def __init__(self, mlps: dict[str, TaskMLP], manifest: dict[str, Any], *, execute: str = "ensemble",
                 replan_every: int | None = None, ensemble_m: float = 0.1) -> None:
        self.mlps, self.manifest = mlps, manifest
        self.history, self.chunk = int(manifest["config"]["history"]), int(manifest["config"]["chunk"])
        self.execution = Execution.make(execute, replan_every, ensemble_m, self.chunk)
        stats = {n: stats_from_json(s, source=f"{MARKER} stats[{n!r}]") for n, s in manifest["stats"].items()}
        mode = manifest.get("normalization", {}).get("mode", "mean_std")
        self.runtime = Runtime(self._predict, stats, stats, history=self.history, chunk=self.chunk,
                               normalization=mode)
        self._by_text = {(t["embodiment"], key): t["id"] for t in manifest["tasks"]
                         for key in (t["id"], t["en"], t["ja"])}

    def reset(self, n: int, embodiment: str, instruction: str) -> None:
        """Start N episodes of the task ``instruction`` (en, ja or its id) names on ``embodiment``."""
        tid = self._by_text.get((embodiment, instruction))
        if tid is None:
            known = sorted(t["id"] for t in self.manifest["tasks"] if t["embodiment"] == embodiment)
            raise BaselineError(f"instruction {instruction!r} names no task of embodiment {embodiment!r} in this "
                                f"baseline (its tasks there: {known or 'none'})")
        self.embodiment, self.task = embodiment, tid
        self.stream = self.runtime.new_stream(self.execution)
        self.runtime.begin(self.stream, embodiment, instruction)

    def act(self, obs: np.ndarray) -> np.ndarray:
        """Actions (N, A) for observations (N, obs_dim) of this step."""
        return self.runtime.step([self.stream], [(self.embodiment, self.stream.instruction, obs)])[0]

    @torch.inference_mode()
    def _predict(self, groups) -> list[torch.Tensor]:
        """The task MLP on each group's flattened normalized history: chunks (n, C, A)."""
        return [self.mlps[self._by_text[g.entry, g.instruction]](g.state.reshape(g.state.shape[0], -1))
                .reshape(g.state.shape[0], self.chunk, -1) for g in groups]


_POLICIES: dict[Any, BaselinePolicy] = {}  # per worker process


def load_baseline_policy(directory: str | os.PathLike, execute: str = "ensemble",
                         replan_every: int | None = None) -> BaselinePolicy:
    """The baseline at ``directory`` as a :class:`BaselinePolicy` (cached per process)."""
    key = (str(directory), execute, replan_every)
    if key not in _POLICIES:
        mlps, manifest = load_baseline(directory)
        _POLICIES[key] = BaselinePolicy(mlps, manifest, execute=execute, replan_every=replan_every)
    return _POLICIES[key]
