"""Print the expert table: scripted-expert success per task over seeded episodes.

Targets (issue 2): MT10 mean >= 0.97, MT50 mean >= 0.95, each drive and each
joint-space arm task >= 0.95 (drives also show the zero-action baseline's
tracking error). Writes a PNG bar chart beside the figures.

    OMP_NUM_THREADS=1 MUJOCO_GL=disable .venv/bin/python benchmarks/expert_table.py --tasks mt10
    ... --tasks mt50,drives,arms --episodes 50 --plot runs/expert_table.png
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

from genba.envs import check


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", default="mt10")
    ap.add_argument("--episodes", type=int, default=50)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--plot", type=Path, default=Path("runs/expert_table.png"))
    ap.add_argument("--json", type=Path, default=None, help="also write the rows as JSON")
    args = ap.parse_args()

    t0, cpu0 = time.perf_counter(), _cpu()
    rows = check.run_check(args.tasks, episodes=args.episodes, workers=args.workers, base_seed=args.seed)
    wall, cpu = time.perf_counter() - t0, _cpu() - cpu0
    check.render_table(rows)
    args.plot.parent.mkdir(parents=True, exist_ok=True)
    check.plot_table(rows, str(args.plot))
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=1))
    groups = check.group_rows(rows)
    for g in groups:
        print(f"{g.group}: mean success {g.mean_success:.3f} (min {g.min_success:.3f}) over {g.tasks} tasks, "
              f"target {g.rule} >= {g.threshold}: {'PASS' if g.passed else 'FAIL'}")
    print(f"{len(rows)} tasks x {args.episodes} episodes: {wall:.1f} s wall, {cpu:.1f} CPU s; plot {args.plot}")
    return 0 if all(g.passed for g in groups) else 1


def _cpu() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


if __name__ == "__main__":
    sys.exit(main())
