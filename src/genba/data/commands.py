"""`genba data import-lerobot` and `genba data draft-spec`: LeRobot v3 datasets from outside.

    genba data draft-spec DIR --out SPEC.json            # then check and edit SPEC.json
    genba data import-lerobot DIR --spec SPEC.json --out NEW_DIR [--tasks JA.json]
    genba data import-lerobot DIR --spec SPEC.json --in-place
    genba data show DIR --episode N --out FILE.png         # contact sheet of frames, actions beneath

The governance layer adds its own verbs (ingest, grant, revoke, shred) to the
same ``data`` group. This module imports nothing above the data layer, so it
reports a user's mistake itself (one line on stderr, exit code 2) instead of
through ``genba.cli.CLIError``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from genba.configflags import verb_group
from genba.data.layout import DatasetError
from genba.data.spec import SpecError

GROUP_HELP = ("datasets: import a LeRobot dataset, draft its spec, show an episode; "
              "governed: ingest, grant, revoke, shred")


def register(subparsers: argparse._SubParsersAction) -> None:
    data = verb_group(subparsers, "data", GROUP_HELP)
    p = data.add_parser("import-lerobot", help="make a plain LeRobot v3 dataset trainable with an embodiment spec",
                        description=__doc__.split("\n\n")[0])
    p.add_argument("src", type=Path, metavar="DIR", help="LeRobot v3 dataset directory (meta/info.json, data/ ...)")
    p.add_argument("--spec", required=True, type=Path,
                   help="embodiment spec JSON (a bare spec or a genba meta/genba.json); draft one with draft-spec")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--out", type=Path, help="new directory for the trainable copy (DIR stays untouched)")
    where.add_argument("--in-place", action="store_true", help="add meta/genba.json to DIR itself (LeRobot ignores it)")
    p.add_argument("--tasks", type=Path, default=None,
                   help="JSON with a Japanese instruction per task ({task: ja}, a list of {en, ja}, or a genba.json); "
                        "without it a task's Japanese instruction is its English string")
    p.set_defaults(func=_guard("import-lerobot", cmd_import))
    p = data.add_parser("draft-spec", help="draft an embodiment spec JSON from a LeRobot dataset, for you to check")
    p.add_argument("src", type=Path, metavar="DIR", help="LeRobot v3 dataset directory")
    p.add_argument("--out", type=Path, default=None, help="write the draft here (default: stdout)")
    p.add_argument("--name", default=None, help="embodiment name (default: from robot_type)")
    p.add_argument("--margin", type=float, default=0.1, help="widen the data's min/max by this fraction of the span")
    p.set_defaults(func=_guard("draft-spec", cmd_draft))
    p = data.add_parser("show", help="PNG contact sheet of an episode: its camera frames, its actions beneath")
    p.add_argument("src", type=Path, metavar="DIR", help="genba dataset directory")
    p.add_argument("--episode", type=int, default=0, help="episode index (default 0)")
    p.add_argument("--out", type=Path, required=True, help="PNG file to write")
    p.add_argument("--columns", type=int, default=12, help="frames per camera row (default 12)")
    p.add_argument("--every", type=int, default=None, help="show every k-th frame (default: fit --columns)")
    p.set_defaults(func=_guard("show", cmd_show))


def cmd_show(args: argparse.Namespace) -> int:
    from genba.data.show import show_episode

    if args.columns < 1 or (args.every is not None and args.every < 1):
        raise DatasetError("--columns and --every must be >= 1")
    out = show_episode(args.src, args.episode, args.out, columns=args.columns, every=args.every)
    print(f"wrote {out}")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from genba.data.lerobot_import import import_lerobot, load_spec_file

    spec = load_spec_file(args.spec)
    res = import_lerobot(args.src, spec, out=None if args.in_place else args.out, tasks=args.tasks,
                         source_note={"source": str(args.src), "spec_file": str(args.spec)})
    print(f"imported {args.src} as embodiment {res.embodiment!r}: {res.episodes} episodes, {res.frames} frames "
          f"-> {res.root}")
    if res.untranslated:
        print(f"note: {len(res.untranslated)} task(s) have no Japanese instruction (--tasks); their English string "
              f"stands in: {list(res.untranslated)[:3]}", file=sys.stderr)
    return 0


def cmd_draft(args: argparse.Namespace) -> int:
    from genba.data.lerobot_import import draft_spec

    text = json.dumps(draft_spec(args.src, name=args.name, margin=args.margin), indent=2, ensure_ascii=False)
    if args.out is None:
        print(text)
        return 0
    if args.out.exists():
        raise FileExistsError(f"--out {args.out} already exists; the draft would overwrite it")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n", encoding="utf-8")
    print(f"drafted {args.out}: check units, limits, action_meaning and safety, then delete its '_draft' key",
          file=sys.stderr)
    return 0


def _guard(verb: str, func):
    """A user's mistake is one line on stderr and exit code 2, never a traceback."""
    def run(args: argparse.Namespace) -> int:
        try:
            return func(args)
        except (DatasetError, SpecError, FileExistsError, OSError) as e:
            print(f"genba data {verb}: error: {e}", file=sys.stderr)
            return 2
    return run
