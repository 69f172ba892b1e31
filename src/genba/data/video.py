"""Camera streams as MP4, encoded and decoded with PyAV (no system FFmpeg needed).

The layout is LeRobot v3's: every episode of a chunk in one file, frames back
to back at the dataset's fps, so an episode is the time range
``[from_timestamp, to_timestamp)`` of its file and frame ``k`` of the file has
``pts = k`` in a ``1/fps`` time base (what LeRobot's decoder seeks to).

The codec (measured, ``benchmarks/frame_cache.py`` prints it again): LeRobot
0.4.4 writes AV1 (libsvtav1, yuv420p, crf 30, g 2). On 64x64 Meta-World
frames rendered from the ``corner2`` camera that gave 32.1 dB PSNR against
the frames as rendered, and no crf reached 35 dB (crf 10: 33.3 dB): at 64x64
a 4:2:0 chroma plane is 32x32, and halving the colour resolution alone costs
that much on small, saturated objects. libsvtav1 has no 4:4:4 mode and
libaom's 4:4:4 AV1 reached 40 dB but encodes ~350 frames/s on one core (MT10
x 50 episodes would take ~12 min). So genba writes H.264 (libx264) in
yuv444p at crf 10 (~37-38 dB on the same frames, ~5,000 frames/s to encode),
with ``g=2`` (a keyframe every two frames, as LeRobot, for cheap random
access) and no B-frames (decode order = display order). LeRobot's
torchcodec backend decodes it (``benchmarks/peers/lerobot_check.py``). Set
:data:`LEROBOT_AV1` to write exactly LeRobot's default instead.

Decoding turns every PyAV/FFmpeg failure into :class:`DatasetError` naming the
file (a truncated MP4 fails here, or decodes to fewer frames than the
parquet rows, which the reader refuses).
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from genba.data.layout import DatasetError


@dataclass(frozen=True)
class VideoConfig:
    """How camera streams are encoded (see the module docstring for why these defaults)."""

    codec: str = "libx264"
    pix_fmt: str = "yuv444p"
    crf: int = 10
    gop: int = 2
    preset: str | None = None  # libsvtav1: "12" as LeRobot; libx264: its default (medium)

    def options(self) -> dict[str, str]:
        opts = {"g": str(self.gop), "crf": str(self.crf)}
        if self.codec == "libx264":
            opts["bf"] = "0"
        if self.preset is not None:
            opts["preset"] = self.preset
        return opts

    @property
    def codec_name(self) -> str:
        """The name LeRobot writes as ``video.codec`` (the codec, not the encoder library)."""
        return {"libx264": "h264", "libopenh264": "h264", "libsvtav1": "av1", "libaom-av1": "av1"}.get(
            self.codec, self.codec)


DEFAULT_VIDEO = VideoConfig()
#: LeRobot 0.4.4's own default (``encode_video_frames``): smaller files, ~32 dB at 64x64.
LEROBOT_AV1 = VideoConfig(codec="libsvtav1", pix_fmt="yuv420p", crf=30, gop=2, preset="12")


def info_block(cfg: VideoConfig, height: int, width: int, fps: int) -> dict[str, Any]:
    """The ``info`` of a video feature in ``meta/info.json``, key for key as LeRobot 0.4.4 writes it."""
    return {"video.height": height, "video.width": width, "video.codec": cfg.codec_name,
            "video.pix_fmt": cfg.pix_fmt, "video.is_depth_map": False, "video.fps": fps,
            "video.channels": 3, "has_audio": False}


def _quiet() -> None:
    import av

    av.logging.set_level(av.logging.FATAL)  # errors become DatasetErrors naming the file; svt-av1 banners are INFO
    logging.getLogger("libav").setLevel(logging.ERROR)


class VideoWriter:
    """One MP4 file, fed episode by episode; ``frames`` counts what went in, ``size`` what came out."""

    def __init__(self, path: Path, height: int, width: int, fps: int, cfg: VideoConfig = DEFAULT_VIDEO):
        import av

        _quiet()
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path, self.frames, self.size = path, 0, 0
        self._container = av.open(str(path), "w", format="mp4")
        try:
            self._stream = self._container.add_stream(cfg.codec, rate=fps, options=cfg.options())
        except Exception as e:
            self._container.close()
            raise DatasetError(f"{path}: cannot open the video encoder {cfg.codec!r}: {e}") from e
        self._stream.pix_fmt, self._stream.width, self._stream.height = cfg.pix_fmt, width, height

    def write(self, frames: np.ndarray) -> None:
        """Append ``frames`` (T, H, W, 3) uint8 RGB."""
        import av

        for f in frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")
            frame.pts = self.frames
            self.frames += 1
            self._mux(self._stream.encode(frame))

    def _mux(self, packets: Iterable[Any]) -> None:
        for p in packets:
            self.size += p.size
            self._container.mux(p)

    def close(self) -> None:
        self._mux(self._stream.encode())  # flush
        self._container.close()

    def abort(self) -> None:
        try:
            self._container.close()
        except Exception:  # the file is discarded with the temporary tree anyway
            pass


def encode_frames(frames: np.ndarray, fps: int, cfg: VideoConfig = DEFAULT_VIDEO) -> bytes:
    """``frames`` (T, H, W, 3) uint8 as the bytes of one MP4 (tests and benchmarks)."""
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "v.mp4"
        w = VideoWriter(path, frames.shape[1], frames.shape[2], fps, cfg)
        w.write(frames)
        w.close()
        return path.read_bytes()


@dataclass(frozen=True)
class VideoInfo:
    """What a decoded file holds."""

    frames: int
    height: int
    width: int
    codec: str
    pix_fmt: str


def decode_frames(data: bytes, source: str | Path) -> np.ndarray:
    """Every frame of an MP4 (its bytes) as (N, H, W, 3) uint8 RGB; ``source`` names it in errors."""
    return np.stack(list(iter_frames(data, source))) if data else _empty(source)


def _empty(source: str | Path) -> np.ndarray:
    raise DatasetError(f"{source}: video file is empty (truncated?)")


def iter_frames(data: bytes, source: str | Path) -> Iterator[np.ndarray]:
    """The frames of an MP4 one by one, (H, W, 3) uint8; errors name ``source``."""
    import av

    _quiet()
    try:
        with av.open(io.BytesIO(data), "r") as c:
            if not c.streams.video:
                raise DatasetError(f"{source}: holds no video stream")
            stream = c.streams.video[0]
            stream.thread_type = "AUTO"
            for frame in c.decode(stream):
                yield frame.to_ndarray(format="rgb24")
    except DatasetError:
        raise
    except (av.FFmpegError, OSError, ValueError, EOFError) as e:
        raise DatasetError(f"{source}: unreadable video (truncated or corrupted MP4?): {e}") from e


def probe(data: bytes, source: str | Path) -> VideoInfo:
    """Codec, pixel format and size from the header, frame count by decoding (headers can lie)."""
    import av

    _quiet()
    frames = decode_frames(data, source)
    try:
        with av.open(io.BytesIO(data), "r") as c:
            s = c.streams.video[0]
            codec, pix = s.codec_context.name, s.codec_context.pix_fmt or ""
    except (av.FFmpegError, OSError, ValueError) as e:
        raise DatasetError(f"{source}: unreadable video: {e}") from e
    return VideoInfo(len(frames), frames.shape[1], frames.shape[2], codec, pix)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio of two uint8 arrays, in dB (inf when equal)."""
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(255.0**2 / mse)
