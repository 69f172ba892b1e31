"""Finding and checking checkpoints on disk: what eval, serve and fine-tuning resolve.

Layout of a run directory (written by :mod:`genba.train.checkpoint`)::

    RUN_DIR/checkpoints/step-000400/model.safetensors   weights (genba.model.bundle)
                                    checkpoint.json     config, specs, stats, tokenizer, lineage
                                    train_state/trainer.json   step, schedule, sampler position, file digests
    RUN_DIR/checkpoints/latest      "step-000400"

Reading only: saving lives in the training layer. It sits in ``model`` so that
eval and serve can resolve a run directory without importing ``train``.
"""

from __future__ import annotations

import hashlib
import json
import re
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch.distributed as dist

from genba.errors import UserError
from genba.model.bundle import WEIGHTS, manifest_path, sha256_file

LATEST = "latest"
CKPT_DIR = "checkpoints"
TRAIN_STATE = "train_state"
TRAINER_JSON = "trainer.json"
FILES = "files"  # trainer.json: {path relative to the step dir: {"sha256", "bytes"}}
_STATE_FILE = f"{TRAIN_STATE}/{TRAINER_JSON}"
_STEP_NAME = re.compile(r"step-\d{6,}")
# what a step directory holds once save_checkpoint has renamed it into place
# (the manifest too, by manifest_path: checkpoint.json, or genba.json before the rename)
_REQUIRED = (WEIGHTS, _STATE_FILE, f"{TRAIN_STATE}/.metadata")


class CheckpointError(UserError, RuntimeError):
    """A checkpoint that is missing, incomplete or does not fit the model."""


class CheckpointWarning(UserWarning):
    """A checkpoint was skipped (bad ``latest``, incomplete step) and an older complete one used."""


# ---- process helpers -------------------------------------------------------
def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def _rank() -> int:
    return dist.get_rank() if _distributed() else 0


def step_name(step: int) -> str:
    return f"step-{step:06d}"


# ---- finding checkpoints ----------------------------------------------------
def incomplete(step_dir: Path) -> str | None:
    """Why ``step_dir`` is not a complete checkpoint (None: it is)."""
    names = (manifest_path(step_dir).name, *_REQUIRED)
    missing = [n for n in names if not (step_dir / n).is_file() or (step_dir / n).stat().st_size == 0]
    return f"lacks {', '.join(missing)}" if missing else None


def _inside(root: Path, step_dir: Path) -> bool:
    return step_dir.resolve().parent == root.resolve()  # a symlinked step may point at another run


def _step_dirs(root: Path) -> list[Path]:
    """``step-N`` directories of this run, newest first (numerically: step-1000000 sorts after step-999999)."""
    steps = [p for p in root.glob("step-*") if _STEP_NAME.fullmatch(p.name) and p.is_dir()]
    return sorted(steps, key=lambda p: int(p.name[5:]), reverse=True)


