"""Open a LeRobot v3 dataset written by genba, validating everything it reads.

Refused, each with an error naming the file (and feature) at fault:
a missing ``meta/info.json`` (an interrupted or foreign write), unparseable
JSON, missing or unlisted data files, unreadable (truncated, corrupted) parquet,
columns, dtypes or shapes that differ from ``info.json``'s features, nulls,
episode ranges that disagree with the episodes parquet or the frames, task
indices outside ``tasks.parquet``, a ``genba.json`` spec whose dimensions
or names differ from the features, an ``fps`` that disagrees with the spec's
control period, and values no machine records: NaN or infinite in any float
feature, or state and action values beyond the spec's plausible range
(:func:`genba.data.spec.plausible_bounds`: ten limit spans outside a finite
limit, 1e6 where the limit is infinite). A value error names the file, the
episode and frame, and the column (feature, index and name). The checks are
vectorized over the frames already in memory; they run on the governed
(decrypted) path too, since they see what ``read_table`` returned.

Cameras: every camera of the spec is a ``video`` feature (LeRobot's camera
streams, MP4 under ``videos/``, not in the data parquet). At open time, before
any training, each of its files is read, decoded once into the frame cache
(:mod:`genba.data.frame_cache`) and refused, naming the file, when it is
missing, truncated or unreadable, holds a frame count other than the parquet
rows of its episodes, or frames of another size than the spec's; a camera the
spec names but ``info.json`` or the episodes parquet lack is refused too.
``Dataset.images[camera]`` is a :class:`~genba.data.frame_cache.FrameStore`
row-aligned with ``observation``. Video features the spec does not name (a
LeRobot dataset imported state-only) are listed in ``info.json`` and ignored.

Two hooks, so the governance layer can authorize, audit and decrypt every file:

- ``read_table(path) -> pyarrow.Table``: every parquet read (data, episodes, tasks);
- ``read_bytes(path) -> bytes``: every video read (default ``Path.read_bytes``).
  The governed opener returns the decrypted MP4 from memory and passes
  ``cache_dir=None`` so decoded frames stay in memory too, never on disk in
  the clear. ``PermissionError`` from either hook passes through unchanged (a
  refusal is not corruption); ``OSError`` becomes a :class:`DatasetError`.

Datasets here are small, so all state/action frames are loaded once into numpy
arrays; camera frames are memory-mapped from the cache (``cache_dir``, default
``$GENBA_CACHE/frames`` or ``<dataset>/.cache/frames``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from genba.data import stats as S
from genba.data import video_layout as VL
from genba.data.frame_cache import FrameCache, FrameStore, default_cache_dir
from genba.data.language import LANGS
from genba.data.layout import (
    _ARROW_TYPES,
    _GENBA_KEYS,
    ACTION,
    CODEBASE_VERSION,
    EPISODES_PATH,
    GENBA_PATH,
    INFO_PATH,
    STATE,
    STATS_PATH,
    TASKS_PATH,
    DatasetError,
    EpisodeRange,
    feature_names,
)
from genba.data.spec import PLAUSIBLE_SPANS, EmbodimentSpec, SpecError, fps_mismatch, plausible_bounds

ReadTable = Callable[[Path], pa.Table]
ReadBytes = Callable[[Path], bytes]
_INFO_KEYS = ("codebase_version", "robot_type", "total_episodes", "total_frames", "total_tasks",
              "chunks_size", "fps", "data_path", "features")


@dataclass
class Dataset:
    """A validated dataset of one embodiment, all frames in memory.

    ``observation`` (N, obs_dim) float32, ``action`` (N, act_dim) float32,
    ``episode_index``/``frame_index``/``task_index``/``index`` (N,) int64,
    ``timestamp`` (N,) float32. ``tasks[i] = {"task_index", "id", "en", "ja"}``.
    ``stats[feature][key]`` are numpy arrays; ``genba`` is ``meta/genba.json``.
    ``images[camera]`` gathers (…, H, W, 3) uint8 frames by row (``.take(rows)``);
    empty for a camera-less machine. ``videos`` are the video files read.
    """

    root: Path
    info: dict
    genba: dict
    spec: EmbodimentSpec
    stats: S.Stats
    tasks: list[dict]
    episodes: list[EpisodeRange]
    observation: np.ndarray
    action: np.ndarray
    episode_index: np.ndarray
    frame_index: np.ndarray
    task_index: np.ndarray
    index: np.ndarray
    timestamp: np.ndarray
    files: list[Path] = field(default_factory=list)
    images: dict[str, FrameStore] = field(default_factory=dict)
    videos: list[Path] = field(default_factory=list)

    @property
    def embodiment(self) -> str:
        return self.spec.name

    @property
    def num_frames(self) -> int:
        return len(self.observation)

    @property
    def num_episodes(self) -> int:
        return len(self.episodes)

    @property
    def extra(self) -> dict:
        """What the writer passed as ``extra`` (e.g. the collection report)."""
        return {k: v for k, v in self.genba.items() if k not in _GENBA_KEYS}

    def instruction(self, task_index: int, lang: str = "en") -> str:
        if lang not in LANGS:
            raise ValueError(f"instruction language {lang!r}: expected {' or '.join(map(repr, LANGS))}")
        return self.tasks[task_index][lang]


#: What the error for a missing ``meta/genba.json`` suggests (a plain or LeRobot-edited dataset).
IMPORT_HINT = ("it holds the embodiment spec genba needs; a plain LeRobot v3 dataset (or a genba dataset "
               "edited by LeRobot's tools, which drop this file) becomes trainable with `genba data "
               "import-lerobot DIR --spec SPEC.json --out NEW_DIR` (`genba data draft-spec DIR` drafts SPEC.json)")


def open_dataset(root: str | os.PathLike, read_table: ReadTable | None = None, *,
                 genba: dict | None = None, read_bytes: ReadBytes | None = None,
                 cache_dir: str | os.PathLike | None = "auto") -> Dataset:
    """Open the dataset at ``root``, validating it against its ``info.json``.

    ``genba`` stands in for ``meta/genba.json`` (the importer validates a
    dataset with the file it is about to write). ``read_table``/``read_bytes``
    read the parquet/video files (see the module docstring); ``cache_dir`` is
    where decoded frames are kept (``"auto"``: :func:`default_cache_dir`;
    ``None``: in memory only).
    """
    root = Path(root)
    reader = _Reader(read_table or pq.read_table)
    if not root.is_dir():
        raise DatasetError(f"dataset {root} does not exist or is not a directory")
    info = load_json(root, INFO_PATH, missing="the dataset is incomplete (an interrupted write?) "
                                               "or not a LeRobot v3 dataset")
    check_info(root, info)
    genba = load_json(root, GENBA_PATH, missing=IMPORT_HINT) if genba is None else genba
    spec = _load_spec(root, genba)
    check_rate(root, info, spec)
    features = {k: ft for k, ft in info["features"].items() if ft["dtype"] != "video"}
    check_spec_features(root, spec, features)
    VL.check_video_info(root / INFO_PATH, info, spec)
    tasks = _load_tasks(root, reader, genba, info)
    eps_table = _load_episodes(root, reader, info, spec)
    files = _data_files(root, info, eps_table)
    cols = _load_frames(root, reader, files, features)
    rows_per_file = cols["_rows_per_file"]
    episodes = _check_ranges(root, info, eps_table, files, cols, tasks, genba)
    _check_values(files, rows_per_file, cols, features, spec)
    stats = _load_stats(root, spec)
    cache = FrameCache(default_cache_dir(root) if cache_dir == "auto" else cache_dir)
    images, videos = {}, []
    for cam in spec.cameras:
        images[cam.name], paths = VL.load_camera(root, info, cam, eps_table, read_bytes or Path.read_bytes, cache)
        videos += paths
    return Dataset(root=root, info=info, genba=genba, spec=spec, stats=stats, tasks=tasks,
                   episodes=episodes, observation=_as_matrix(cols[STATE]), action=_as_matrix(cols[ACTION]),
                   episode_index=cols["episode_index"], frame_index=cols["frame_index"],
                   task_index=cols["task_index"], index=cols["index"], timestamp=cols["timestamp"],
                   files=[p for p, _ in files], images=images, videos=videos)


# ---- files ------------------------------------------------------------------
class _Reader:
    """Calls the hook; turns pyarrow's errors into ones that name the file."""

    def __init__(self, hook: ReadTable):
        self.hook = hook

    def __call__(self, path: Path) -> pa.Table:
        if not path.is_file():
            raise DatasetError(f"{path}: file is missing")
        try:
            table = self.hook(path)
        except PermissionError:
            raise  # a governance refusal is not corruption
        except (pa.ArrowException, OSError) as e:
            raise DatasetError(f"{path}: unreadable parquet file (truncated or corrupted?): {e}") from e
        if not isinstance(table, pa.Table):
            raise DatasetError(f"{path}: read_table hook returned {type(table).__name__}, not a pyarrow.Table")
        return table


