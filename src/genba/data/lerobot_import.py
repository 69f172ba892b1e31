"""Bring a plain LeRobot v3 dataset into genba: its spec given as a file, checked against its features.

A LeRobot dataset (``meta/info.json``, ``meta/stats.json``, ``meta/tasks.parquet``,
``meta/episodes/``, ``data/``) lacks only what genba adds in ``meta/genba.json``:
the embodiment spec and a Japanese instruction per task. A member may have
recorded it with LeRobot, or edited a genba dataset with ``lerobot-edit-dataset``
(which rewrites the dataset without ``meta/genba.json``). :func:`import_lerobot`
writes that file from a spec JSON the user supplies, after the whole dataset
passes :func:`genba.data.dataset.open_dataset` with it: dims, dtypes and names of
``observation.state`` and ``action`` against the spec, ``fps`` against its
control period, every value finite and plausible for its limits. By default the
dataset is copied to a new directory (the source stays as LeRobot wrote it);
``in_place`` adds only ``meta/genba.json``, which LeRobot never reads.

:func:`draft_spec` drafts that JSON from ``info.json`` (feature names, fps,
robot type) and ``stats.json`` (limits: min/max widened by a margin). Units,
the action's meaning and the safety limits cannot be read from a dataset, so
the draft carries a ``"_draft"`` key saying what to check; the importer refuses
a spec that still has it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from genba.atomic import write_atomic
from genba.data.dataset import check_info, load_json, open_dataset
from genba.data.layout import (
    ACTION,
    GENBA_FORMAT_VERSION,
    GENBA_PATH,
    INFO_PATH,
    STATE,
    STATS_PATH,
    TASKS_PATH,
    DatasetError,
    feature_names,
)
from genba.data.spec import CameraSpec, EmbodimentSpec, SpecError

DRAFT_KEY = "_draft"
DEFAULT_MARGIN = 0.1  # draft limits: the data's [min, max] widened by this fraction of its span on each side


@dataclass(frozen=True)
class Imported:
    """What :func:`import_lerobot` made trainable."""

    root: Path
    embodiment: str
    episodes: int
    frames: int
    untranslated: tuple[str, ...]  # task strings whose Japanese instruction is the English one


# ---- the spec file -----------------------------------------------------------------
def load_spec_file(path: str | os.PathLike) -> EmbodimentSpec:
    """An EmbodimentSpec from a JSON file: a bare spec, or a ``meta/genba.json`` holding one under ``spec``."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise SpecError(f"spec file {path}: cannot read JSON ({e})") from None
    if isinstance(doc, dict) and "spec" in doc and "obs_names" not in doc:
        doc = doc["spec"]
    if isinstance(doc, dict) and DRAFT_KEY in doc:
        raise SpecError(f"spec file {path} is still a draft: check every field as its {DRAFT_KEY!r} note says "
                        "(units, limits, action_meaning, safety), then delete that key")
    try:
        return EmbodimentSpec.from_dict(doc)
    except SpecError as e:
        raise SpecError(f"spec file {path}: {e}") from None


# ---- importing ---------------------------------------------------------------------------
def import_lerobot(src: str | os.PathLike, spec: EmbodimentSpec, *, out: str | os.PathLike | None = None,
                   tasks: str | os.PathLike | None = None, source_note: dict | None = None) -> Imported:
    """Make the LeRobot v3 dataset at ``src`` trainable with ``spec``; see the module docstring.

    ``out=None`` writes ``meta/genba.json`` into ``src``; otherwise ``src`` is
    copied to the new directory ``out`` first (atomically: nothing appears at
    ``out`` unless all is valid). ``tasks`` is a JSON file giving Japanese
    instructions (see :func:`read_task_file`); a task without one gets its
    English string. Raises DatasetError naming the file at fault.
    """
    src = Path(src)
    info = _lerobot_info(src)
    if (src / GENBA_PATH).exists():
        raise DatasetError(f"{src / GENBA_PATH}: already a genba dataset; train on it directly (delete that file "
                           "to import the dataset with another spec)")
    strings = _task_strings(src)
    ja = read_task_file(tasks, strings) if tasks is not None else {}
    task_list = [{"task_index": i, "id": ja.get(s, {}).get("id"), "en": s, "ja": ja.get(s, {}).get("ja") or s}
                 for i, s in enumerate(strings)]
    doc = {"format_version": GENBA_FORMAT_VERSION, "embodiment": spec.name, "spec": spec.to_dict(),
           "control_period": spec.control_period, "fps_exact": spec.fps, "tasks": task_list,
           "episodes": [{"episode_index": i, "seed": None} for i in range(int(info["total_episodes"]))],
           "import": {"from": "lerobot", "codebase_version": info["codebase_version"], "fps": info["fps"],
                      "untranslated_tasks": [s for s in strings if not ja.get(s, {}).get("ja")],
                      **(source_note or {})}}
    ds = open_dataset(src, genba=doc)  # the whole dataset, checked with the file about to be written
    if out is None:
        _write_doc(src / GENBA_PATH, doc)
        root = src
    else:
        root = _copy_with(src, Path(out), doc)
    return Imported(root, spec.name, ds.num_episodes, ds.num_frames, tuple(doc["import"]["untranslated_tasks"]))


