"""Atomic training checkpoints: model bundle + full training state.

Layout of a run directory::

    RUN_DIR/checkpoints/step-000400/model.safetensors   weights (genba.model.bundle)
                                    genba.json          config, specs, stats, tokenizer, lineage
                                    train_state/        torch.distributed.checkpoint: model + optimizer
                                    train_state/trainer.json   step, schedule, sampler position
                                    train_state/rank-00000.pt  per-rank RNG states
    RUN_DIR/checkpoints/latest      "step-000400"

Why it survives a kill at any moment: everything is written into
``step-XXXXXX.tmp``, fsynced, then renamed into place (a rename is atomic on
POSIX); only afterwards is ``latest`` replaced (``os.replace``, atomic too). A
kill leaves at worst a ``.tmp`` folder, which the next run deletes, and
``latest`` always names a complete checkpoint.

Model and optimizer go through ``torch.distributed.checkpoint`` with the
distributed state-dict helpers, so a run saved under FSDP2 on N ranks loads on
M ranks or in a single process (DCP reshards on load).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_state_dict,
)

LATEST = "latest"
CKPT_DIR = "checkpoints"
TRAIN_STATE = "train_state"
TRAINER_JSON = "trainer.json"


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, incomplete or does not fit the model."""


# ---- process helpers -------------------------------------------------------
def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def _rank() -> int:
    return dist.get_rank() if _distributed() else 0


def _barrier() -> None:
    if _distributed():
        dist.barrier()


def step_name(step: int) -> str:
    return f"step-{step:06d}"


# ---- finding checkpoints ----------------------------------------------------
def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The complete checkpoint ``latest`` names, else the highest complete step dir, else None."""
    root = Path(run_dir) / CKPT_DIR
    pointer = root / LATEST
    if pointer.is_file():
        target = root / pointer.read_text().strip()
        if target.is_dir():
            return target
    steps = sorted(p for p in root.glob("step-*") if p.is_dir() and not p.name.endswith(".tmp"))
    return steps[-1] if steps else None


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory from itself, a run directory, or a ``checkpoints/`` folder."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"checkpoint {str(p)!r} does not exist")
    if (p / "model.safetensors").is_file() or (p / "genba.json").is_file():
        return p
    for run_dir in (p, p.parent):
        found = latest_checkpoint(run_dir) if (run_dir / CKPT_DIR).is_dir() else None
        if found is not None:
            return found
    raise CheckpointError(f"{str(p)!r} is neither a checkpoint (model.safetensors + genba.json) "
                          "nor a run directory holding checkpoints/")


def clean_partial(run_dir: str | Path) -> list[Path]:
    """Delete ``*.tmp`` leftovers of a killed save (rank 0 only); returns what was removed."""
    removed: list[Path] = []
    if _rank() == 0:
        for tmp in (Path(run_dir) / CKPT_DIR).glob("*.tmp"):
            shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)
            removed.append(tmp)
    _barrier()
    return removed


@contextlib.contextmanager
def _quiet_single_process():
    """DCP warns that it 'assumes' a single process when there is no group: that is the intent."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