def load_json(root: Path, rel: str, missing: str) -> dict:
    path = root / rel
    if not path.is_file():
        raise DatasetError(f"{path}: missing; {missing}")
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path}: not valid JSON: {e}") from None
    if not isinstance(d, dict):
        raise DatasetError(f"{path}: expected a JSON object, got {type(d).__name__}")
    return d


def check_info(root: Path, info: dict) -> None:
    path = root / INFO_PATH
    lacking = [k for k in _INFO_KEYS if k not in info]
    if lacking:
        raise DatasetError(f"{path}: lacks keys {lacking}")
    if info["codebase_version"] != CODEBASE_VERSION:
        raise DatasetError(f"{path}: codebase_version {info['codebase_version']!r}, expected {CODEBASE_VERSION!r}")
    feats = info["features"]
    if not isinstance(feats, dict):
        raise DatasetError(f"{path}: 'features' must be an object")
    for name, ft in feats.items():
        if isinstance(ft, dict) and ft.get("dtype") == "video":
            continue  # a camera stream under videos/: not a parquet column
        if not isinstance(ft, dict) or ft.get("dtype") not in _ARROW_TYPES or not _is_shape(ft.get("shape")):
            raise DatasetError(f"{path}: feature {name!r} needs a 1-D shape and a dtype genba reads "
                               f"({', '.join(_ARROW_TYPES)}, or video), got {ft!r}")
    for name in (STATE, ACTION, "timestamp", "frame_index", "episode_index", "index", "task_index"):
        if name not in feats:
            raise DatasetError(f"{path}: feature {name!r} is missing")


