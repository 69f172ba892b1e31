"""CLI verbs of the envs layer: `genba envs list`, `genba envs check`, `genba collect`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from genba.data.spec import OBS_MODES
from genba.envs import registry
from genba.envs.registry import DEFAULT_CAMERA_SIZE


def register(subparsers: argparse._SubParsersAction) -> None:
    envs = subparsers.add_parser("envs", help="the task suite: list tasks, check the scripted experts")
    verbs = envs.add_subparsers(dest="envs_verb", metavar="ACTION")
    verbs.required = True

    p = verbs.add_parser("list", help="list registered tasks (id, embodiment, dims, control rate, instructions)")
    p.add_argument("--group", type=str, default=None,
                   help="only tasks of this group or selection (e.g. mt10, drives, arms, all)")
    p.set_defaults(func=cmd_list)

    p = verbs.add_parser("check", help="print the expert table (success rate per task and group)")
    p.add_argument("--tasks", type=str, default="all", help="task ids and/or groups, comma-separated")
    p.add_argument("--episodes", type=_positive_int, default=50, help="seeded episodes per task")
    p.add_argument("--workers", type=_non_negative_int, default=2, help="worker processes (0 or 1: in-process)")
    p.add_argument("--seed", type=int, default=0, help="base of the evaluation seeds")
    p.add_argument("--plot", type=Path, default=None, help="also write a PNG bar chart of success rates here")
    p.set_defaults(func=cmd_check)

    p = subparsers.add_parser("collect", help="run the experts and write LeRobot v3 datasets, one per embodiment")
    p.add_argument("--tasks", type=str, required=True, help="task ids and/or groups, e.g. mt10 or mt10,drives")
    p.add_argument("--episodes", type=_positive_int, default=50, help="successful episodes to keep per task")
    p.add_argument("--out", type=Path, required=True, help="output directory; datasets go to OUT/<embodiment>")
    p.add_argument("--workers", type=_non_negative_int, default=2, help="worker processes (0 or 1: in-process)")
    p.add_argument("--seed", type=int, default=0, help="base seed; episode seeds derive from (seed, task, k)")
    p.add_argument("--max-attempts-factor", type=float, default=2.0,
                   help="give up on a task after this many attempts per requested episode")
    p.add_argument("--noise", type=str, default="0",
                   help="DART: run the expert with Gaussian action noise (std as a fraction of each action's "
                        "half range) and record its clean action: one LEVEL, or SELECTION=LEVEL,... per task "
                        "or group (e.g. arms=0.2,drives=0.01); 0 (default) records plain demonstrations")
    p.add_argument("--obs", choices=OBS_MODES, default="state",
                   help="state: the simulator's full observation; pixels: what the machine senses plus its "
                        "cameras (datasets named <embodiment>_px, e.g. sawyer_px; drives have no camera and "
                        "stay as they are)")
    p.add_argument("--camera-size", type=_positive_int, default=DEFAULT_CAMERA_SIZE,
                   help=f"camera resolution in pixels, square (default {DEFAULT_CAMERA_SIZE}; with --obs pixels)")
    p.add_argument("--overwrite", action="store_true", help="replace datasets that already exist")
    p.set_defaults(func=cmd_collect)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text}")
    return value


def _resolve(selection: str) -> list[registry.Task]:
    from genba.errors import CLIError

    try:
        return registry.resolve(selection)
    except registry.UnknownTaskError as e:
        raise CLIError(str(e)) from None


def cmd_list(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    tasks = _resolve(args.group) if args.group else registry.all_tasks()
    table = Table(title=f"{len(tasks)} tasks" + (f" in {args.group}" if args.group else ""))
    for col in ("id", "embodiment", "obs", "act", "Hz", "cameras (--obs pixels)", "groups", "instruction (en)",
                "instruction (ja)"):
        table.add_column(col, overflow="fold")
    for t in tasks:
        px = t.view("pixels").spec
        cams = f"{px.name}: {','.join(c.name for c in px.cameras)}, obs {px.obs_dim}" if px.cameras else "-"
        table.add_row(t.id, t.embodiment, str(t.spec.obs_dim), str(t.spec.action_dim), f"{t.spec.fps:g}", cams,
                      ",".join(t.groups), t.instruction_en, t.instruction_ja)
    # rich falls back to 80 columns when piped; the instructions need more
    (Console() if sys.stdout.isatty() else Console(width=200)).print(table)
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from genba.envs import check

    _resolve(args.tasks)  # fail on a bad selection before starting workers
    rows = check.run_check(args.tasks, episodes=args.episodes, workers=args.workers, base_seed=args.seed)
    check.render_table(rows)
    if args.plot:
        check.plot_table(rows, str(args.plot))
        print(f"plot: {args.plot}")
    return 0 if all(g.passed for g in check.group_rows(rows)) else 1


def cmd_collect(args: argparse.Namespace) -> int:
    from genba.envs.collect import CollectConfig, collect, noise_levels
    from genba.errors import CLIError

    tasks = _resolve(args.tasks)
    try:
        cfg = CollectConfig(tasks=args.tasks, out=args.out, episodes=args.episodes, workers=args.workers,
                            seed=args.seed, max_attempts_factor=args.max_attempts_factor,
                            noise=args.noise, overwrite=args.overwrite, obs=args.obs,
                            camera_size=args.camera_size)
    except ValueError as e:
        raise CLIError(f"--noise/--max-attempts-factor/--camera-size: {e}") from None
    try:
        noise_levels(cfg.noise, tasks)
    except ValueError as e:
        raise CLIError(f"--noise: {e}") from None
    try:
        paths = collect(cfg)
    except (FileExistsError, RuntimeError) as e:  # an existing output; no success at all; no GL context
        raise CLIError(str(e)) from None
    for name, path in paths.items():
        _print_summary(name, path)
    return 0


def _print_summary(name: str, path: Path) -> None:
    import json

    report = json.loads((path / "meta" / "genba.json").read_text())["collection"]
    short = {t: r["short_by"] for t, r in report["tasks"].items() if r["short_by"] > 0}
    print(f"{name}: {path}  kept {report['kept']} / attempted {report['attempted']} "
          f"(failed {report['failed']}), {report['wall_s']:.1f} s wall")
    if short:
        print(f"  WARNING: tasks short of the requested episodes: {short}")
