"""Camera data speed: encode, decode, and random-access windows from the frame cache, on one core.

Writes a camera dataset of synthetic frames with structure (moving shapes on a
gradient; ``--frames FILE.npy`` uses real renders instead, (N, H, W, 3) uint8),
then prints:

- encode frames/s (``write_dataset``: PyAV, the codec of ``genba.data.video``)
  and the PSNR of genba's own decode against the frames written;
- decode frames/s (the first ``open_dataset``: decoding into the cache) and
  the cache's size on disk;
- random-access frames/s from the cache: batches of windows of ``--history``
  frames at random rows through ``WindowDataset.gather`` and one window at a
  time through ``__getitem__`` (target >= 5,000 frames/s at 64x64, history 2).

    OMP_NUM_THREADS=1 MUJOCO_GL=disable .venv/bin/python benchmarks/frame_cache.py
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/frame_cache.py --size 96 --episodes 50 --length 500

Figures only (no asserts): report them with the machine's load (``uptime``).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from genba.data.dataset import open_dataset  # noqa: E402
from genba.data.layout import Episode, write_dataset  # noqa: E402
from genba.data.spec import CameraSpec, EmbodimentSpec  # noqa: E402
from genba.data.video import DEFAULT_VIDEO, LEROBOT_AV1, psnr  # noqa: E402
from genba.data.windows import WindowDataset  # noqa: E402


def moving_shapes(t: int, size: int, phase: float) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    bg = np.stack([80 + 60 * xx / size, 90 + 50 * yy / size, np.full_like(xx, 110)], axis=-1)
    out = np.empty((t, size, size, 3), np.uint8)
    for k in range(t):
        cx, cy = size * (0.5 + 0.3 * np.cos(k / 10 + phase)), size * (0.5 + 0.3 * np.sin(k / 13 + phase))
        a = np.clip(0.1 * size - np.hypot(xx - cx, yy - cy), 0, 1)[..., None]
        img = bg * (1 - a) + a * np.array([220, 60, 50], np.float32)
        bar = (np.abs(xx - (k * 0.7 + 10 * phase) % (0.8 * size) - 4) < 4) & (np.abs(yy - 0.2 * size) < 3)
        img[bar] = (40, 160, 220)
        out[k] = img.astype(np.uint8)
    return out


def spec_for(size: int) -> EmbodimentSpec:
    return EmbodimentSpec(
        name="bench_cam", robot_type="synthetic", obs_names=("x", "y", "z", "g"), obs_units=("m",) * 4,
        obs_low=(-1.0,) * 4, obs_high=(1.0,) * 4, action_names=("dx", "dy", "dz", "grip"),
        action_units=("1",) * 4, action_low=(-1.0,) * 4, action_high=(1.0,) * 4, control_period=0.0125,
        action_meaning="end-effector delta", cameras=(CameraSpec("corner2", size, size, "corner2"),))


def episodes(n: int, length: int, size: int, frames: np.ndarray | None) -> list[Episode]:
    rng = np.random.default_rng(0)
    out = []
    for e in range(n):
        if frames is not None:
            img = frames[np.arange(e * length, (e + 1) * length) % len(frames)]
        else:
            img = moving_shapes(length, size, phase=float(e))
        obs = rng.uniform(-1, 1, (length, 4)).astype(np.float32)
        act = rng.uniform(-1, 1, (length, 4)).astype(np.float32)
        out.append(Episode(obs, act, 0, e, images={"corner2": img}))
    return out


def random_access(w: WindowDataset, history: int, seconds: float, batch: int) -> tuple[float, float]:
    """(frames/s through gather in batches, frames/s one window at a time)."""
    rng = np.random.default_rng(1)
    n, t0, got = len(w), time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds:
        w.gather(rng.integers(0, n, batch))
        got += batch * history
    batched = got / (time.perf_counter() - t0)
    t0, got = time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds:
        for i in rng.integers(0, n, 256):
            w[int(i)]
        got += 256 * history
    return batched, got / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--episodes", type=int, default=20)
    p.add_argument("--length", type=int, default=200)
    p.add_argument("--history", type=int, default=2)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--frames", type=Path, default=None, help="real frames (N, H, W, 3) uint8 .npy instead of synthetic")
    p.add_argument("--av1", action="store_true", help="LeRobot's default AV1 (yuv420p, crf 30) instead of genba's")
    args = p.parse_args()
    frames = None if args.frames is None else np.load(args.frames)
    size = args.size if frames is None else frames.shape[1]
    eps = episodes(args.episodes, args.length, size, frames)
    n = args.episodes * args.length
    cfg = LEROBOT_AV1 if args.av1 else DEFAULT_VIDEO
    print(f"load {os.getloadavg()[0]:.2f} (1 min), {os.cpu_count()} cpus; {args.episodes} episodes x "
          f"{args.length} frames of {size}x{size}, {dataclasses.asdict(cfg)}")
    with tempfile.TemporaryDirectory() as d:
        root = Path(d) / "ds"
        t = time.perf_counter()
        write_dataset(root, eps, spec_for(size), [("move", "動かす")], video=cfg)
        enc = time.perf_counter() - t
        mp4 = sum(f.stat().st_size for f in root.rglob("*.mp4"))
        print(f"encode: {n / enc:,.0f} frames/s (write_dataset {enc:.2f} s), video {mp4 / 2**20:.2f} MiB "
              f"({mp4 / n:,.0f} B/frame)")
        t = time.perf_counter()
        ds = open_dataset(root)
        dec = time.perf_counter() - t
        cache = sum(f.stat().st_size for f in (root / ".cache/frames").glob("*.u8"))
        want = np.concatenate([e.images["corner2"] for e in eps])
        print(f"decode into the cache: {n / dec:,.0f} frames/s (open_dataset {dec:.2f} s); cache {cache / 2**20:.1f} "
              f"MiB on disk ({cache / n:,.0f} B/frame); PSNR of genba's decode {psnr(ds.images['corner2'][:], want):.2f} dB")
        t = time.perf_counter()
        ds = open_dataset(root)
        print(f"reopen from the cache (hash + memmap): {time.perf_counter() - t:.3f} s")
        w = WindowDataset(ds, history=args.history, chunk=1)
        batched, single = random_access(w, args.history, args.seconds, args.batch)
        print(f"random access, {size}x{size}, history {args.history}: {batched:,.0f} frames/s in batches of "
              f"{args.batch} (gather), {single:,.0f} frames/s one window at a time (__getitem__); target >= 5,000")


if __name__ == "__main__":
    main()