def read_task_file(path: str | os.PathLike, strings: list[str]) -> dict[str, dict[str, Any]]:
    """``{English task string: {"ja": ..., "id": ...}}`` from ``path``.

    Accepted: an object ``{"<task string>": "<Japanese>"}``, a list of
    ``{"en", "ja"[, "id"]}`` objects, or a genba ``meta/genba.json`` (its ``tasks``).
    A task string the dataset does not have is an error (a typo would go unnoticed).
    """
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise DatasetError(f"--tasks {path}: cannot read JSON ({e})") from None
    if isinstance(doc, dict) and isinstance(doc.get("tasks"), list):
        doc = doc["tasks"]
    if isinstance(doc, dict) and all(isinstance(v, str) for v in doc.values()):
        out = {k: {"ja": v, "id": None} for k, v in doc.items()}
    elif isinstance(doc, list) and all(isinstance(t, dict) and isinstance(t.get("en"), str) for t in doc):
        out = {t["en"]: {"ja": t.get("ja"), "id": t.get("id")} for t in doc}
    else:
        raise DatasetError(f"--tasks {path}: expected {{task string: Japanese}}, a list of {{'en', 'ja'}} "
                           "objects or a genba.json")
    unknown = sorted(set(out) - set(strings))
    if unknown:
        raise DatasetError(f"--tasks {path}: {unknown[0]!r} is not a task of the dataset (its tasks: {strings})")
    bad = [k for k, v in out.items() if not (isinstance(v["ja"], str) and v["ja"].strip())]
    if bad:
        raise DatasetError(f"--tasks {path}: task {bad[0]!r} has no Japanese instruction")
    return out


def _lerobot_info(src: Path) -> dict:
    if not src.is_dir():
        raise DatasetError(f"dataset {src} does not exist or is not a directory")
    info = load_json(src, INFO_PATH, missing="not a LeRobot v3 dataset (or an incomplete one)")
    check_info(src, info)
    return info


def _task_strings(src: Path) -> list[str]:
    """Task strings in task_index order (the opener checks them against the frames)."""
    try:
        t = pq.read_table(src / TASKS_PATH)
    except (OSError, ValueError) as e:
        raise DatasetError(f"{src / TASKS_PATH}: unreadable ({e})") from None
    col = next((c for c in ("__index_level_0__", "task") if c in t.column_names), None)
    if col is None or "task_index" not in t.column_names:
        raise DatasetError(f"{src / TASKS_PATH}: needs columns 'task_index' and the task string, has "
                           f"{t.column_names}")
    pairs = sorted(zip(t.column("task_index").to_pylist(), t.column(col).to_pylist()))
    if [i for i, _ in pairs] != list(range(len(pairs))) or not all(isinstance(s, str) and s for _, s in pairs):
        raise DatasetError(f"{src / TASKS_PATH}: task_index must be 0..{len(pairs) - 1} with non-empty strings")
    return [s for _, s in pairs]


def _write_doc(path: Path, doc: dict) -> None:
    write_atomic(path, json.dumps(doc, indent=4, ensure_ascii=False))


