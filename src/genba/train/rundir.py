"""One run directory, one run: an exclusive lock for the run's life, and no silent overwrite.

Two runs writing one ``--out`` destroy each other: one deletes the other's
``checkpoints/*.tmp`` mid-save, their lines interleave in ``metrics.jsonl``,
the last to start wins ``config.json`` (issue 19). So every run (``genba
train``, ``genba finetune``) first takes ``fcntl.flock`` on ``RUN_DIR/run.lock``
and keeps it until it ends. The kernel drops the lock with the process, so a
run killed with ``kill -9`` never leaves a stale lock; the holder's pid, host,
start time and command are written into the file only to name it in the refusal.
Under torchrun rank 0 holds the lock and tells the other ranks the verdict.

A directory that already holds a run (any of :data:`RUN_FILES`) is continued
with ``resume`` or started over with ``overwrite``, which deletes exactly those
entries and leaves anything else (an eval report, notes) where it is.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import torch.distributed as dist

from genba.train.config import TrainConfigError

LOCK_FILE = "run.lock"
# what a run writes into its directory (trainer, monitor, checkpoint); --overwrite deletes these only
RUN_FILES = ("checkpoints", "metrics.jsonl", "config.json", "tb")


class RunLock:
    """``fcntl.flock`` on ``RUN_DIR/run.lock``, non-blocking: a busy directory fails at once."""

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise TrainConfigError(f"run directory {self.run_dir} is in use by another run ({holder}); wait for it "
                                   "to finish, stop it, or choose another --out") from None
        os.ftruncate(fd, 0)
        info = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "command": " ".join(sys.argv)}
        os.write(fd, (json.dumps(info) + "\n").encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)  # the file stays (unlinking it would race a waiting opener)
            os.close(self._fd)  # closing the descriptor drops the lock
            self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (OSError, ValueError):
        info = {}
    if "pid" not in info:
        return "holder unknown"
    return f"pid {info['pid']} on {info.get('host', '?')} since {info.get('since', '?')}: {info.get('command', '')}"


def existing_run(run_dir: Path) -> list[str]:
    """The run entries already in ``run_dir`` (empty: a fresh or empty directory)."""
    return [name for name in RUN_FILES if (run_dir / name).exists()]


def prepare(run_dir: Path, *, resume: bool, overwrite: bool, resume_hint: bool = True) -> None:
    """Refuse an existing run unless resumed or overwritten; ``overwrite`` deletes its entries (lock held)."""
    if resume and overwrite:
        raise TrainConfigError("--resume and --overwrite exclude each other: continue the run or start it over")
    found = existing_run(run_dir)
    if not found or resume:
        return
    if not overwrite:
        how = "pass --resume to continue it or --overwrite" if resume_hint else "pass --overwrite"
        raise TrainConfigError(f"{run_dir} already holds a run ({', '.join(found)}): {how} to start it over "
                               "(deletes its checkpoints, metrics and config), or choose another --out")
    for name in found:
        path = run_dir / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()


@contextlib.contextmanager
def claim(run_dir: str | os.PathLike, *, resume: bool = False, overwrite: bool = False, main: bool = True,
          resume_hint: bool = True) -> Iterator[Path]:
    """Hold ``run_dir`` for the block: lock it (rank ``main``) and check it is ours to write (collective)."""
    run_dir = Path(run_dir)
    lock, error = None, None
    if main:
        try:
            lock = RunLock(run_dir).acquire()
            prepare(run_dir, resume=resume, overwrite=overwrite, resume_hint=resume_hint)
        except TrainConfigError as e:
            error = str(e)
        except OSError as e:  # an --out that cannot be created or locked
            error = f"run directory {run_dir}: {e.strerror or e}"
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        box = [error]
        dist.broadcast_object_list(box, src=0)  # also a barrier: no rank writes before rank 0 cleared the dir
        error = box[0]
    try:
        if error is not None:
            raise TrainConfigError(error)
        yield run_dir
    finally:
        if lock is not None:
            lock.release()


def write_run_config(run_dir: Path, doc: dict) -> None:
    (run_dir / "config.json").write_text(json.dumps(doc, indent=2))


def read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}
