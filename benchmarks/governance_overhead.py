"""Governance overhead: authorization + audit + hash check + decryption vs a plain load.

Builds an MT10-sized dataset (150 episodes x 500 frames = 75,000 frames, 39-d
state, 4-d action: what the collector writes for MT10) with the real data-layer
writer, ingests it (encrypts it) into a throwaway consortium, then times:

  plain load     genba.data.dataset.open_dataset(plain)
  governed load  GovernedAccess(...).open(encrypted): site claim check, Cedar
                 decision, audit entries, sha256 of every file, key unwrap,
                 AES-GCM decryption
  epoch          load + one pass over every WindowDataset sample (history 2,
                 chunk 8), which is what a training epoch costs the data side
                 before the model. The governed path pays only at load: the
                 reader holds decrypted arrays in memory and windows from them.

Usage: OMP_NUM_THREADS=1 python benchmarks/governance_overhead.py [--repeats 5] [--episodes 150]
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
from genba.data.spec import EmbodimentSpec
from genba.data.windows import WindowDataset
from genba.govern import admin, sites
from genba.govern.access import GovernedAccess
from genba.govern.consortium import Member, init_consortium


def build_spec() -> EmbodimentSpec:
    return EmbodimentSpec(
        name="sawyer", robot_type="sawyer", obs_names=tuple(f"s{i}" for i in range(39)), obs_units=("m",) * 39,
        obs_low=(-10.0,) * 39, obs_high=(10.0,) * 39, action_names=("dx", "dy", "dz", "grip"),
        action_units=("m",) * 4, action_low=(-1.0,) * 4, action_high=(1.0,) * 4, control_period=0.0125,
        action_meaning="end-effector delta and gripper")


def build_episodes(n: int, length: int) -> list[Episode]:
    rng = np.random.default_rng(0)
    return [Episode(rng.normal(size=(length, 39)).astype(np.float32),
                    rng.uniform(-1, 1, size=(length, 4)).astype(np.float32), task_index=e % 10, seed=e)
            for e in range(n)]


def timed(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def epoch(ds) -> float:
    """One pass over every window; returns a checksum so the work cannot be skipped."""
    w = WindowDataset(ds, history=2, chunk=8)
    acc = 0.0
    for i in range(len(w)):
        acc += float(w[i]["action"][0, 0])
    return acc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--episodes", type=int, default=150)
    ap.add_argument("--length", type=int, default=500)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--skip-epoch", action="store_true", help="time loads only")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="genba-govbench-"))
    os.environ["GENBA_WITNESS_DIR"] = str(tmp / "witness")  # the throwaway log's witnesses go with it
    spec = build_spec()
    tasks = [{"en": f"task {i}", "ja": f"タスク {i}"} for i in range(10)]
    write_dataset(tmp / "plain", build_episodes(args.episodes, args.length), spec, tasks)
    c = init_consortium(tmp / "home", "bench", [Member("acme", "Acme", "JP")], [("tokyo-1", "JP", "DC")])
    t0 = time.perf_counter()
    admin.ingest(c, tmp / "plain", tmp / "enc", owner="acme", dataset_id="mt10", classification="confidential",
                 purposes=("pretraining",))
    ingest_s = time.perf_counter() - t0
    claim = sites.issue_claim(c, "tokyo-1")

    def governed():
        return GovernedAccess(tmp / "home", "acme/bench", claim, "pretraining", "bench").open(tmp / "enc")

    open_dataset(tmp / "plain"), governed()  # warm imports and the page cache for both
    plain_s, plain_ds = timed(lambda: open_dataset(tmp / "plain"), args.repeats)
    gov_s, gov_ds = timed(governed, args.repeats)
    assert np.array_equal(plain_ds.observation, gov_ds.observation)
    size = sum(p.stat().st_size for p in (tmp / "enc").rglob("*.parquet"))
    print(f"dataset: {plain_ds.num_frames:,} frames x ({spec.obs_dim}+{spec.action_dim}) floats, "
          f"{plain_ds.num_episodes} episodes, {size / 2**20:.1f} MiB encrypted parquet; ingest {ingest_s:.2f} s")
    print(f"load   plain {plain_s * 1e3:8.1f} ms   governed {gov_s * 1e3:8.1f} ms   "
          f"overhead {gov_s - plain_s:+.3f} s ({(gov_s / plain_s - 1) * 100:+.1f}% of a load)")
    if not args.skip_epoch:
        ep_s, _ = timed(lambda: epoch(plain_ds), 1)
        plain_epoch, gov_epoch = plain_s + ep_s, gov_s + ep_s
        print(f"epoch  windows over all {plain_ds.num_frames:,} samples {ep_s:.2f} s (identical for both paths)")
        print(f"epoch  plain {plain_epoch:8.2f} s   governed {gov_epoch:8.2f} s   "
              f"overhead {(gov_epoch / plain_epoch - 1) * 100:+.1f}% (target < 10%)")
        print("note: a training epoch adds the model's forward/backward on top, which only shrinks this share")


if __name__ == "__main__":
    main()