def _is_shape(shape: Any) -> bool:
    return isinstance(shape, list) and len(shape) == 1 and isinstance(shape[0], int) and shape[0] > 0


def _load_spec(root: Path, genba: dict) -> EmbodimentSpec:
    try:
        return EmbodimentSpec.from_dict(genba.get("spec"))
    except SpecError as e:
        raise DatasetError(f"{root / GENBA_PATH}: embodiment spec is invalid: {e}") from None


def check_spec_features(root: Path, spec: EmbodimentSpec, feats: dict) -> None:
    """The spec's dims, dtype and names are those of ``info.json``'s state and action features."""
    for name, dim, names in ((STATE, spec.obs_dim, spec.obs_names), (ACTION, spec.action_dim, spec.action_names)):
        ft = feats[name]
        if ft["shape"] != [dim] or ft["dtype"] != "float32":
            raise DatasetError(f"{root / INFO_PATH}: feature {name!r} is {ft['dtype']}{ft['shape']} but the "
                               f"spec {spec.name!r} needs float32[{dim}]")
        have = feature_names(ft)
        if have is not None and have != list(names):
            i = next(i for i, (a, b) in enumerate(zip(have, names)) if a != b)
            raise DatasetError(f"{root / INFO_PATH}: {name}[{i}] is named {have[i]!r} but the spec {spec.name!r} "
                               f"calls it {names[i]!r}")


def check_rate(root: Path, info: dict, spec: EmbodimentSpec) -> None:
    """``info.json``'s fps against the spec's control period (LeRobot's int fps, genba's exact period)."""
    why = fps_mismatch(info["fps"], spec.control_period)
    if why is not None:
        raise DatasetError(f"{root / INFO_PATH}: {why} (spec {spec.name!r}); one of them was edited or the "
                           "spec is not this dataset's")


