"""The per-task MLP behavior-cloning baseline the generalist must beat (issue 3).

One MLP per task, their parameters summed to the generalist's total, trained for
the same wall time on the same datasets; then (optionally) evaluated closed loop
with the same harness and seeds as the generalist, and tabulated beside it.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/baseline_mlp.py \\
        --data runs/mix/sawyer,runs/mix/pmsm,runs/mix/dc,runs/mix/jaco --tasks mt10,drives,arms \\
        --minutes 20 --processes 2 --match-params-of runs/small --out runs/baseline \\
        --eval-episodes 50 --compare runs/small/eval-en

``--match-params-of`` takes a checkpoint (or run directory: its latest) or a
preset name (counted on the ``meta`` device with the datasets' embodiments);
history and chunk default to the generalist's. ``--processes 2`` gives every
process the full ``--minutes`` (the generalist trains with two DDP ranks for
its minutes). The baseline directory also works with ``genba eval``'s harness
(``genba.eval.rollout.run_job`` recognizes ``baseline.json``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from genba.data.dataset import open_dataset
from genba.envs.registry import get_task, resolve
from genba.model.baseline import BaselineError
from genba.train.baseline import BaselineConfig, train_baseline


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="dataset roots, comma-separated")
    p.add_argument("--tasks", required=True, help="task ids and/or groups, comma-separated (mt10,drives,arms)")
    p.add_argument("--minutes", type=float, default=20.0, help="wall budget of every training process")
    p.add_argument("--match-params-of", required=True, help="generalist checkpoint / run dir, or a preset name")
    p.add_argument("--out", required=True, type=Path, help="baseline directory to write")
    p.add_argument("--processes", type=int, default=1, help="training processes (tasks split between them)")
    p.add_argument("--history", type=int, default=None, help="observation history (default: the generalist's)")
    p.add_argument("--chunk", type=int, default=None, help="action chunk (default: the generalist's)")
    p.add_argument("--depth", type=int, default=3, help="hidden layers per MLP")
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-episodes", type=int, default=0, help="closed-loop episodes per task (0: none)")
    p.add_argument("--eval-workers", type=int, default=2)
    p.add_argument("--eval-max-steps", type=int, default=None, help="cap episodes (quick checks only)")
    p.add_argument("--compare", type=Path, default=None, help="the generalist's results.json (or its directory)")
    return p.parse_args(argv)


def generalist_size(source: str, specs: dict) -> dict:
    """``{"params", "history", "chunk", "source"}`` of a checkpoint (or run dir) or a preset name.

    A preset is counted on the ``meta`` device with ``specs`` (the datasets' embodiments).
    """
    if Path(source).exists():
        from safetensors.torch import load_file

        from genba.model.bundle import read_manifest
        from genba.train.checkpoint import resolve_checkpoint

        ckpt = resolve_checkpoint(source)
        manifest = read_manifest(ckpt)
        n = manifest.get("weights", {}).get("num_params")
        if n is None:
            n = sum(t.numel() for t in load_file(str(ckpt / "model.safetensors")).values())
        cfg = manifest["config"]
        return {"params": int(n), "history": int(cfg["history"]), "chunk": int(cfg["chunk"]), "source": str(ckpt)}
    from genba.model.config import PresetError, get_preset
    from genba.model.counts import build_meta

    try:
        cfg = get_preset(source)
    except PresetError as e:
        raise BaselineError(f"--match-params-of {source!r}: neither a checkpoint path nor a preset ({e})") from None
    n = sum(p.numel() for p in build_meta(source, specs).parameters())
    return {"params": int(n), "history": cfg.history, "chunk": cfg.chunk, "source": f"preset {source}"}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except (BaselineError, ValueError, OSError) as e:  # bad data, tasks, checkpoint: one clear line
        print(f"baseline_mlp: error: {e}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace) -> int:
    roots = [r.strip() for r in args.data.split(",") if r.strip()]
    tasks = tuple(t.id for t in resolve(args.tasks))
    specs = {ds.spec.name: ds.spec for ds in (open_dataset(r) for r in roots)}
    ref = generalist_size(args.match_params_of, specs)
    cfg = BaselineConfig(tasks=tasks, target_params=ref["params"], minutes=args.minutes, processes=args.processes,
                         history=args.history or ref["history"], chunk=args.chunk or ref["chunk"], depth=args.depth,
                         dropout=args.dropout, batch_size=args.batch_size, lr=args.lr, seed=args.seed)
    print(f"{len(tasks)} tasks, {cfg.processes} process(es) x {cfg.minutes:g} min; history {cfg.history}, "
          f"chunk {cfg.chunk}, depth {cfg.depth}; matching {ref['source']}")
    t0 = time.perf_counter()
    manifest = train_baseline(cfg, roots, args.out, spec_of=lambda t: get_task(t).spec)
    report(manifest, ref, time.perf_counter() - t0)
    if args.eval_episodes > 0:
        evaluate_baseline(args, tasks)
    return 0


def report(manifest: dict, ref: dict, wall: float) -> None:
    """Parameter totals and time, per task and overall."""
    print(f"{'task':36} {'width':>6} {'params':>9} {'frames':>7} {'steps':>7} {'seconds':>8} {'loss':>7}")
    for t in manifest["tasks"]:
        print(f"{t['id']:36} {t['width']:6d} {t['params']:9,d} {t['frames']:7d} {t['steps']:7d} "
              f"{t['seconds']:8.1f} {t['final_loss']:7.4f}")
    base, gen = manifest["total_params"], ref["params"]
    train_s = sum(t["seconds"] for t in manifest["tasks"])
    procs = manifest["config"]["processes"]
    print(f"parameters: baseline {base:,} vs generalist {gen:,} ({100 * (base - gen) / gen:+.2f}%)")
    print(f"time: {train_s:.1f} s of training over {procs} process(es) ({manifest['seconds_per_task']:.1f} s "
          f"per task), {wall:.1f} s wall in all (budget {manifest['config']['minutes']:g} min per process)")


def evaluate_baseline(args: argparse.Namespace, tasks: tuple[str, ...]) -> None:
    """The same closed-loop harness and evaluation seeds as ``genba eval``; tabulated beside --compare."""
    from genba.eval.report import comparison_markdown, load_results
    from genba.eval.rollout import EvalConfig, evaluate

    out = args.out / "eval"
    cfg = EvalConfig(checkpoint=str(args.out), tasks=tasks, episodes=args.eval_episodes, workers=args.eval_workers,
                     max_steps=args.eval_max_steps)
    results = evaluate(cfg, out)
    print(f"baseline mean task success {results['mean_task_success']:.3f} "
          f"({results['overall']['successes']}/{results['overall']['episodes']} episodes); report in {out}/results.md")
    if args.compare is not None:
        gen = load_results(args.compare)
        table = comparison_markdown({"generalist": gen, "per-task MLP baseline": results})
        (out / "comparison.md").write_text(table, encoding="utf-8")
        print(table)
        shared = [t for t in tasks if t in gen["tasks"]]  # compare means over the same tasks only
        if len(shared) < len(tasks):
            print(f"note: the generalist's results lack {sorted(set(tasks) - set(shared))}")
        g, b = (sum(r["tasks"][t]["success_rate"] for t in shared) / max(1, len(shared)) for r in (gen, results))
        print(json.dumps({"tasks_compared": len(shared), "generalist_mean_success": round(g, 4),
                          "baseline_mean_success": round(b, 4), "generalist_wins": g > b}))


if __name__ == "__main__":
    sys.exit(main())
