"""Governance overhead on a camera dataset: sealed videos, decrypted in memory, frames cached in memory.

Builds a camera dataset with the real writer (``--episodes`` x ``--length``
frames, one ``--size`` x ``--size`` camera, 4-d state and action), ingests it
(parquet encrypted, each MP4 sealed as an envelope), then times:

  seal / open    the envelope alone on the dataset's MP4 bytes (MiB/s)
  plain, cached  open_dataset(plain) with a warm on-disk frame cache (memmap)
  plain, decode  open_dataset(plain, cache_dir=None): every video decoded
  governed       GovernedAccess(...).open(encrypted): decision, audit entries,
                 sha256 of every file, key unwrap, decryption, decoding in
                 memory (the governed frame cache is never on disk)

The governed open is compared with the plain decode: both decode every frame,
so the difference is what governance adds; the cached plain open shows what
the in-memory choice costs a governed run at each start.

Usage: OMP_NUM_THREADS=1 python benchmarks/governance_video.py [--episodes 40] [--length 200] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from genba.data.dataset import open_dataset
from genba.data.layout import Episode, write_dataset
from genba.data.spec import CameraSpec, EmbodimentSpec
from genba.govern import admin, envelope, sites
from genba.govern.access import GovernedAccess
from genba.govern.consortium import Member, init_consortium
from genba.govern.kms import LocalKeyStore


def build_spec(size: int) -> EmbodimentSpec:
    return EmbodimentSpec(
        name="sawyer-cam", robot_type="sawyer", obs_names=("x", "y", "z", "grip"), obs_units=("m",) * 4,
        obs_low=(-10.0,) * 4, obs_high=(10.0,) * 4, action_names=("dx", "dy", "dz", "grip"),
        action_units=("m",) * 4, action_low=(-1.0,) * 4, action_high=(1.0,) * 4, control_period=0.0125,
        action_meaning="end-effector delta and gripper", cameras=(CameraSpec("corner2", size, size, "corner2"),))


def frames(length: int, size: int, phase: float) -> np.ndarray:
    """A gradient with a moving disc: compresses like a rendered scene, not like noise."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    out = np.empty((length, size, size, 3), np.uint8)
    for k in range(length):
        cx, cy = size * (0.5 + 0.3 * np.cos(k / 15 + phase)), size * (0.5 + 0.3 * np.sin(k / 11 + phase))
        disc = np.hypot(xx - cx, yy - cy) < size / 10
        out[k] = np.stack([60 + 100 * xx / size, 80 + 60 * yy / size, np.full_like(xx, 120)], -1)
        out[k][disc] = (220, 60, 50)
    return out


def build_episodes(n: int, length: int, size: int) -> list[Episode]:
    rng = np.random.default_rng(0)
    return [Episode(rng.normal(size=(length, 4)).astype(np.float32),
                    rng.uniform(-1, 1, size=(length, 4)).astype(np.float32), task_index=e % 2, seed=e,
                    images={"corner2": frames(length, size, e)}) for e in range(n)]


def timed(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def envelope_rates(tmp: Path, store: LocalKeyStore, mp4: Path, repeats: int) -> tuple[float, float]:
    mib = mp4.stat().st_size / 2**20
    seal_s, _ = timed(lambda: envelope.seal_file(mp4, tmp / "bench.env", store, "acme", "videos/x.mp4"), repeats)
    sealed = (tmp / "bench.env").read_bytes()
    open_s, _ = timed(lambda: envelope.open_envelope(sealed, store, "acme", "videos/x.mp4"), repeats)
    return mib / seal_s, mib / open_s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--episodes", type=int, default=40)
    ap.add_argument("--length", type=int, default=200)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="genba-govvideo-"))
    os.environ["GENBA_WITNESS_DIR"] = str(tmp / "witness")  # the throwaway log's witnesses go with it
    tasks = [{"en": f"task {i}", "ja": f"タスク {i}"} for i in range(2)]
    write_dataset(tmp / "plain", build_episodes(args.episodes, args.length, args.size), build_spec(args.size), tasks)
    c = init_consortium(tmp / "home", "bench", [Member("acme", "Acme", "JP")], [("tokyo-1", "JP", "DC")])
    t0 = time.perf_counter()
    admin.ingest(c, tmp / "plain", tmp / "enc", owner="acme", dataset_id="cam", classification="confidential",
                 purposes=("pretraining",))
    ingest_s = time.perf_counter() - t0
    claim = sites.issue_claim(c, "tokyo-1")
    videos = sorted((tmp / "plain" / "videos").rglob("*.mp4"))
    seal_rate, open_rate = envelope_rates(tmp, LocalKeyStore(c.keys_dir), videos[0], args.repeats)

    def governed():
        return GovernedAccess(tmp / "home", "acme/bench", claim, "pretraining", "bench").open(tmp / "enc")

    cache = tmp / "frames"
    open_dataset(tmp / "plain", cache_dir=cache)  # fills the on-disk cache; warms imports and the page cache
    cached_s, plain_ds = timed(lambda: open_dataset(tmp / "plain", cache_dir=cache), args.repeats)
    decode_s, _ = timed(lambda: open_dataset(tmp / "plain", cache_dir=None), args.repeats)
    gov_s, gov_ds = timed(governed, args.repeats)
    rows = np.arange(plain_ds.num_frames)
    assert np.array_equal(plain_ds.images["corner2"].take(rows), gov_ds.images["corner2"].take(rows))
    mib = sum(p.stat().st_size for p in videos) / 2**20
    ram = plain_ds.num_frames * args.size * args.size * 3 / 2**20
    print(f"dataset: {plain_ds.num_frames:,} frames, 1 camera {args.size}x{args.size}, {len(videos)} MP4 "
          f"({mib:.2f} MiB); ingest {ingest_s:.2f} s; decoded frames in memory {ram:.0f} MiB")
    print(f"envelope  seal {seal_rate:,.0f} MiB/s   open {open_rate:,.0f} MiB/s")
    print(f"open  plain cached {cached_s * 1e3:8.1f} ms   plain decode {decode_s * 1e3:8.1f} ms   "
          f"governed {gov_s * 1e3:8.1f} ms")
    print(f"governance adds {gov_s - decode_s:+.3f} s ({(gov_s / decode_s - 1) * 100:+.1f}%) to a decoding open; "
          f"the in-memory frame cache costs a governed run {gov_s - cached_s:.2f} s per start "
          f"({plain_ds.num_frames / gov_s:,.0f} frames/s decoded)")


if __name__ == "__main__":
    main()
