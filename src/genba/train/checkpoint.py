"""Atomic training checkpoints: model bundle + full training state.

Layout of a run directory::

    RUN_DIR/checkpoints/step-000400/model.safetensors   weights (genba.model.bundle)
                                    checkpoint.json     config, specs, stats, tokenizer, lineage
                                    train_state/        torch.distributed.checkpoint: model + optimizer
                                    train_state/trainer.json   step, schedule, sampler position
                                    train_state/rank-00000.pt  per-rank RNG states
    RUN_DIR/checkpoints/latest      "step-000400"

Every file is checked by content: ``trainer.json`` records the size and
SHA-256 of each file of the step (bundle, DCP shards and ``.metadata``, rank
files; each rank hashes what it wrote) and a digest of itself, and loading
verifies them first (the work split over the ranks), so a flipped or truncated
byte is an error naming the file, never a silent ``loss nan``. ``latest`` may
only name a complete step directory of its own run; an empty, foreign or
dangling pointer, or an incomplete newest step, falls back to the newest
complete step with a :class:`CheckpointWarning` saying so.

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
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_state_dict,
)

from genba.atomic import write_atomic
from genba.model.bundle import sha256_file
from genba.model.checkpoints import (  # noqa: F401  (re-exported: the trainer's callers find them here too)
    _STATE_FILE,
    CKPT_DIR,
    FILES,
    LATEST,
    TRAIN_STATE,
    TRAINER_JSON,
    CheckpointError,
    CheckpointWarning,
    _distributed,
    _pointer_problem,
    _rank,
    _state_digest,
    _step_dirs,
    incomplete,
    latest_checkpoint,
    read_trainer_state,
    resolve_checkpoint,
    step_name,
    verify_files,
)


# ---- process helpers -------------------------------------------------------
def _barrier() -> None:
    if _distributed():
        dist.barrier()


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
    ``checkpoint.json`` (rank 0 only). ``trainer_state`` must be JSON-able (step,
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
    files = _gather_digests(tmp)  # each rank hashes what it wrote, while rank 0 gathers the full weights
    full = full_model_state(model)
    if export is not None:
        full = export(full)
    _refuse_non_finite(full, step, tmp)
    if _rank() == 0:
        write_bundle(tmp, full)
        state = dict(trainer_state, step=step)
        if _distributed():
            state["world_size"] = dist.get_world_size()
        state[FILES] = {**files, **_digests(tmp, exclude={*files, _STATE_FILE})}
        _write_trainer_state(tmp / _STATE_FILE, state)
    _barrier()  # every rank's files are in tmp before it becomes visible
    if _rank() == 0:
        _fsync_tree(tmp)
        if final.exists():  # re-saving a step after a resume: replace it
            shutil.rmtree(final)
        os.rename(tmp, final)
        write_atomic(root / LATEST, final.name + "\n", fsync=True)
        _fsync_dir(root)
        prune(root, keep_last)
    _barrier()
    return final


def _digest(path: Path) -> dict[str, Any]:
    return {"sha256": sha256_file(path), "bytes": path.stat().st_size}


def _digests(step_dir: Path, exclude: Iterable[str] = ()) -> dict[str, dict[str, Any]]:
    """Digests of every file under ``step_dir`` but ``exclude`` (relative POSIX names)."""
    skip = set(exclude)
    names = sorted(p.relative_to(step_dir).as_posix() for p in step_dir.rglob("*") if p.is_file())
    return {n: _digest(step_dir / n) for n in names if n not in skip}


def _gather_digests(tmp: Path) -> dict[str, dict[str, Any]]:
    """This rank's DCP shards and rank file, hashed here; rank 0 receives every rank's table."""
    rank = _rank()
    mine = [*(tmp / TRAIN_STATE).glob(f"__{rank}_*.distcp"), tmp / TRAIN_STATE / f"rank-{rank:05d}.pt"]
    table = {p.relative_to(tmp).as_posix(): _digest(p) for p in mine}
    if not _distributed():
        return table
    every = [None] * dist.get_world_size() if rank == 0 else None
    dist.gather_object(table, every, dst=0)
    return {k: v for t in every for k, v in t.items()} if rank == 0 else {}


def _refuse_non_finite(full: dict[str, torch.Tensor], step: int, tmp: Path) -> None:
    """Never write NaN/inf weights (the training guard stops before; this is the last line). Collective."""
    bad = [k for k, v in full.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if _distributed():
        box = [bad]
        dist.broadcast_object_list(box, src=0)  # only rank 0 holds the gathered weights
        bad = box[0]
    if bad:
        if _rank() == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(f"refusing to save step {step}: non-finite values in {len(bad)} tensors "
                              f"({', '.join(bad[:5])}{', ...' if len(bad) > 5 else ''})")


def _write_trainer_state(path: Path, state: dict[str, Any]) -> None:
    path.write_text(json.dumps({**state, "digest": _state_digest(state)}, indent=2))


def prune(root: Path, keep_last: int) -> list[Path]:
    """Remove all but the newest ``keep_last`` complete checkpoints (never the one ``latest`` names)."""
    keep, _ = _pointer_problem(root)
    doomed = [p for p in _step_dirs(root)[keep_last:] if p != keep]
    for p in doomed:
        shutil.rmtree(p, ignore_errors=True)
    return doomed


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
def load_checkpoint(
    ckpt: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
    extra: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Restore model (and optimizer) from ``ckpt/train_state`` in any layout (collective).

    Every recorded file is verified first (:func:`verify_files`). Works for a
    plain single-process model as well as DDP/FSDP2-wrapped ones, whatever
    layout wrote the checkpoint. Returns ``(trainer_state, rank_state)``;
    ``rank_state`` is None when this rank has no saved state (world size changed).
    ``extra`` (what ``save_checkpoint`` got as ``extra``) is loaded in place.
    """
    ckpt = Path(ckpt)
    trainer_state = read_trainer_state(ckpt)
    verify_files(ckpt, trainer_state)
    if optimizer is None:
        model_sd = get_model_state_dict(model)
        _dcp_load({"model": model_sd}, ckpt)
        set_state_dict(model, optimizers=(), model_state_dict=model_sd, optim_state_dict={})
    else:
        model_sd, optim_sd = get_state_dict(model, optimizer)
        _dcp_load({"model": model_sd, "optim": optim_sd, **(extra or {})}, ckpt)
        set_state_dict(model, optimizer, model_state_dict=model_sd, optim_state_dict=optim_sd)
    rank_file = ckpt / TRAIN_STATE / f"rank-{_rank():05d}.pt"
    if not rank_file.is_file():
        return trainer_state, None
    try:
        return trainer_state, torch.load(rank_file, weights_only=False)
    except Exception as e:  # noqa: BLE001 - a cut pickle raises OSError, EOFError, RuntimeError, UnpicklingError...
        raise CheckpointError(f"{rank_file}: unreadable RNG state, truncated or corrupt "
                              f"({type(e).__name__}: {e})") from None


def _dcp_load(state: dict[str, Any], ckpt: Path) -> None:
    try:
        with _quiet_single_process():
            dcp.load(state, checkpoint_id=str(ckpt / TRAIN_STATE))
    except (Exception, CheckpointException) as e:  # CheckpointException is a BaseException: name it
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        cause = lines[-1] if lines else type(e).__name__  # DCP wraps each rank's traceback: keep the error
        raise CheckpointError(f"checkpoint {str(ckpt)!r}: cannot load the training state in {ckpt / TRAIN_STATE} "
                              f"(a file there is truncated or corrupt, or it is another model's): {cause}") from None
