"""Demonstrations on disk in the LeRobotDataset v3.0 layout, written atomically.

One dataset holds one embodiment::

    meta/info.json                            schema, fps, path templates (LeRobot)
    meta/stats.json                           global feature stats (LeRobot)
    meta/tasks.parquet                        task string (pandas index) -> task_index
    meta/episodes/chunk-000/file-000.parquet  per-episode ranges, file indices, stats
    data/chunk-000/file-000.parquet           frames, one row group per episode
    videos/observation.images.<camera>/chunk-000/file-000.mp4
                                              one camera, every episode of a file back to back
    meta/genba.json                           genba only: spec, en/ja instructions, report

Every LeRobot file mirrors, column by column and key by key, what LeRobot
0.4.4's own writer produces (``tests/data/fixtures/lerobot-v3-sample``; the
schema test compares them). genba's extras live only in ``meta/genba.json``,
which LeRobot never reads. ``fps`` is an int in LeRobot, so it is the rounded
control rate and timestamps are ``frame_index / fps``; the exact control period
is in ``genba.json``.

Writing goes into a hidden temporary directory beside the target that is
renamed into place at the end, so an interrupted write never leaves a dataset
that looks complete. :func:`genba.data.dataset.open_dataset` validates everything it reads and
names the offending file; every parquet read goes through one ``read_table``
hook so the governance layer can authorize, audit and decrypt it.

Cameras (``spec.cameras``): each ``Episode.images[camera]`` is ``(T, H, W, 3)``
uint8 and goes to the feature ``observation.images.<camera>`` of dtype
``video``: an MP4 per (chunk, file) (:mod:`genba.data.video` says which codec
and why), a new file once the current one passes ``video_files_size_in_mb``,
the feature's ``info`` block in ``info.json``, per-episode
``videos/<key>/{chunk_index, file_index, from_timestamp, to_timestamp}`` in
the episodes parquet and per-channel image stats (shape 3x1x1, in [0, 1],
over LeRobot's sampled frames) in both stats places, as LeRobot 0.4.4 writes
them (``tests/data/fixtures/lerobot-v3-video-sample``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from genba.data import stats as S
from genba.data.spec import EmbodimentSpec

if TYPE_CHECKING:
    from genba.data.video import VideoConfig

CODEBASE_VERSION = "v3.0"
DEFAULT_CHUNKS_SIZE = 1000  # files per chunk directory (LeRobot's default)
DEFAULT_DATA_FILE_SIZE_MB = 100
DEFAULT_VIDEO_FILE_SIZE_MB = 200  # LeRobot 0.4.4's default
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
EPISODES_PATH = "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
INFO_PATH, STATS_PATH, TASKS_PATH, GENBA_PATH = (
    "meta/info.json", "meta/stats.json", "meta/tasks.parquet", "meta/genba.json")
STATE, ACTION = "observation.state", "action"
#: LeRobot's default per-frame features, in its order.
INDEX_FEATURES: tuple[tuple[str, str], ...] = (
    ("timestamp", "float32"), ("frame_index", "int64"), ("episode_index", "int64"),
    ("index", "int64"), ("task_index", "int64"))
GENBA_FORMAT_VERSION = 1
_GENBA_KEYS = ("format_version", "embodiment", "spec", "control_period", "fps_exact", "tasks", "episodes")
# pandas metadata of tasks.parquet, as pandas writes it (LeRobot reads the task
# string back as the DataFrame index). genba writes it without needing pandas.
_PANDAS_VERSION = "2.2.3"
_ARROW_TYPES = {"float32": pa.float32(), "float64": pa.float64(), "int64": pa.int64(),
                "int32": pa.int32(), "bool": pa.bool_()}

ReadTable = Callable[[Path], pa.Table]


class DatasetError(ValueError):
    """A dataset (or writer input) that is incomplete, inconsistent or malformed."""


@dataclass(frozen=True)
class Episode:
    """One demonstration: ``observation`` (T, obs_dim), ``action`` (T, act_dim).

    ``images[camera]`` is (T, H, W, 3) uint8 RGB for every camera of the spec
    (frame ``t`` is what the camera saw with ``observation[t]``); empty for a
    camera-less machine.
    """

    observation: np.ndarray
    action: np.ndarray
    task_index: int
    seed: int | None = None
    images: Mapping[str, np.ndarray] = field(default_factory=dict)


@dataclass(frozen=True)
class EpisodeRange:
    """Where one episode's frames are: rows ``start:stop`` of the dataset."""

    episode_index: int
    start: int
    stop: int
    task_index: int
    seed: int | None = None

    @property
    def length(self) -> int:
        return self.stop - self.start


