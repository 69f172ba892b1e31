"""`genba <verb>`: one typed command line for the whole stack.

The CLI is thin. Each layer owns a ``commands.py`` exposing
``register(subparsers)``; that function adds its verbs with typed arguments and
sets ``func`` on each parser to a function taking the parsed namespace. This
file only lists those modules (one plug-in convention, one indirection).
"""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings

# Order is the order verbs appear in --help.
COMMAND_MODULES = (
    "genba.envs.commands",
    "genba.data.commands",
    "genba.govern.commands",
    "genba.model.commands",
    "genba.train.commands",
    "genba.eval.commands",
    "genba.serve.commands",
    "genba.train.plan_cli",
    "genba.train.finetune",
    "genba.demo",
)


class CLIError(Exception):
    """A user-facing error: printed without a traceback, exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="genba", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    sub.required = True
    for name in COMMAND_MODULES:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:  # layer not built yet; its verbs are simply absent
                continue
            raise
        mod.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    args = build_parser().parse_args(argv)
    try:
        rc = args.func(args)
    except CLIError as e:
        print(f"genba {args.verb}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"genba {args.verb}: interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