def _load_tasks(root: Path, reader: _Reader, genba: dict, info: dict) -> list[dict]:
    path = root / TASKS_PATH
    t = reader(path)
    strings = next((c for c in ("__index_level_0__", "task") if c in t.column_names), None)
    if "task_index" not in t.column_names or strings is None:
        raise DatasetError(f"{path}: needs columns 'task_index' and the task string, has {t.column_names}")
    idx, text = t.column("task_index").to_pylist(), t.column(strings).to_pylist()
    if sorted(idx) != list(range(len(idx))) or len(idx) != info["total_tasks"]:
        raise DatasetError(f"{path}: task_index must be 0..{info['total_tasks'] - 1}, got {sorted(idx)}")
    meta = genba.get("tasks")
    if not isinstance(meta, list) or len(meta) != len(idx):
        raise DatasetError(f"{root / GENBA_PATH}: 'tasks' must list the {len(idx)} tasks of {TASKS_PATH}")
    by_index = dict(zip(idx, text))
    out = []
    for i in range(len(idx)):
        m = meta[i]
        if not isinstance(m, dict) or m.get("task_index") != i or m.get("en") != by_index[i] or not m.get("ja"):
            raise DatasetError(f"{root / GENBA_PATH}: task {i} disagrees with {TASKS_PATH} "
                               f"({by_index[i]!r}) or lacks a Japanese instruction")
        out.append({"task_index": i, "id": m.get("id"), "en": m["en"], "ja": m["ja"]})
    return out


def _load_episodes(root: Path, reader: _Reader, info: dict, spec: EmbodimentSpec) -> dict[str, np.ndarray]:
    paths = sorted((root / "meta" / "episodes").glob("chunk-*/file-*.parquet"))
    if not paths:
        raise DatasetError(f"{root / 'meta/episodes'}: no episodes parquet "
                           f"(expected {EPISODES_PATH.format(chunk_index=0, file_index=0)})")
    need = ("episode_index", "length", "data/chunk_index", "data/file_index",
            "dataset_from_index", "dataset_to_index")
    parts = []
    for p in paths:
        t = reader(p)
        lacking = [c for c in need if c not in t.column_names]
        if lacking:
            raise DatasetError(f"{p}: lacks columns {lacking}")
        for c in need:
            if t.column(c).null_count or not pa.types.is_integer(t.schema.field(c).type):
                raise DatasetError(f"{p}: column {c!r} must be integers without nulls")
        parts.append({**{c: np.asarray(t.column(c).to_numpy(), dtype=np.int64) for c in need},
                      **VL.episode_video_columns(p, t, spec)})
    eps = {c: np.concatenate([p[c] for p in parts]) for c in parts[0]}
    order = np.argsort(eps["episode_index"], kind="stable")
    eps = {c: v[order] for c, v in eps.items()}
    n = info["total_episodes"]
    if not isinstance(n, int) or n < 1:
        raise DatasetError(f"{root / INFO_PATH}: total_episodes must be a positive integer, got {n!r}")
    if not np.array_equal(eps["episode_index"], np.arange(n)):
        raise DatasetError(f"{root / 'meta/episodes'}: episode_index must be 0..{n - 1} once each "
                           f"(info.json total_episodes={n}), found {len(eps['episode_index'])} rows")
    return eps


def _data_files(root: Path, info: dict, eps: dict[str, np.ndarray]) -> list[tuple[Path, tuple[int, int]]]:
    """Data files the episodes reference, in (chunk, file) order; unlisted files are refused."""
    locs = sorted(set(zip(eps["data/chunk_index"].tolist(), eps["data/file_index"].tolist())))
    out = []
    for c, f in locs:
        try:
            rel = info["data_path"].format(chunk_index=c, file_index=f)
        except (KeyError, IndexError, ValueError) as e:
            raise DatasetError(f"{root / INFO_PATH}: bad data_path template {info['data_path']!r}: {e}") from None
        path = root / rel  # the hook sees paths under `root` as given, not resolved
        if root.resolve() not in path.resolve().parents:
            raise DatasetError(f"{root / INFO_PATH}: data_path {rel!r} points outside the dataset")
        if not path.is_file():
            raise DatasetError(f"{path}: data file listed by the episodes parquet is missing")
        out.append((path, (c, f)))
    listed = {p.resolve() for p, _ in out}
    stray = sorted(p for p in (root / "data").rglob("*.parquet") if p.resolve() not in listed)
    if stray:
        raise DatasetError(f"{stray[0]}: data file not referenced by any episode (LeRobot would load it)")
    return out


def _load_frames(root: Path, reader: _Reader, files: list[tuple[Path, Any]],
                 feats: dict) -> dict[str, np.ndarray]:
    parts: dict[str, list[np.ndarray]] = {name: [] for name in feats}
    for path, _ in files:
        table = reader(path)
        _check_columns(path, table, feats)
        for name, ft in feats.items():
            parts[name].append(_column_numpy(path, name, table.column(name), ft))
    cols = {name: np.concatenate(v) for name, v in parts.items()}
    cols["_rows_per_file"] = np.array([len(x) for x in parts["index"]], dtype=np.int64)
    if len(cols["index"]) == 0:
        raise DatasetError(f"{root / 'data'}: the data files hold no frames")
    return cols