def _copy_with(src: Path, out: Path, doc: dict) -> Path:
    if out.exists():
        raise FileExistsError(f"--out {out} already exists; choose a new directory")
    if out.resolve() == src.resolve() or src.resolve() in out.resolve().parents:
        raise DatasetError(f"--out {out} is inside the dataset {src}; choose a directory outside it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        shutil.copytree(src, tmp / "d")
        _write_doc(tmp / "d" / GENBA_PATH, doc)
        os.replace(tmp / "d", out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


# ---- drafting a spec ------------------------------------------------------------------------------
def draft_spec(src: str | os.PathLike, *, name: str | None = None, margin: float = DEFAULT_MARGIN) -> dict:
    """A spec JSON drafted from ``src``'s ``info.json`` and ``stats.json``, marked with a ``_draft`` key.

    Names: ``info.json``'s per-entry names (``<feature>_<i>`` where it has none).
    Limits: the data's ``[min, max]`` widened by ``margin`` of its span on each
    side (by ``margin`` of the value, at least 1, where the feature is constant).
    Control period: ``1 / fps``. Units are ``"unknown"``, the safety limits empty.
    """
    src = Path(src)
    info = _lerobot_info(src)
    if not margin >= 0:
        raise DatasetError(f"--margin {margin}: must be >= 0")
    stats = load_json(src, STATS_PATH, missing="the draft's limits come from the dataset's statistics")
    feats = info["features"]
    parts = {}
    for key in (STATE, ACTION):
        dim = feats[key]["shape"][0]
        names = feature_names(feats[key]) or [f"{key.split('.')[-1]}_{i}" for i in range(dim)]
        lo, hi = _draft_limits(src, stats, key, dim, margin)
        parts[key] = (names, lo, hi)
    fps = info["fps"]
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not fps > 0:
        raise DatasetError(f"{src / INFO_PATH}: fps {fps!r} is not a positive number")
    spec = EmbodimentSpec(
        name=name or _spec_name(info.get("robot_type"), src), robot_type=str(info.get("robot_type") or "unknown"),
        obs_names=tuple(parts[STATE][0]), obs_units=("unknown",) * len(parts[STATE][0]),
        obs_low=parts[STATE][1], obs_high=parts[STATE][2],
        action_names=tuple(parts[ACTION][0]), action_units=("unknown",) * len(parts[ACTION][0]),
        action_low=parts[ACTION][1], action_high=parts[ACTION][2],
        control_period=1.0 / fps, action_meaning="unknown",
        description=f"drafted by `genba data draft-spec` from {src}", cameras=_draft_cameras(feats))
    cams = {c.feature for c in spec.cameras}
    others = sorted(k for k in feats if k not in (STATE, ACTION, "timestamp", "frame_index", "episode_index",
                                                  "index", "task_index") and k not in cams)
    note = (f"DRAFT from {src}: limits are the data's min/max widened by {margin:g} of their span; set the real "
            "units, limits and action_meaning, add safety limits (rates etc.) before serving a model on this machine, "
            f"then delete this key (genba data import-lerobot refuses a spec that still has it)")
    if others:
        note += f"; features not in a spec, left out of training: {others}"
    return {DRAFT_KEY: note, **spec.to_dict()}


def _draft_cameras(feats: dict) -> tuple[CameraSpec, ...]:
    """Every RGB video feature ``observation.images.<name>`` as a camera of its size (source: its name)."""
    out = []
    for key, ft in feats.items():
        name = key.removeprefix("observation.images.")
        shape = ft.get("shape") if isinstance(ft, dict) else None
        if (ft.get("dtype") == "video" and key.startswith("observation.images.") and name.replace("_", "").isalnum()
                and isinstance(shape, list) and len(shape) == 3 and shape[2] == 3):
            out.append(CameraSpec(name, int(shape[0]), int(shape[1]), name))
    return tuple(out)


def _draft_limits(src: Path, stats: dict, key: str, dim: int, margin: float) -> tuple[tuple, tuple]:
    entry = stats.get(key)
    try:
        lo = np.asarray(entry["min"], np.float64).reshape(-1)
        hi = np.asarray(entry["max"], np.float64).reshape(-1)
    except (TypeError, KeyError, ValueError):
        raise DatasetError(f"{src / STATS_PATH}: no min/max statistics of {key!r} to draft its limits from") from None
    if lo.shape != (dim,) or hi.shape != (dim,) or not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi))):
        raise DatasetError(f"{src / STATS_PATH}: min/max of {key!r} must be {dim} finite numbers each")
    span = hi - lo
    pad = np.where(span > 0, margin * span, np.maximum(margin * np.abs(hi), 1.0))
    return tuple(float(x) for x in lo - pad), tuple(float(x) for x in hi + pad)


def _spec_name(robot_type: Any, src: Path) -> str:
    raw = str(robot_type) if robot_type else src.resolve().name
    slug = re.sub(r"[^A-Za-z0-9_-]+", "_", raw).strip("_-")
    return slug or "imported"
