"""The camera part of the LeRobot v3 layout: video files, their episode columns, image stats.

Used by :mod:`genba.data.layout` (writing) and :mod:`genba.data.dataset`
(reading: every check names the file; a camera's files are decoded once into
the :class:`~genba.data.frame_cache.FrameCache`). What LeRobot 0.4.4 writes, checked against
``tests/data/fixtures/lerobot-v3-video-sample``:

- ``info.json`` feature ``observation.images.<camera>``: ``dtype "video"``,
  ``shape [H, W, 3]``, ``names ["height", "width", "channels"]`` and an
  ``info`` block (:func:`genba.data.video.info_block`).
- episodes parquet: ``videos/<key>/chunk_index``, ``file_index`` (int64),
  ``from_timestamp``, ``to_timestamp`` (double, seconds into the file), after
  ``dataset_to_index``; image stats ``stats/<key>/<stat>`` as
  ``list<list<list<double>>>`` (3x1x1) and ``count`` as ``list<int64>``.
- stats: per channel over the frames LeRobot samples
  (``compute_stats.sample_indices``: all of a short episode, ~T^0.75 of a
  long one, at most 10,000), divided by 255. genba's quantiles are exact
  (LeRobot's come from a 5,000-bin histogram); keys and shapes are the same.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from genba.data import stats as S
from genba.data.frame_cache import FrameCache, FrameStore
from genba.data.layout import DatasetError
from genba.data.spec import CameraSpec, EmbodimentSpec
from genba.data.video import VideoConfig, VideoWriter, info_block

IMAGE_NAMES = ["height", "width", "channels"]
VIDEO_COLUMNS = ("chunk_index", "file_index", "from_timestamp", "to_timestamp")


def video_feature(cam: CameraSpec, fps: int, cfg: VideoConfig) -> dict[str, Any]:
    return {"dtype": "video", "shape": [cam.height, cam.width, 3], "names": list(IMAGE_NAMES),
            "info": info_block(cfg, cam.height, cam.width, fps)}


def video_columns(key: str) -> list[str]:
    return [f"videos/{key}/{c}" for c in VIDEO_COLUMNS]


# ---- stats ----------------------------------------------------------------------
def sample_indices(n: int) -> np.ndarray:
    """The frames LeRobot 0.4.4 samples for image stats (``compute_stats.sample_indices``)."""
    num = max(min(100, n), min(int(n**0.75), 10_000))
    return np.round(np.linspace(0, n - 1, num)).astype(np.int64)


def image_stats(frames: np.ndarray) -> dict[str, np.ndarray]:
    """Per-channel stats of (T, H, W, 3) uint8 frames, as 1-D arrays of 3 in [0, 1] (count: sampled frames).

    Exact quantiles from a 256-level histogram per channel (numpy's linear method).
    """
    x = frames[sample_indices(len(frames))]  # (S, H, W, 3)
    pix = x.reshape(-1, 3)
    n = len(pix)
    hist = np.stack([np.bincount(pix[:, c], minlength=256) for c in range(3)])  # (3, 256)
    levels = np.arange(256, dtype=np.float64)
    mean = hist @ levels / n
    std = np.sqrt(np.maximum(hist @ levels**2 / n - mean**2, 0.0))
    cum = np.cumsum(hist, axis=1)  # (3, 256): sorted value at position p is the first level with cum > p
    out = {"min": np.array([np.flatnonzero(h)[0] for h in hist], np.float64),
           "max": np.array([np.flatnonzero(h)[-1] for h in hist], np.float64),
           "mean": mean, "std": std, "count": np.array([len(x)], np.int64)}
    for key, q in S.QUANTILES:
        pos = q * (n - 1)
        lo, frac = int(np.floor(pos)), pos - np.floor(pos)
        at = [np.searchsorted(cum[c], [lo, min(lo + 1, n - 1)], side="right") for c in range(3)]
        out[key] = np.array([a[0] + frac * (a[1] - a[0]) for a in at], np.float64)
    return {k: out[k] if k == "count" else out[k] / 255.0 for k in S.STAT_KEYS}


def as_image_stats(stats: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """(3,) stats -> LeRobot's (3, 1, 1) (``count`` stays (1,))."""
    return {k: np.asarray(v) if k == "count" else np.asarray(v, np.float64).reshape(3, 1, 1)
            for k, v in stats.items()}


def stats_field_type(key: str) -> pa.DataType:
    return pa.list_(pa.int64()) if key == "count" else pa.list_(pa.list_(pa.list_(pa.float64())))


def stats_column(rows: Sequence[Mapping[str, np.ndarray]], key: str) -> pa.Array:
    """One ``stats/<image key>/<key>`` column over episodes."""
    vals = [np.asarray(r[key]).tolist() if key == "count" else np.asarray(r[key]).reshape(3, 1, 1).tolist()
            for r in rows]
    return pa.array(vals, type=stats_field_type(key))


# ---- writing ------------------------------------------------------------------------
def write_videos(root: Path, cam: CameraSpec, episodes_frames: Sequence[np.ndarray], fps: int,
                 cfg: VideoConfig, chunks_size: int, limit_bytes: float, template: str) -> dict[str, list]:
    """Encode one camera's episodes into files of at most ~``limit_bytes``; their episode columns.

    A file is closed once it has passed the limit (as LeRobot, which checks the
    size before appending an episode), so every episode lies in one file.
    """
    cols: dict[str, list] = {c: [] for c in video_columns(cam.feature)}
    chunk = file = 0
    writer: VideoWriter | None = None
    try:
        for frames in episodes_frames:
            if writer is not None and writer.size >= limit_bytes:
                writer.close()
                writer = None
                chunk, file = (chunk + 1, 0) if file == chunks_size - 1 else (chunk, file + 1)
            if writer is None:
                path = root / template.format(video_key=cam.feature, chunk_index=chunk, file_index=file)
                writer = VideoWriter(path, cam.height, cam.width, fps, cfg)
            start = writer.frames
            writer.write(frames)
            for name, v in zip(VIDEO_COLUMNS, (chunk, file, start / fps, writer.frames / fps)):
                cols[f"videos/{cam.feature}/{name}"].append(v)
        if writer is not None:
            writer.close()
            writer = None
    finally:
        if writer is not None:
            writer.abort()
    return cols


def video_column_arrays(cols: Mapping[str, list]) -> dict[str, pa.Array]:
    out = {}
    for name, vals in cols.items():
        typ = pa.float64() if name.endswith("timestamp") else pa.int64()
        out[name] = pa.array(vals, type=typ)
    return out


# ---- reading ------------------------------------------------------------------------
def check_video_info(path: Path, info: Mapping[str, Any], spec: EmbodimentSpec) -> None:
    """Every camera of the spec is a video feature of its size in ``info.json`` (``path``)."""
    feats = info["features"]
    for cam in spec.cameras:
        ft = feats.get(cam.feature)
        if not isinstance(ft, Mapping) or ft.get("dtype") != "video":
            raise DatasetError(f"{path}: the spec {spec.name!r} names camera {cam.name!r} but there is no video "
                               f"feature {cam.feature!r} (features: {sorted(feats)})")
        if list(ft.get("shape") or []) != [cam.height, cam.width, 3]:
            raise DatasetError(f"{path}: feature {cam.feature!r} has shape {ft.get('shape')}, but the spec "
                               f"{spec.name!r} says camera {cam.name!r} is {cam.height}x{cam.width} RGB "
                               f"([{cam.height}, {cam.width}, 3])")
    if spec.cameras and not isinstance(info.get("video_path"), str):
        raise DatasetError(f"{path}: the dataset has cameras but no 'video_path' template")


def episode_video_columns(path: Path, table: pa.Table, spec: EmbodimentSpec) -> dict[str, np.ndarray]:
    """The ``videos/<key>/...`` columns of one episodes parquet (``path``), checked."""
    out = {}
    for cam in spec.cameras:
        for c in video_columns(cam.feature):
            if c not in table.column_names:
                raise DatasetError(f"{path}: lacks column {c!r} (camera {cam.name!r} of the spec)")
            col = table.column(c)
            if col.null_count:
                raise DatasetError(f"{path}: column {c!r} has null values")
            out[c] = np.asarray(col.to_numpy(), dtype=np.float64 if c.endswith("timestamp") else np.int64)
    return out


def load_camera(root: Path, info: Mapping[str, Any], cam: CameraSpec, eps: Mapping[str, np.ndarray],
                read_bytes: Callable[[Path], bytes], cache: FrameCache) -> tuple[FrameStore, list[Path]]:
    """Decode (or find in the cache) every file of one camera; refuse any that disagrees with the parquet."""
    ci, fi, t0, t1 = (eps[c] for c in video_columns(cam.feature))
    lengths, starts, fps = eps["length"], eps["dataset_from_index"], float(info["fps"])
    n_rows = int(eps["dataset_to_index"][-1])
    file_of_row, local_of_row = np.zeros(n_rows, np.int64), np.zeros(n_rows, np.int64)
    parts, paths = [], []
    for c, f in sorted(set(zip(ci.tolist(), fi.tolist()))):
        path = _video_path(root, info, cam, c, f)
        members = np.flatnonzero((ci == c) & (fi == f))
        frames = cache.frames(_read(path, read_bytes, members), path)
        _check_file(path, frames, cam, members, lengths, t0, t1, fps)
        for e in members:
            rows = slice(int(starts[e]), int(starts[e] + lengths[e]))
            file_of_row[rows] = len(parts)
            local_of_row[rows] = int(round(t0[e] * fps)) + np.arange(lengths[e])
        parts.append(frames)
        paths.append(path)
    return FrameStore(parts, file_of_row, local_of_row), paths


def _video_path(root: Path, info: Mapping[str, Any], cam: CameraSpec, c: int, f: int) -> Path:
    try:
        rel = info["video_path"].format(video_key=cam.feature, chunk_index=c, file_index=f)
    except (KeyError, IndexError, ValueError) as e:
        raise DatasetError(f"{root / 'meta/info.json'}: bad video_path template {info['video_path']!r}: {e}") from None
    path = root / rel
    if root.resolve() not in path.resolve().parents:
        raise DatasetError(f"{root / 'meta/info.json'}: video_path {rel!r} points outside the dataset")
    return path


def _read(path: Path, read_bytes: Callable[[Path], bytes], members: np.ndarray) -> bytes:
    if not path.is_file():
        raise DatasetError(f"{path}: video file is missing (the episodes parquet puts episodes "
                           f"{_span(members)} in it)")
    try:
        data = read_bytes(path)
    except PermissionError:
        raise  # a governance refusal is not corruption
    except OSError as e:
        raise DatasetError(f"{path}: cannot read the video file: {e}") from e
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise DatasetError(f"{path}: read_bytes hook returned {type(data).__name__}, not bytes")
    return bytes(data)


def _check_file(path: Path, frames: np.ndarray, cam: CameraSpec, members: np.ndarray, lengths: np.ndarray,
                t0: np.ndarray, t1: np.ndarray, fps: float) -> None:
    if tuple(frames.shape[1:]) != cam.shape:
        raise DatasetError(f"{path}: frames are {frames.shape[1]}x{frames.shape[2]}, but the spec says camera "
                           f"{cam.name!r} is {cam.height}x{cam.width}")
    want = int(lengths[members].sum())
    if len(frames) != want:
        raise DatasetError(f"{path}: holds {len(frames)} frames but the episodes parquet puts {want} rows "
                           f"(episodes {_span(members)}) in it (a truncated or foreign video?)")
    for e in members:  # an episode's frames are [from, to) of the file, in 1/fps steps
        first, last = t0[e] * fps, t1[e] * fps
        if (abs(first - round(first)) > 1e-3 or abs(last - first - lengths[e]) > 1e-3 or first < -1e-3
                or round(last) > len(frames)):
            raise DatasetError(f"{path}: episode {int(e)} spans {t0[e]:.6g}..{t1[e]:.6g} s of it, which is not "
                               f"its {int(lengths[e])} frames at {fps:g} fps inside the file's {len(frames)}")


def _span(members: np.ndarray) -> str:
    return f"{int(members[0])}" if len(members) == 1 else f"{int(members[0])}..{int(members[-1])}"


def check_image_stats(path: Path, stats: Mapping[str, Mapping[str, Any]], spec: EmbodimentSpec) -> None:
    for cam in spec.cameras:
        st = stats.get(cam.feature)
        if st is None:
            raise DatasetError(f"{path}: no statistics for camera feature {cam.feature!r}")
        for key in S.STAT_KEYS:
            v = np.asarray(st.get(key, []), dtype=np.float64)
            want = (1,) if key == "count" else (3, 1, 1)
            if v.shape != want or not np.all(np.isfinite(v)):
                raise DatasetError(f"{path}: {cam.feature}/{key} has shape {v.shape}, expected {want} finite values")
