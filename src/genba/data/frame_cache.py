"""Decoded camera frames, decoded once and read back as slices.

Decoding an MP4 costs ~0.1-0.3 ms a frame here; a training step reads
``batch x history`` frames at random places, which would make decoding the
step's cost. So the reader decodes each video file once into a raw uint8
array, ``(frames, H, W, 3)``, stored as ``<sha256>.u8`` (plus ``.json`` with
its shape) in the cache directory and opened as a read-only ``np.memmap``:
a window is a fancy-index gather from the page cache.

The key is the SHA-256 of the MP4's bytes, so a changed (re-encoded,
re-collected, tampered) file never reads a stale cache; stale entries simply
stop being used (``genba`` never deletes them on its own: delete the
directory to reclaim space). Entries are written to a temporary name and
renamed, so concurrent readers (DataLoader workers, two runs) never see half
an entry.

``cache_dir=None`` keeps the decoded frames in memory only: the governed
opener uses it, so the frames of encrypted data are never written to disk in
the clear (an encrypted cache would cost a decrypt per read, which is the
work the cache exists to avoid; in memory they cost RAM: 12 KiB per 64x64
frame, ~3 GiB for MT10 x 50 episodes x 500 steps).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np

from genba.data.video import decode_frames

#: Environment variable naming a cache directory shared by all datasets (frames under ``$GENBA_CACHE/frames``).
CACHE_ENV = "GENBA_CACHE"


def default_cache_dir(root: Path) -> Path:
    """``$GENBA_CACHE/frames`` if set, else ``<dataset>/.cache/frames`` (LeRobot ignores it)."""
    env = os.environ.get(CACHE_ENV)
    return Path(env) / "frames" if env else Path(root) / ".cache" / "frames"


class FrameCache:
    """Decoded frames keyed by the SHA-256 of the video bytes; ``directory=None`` keeps them in memory."""

    def __init__(self, directory: Path | None):
        self.directory = None if directory is None else Path(directory)
        self.hits = self.misses = 0

    def frames(self, data: bytes, source: Path) -> np.ndarray:
        """(N, H, W, 3) uint8 frames of the MP4 ``data`` (read from ``source``)."""
        key = hashlib.sha256(data).hexdigest()
        if self.directory is not None:
            hit = self._load(key)
            if hit is not None:
                self.hits += 1
                return hit
        self.misses += 1
        frames = decode_frames(data, source)
        if self.directory is None:
            return frames
        try:
            return self._store(key, frames)
        except OSError as e:  # a read-only dataset directory: train anyway, from memory
            warnings.warn(f"frame cache {self.directory} is not writable ({e}); decoded frames of {source} "
                          f"stay in memory (set ${CACHE_ENV} to a writable directory)", stacklevel=2)
            self.directory = None
            return frames

    def _paths(self, key: str) -> tuple[Path, Path]:
        assert self.directory is not None
        return self.directory / f"{key}.u8", self.directory / f"{key}.json"

    def _load(self, key: str) -> np.ndarray | None:
        raw, meta = self._paths(key)
        try:
            shape = tuple(json.loads(meta.read_text())["shape"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if len(shape) != 4 or not raw.is_file() or raw.stat().st_size != int(np.prod(shape)):
            return None  # a partial or foreign entry: decode again and overwrite it
        return np.memmap(raw, dtype=np.uint8, mode="r", shape=shape)

    def _store(self, key: str, frames: np.ndarray) -> np.ndarray:
        raw, meta = self._paths(key)
        raw.parent.mkdir(parents=True, exist_ok=True)
        for path, payload in ((raw, np.ascontiguousarray(frames).tobytes()),
                              (meta, json.dumps({"shape": list(frames.shape)}).encode())):
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(payload)
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        return np.memmap(raw, dtype=np.uint8, mode="r", shape=frames.shape)

    def size_on_disk(self) -> int:
        """Bytes of every entry in the cache directory (0 in memory mode)."""
        if self.directory is None or not self.directory.is_dir():
            return 0
        return sum(p.stat().st_size for p in self.directory.glob("*.u8"))


class FrameStore:
    """One camera's frames for every dataset row, across its video files.

    ``take(rows)`` gathers rows of any index shape into ``rows.shape + (H, W, 3)``.
    """

    def __init__(self, parts: list[np.ndarray], file_of_row: np.ndarray, local_of_row: np.ndarray):
        self.parts, self.file_of_row, self.local_of_row = parts, file_of_row, local_of_row
        self.frame_shape = tuple(parts[0].shape[1:]) if parts else (0, 0, 3)

    def __len__(self) -> int:
        return len(self.file_of_row)

    def take(self, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        local = self.local_of_row[rows]
        if len(self.parts) == 1:  # the common case: one file per camera and chunk
            return self.parts[0][local]
        out = np.empty(rows.shape + self.frame_shape, np.uint8)
        files = self.file_of_row[rows]
        for f in np.unique(files):
            m = files == f
            out[m] = self.parts[int(f)][local[m]]
        return out

    def __getitem__(self, rows) -> np.ndarray:
        if isinstance(rows, slice):
            rows = np.arange(len(self))[rows]
        return self.take(np.asarray(rows))