def _check_columns(path: Path, table: pa.Table, feats: dict) -> None:
    missing = [n for n in feats if n not in table.column_names]
    if missing:
        raise DatasetError(f"{path}: feature {missing[0]!r} of info.json is not a column of this file")
    extra = [n for n in table.column_names if n not in feats]
    if extra:
        raise DatasetError(f"{path}: column {extra[0]!r} is not a feature in info.json")
    for name, ft in feats.items():
        typ, want, dim = table.schema.field(name).type, _ARROW_TYPES[ft["dtype"]], ft["shape"][0]
        if pa.types.is_fixed_size_list(typ) or pa.types.is_list(typ) or pa.types.is_large_list(typ):
            size = typ.list_size if pa.types.is_fixed_size_list(typ) else None
            ok = typ.value_type == want and dim > 1 and size in (None, dim)
        else:
            ok = typ == want and dim == 1
        if not ok:
            raise DatasetError(f"{path}: feature {name!r} has arrow type {typ}, but info.json "
                               f"says {ft['dtype']} shape {ft['shape']}")


def _check_values(files: list, rows_per_file: np.ndarray, cols: dict[str, np.ndarray], feats: dict,
                  spec: EmbodimentSpec) -> None:
    """No NaN or infinity in any float feature; state and action inside the spec's plausible range."""
    bounds = {STATE: plausible_bounds(spec.obs_low, spec.obs_high),
              ACTION: plausible_bounds(spec.action_low, spec.action_high)}
    for name, ft in feats.items():
        if not ft["dtype"].startswith("float"):
            continue
        x = cols[name].reshape(len(cols[name]), -1)  # (N, D)
        if name in bounds:  # one pass: NaN fails both comparisons, inf fails one
            lo, hi = (b.astype(x.dtype) for b in bounds[name])
            bad = ~((x >= lo) & (x <= hi))
        else:
            bad = ~np.isfinite(x)
        if bad.any():
            raise DatasetError(_bad_value_message(files, rows_per_file, cols, name, ft, x, bad,
                                                  bounds.get(name), spec))


def _bad_value_message(files, rows_per_file, cols, name, ft, x, bad, bounds, spec) -> str:
    row = int(np.flatnonzero(bad.any(axis=1))[0])
    j = int(np.flatnonzero(bad[row])[0])
    path = files[int(np.searchsorted(np.cumsum(rows_per_file), row, side="right"))][0]
    v = float(x[row, j])
    where = f"{path}: episode {int(cols['episode_index'][row])}, frame {int(cols['frame_index'][row])}"
    label = name
    if bounds is not None or x.shape[1] > 1:
        names = feature_names(ft) or list(spec.obs_names if name == STATE else spec.action_names)
        label = f"{name}[{j}] ({names[j]!r})" if j < len(names) else f"{name}[{j}]"
    n = int(bad.sum())
    more = f" ({n} such values in {name})" if n > 1 else ""
    if not np.isfinite(v):
        return f"{where}: {label} is {_fmt(v)}{more}; fix or drop the episode before training"
    lo, hi = float(bounds[0][j]), float(bounds[1][j])
    low, high = (spec.obs_low, spec.obs_high) if name == STATE else (spec.action_low, spec.action_high)
    return (f"{where}: {label} is {_fmt(v)}, outside the plausible range [{_fmt(lo)}, {_fmt(hi)}] (the spec "
            f"{spec.name!r} limits it to [{_fmt(low[j])}, {_fmt(high[j])}]; values more than {PLAUSIBLE_SPANS:g} "
            f"limit spans beyond are refused as corrupt or in the wrong units){more}")


def _fmt(v: float) -> str:
    return "NaN" if np.isnan(v) else f"{v:g}"


def _as_matrix(x: np.ndarray) -> np.ndarray:
    """(N,) -> (N, 1): LeRobot stores a one-dimensional feature as a scalar column."""
    return x.reshape(len(x), -1)