# =============================================================================
# writing
# =============================================================================
def write_dataset(root: str | os.PathLike, episodes: Iterable[Episode], spec: EmbodimentSpec,
                  tasks: Sequence[Any], *, extra: Mapping[str, Any] | None = None,
                  overwrite: bool = False, chunks_size: int = DEFAULT_CHUNKS_SIZE,
                  data_files_size_in_mb: float = DEFAULT_DATA_FILE_SIZE_MB,
                  video: VideoConfig | None = None,
                  video_files_size_in_mb: float = DEFAULT_VIDEO_FILE_SIZE_MB) -> Path:
    """Write ``episodes`` of one embodiment as a LeRobot v3 dataset at ``root``.

    ``tasks[i]`` describes task index ``i``: a mapping with ``en``/``ja`` (and
    optionally ``id``), an object with ``instruction_en``/``instruction_ja``/``id``
    (a registry ``Task``), or an ``(en, ja)`` pair. The English instruction is
    LeRobot's task string. ``extra`` (JSON-able, e.g. ``{"collection": report}``)
    is merged into ``meta/genba.json``. An existing ``root`` is refused unless
    ``overwrite``. Atomic: nothing appears at ``root`` until all is written.
    Each camera of ``spec.cameras`` is encoded with ``video`` (default
    :data:`genba.data.video.DEFAULT_VIDEO`) from the episodes' ``images``.
    """
    root = Path(root)
    _refuse_existing(root, overwrite)
    task_list = _normalize_tasks(tasks)
    eps = [_check_episode(i, ep, spec, len(task_list)) for i, ep in enumerate(episodes)]
    if not eps:
        raise DatasetError(f"write_dataset({root}): no episodes to write")
    if chunks_size < 1 or data_files_size_in_mb <= 0 or video_files_size_in_mb <= 0:
        raise DatasetError(f"write_dataset({root}): chunks_size and the file sizes must be > 0")
    extra = dict(extra or {})
    clash = sorted(set(extra) & set(_GENBA_KEYS))
    if clash:
        raise DatasetError(f"write_dataset({root}): extra keys {clash} are reserved in meta/genba.json")
    try:
        json.dumps(extra)
    except (TypeError, ValueError) as e:
        raise DatasetError(f"write_dataset({root}): extra must be JSON-serializable: {e}") from None
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    try:
        sizes = (data_files_size_in_mb * 2**20, video_files_size_in_mb * 2**20)
        from genba.data.video import DEFAULT_VIDEO

        _write_tree(tmp, eps, spec, task_list, extra, chunks_size, sizes, video or DEFAULT_VIDEO)
        _commit(tmp, root, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root


def _refuse_existing(root: Path, overwrite: bool) -> None:
    if root.exists() and not overwrite:
        raise FileExistsError(f"dataset {root} already exists (pass overwrite=True to replace it)")
    if root.exists() and not root.is_dir():
        raise DatasetError(f"dataset path {root} exists and is not a directory")


def _commit(tmp: Path, root: Path, overwrite: bool) -> None:
    """Rename the finished tree into place; an old dataset goes only after."""
    if not root.exists():
        os.replace(tmp, root)
        return
    _refuse_existing(root, overwrite)
    old = Path(tempfile.mkdtemp(prefix=f".{root.name}.old-", dir=root.parent))
    os.replace(root, old / "d")
    try:
        os.replace(tmp, root)
    except BaseException:
        os.replace(old / "d", root)  # put the previous dataset back
        raise
    shutil.rmtree(old, ignore_errors=True)


def _normalize_tasks(tasks: Sequence[Any]) -> list[dict[str, Any]]:
    out = []
    for i, t in enumerate(tasks):
        if isinstance(t, Mapping):
            en, ja, tid = t.get("en"), t.get("ja"), t.get("id")
        elif hasattr(t, "instruction_en"):
            en, ja, tid = t.instruction_en, getattr(t, "instruction_ja", None), getattr(t, "id", None)
        elif isinstance(t, (tuple, list)) and len(t) == 2:
            (en, ja), tid = t, None
        else:
            raise DatasetError(f"task {i}: expected {{'en','ja'}}, a Task or an (en, ja) pair, got {t!r}")
        if not isinstance(en, str) or not en.strip() or not isinstance(ja, str) or not ja.strip():
            raise DatasetError(f"task {i}: instructions in 'en' and 'ja' must be non-empty strings")
        out.append({"task_index": i, "id": tid, "en": en, "ja": ja})
    if not out:
        raise DatasetError("write_dataset: at least one task is needed")
    seen: dict[str, int] = {}
    for t in out:  # LeRobot keys tasks by their string: they must be unique
        if t["en"] in seen:
            raise DatasetError(f"tasks {seen[t['en']]} and {t['task_index']} share the English "
                               f"instruction {t['en']!r}; LeRobot needs unique task strings")
        seen[t["en"]] = t["task_index"]
    return out


def _check_episode(i: int, ep: Episode, spec: EmbodimentSpec, n_tasks: int) -> Episode:
    obs = np.asarray(ep.observation, dtype=np.float32)
    act = np.asarray(ep.action, dtype=np.float32)
    if obs.ndim != 2 or obs.shape[1] != spec.obs_dim or obs.shape[0] == 0:
        raise DatasetError(f"episode {i}: observation shape {obs.shape}, expected (T>0, {spec.obs_dim}) "
                           f"for embodiment {spec.name!r}")
    if act.shape != (obs.shape[0], spec.action_dim):
        raise DatasetError(f"episode {i}: action shape {act.shape}, expected ({obs.shape[0]}, {spec.action_dim})")
    for name, x in (("observation", obs), ("action", act)):
        if not np.all(np.isfinite(x)):
            raise DatasetError(f"episode {i}: {name} holds NaN or infinite values")
    if not (isinstance(ep.task_index, (int, np.integer)) and 0 <= ep.task_index < n_tasks):
        raise DatasetError(f"episode {i}: task_index {ep.task_index!r} outside the {n_tasks} tasks given")
    seed = None if ep.seed is None else int(ep.seed)
    return Episode(obs, act, int(ep.task_index), seed, _check_images(i, ep, spec, len(obs)))


def _check_images(i: int, ep: Episode, spec: EmbodimentSpec, t: int) -> dict[str, np.ndarray]:
    images = dict(ep.images or {})
    names = [c.name for c in spec.cameras]
    stray = sorted(set(images) - set(names))
    if stray:
        raise DatasetError(f"episode {i}: images of cameras {stray} that the spec {spec.name!r} does not have "
                           f"(its cameras: {names})")
    for cam in spec.cameras:
        if cam.name not in images:
            raise DatasetError(f"episode {i}: no images of camera {cam.name!r} (spec {spec.name!r})")
        x = np.asarray(images[cam.name])
        if x.dtype != np.uint8 or x.shape != (t, *cam.shape):
            raise DatasetError(f"episode {i}: camera {cam.name!r} images are {x.dtype}{list(x.shape)}, expected "
                               f"uint8{[t, *cam.shape]} (one RGB frame per step)")
        images[cam.name] = x
    return images


def _features(spec: EmbodimentSpec, cfg: VideoConfig | None = None) -> dict[str, dict[str, Any]]:
    """``info.json`` features in LeRobot's order: state, cameras (``cfg`` given), action, index columns."""
    from genba.data.video_layout import video_feature

    feats = {STATE: {"dtype": "float32", "shape": [spec.obs_dim], "names": list(spec.obs_names)}}
    for cam in spec.cameras if cfg is not None else ():
        feats[cam.feature] = video_feature(cam, lerobot_fps(spec), cfg)
    feats[ACTION] = {"dtype": "float32", "shape": [spec.action_dim], "names": list(spec.action_names)}
    for name, dtype in INDEX_FEATURES:
        feats[name] = {"dtype": dtype, "shape": [1], "names": None}
    return feats


def feature_names(ft: Mapping[str, Any]) -> list[str] | None:
    """A feature's per-entry names from ``info.json``, or None where it has none.

    LeRobot writes a list; datasets converted from v2.1 often hold ``{"motors": [...]}``
    (one list under one key), which is read the same way.
    """
    names = ft.get("names")
    if isinstance(names, Mapping) and len(names) == 1:
        names = next(iter(names.values()))
    if isinstance(names, (list, tuple)) and all(isinstance(n, str) for n in names):
        return list(names)
    return None


def lerobot_fps(spec: EmbodimentSpec) -> int:
    """LeRobot's integer fps for a spec (the exact period goes to genba.json)."""
    return max(1, round(spec.fps))


def _episode_columns(ep: Episode, ep_index: int, start: int, fps: int) -> dict[str, np.ndarray]:
    t = len(ep.observation)
    frame = np.arange(t, dtype=np.int64)
    return {STATE: ep.observation, ACTION: ep.action,
            "timestamp": (frame / fps).astype(np.float32), "frame_index": frame,
            "episode_index": np.full(t, ep_index, np.int64), "index": start + frame,
            "task_index": np.full(t, ep.task_index, np.int64)}


def _data_schema(features: Mapping[str, Mapping[str, Any]], fingerprint: str) -> pa.Schema:
    fields, hf = [], {}
    for name, ft in features.items():
        scalar = _ARROW_TYPES[ft["dtype"]]
        if ft["shape"] == [1]:
            fields.append(pa.field(name, scalar))
            hf[name] = {"dtype": ft["dtype"], "_type": "Value"}
        else:
            fields.append(pa.field(name, pa.list_(scalar, ft["shape"][0])))
            hf[name] = {"feature": {"dtype": ft["dtype"], "_type": "Value"},
                        "length": ft["shape"][0], "_type": "List"}
    # Hugging Face `datasets` reads the feature types back from this metadata.
    meta = {"huggingface": json.dumps({"info": {"features": hf}, "fingerprint": fingerprint})}
    return pa.schema(fields, metadata=meta)


def _fingerprint(cols: Sequence[Mapping[str, np.ndarray]]) -> str:
    """16 hex digits naming the content, like the `datasets` fingerprint LeRobot's files carry."""
    h = hashlib.sha256()
    for c in cols:
        for k in (STATE, ACTION, "task_index"):
            h.update(np.ascontiguousarray(c[k]).tobytes())
    return h.hexdigest()[:16]


def _to_table(cols: Mapping[str, np.ndarray], schema: pa.Schema) -> pa.Table:
    arrays = []
    for f in schema:
        x = cols[f.name]
        if pa.types.is_fixed_size_list(f.type):
            flat = pa.array(np.ascontiguousarray(x).reshape(-1), type=f.type.value_type)
            arrays.append(pa.FixedSizeListArray.from_arrays(flat, f.type.list_size))
        else:  # shape [1] features are scalar columns in LeRobot's layout, even an action of one axis
            arrays.append(pa.array(np.ascontiguousarray(x).reshape(len(x)), type=f.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def _assign_files(sizes: Sequence[int], limit: float, chunks_size: int) -> list[tuple[int, int]]:
    """(chunk, file) per item: a new file starts when the current one would pass ``limit``."""
    out, chunk, file, used = [], 0, 0, 0
    for size in sizes:
        if used > 0 and used + size > limit:
            chunk, file = (chunk + 1, 0) if file == chunks_size - 1 else (chunk, file + 1)
            used = 0
        out.append((chunk, file))
        used += size
    return out


def _write_grouped(root: Path, template: str, tables: Sequence[pa.Table],
                   where: Sequence[tuple[int, int]]) -> None:
    """Write tables in order, one row group each, into the files ``where`` names."""
    writer, current = None, None
    try:
        for table, loc in zip(tables, where):
            if loc != current:
                if writer is not None:
                    writer.close()
                path = root / template.format(chunk_index=loc[0], file_index=loc[1])
                path.parent.mkdir(parents=True, exist_ok=True)
                writer, current = pq.ParquetWriter(path, table.schema), loc
            writer.write_table(table)
    finally:
        if writer is not None:
            writer.close()


def _write_tree(root: Path, eps: list[Episode], spec: EmbodimentSpec, tasks: list[dict],
                extra: dict, chunks_size: int, sizes: tuple[float, float], cfg: VideoConfig) -> None:
    from genba.data import video_layout as VL

    limit_bytes, video_bytes = sizes
    features, fps = _features(spec, cfg), lerobot_fps(spec)
    columns = {k: ft for k, ft in features.items() if ft["dtype"] != "video"}  # the data parquet's
    starts = np.concatenate([[0], np.cumsum([len(e.observation) for e in eps])]).astype(np.int64)
    cols = [_episode_columns(e, i, int(starts[i]), fps) for i, e in enumerate(eps)]
    schema = _data_schema(columns, _fingerprint(cols))
    tables = [_to_table(c, schema) for c in cols]
    where = _assign_files([t.nbytes for t in tables], limit_bytes, chunks_size)
    _write_grouped(root, DATA_PATH, tables, where)

    ep_stats = [S.compute_stats(c) for c in cols]
    all_cols = {k: np.concatenate([c[k] for c in cols]) for k in columns}
    global_stats = S.compute_stats(all_cols)
    videos: dict[str, list] = {}
    for cam in spec.cameras:
        videos.update(VL.write_videos(root, cam, [e.images[cam.name] for e in eps], fps, cfg, chunks_size,
                                      video_bytes, VIDEO_PATH))
        per_ep = [VL.image_stats(e.images[cam.name]) for e in eps]
        for st, im in zip(ep_stats, per_ep):
            st[cam.feature] = im
        # LeRobot's aggregation (count-weighted; quantiles approximate), on (3,) then shaped 3x1x1
        global_stats[cam.feature] = VL.as_image_stats(S.aggregate_stats([{"i": p} for p in per_ep])["i"])
    ordered = [k for k in features if k in global_stats]
    _write_episodes_meta(root, eps, tasks, starts, where, ep_stats, {k: features[k] for k in ordered},
                         chunks_size, limit_bytes, videos)
    _write_tasks(root, tasks)
    _write_json(root / STATS_PATH, S.stats_to_json({k: global_stats[k] for k in ordered}))
    genba = {"format_version": GENBA_FORMAT_VERSION, "embodiment": spec.name, "spec": spec.to_dict(),
             "control_period": spec.control_period, "fps_exact": spec.fps,
             "tasks": tasks, "episodes": [{"episode_index": i, "task_index": e.task_index, "seed": e.seed}
                                          for i, e in enumerate(eps)], **extra}
    _write_json(root / GENBA_PATH, genba)
    info = {"codebase_version": CODEBASE_VERSION, "robot_type": spec.robot_type,
            "total_episodes": len(eps), "total_frames": int(starts[-1]), "total_tasks": len(tasks),
            "chunks_size": chunks_size, "data_files_size_in_mb": round(limit_bytes / 2**20, 6),
            "video_files_size_in_mb": round(video_bytes / 2**20, 6), "fps": fps,
            "splits": {"train": f"0:{len(eps)}"}, "data_path": DATA_PATH,
            "video_path": VIDEO_PATH if spec.cameras else None,
            "features": features}
    for key in ("data_files_size_in_mb", "video_files_size_in_mb"):
        if float(info[key]).is_integer():
            info[key] = int(info[key])
    _write_json(root / INFO_PATH, info)  # last: its presence marks completion


def _episodes_schema(features: Mapping[str, Mapping[str, Any]], videos: Sequence[str] = ()) -> pa.Schema:
    from genba.data import video_layout as VL

    i64 = pa.int64()
    fields = [pa.field("episode_index", i64), pa.field("tasks", pa.list_(pa.string())),
              pa.field("length", i64), pa.field("data/chunk_index", i64), pa.field("data/file_index", i64),
              pa.field("dataset_from_index", i64), pa.field("dataset_to_index", i64)]
    fields += [pa.field(c, pa.float64() if c.endswith("timestamp") else i64) for c in videos]
    for name, ft in features.items():
        is_int = ft["dtype"].startswith("int")
        if ft["dtype"] == "video":
            fields += [pa.field(f"stats/{name}/{key}", VL.stats_field_type(key)) for key in S.STAT_KEYS]
            continue
        for key in S.STAT_KEYS:
            integer = key == "count" or (is_int and key in ("min", "max"))
            fields.append(pa.field(f"stats/{name}/{key}", pa.list_(i64 if integer else pa.float64())))
    fields += [pa.field("meta/episodes/chunk_index", i64), pa.field("meta/episodes/file_index", i64)]
    return pa.schema(fields)


def _write_episodes_meta(root: Path, eps: list[Episode], tasks: list[dict], starts: np.ndarray,
                         where: Sequence[tuple[int, int]], ep_stats: list[S.Stats],
                         features: Mapping[str, Any], chunks_size: int, limit_bytes: float,
                         videos: Mapping[str, list]) -> None:
    """One row per episode, built column-wise (fast for thousands of episodes)."""
    from genba.data import video_layout as VL

    schema = _episodes_schema(features, list(videos))
    n = len(eps)
    # Size each row by its stats payload so huge datasets still split files.
    row_bytes = 64 + 8 * sum(np.size(v) for st in ep_stats[:1] for f in st.values() for v in f.values())
    meta_where = _assign_files([row_bytes] * n, limit_bytes, chunks_size)
    cols: dict[str, pa.Array] = {
        "episode_index": pa.array(np.arange(n, dtype=np.int64)),
        "tasks": pa.array([[tasks[e.task_index]["en"]] for e in eps], type=pa.list_(pa.string())),
        "length": pa.array(np.diff(starts)),
        "data/chunk_index": pa.array([w[0] for w in where], type=pa.int64()),
        "data/file_index": pa.array([w[1] for w in where], type=pa.int64()),
        "dataset_from_index": pa.array(starts[:-1]), "dataset_to_index": pa.array(starts[1:]),
        "meta/episodes/chunk_index": pa.array([w[0] for w in meta_where], type=pa.int64()),
        "meta/episodes/file_index": pa.array([w[1] for w in meta_where], type=pa.int64()),
        **VL.video_column_arrays(videos),
    }
    for name in features:
        if features[name]["dtype"] == "video":
            cols.update({f"stats/{name}/{key}": VL.stats_column([st[name] for st in ep_stats], key)
                         for key in S.STAT_KEYS})
            continue
        for key in S.STAT_KEYS:
            field = schema.field(f"stats/{name}/{key}")
            rows = [np.atleast_1d(st[name][key]) for st in ep_stats]
            offsets = np.concatenate([[0], np.cumsum([len(r) for r in rows])]).astype(np.int32)
            values = pa.array(np.concatenate(rows), type=field.type.value_type)
            cols[field.name] = pa.ListArray.from_arrays(pa.array(offsets), values)
    table = pa.Table.from_arrays([cols[f.name] for f in schema], schema=schema)
    bounds = np.flatnonzero(np.diff([c * chunks_size + f for c, f in meta_where])) + 1
    pieces = np.split(np.arange(n), bounds)
    _write_grouped(root, EPISODES_PATH, [table.slice(p[0], len(p)) for p in pieces],
                   [meta_where[p[0]] for p in pieces])


def _write_tasks(root: Path, tasks: list[dict]) -> None:
    idx_col = "__index_level_0__"
    meta = {"index_columns": [idx_col],
            "column_indexes": [{"name": None, "field_name": None, "pandas_type": "unicode",
                                "numpy_type": "str", "metadata": {"encoding": "UTF-8"}}],
            "columns": [{"name": "task_index", "field_name": "task_index", "pandas_type": "int64",
                         "numpy_type": "int64", "metadata": None},
                        {"name": None, "field_name": idx_col, "pandas_type": "object",
                         "numpy_type": "str", "metadata": None}],
            "attributes": {}, "creator": {"library": "pyarrow", "version": pa.__version__},
            "pandas_version": _PANDAS_VERSION}
    schema = pa.schema([pa.field("task_index", pa.int64()), pa.field(idx_col, pa.large_string())],
                       metadata={"pandas": json.dumps(meta)})
    table = pa.table({"task_index": [t["task_index"] for t in tasks], idx_col: [t["en"] for t in tasks]},
                     schema=schema)
    pq.write_table(table, root / TASKS_PATH)


def _write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=4, ensure_ascii=False), encoding="utf-8")
