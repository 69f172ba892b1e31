"""Training metrics: a JSONL file, TensorBoard scalars and a rich progress bar (rank 0).

``metrics.jsonl`` holds one JSON object per logged step (step, loss,
per-embodiment loss, lr, samples/s, grad norm, elapsed seconds). On resume the
lines past the resumed step, written by the run that was killed, are dropped
so the file reads as one uninterrupted run.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from genba.atomic import write_atomic

METRICS_FILE = "metrics.jsonl"


def truncate_metrics(path: Path, step: int) -> None:
    """Keep only records with ``step <= step`` (atomic rewrite)."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:  # a line cut by a kill
            continue
        if rec.get("step", 0) <= step:
            kept.append(line)
    write_atomic(path, "".join(l + "\n" for l in kept))


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """All records of a run's ``metrics.jsonl`` (skipping a torn last line)."""
    path = Path(run_dir) / METRICS_FILE
    out = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


class Monitor:
    """Writes metrics on rank 0; on other ranks every method is a no-op."""

    def __init__(self, run_dir: Path, *, enabled: bool, resume_step: int = 0, total_steps: int = 0,
                 progress: bool = True, tensorboard: bool = True) -> None:
        self.enabled = enabled
        self._file = None
        self._tb = None
        self._progress: Progress | None = None
        if not enabled:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        path = run_dir / METRICS_FILE
        truncate_metrics(path, resume_step) if resume_step else path.unlink(missing_ok=True)
        self._file = open(path, "a", buffering=1)
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(run_dir / "tb"), purge_step=resume_step or None)
        if progress:
            self._progress = Progress(
                TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[sps]} samples/s"),
                TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), transient=False)
            self._progress.start()
            self._task = self._progress.add_task("train", total=total_steps, completed=resume_step,
                                                 loss="-", sps="-")

    def log(self, record: dict[str, Any]) -> None:
        """Append one record (must hold ``step``) to JSONL and TensorBoard."""
        if not self.enabled:
            return
        clean = {k: (v if not isinstance(v, float) or math.isfinite(v) else str(v)) for k, v in record.items()}
        self._file.write(json.dumps(clean) + "\n")
        if self._tb is not None:
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)):
                    self._tb.add_scalar(k, v, record["step"])

    def record(self, record: dict[str, Any]) -> None:
        """A training loop's record (:func:`genba.train.loop.fit`): logged, and the bar moved to its step."""
        self.log(record)
        self.advance(record["step"], record["total_steps"], record.get("loss"), record.get("samples_per_s"))

    def advance(self, step: int, total: int, loss: float | None = None, sps: float | None = None) -> None:
        """Move the bar to ``step`` of ``total`` (total may change in a time-budgeted run)."""
        if self._progress is None:
            return
        fields = {}
        if loss is not None:
            fields["loss"] = f"{loss:.4f}"
        if sps is not None:
            fields["sps"] = f"{sps:,.0f}"
        self._progress.update(self._task, completed=step, total=total, **fields)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._file is not None:
            self._file.close()
            self._file = None
