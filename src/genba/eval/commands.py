"""`genba eval`: closed-loop evaluation of a checkpoint (or the scripted experts).

    genba eval runs/small --tasks mt10,drives,arms --episodes 50 --lang ja --workers 2 --out runs/small/eval-ja
    genba eval expert --tasks drives --episodes 20 --out runs/expert

CHECKPOINT is a checkpoint directory, a run directory (its latest checkpoint)
or ``expert`` (the tasks' scripted experts through the same harness, for
comparison tables). A checkpoint trained from cameras (``sawyer_px``, ``jaco_px``)
is evaluated from its cameras: each task's pixels view, rendered at the size its
spec records, as collection rendered it. ``--compare`` adds a side-by-side table with earlier
results (e.g. the expert's, or the other language's).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from genba.configflags import add_config_flags, given_values
from genba.data.language import LANGS
from genba.errors import CLIError
from genba.model.config import EXECUTE_CHOICES

# --help of each EvalConfig field (the config lives in genba.eval.rollout)
EVAL_HELP = {
    "checkpoint": "checkpoint dir, run dir, or 'expert'",
    "tasks": "task ids and/or groups, comma-separated (mt10, drives, arms, ...)",
    "episodes": "episodes per task",
    "lang": "instruction language",
    "workers": "worker processes",
    "lockstep": "envs stepped together per batched model call",
    "seed_base": "selects another disjoint set of evaluation seeds",
    "max_steps": "cap every episode at this many steps",
    "execute": "chunk execution (auto: re-plan every step on machines at >= 1 kHz, else temporal ensembling)",
    "replan_every": "steps between fresh chunks with --execute replan",
    "trace_drives": "no reference-vs-actual trace of episode 0 of each drive task",
    "instructions": "speak phrasings instead of each task's sentence: a JSON file {task_id: {\"en\": [...], "
                    "\"ja\": [...]}} or a packaged set (heldout, train); episode k uses phrasing k mod n",
}


@dataclass(frozen=True)
class EvalArgs:
    """What `genba eval` takes besides the EvalConfig; each field is a flag, its comment the help."""

    out: Path  # report directory
    compare: tuple[Path, ...] = ()  # earlier results.json (or dirs) to tabulate beside
    progress: bool = True  # no progress bar


def register(subparsers: argparse._SubParsersAction) -> None:
    from genba.eval.rollout import EvalConfig

    p = subparsers.add_parser("eval", help="closed-loop evaluation on unseen seeds",
                              description=__doc__.split("\n\n")[0])
    add_config_flags(p, EvalConfig, defaults=True, positional=("checkpoint",), required=("tasks",), help=EVAL_HELP,
                     choices={"lang": LANGS, "execute": EXECUTE_CHOICES}, kw={"tasks": {"type": str}})
    add_config_flags(p, EvalArgs, defaults=True, required=("out",), kw={"compare": {"nargs": "*", "type": Path}})
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
        cfg = EvalConfig(**{**given_values(args, EvalConfig), "checkpoint": target, "tasks": tasks})
        if target != "expert":
            _check_embodiments(target, tasks)
        others = {str(p): load_results(p) for p in args.compare}
    except (UnknownTaskError, CheckpointError, BundleError, ValueError, FileNotFoundError) as e:
        raise CLIError(str(e)) from None
    try:
        results = evaluate(cfg, args.out, progress=args.progress)
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
    from genba.data.spec import EmbodimentSpec
    from genba.envs.registry import get_task
    from genba.eval.rollout import checkpoint_view
    from genba.model.baseline import check_baseline_tasks, is_baseline
    from genba.model.bundle import read_manifest, verify_weights

    if is_baseline(checkpoint):
        return check_baseline_tasks(checkpoint, task_ids)
    verify_weights(checkpoint)  # a corrupt file fails here, in one line, not in every worker
    specs = {n: EmbodimentSpec.from_dict(d) for n, d in read_manifest(checkpoint)["specs"].items()}
    known = set(specs)
    missing = sorted({checkpoint_view(get_task(t), specs).spec.name for t in task_ids} - known)
    if missing:
        raise ValueError(f"checkpoint {checkpoint} has no stem/head for embodiments {missing} "
                         f"(it knows {sorted(known)}); drop those tasks from --tasks")
