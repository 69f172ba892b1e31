"""Compare two policies' closed-loop evaluations on the same seeds.

    python benchmarks/compare_evals.py \\
        --a runs/accept7/eval-en --b runs/accept7/baseline-eval-mt10,runs/accept7/baseline-eval-da \\
        --names generalist,baseline

Each side is one ``results.json`` (or its directory), or several comma-separated
parts of one policy's evaluation (merged; an episode in two parts is an error).
Prints the per-task table and the mean-over-tasks difference with a paired,
task-stratified bootstrap interval (``genba.eval.metrics.paired_difference``).
"""

from __future__ import annotations

import argparse
import sys

from genba.eval.metrics import paired_difference
from genba.eval.report import comparison_markdown, load_results, merge_results


def load_side(spec: str) -> dict:
    parts = [load_results(p) for p in spec.split(",") if p]
    return parts[0] if len(parts) == 1 else merge_results(parts)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--a", required=True, help="results of policy A (comma-separated parts)")
    p.add_argument("--b", required=True, help="results of policy B (comma-separated parts)")
    p.add_argument("--names", default="A,B", help="column names, comma-separated")
    args = p.parse_args(argv)
    names = args.names.split(",")
    if len(names) != 2:
        p.error(f"--names {args.names!r}: give two names")
    a, b = load_side(args.a), load_side(args.b)
    d = paired_difference(a["episodes"], b["episodes"])  # refuses unpaired evaluations with the reason
    print(comparison_markdown({names[0]: a, names[1]: b}, paired=False))
    print(f"{names[0]} minus {names[1]}: {d.diff:+.4f} mean task success ({d.a:.4f} vs {d.b:.4f}), paired "
          f"bootstrap 95% [{d.ci_low:+.4f}, {d.ci_high:+.4f}] over {d.episodes} shared episodes, "
          f"{d.p_not_better:.3f} of resamples not better")
    return 0


if __name__ == "__main__":
    sys.exit(main())
