"""`genba eval`: closed-loop evaluation of a checkpoint (or the scripted experts).

    genba eval runs/small --tasks mt10,drives,arms --episodes 50 --lang ja --workers 2 --out runs/small/eval-ja
    genba eval expert --tasks drives --episodes 20 --out runs/expert

CHECKPOINT is a checkpoint directory, a run directory (its latest checkpoint)
or ``expert`` (the tasks' scripted experts through the same harness, for
comparison tables). ``--compare`` adds a side-by-side table with earlier
results (e.g. the expert's, or the other language's).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from genba.errors import CLIError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("eval", help="closed-loop evaluation on unseen seeds", description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", help="checkpoint dir, run dir, or 'expert'")
    p.add_argument("--tasks", required=True, help="task ids and/or groups, comma-separated (mt10, drives, arms, ...)")
    p.add_argument("--episodes", type=int, default=50, help="episodes per task")
    p.add_argument("--lang", choices=("en", "ja"), default="en", help="instruction language")
    p.add_argument("--workers", type=int, default=2, help="worker processes")
    p.add_argument("--lockstep", type=int, default=10, help="envs stepped together per batched model call")
    p.add_argument("--execute", choices=("auto", "ensemble", "replan"), default="auto",
                   help="chunk execution (auto: re-plan every step on machines at >= 1 kHz, else temporal ensembling)")
    p.add_argument("--replan-every", type=int, default=None, help="steps between fresh chunks with --execute replan")
    p.add_argument("--max-steps", type=int, default=None, help="cap every episode at this many steps")
    p.add_argument("--seed-base", type=int, default=0, help="selects another disjoint set of evaluation seeds")
    p.add_argument("--compare", type=Path, nargs="*", default=(), help="earlier results.json (or dirs) to tabulate beside")
    p.add_argument("--out", required=True, type=Path, help="report directory")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from genba.envs.registry import UnknownTaskError, resolve
    from genba.eval.report import comparison_markdown, load_results
    from genba.eval.rollout import EvalConfig, evaluate, resolve_target
    from genba.model.bundle import BundleError
    from genba.model.checkpoints import CheckpointError

    try:
        target = resolve_target(args.checkpoint)
        tasks = tuple(t.id for t in resolve(args.tasks))
        cfg = EvalConfig(checkpoint=target, tasks=tasks, episodes=args.episodes, lang=args.lang, workers=args.workers,
                         lockstep=args.lockstep, seed_base=args.seed_base, max_steps=args.max_steps,
                         execute=args.execute, replan_every=args.replan_every)
        if target != "expert":
            _check_embodiments(target, tasks)
        others = {str(p): load_results(p) for p in args.compare}
    except (UnknownTaskError, CheckpointError, BundleError, ValueError, FileNotFoundError) as e:
        raise CLIError(str(e)) from None
    try:
        results = evaluate(cfg, args.out, progress=not args.no_progress)
    except (CheckpointError, BundleError) as e:  # a worker's load failed: re-raised here, said in one line
        raise CLIError(str(e)) from None
    if others:
        table = comparison_markdown({target: results, **others})
        (args.out / "comparison.md").write_text(table, encoding="utf-8")
        print(table)
    s = results["overall"]
    print(f"mean task success {results['mean_task_success']:.3f} ({s['successes']}/{s['episodes']} episodes); "
          f"report in {args.out}/results.md")
    return 0


def _check_embodiments(checkpoint: str, task_ids: tuple[str, ...]) -> None:
    """Refuse a corrupt checkpoint, and tasks whose embodiment it has no stem and head for, before spawning workers."""
    from genba.envs.registry import get_task
    from genba.eval.baselines import check_baseline_tasks, is_baseline
    from genba.model.bundle import read_manifest, verify_weights

    if is_baseline(checkpoint):
        return check_baseline_tasks(checkpoint, task_ids)
    verify_weights(checkpoint)  # a corrupt file fails here, in one line, not in every worker
    known = set(read_manifest(checkpoint)["specs"])
    missing = sorted({get_task(t).spec.name for t in task_ids} - known)
    if missing:
        raise ValueError(f"checkpoint {checkpoint} has no stem/head for embodiments {missing} "
                         f"(it knows {sorted(known)}); drop those tasks from --tasks")
