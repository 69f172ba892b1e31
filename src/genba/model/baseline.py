"""The per-task baseline's model and directory format: one small MLP per task.

What the generalist must beat (issue 3); trained by :mod:`genba.train.baseline`,
run by :class:`genba.eval.baselines.BaselinePolicy`. A baseline directory holds
``model.safetensors`` (``<task id>/<parameter>``) and ``baseline.json`` (kind
``per-task-mlp``, tasks and their MLPs' shapes, specs, stats, figures), the
weights written first and the marker last, so a directory with the marker is
complete.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

KIND = "per-task-mlp"
FORMAT = "genba-baseline/1"
MARKER = "baseline.json"
WEIGHTS = "model.safetensors"


class BaselineError(ValueError):
    """A baseline that cannot be built, trained or loaded; the message names the input."""


class TaskMLP(nn.Module):
    """(B, in_dim) -> (B, out_dim): ``depth`` blocks of Linear, LayerNorm, GELU, Dropout, then a Linear."""

    def __init__(self, in_dim: int, out_dim: int, width: int, depth: int, dropout: float = 0.0) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        d = in_dim
        for _ in range(depth):
            layers += [nn.Linear(d, width), nn.LayerNorm(width), nn.GELU(), nn.Dropout(dropout)]
            d = width
        layers.append(nn.Linear(d, out_dim))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def is_baseline(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a baseline directory (holds ``baseline.json``)."""
    return (Path(path) / MARKER).is_file()


def read_baseline_manifest(directory: str | os.PathLike) -> dict[str, Any]:
    """``baseline.json`` of a baseline directory, checked for kind and format."""
    d = Path(directory)
    try:
        manifest = json.loads((d / MARKER).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BaselineError(f"{d / MARKER}: cannot read the baseline marker ({e})") from None
    if manifest.get("kind") != KIND or manifest.get("format") != FORMAT:
        raise BaselineError(f"{d / MARKER}: kind {manifest.get('kind')!r} / format {manifest.get('format')!r}, "
                            f"expected {KIND!r} / {FORMAT!r}")
    return manifest


def check_baseline_tasks(directory: str | os.PathLike, task_ids: Sequence[str]) -> None:
    """Refuse tasks the baseline has no MLP for (``genba eval`` checks before spawning workers)."""
    have = {t["id"] for t in read_baseline_manifest(directory)["tasks"]}
    missing = [t for t in task_ids if t not in have]
    if missing:
        raise BaselineError(f"baseline {directory} has no MLP for tasks {missing} (it has {sorted(have)}); "
                            "drop them from --tasks")


def load_baseline(directory: str | os.PathLike) -> tuple[dict[str, TaskMLP], dict[str, Any]]:
    """``({task id: TaskMLP in eval mode}, manifest)`` of a baseline directory."""
    manifest = read_baseline_manifest(d := Path(directory))
    try:
        tensors = load_file(str(d / WEIGHTS))
    except Exception as e:  # noqa: BLE001 - safetensors raises several types for bad files
        raise BaselineError(f"{d / WEIGHTS}: cannot read the weights ({e})") from None
    depth, mlps = int(manifest["config"]["depth"]), {}
    for t in manifest["tasks"]:
        mlp = TaskMLP(t["in_dim"], t["out_dim"], t["width"], depth)
        own = {k[len(t["id"]) + 1:]: v for k, v in tensors.items() if k.startswith(t["id"] + "/")}
        try:
            mlp.load_state_dict(own, strict=True)
        except RuntimeError as e:
            raise BaselineError(f"{d / WEIGHTS}: weights of task {t['id']!r} do not fit its MLP: {e}") from None
        mlps[t["id"]] = mlp.eval()
    return mlps, manifest