def _pointer_problem(root: Path) -> tuple[Path | None, str | None]:
    """(the step ``latest`` names, None) when valid, else (None, what is wrong with it)."""
    pointer = root / LATEST
    if not pointer.is_file():
        return None, "is missing"
    try:
        name = pointer.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as e:
        return None, f"is unreadable ({e})"
    if not name:
        return None, "is empty"
    if not _STEP_NAME.fullmatch(name):
        return None, f"names {name!r}, not a step directory of this run"
    target = root / name
    if not target.is_dir():
        return None, f"names {name}, which does not exist"
    if not _inside(root, target):
        return None, f"names {name}, which resolves outside {root} ({target.resolve()})"
    why = incomplete(target)
    return (None, f"names {name}, which is incomplete ({why})") if why else (target, None)


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The complete checkpoint ``latest`` names; else (with a warning) the newest complete step; else None.

    ``latest`` is only trusted to name a step directory inside this run's
    ``checkpoints/``: an absolute path, ``../other-run/...``, a symlink out, an
    empty file or an incomplete step is ignored, and the fallback says so.
    """
    root = Path(run_dir) / CKPT_DIR
    target, problem = _pointer_problem(root)
    if target is not None:
        return target
    found, skipped = None, []
    for step_dir in _step_dirs(root):
        if not _inside(root, step_dir):
            skipped.append(f"{step_dir.name} (resolves outside {root})")
        elif why := incomplete(step_dir):
            skipped.append(f"{step_dir.name} (incomplete: {why})")
        else:
            found = step_dir
            break
    if found is None and not skipped and problem == "is missing":
        return None  # a run that has not saved yet: nothing to warn about
    notes = [f"{root / LATEST} {problem}"] + ([f"skipped {', '.join(skipped)}"] if skipped else [])
    using = f"using the newest complete checkpoint {found}" if found else f"no complete checkpoint is left in {root}"
    warnings.warn("; ".join(notes) + f"; {using}", CheckpointWarning, stacklevel=2)
    return found


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory from itself, a run directory, or a ``checkpoints/`` folder.

    Its ``checkpoint.json`` is checked against the digest the training state records
    (the weights are checked against ``checkpoint.json`` when the model loads).
    """
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"checkpoint {str(p)!r} does not exist")
    found = p if (p / WEIGHTS).is_file() or manifest_path(p).is_file() else None
    for run_dir in (p, p.parent):
        if found is None and (run_dir / CKPT_DIR).is_dir() and run_dir / CKPT_DIR in (p, p / CKPT_DIR):
            found = latest_checkpoint(run_dir)
    if found is None:
        raise CheckpointError(f"{str(p)!r} is neither a checkpoint (model.safetensors + checkpoint.json) "
                              "nor a run directory holding complete checkpoints in checkpoints/")
    if (found / _STATE_FILE).is_file():
        verify_files(found, read_trainer_state(found), only=(manifest_path(found).name,))
    return found


def _state_digest(state: dict[str, Any]) -> str:
    body = {k: v for k, v in state.items() if k != "digest"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()



def read_trainer_state(ckpt: str | Path) -> dict[str, Any]:
    """``train_state/trainer.json``, checked against the digest it carries (older ones carry none)."""
    path = Path(ckpt) / _STATE_FILE
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(ckpt)!r} has no {_STATE_FILE}: "
                              "it holds weights only and cannot resume training")
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: unreadable trainer state ({e})") from None
    if not isinstance(state, dict) or "step" not in state:
        raise CheckpointError(f"{path}: not a trainer state (no 'step')")
    if "digest" in state and state["digest"] != _state_digest(state):
        raise CheckpointError(f"{path}: content does not match its digest: the file was edited or is corrupt")
    return state


def verify_files(ckpt: str | Path, state: dict[str, Any], only: Iterable[str] | None = None) -> None:
    """Check the files ``state`` records (all, or ``only`` those names): size, then SHA-256 (collective).

    Ranks split the files between them and share what they found, so every
    rank raises the same :class:`CheckpointError`, naming the first bad file.
    """
    ckpt, table = Path(ckpt), state.get(FILES) or {}
    names = sorted(table if only is None else (n for n in only if n in table))
    world = dist.get_world_size() if _distributed() else 1
    problems = [p for n in names[_rank()::world] if (p := _check_file(ckpt / n, table[n]))]
    if _distributed():
        every: list = [None] * world
        dist.all_gather_object(every, problems)
        problems = [p for ps in every for p in ps]
    if problems:
        more = f" (and {len(problems) - 1} more bad files)" if len(problems) > 1 else ""
        raise CheckpointError(problems[0] + more)


def _check_file(path: Path, want: dict[str, Any]) -> str | None:
    if not path.is_file():
        return f"{path}: missing, though {_STATE_FILE} records it"
    size = path.stat().st_size
    if size != want.get("bytes"):
        return f"{path}: {size} bytes but {_STATE_FILE} records {want.get('bytes')}: truncated or replaced"
    if sha256_file(path) != want.get("sha256"):
        return f"{path}: SHA-256 differs from the one {_STATE_FILE} records: the file is corrupt or was replaced"
    return None
