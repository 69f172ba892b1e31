"""Time `genba collect --tasks mt10 --episodes 50` end to end (target: < 90 s wall on 2 cores; < 300 s with --obs pixels).

Runs the real command in a subprocess, so interpreter start, worker spawn,
rollouts and the dataset write all count. Prints wall seconds and the CPU
seconds of the command and its workers (on a shared machine wall time depends
on the neighbours; CPU seconds do not), plus the collection report.

    OMP_NUM_THREADS=1 MUJOCO_GL=disable .venv/bin/python benchmarks/collect_mt10.py [--episodes 50] [--workers 2]
        [--obs pixels [--camera-size 64]]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_WALL_S = {"state": 90.0, "pixels": 300.0}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", default="mt10")
    ap.add_argument("--episodes", type=int, default=50)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--obs", choices=("state", "pixels"), default="state")
    ap.add_argument("--camera-size", type=int, default=64)
    ap.add_argument("--keep", type=Path, default=None, help="copy the datasets here afterwards")
    args = ap.parse_args()
    target = TARGET_WALL_S[args.obs]

    out = Path(tempfile.mkdtemp(prefix="genba-collect-"))
    cmd = [sys.executable, "-m", "genba.cli", "collect", "--tasks", args.tasks, "--episodes", str(args.episodes),
           "--out", str(out), "--workers", str(args.workers), "--obs", args.obs,
           "--camera-size", str(args.camera_size)]
    env = dict(os.environ, OMP_NUM_THREADS="1", MUJOCO_GL="disable")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if proc.returncode != 0:
        print(f"collect failed with exit code {proc.returncode}")
        return proc.returncode
    for ds in sorted(p for p in out.iterdir() if p.is_dir()):
        rep = json.loads((ds / "meta" / "genba.json").read_text())["collection"]
        info = json.loads((ds / "meta" / "info.json").read_text())
        size = sum(f.stat().st_size for f in ds.rglob("*") if f.is_file()) / 2**20
        print(f"{ds.name}: {info['total_episodes']} episodes, {info['total_frames']} frames, {size:.1f} MiB; "
              f"attempted {rep['attempted']}, failed {rep['failed']}; rollouts {rep['wall_s']:.1f} s wall")
    print(f"collect {args.tasks} x {args.episodes} episodes, --obs {args.obs}, {args.workers} workers: "
          f"{wall:.1f} s wall (target < {target:.0f} s: {'PASS' if wall < target else 'FAIL'}), "
          f"{cpu:.1f} CPU s (command + workers), load average {os.getloadavg()[0]:.1f}")
    if args.keep:
        shutil.copytree(out, args.keep, dirs_exist_ok=True)
    shutil.rmtree(out, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