# ---- RNG -----------------------------------------------------------------------
def rng_state() -> dict[str, Any]:
    """Every RNG a training step may draw from, for exact resumption."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---- saving --------------------------------------------------------------------
def full_model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Unsharded fp32 weights on the CPU (rank 0 receives them; others get {})."""
    if not _distributed():
        return {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    trainer_state: dict[str, Any],
    write_bundle: Callable[[Path, dict[str, torch.Tensor]], None],
    keep_last: int = 2,
    rank_state: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
    export: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None,
) -> Path:
    """Write checkpoint ``step`` atomically and point ``latest`` at it (collective).

    ``write_bundle(dir, full_state_dict)`` writes ``model.safetensors`` and
    ``genba.json`` (rank 0 only). ``trainer_state`` must be JSON-able (step,
    schedule, sampler position); ``rank_state`` (default: RNG states) is saved
    per rank with ``torch.save``. ``extra`` (e.g. ``{"ema": shadow tensors}``)
    is saved with the model and optimizer in the distributed checkpoint;
    ``export`` (collective) maps the full model state to what the bundle holds
    (the EMA weights instead of the raw ones).
    """
    root = Path(run_dir) / CKPT_DIR
    final = root / step_name(step)
    tmp = root / (step_name(step) + ".tmp")
    if _rank() == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / TRAIN_STATE).mkdir(parents=True)
    _barrier()

    model_sd, optim_sd = get_state_dict(model, optimizer)
    with _quiet_single_process():
        dcp.save({"model": model_sd, "optim": optim_sd, **(extra or {})}, checkpoint_id=str(tmp / TRAIN_STATE))
    torch.save(rank_state if rank_state is not None else rng_state(), tmp / TRAIN_STATE / f"rank-{_rank():05d}.pt")
    full = full_model_state(model)
    if export is not None:
        full = export(full)
    if _rank() == 0:
        write_bundle(tmp, full)
        state = dict(trainer_state, step=step)
        if _distributed():
            state["world_size"] = dist.get_world_size()
        (tmp / TRAIN_STATE / TRAINER_JSON).write_text(json.dumps(state, indent=2))
    _barrier()  # every rank's files are in tmp before it becomes visible
    if _rank() == 0:
        _fsync_tree(tmp)
        if final.exists():  # re-saving a step after a resume: replace it
            shutil.rmtree(final)
        os.rename(tmp, final)
        _atomic_write(root / LATEST, final.name + "\n")
        _fsync_dir(root)
        prune(root, keep_last)
    _barrier()
    return final


def prune(root: Path, keep_last: int) -> list[Path]:
    """Remove all but the newest ``keep_last`` complete checkpoints (never the one ``latest`` names)."""
    pointer = root / LATEST
    keep = pointer.read_text().strip() if pointer.is_file() else None
    steps = sorted(p for p in root.glob("step-*") if p.is_dir() and not p.name.endswith(".tmp"))
    doomed = [p for p in steps[: max(0, len(steps) - keep_last)] if p.name != keep]
    for p in doomed:
        shutil.rmtree(p, ignore_errors=True)
    return doomed


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _fsync_tree(root: Path) -> None:
    for dirpath, _, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(dirpath))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ---- loading -------------------------------------------------------------------
def read_trainer_state(ckpt: str | Path) -> dict[str, Any]:
    path = Path(ckpt) / TRAIN_STATE / TRAINER_JSON
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(ckpt)!r} has no {TRAIN_STATE}/{TRAINER_JSON}: "
                              "it holds weights only and cannot resume training")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: unreadable trainer state ({e})") from None


def load_checkpoint(
    ckpt: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
    extra: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Restore model (and optimizer) from ``ckpt/train_state`` in any layout (collective).

    Works for a plain single-process model as well as DDP/FSDP2-wrapped ones,
    whatever layout wrote the checkpoint. Returns ``(trainer_state, rank_state)``;
    ``rank_state`` is None when this rank has no saved state (world size changed).
    ``extra`` (what ``save_checkpoint`` got as ``extra``) is loaded in place.
    """
    ckpt = Path(ckpt)
    trainer_state = read_trainer_state(ckpt)
    if optimizer is None:
        model_sd = get_model_state_dict(model)
        _dcp_load({"model": model_sd}, ckpt)
        set_state_dict(model, optimizers=(), model_state_dict=model_sd, optim_state_dict={})
    else:
        model_sd, optim_sd = get_state_dict(model, optimizer)
        _dcp_load({"model": model_sd, "optim": optim_sd, **(extra or {})}, ckpt)
        set_state_dict(model, optimizer, model_state_dict=model_sd, optim_state_dict=optim_sd)
    rank_file = ckpt / TRAIN_STATE / f"rank-{_rank():05d}.pt"
    rank_state = torch.load(rank_file, weights_only=False) if rank_file.is_file() else None
    return trainer_state, rank_state


def _dcp_load(state: dict[str, Any], ckpt: Path) -> None:
    try:
        with _quiet_single_process():
            dcp.load(state, checkpoint_id=str(ckpt / TRAIN_STATE))
    except Exception as e:  # DCP raises CheckpointException wrapping per-rank errors
        raise CheckpointError(f"checkpoint {str(ckpt)!r}: cannot load training state into this model: {e}") from e