def _column_numpy(path: Path, name: str, col: pa.ChunkedArray, ft: dict) -> np.ndarray:
    if col.null_count:
        raise DatasetError(f"{path}: feature {name!r} has {col.null_count} null values")
    dim = ft["shape"][0]
    if dim == 1:
        return np.asarray(col.to_numpy(), dtype=ft["dtype"])
    arr = col.combine_chunks()
    if not pa.types.is_fixed_size_list(arr.type):
        lengths = arr.value_lengths().to_numpy()
        if np.any(lengths != dim):
            raise DatasetError(f"{path}: feature {name!r} has rows of length {int(lengths[lengths != dim][0])}, "
                               f"info.json says shape [{dim}]")
    flat = arr.flatten()
    if flat.null_count:
        raise DatasetError(f"{path}: feature {name!r} has null entries")
    return np.asarray(flat.to_numpy(zero_copy_only=False), dtype=ft["dtype"]).reshape(-1, dim)


def _check_ranges(root: Path, info: dict, eps: dict[str, np.ndarray], files: list,
                  cols: dict[str, np.ndarray], tasks: list[dict], genba: dict) -> list[EpisodeRange]:
    where = root / "meta/episodes"
    n = len(cols["index"])
    if n != info["total_frames"]:
        raise DatasetError(f"{root / INFO_PATH}: total_frames {info['total_frames']} but the data files hold {n}")
    starts, stops, lengths = eps["dataset_from_index"], eps["dataset_to_index"], eps["length"]
    bounds = np.concatenate([[0], stops[:-1]])
    if not (np.array_equal(starts, bounds) and np.array_equal(stops - starts, lengths)
            and stops[-1] == n and np.all(lengths > 0)):
        raise DatasetError(f"{where}: dataset_from_index/dataset_to_index/length are not contiguous "
                           f"ranges covering the {n} frames")
    if not np.array_equal(cols["index"], np.arange(n)):
        raise DatasetError(f"{files[0][0].parent}: column 'index' is not 0..{n - 1} across the data files")
    expect_ep = np.repeat(np.arange(len(starts)), lengths)
    if not np.array_equal(cols["episode_index"], expect_ep):
        bad = int(np.flatnonzero(cols["episode_index"] != expect_ep)[0])
        raise DatasetError(f"{where}: frame {bad} has episode_index {int(cols['episode_index'][bad])}, "
                           f"the episodes parquet puts it in episode {int(expect_ep[bad])}")
    if not np.array_equal(cols["frame_index"], np.arange(n) - np.repeat(starts, lengths)):
        raise DatasetError(f"{files[0][0].parent}: frame_index does not restart at 0 in every episode")
    _check_file_membership(where, eps, files, cols.pop("_rows_per_file"))
    ti = cols["task_index"]
    if ti.min() < 0 or ti.max() >= len(tasks):
        raise DatasetError(f"{files[0][0].parent}: task_index outside 0..{len(tasks) - 1} of {TASKS_PATH}")
    seeds = {e.get("episode_index"): e.get("seed") for e in genba.get("episodes", []) if isinstance(e, dict)}
    return [EpisodeRange(i, int(s), int(t), int(ti[s]), seeds.get(i))
            for i, (s, t) in enumerate(zip(starts.tolist(), stops.tolist()))]


def _check_file_membership(where: Path, eps: dict, files: list, rows_per_file: np.ndarray) -> None:
    """Each episode's rows lie inside the data file its row names."""
    file_start = dict(zip([loc for _, loc in files], np.concatenate([[0], np.cumsum(rows_per_file)])[:-1]))
    file_stop = dict(zip([loc for _, loc in files], np.cumsum(rows_per_file)))
    for i, (c, f, s, t) in enumerate(zip(eps["data/chunk_index"], eps["data/file_index"],
                                         eps["dataset_from_index"], eps["dataset_to_index"])):
        loc = (int(c), int(f))
        if not (file_start[loc] <= s and t <= file_stop[loc]):
            raise DatasetError(f"{where}: episode {i} is listed in data file {loc} but its rows {s}:{t} are not there")


def _load_stats(root: Path, spec: EmbodimentSpec) -> S.Stats:
    raw = load_json(root, STATS_PATH, missing="the dataset has no statistics")
    try:
        stats = S.stats_from_json(raw, source=str(root / STATS_PATH))
        S.check_stats(stats, {STATE: spec.obs_dim, ACTION: spec.action_dim}, source=str(root / STATS_PATH))
    except S.StatsError as e:
        raise DatasetError(str(e)) from None
    VL.check_image_stats(root / STATS_PATH, stats, spec)
    return stats
