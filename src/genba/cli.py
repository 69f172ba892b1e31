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

from genba.errors import CLIError, UserError

__all__ = ["CLIError", "UserError", "build_parser", "main"]  # CLIError stays importable from here

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
    "genba.demo.run",
)


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
    except UserError as e:  # any layer's user-fixable error: one line, no traceback
        print(f"genba {args.verb}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"genba {args.verb}: interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
