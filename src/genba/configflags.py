"""Command-line flags generated from frozen config dataclasses, so a field and its flag cannot drift.

Each field ``batch_size`` becomes ``--batch-size``: ``int``/``float``/``str``/``Path``
take one value, ``tuple[X, ...]`` a comma-separated list, ``Literal[...]`` (or a
``choices`` entry) limits the values, ``X | None`` is X, a bool that defaults to
False becomes a switch ``--name`` and one that defaults to True ``--no-name``.
Help comes from the caller's ``help`` map, else the field's ``metadata["help"]``,
else the comment after the field in its class body; a field without help is a
programming error raised at registration (the drift test calls every verb's
``register``). torchtitan tests that no CLI flag sneaks past its JobConfig; the
test here (tests/test_configflags.py) does the same for every verb.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

_COMMENT = re.compile(r"^    (\w+)\s*:[^#]*#\s*(.+)$")  # `    name: type = default  # help` in a class body


def flag_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def config_fields(cls, *, only: Iterable[str] | None = None, skip: Iterable[str] = ()) -> list[dataclasses.Field]:
    """The fields of ``cls`` that get flags, in declaration order."""
    keep, drop = (set(only) if only is not None else None), set(skip)
    return [f for f in dataclasses.fields(cls) if (keep is None or f.name in keep) and f.name not in drop]


def add_config_flags(parser, cls, *, only=None, skip=(), defaults: bool = False, positional=(), required=(),
                     exclusive: Iterable[tuple[str, ...]] = (), help: Mapping[str, str] | None = None,
                     choices: Mapping[str, tuple] | None = None, kw: Mapping[str, dict] | None = None) -> None:
    """Add one flag per field of ``cls`` (see the module docstring) to ``parser``.

    ``defaults``: the parser's default is the field's; otherwise an absent flag
    parses to None, so :func:`given_values` keeps only what the user gave (for
    overrides of a preset). ``exclusive`` lists groups of fields at most one of
    which may be given; ``kw`` adds or replaces argparse keywords of a field
    (``{"data": {"type": parse_dirs}}``, ``{"compare": {"nargs": "*"}}``).
    """
    hints, comments = typing.get_type_hints(cls), _comments(cls)
    groups = {}
    for group in exclusive:
        shared = parser.add_mutually_exclusive_group()
        groups.update(dict.fromkeys(group, shared))
    for f in config_fields(cls, only=only, skip=skip):
        text = (help or {}).get(f.name) or f.metadata.get("help") or comments.get(f.name)
        if not text:
            raise TypeError(f"{cls.__name__}.{f.name} has no help: add a comment after the field")
        extra = (kw or {}).get(f.name, {})
        spec = {**_argument(f, hints[f.name], defaults, (choices or {}).get(f.name), "type" in extra), **extra}
        target = groups.get(f.name, parser)
        if f.name in positional:
            spec.pop("dest")
            target.add_argument(f.name, help=text, **spec)
        else:
            target.add_argument(_bool_flag(f, spec), help=text, required=f.name in required, **spec)


def given_values(args: argparse.Namespace, cls, *, only=None, skip=()) -> dict[str, Any]:
    """``{field: value}`` of the flags of ``cls`` present in ``args`` with a value other than None."""
    values = {f.name: getattr(args, f.name, None) for f in config_fields(cls, only=only, skip=skip)}
    return {k: v for k, v in values.items() if v is not None}


def _argument(f: dataclasses.Field, hint, defaults: bool, choices, typed: bool) -> dict:
    default = f.default if f.default is not dataclasses.MISSING else None
    kw: dict[str, Any] = {"dest": f.name, "default": default if defaults else None}
    inner = _strip_optional(hint)
    if inner is bool:
        kw["action"] = "store_false" if default is True else "store_true"
        return kw
    origin, args = typing.get_origin(inner), typing.get_args(inner)
    if origin is typing.Literal:
        choices, inner = choices or args, type(args[0])
    if not typed:  # the caller's own parser otherwise
        kw["type"] = _comma_list(args[0], f.name) if origin is tuple else _scalar(inner, f.name)
    if choices is not None:
        kw["choices"] = tuple(choices)
    return kw


def _bool_flag(f: dataclasses.Field, kw: dict) -> str:
    return "--no-" + f.name.replace("_", "-") if kw.get("action") == "store_false" else flag_name(f.name)


def _strip_optional(hint):
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        rest = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(rest) == 1:
            return rest[0]
    return hint


def _scalar(tp, name: str) -> Callable:
    if tp in (int, float, str, Path):
        return tp
    raise TypeError(f"field {name!r}: no flag for type {tp!r}; give `kw={{{name!r}: {{'type': parser}}}}`")


def _comma_list(tp, name: str) -> Callable:
    one = _scalar(tp, name)

    def parse(text: str) -> tuple:
        try:
            return tuple(one(x.strip()) for x in text.split(",") if x.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated {tp.__name__} values") from None
    parse.__name__ = f"comma-separated {tp.__name__}"  # argparse names the type in its errors
    return parse


def _comments(cls) -> dict[str, str]:
    """``{field: text}`` from the ``name: type = default  # text`` lines of the class body.

    A '#' inside a default value would cut the text short; no config has one.
    """
    try:
        lines = inspect.getsource(cls).splitlines()
    except (OSError, TypeError):  # no source (e.g. a frozen app): help must come from metadata
        return {}
    return {m.group(1): m.group(2).strip() for m in map(_COMMENT.match, lines) if m}


def verb_group(subparsers: argparse._SubParsersAction, name: str, help: str) -> argparse._SubParsersAction:
    """Nested verbs under ``name`` (``genba data ingest``); a layer joins the group if another already made it
    (the data and governance layers both add ``data`` verbs)."""
    parser = subparsers.choices.get(name) or subparsers.add_parser(name, help=help)
    for action in parser._actions:  # argparse keeps no public handle on an existing subparsers action
        if isinstance(action, argparse._SubParsersAction):
            return action
    sub = parser.add_subparsers(dest=f"{name}_verb", metavar="VERB")
    sub.required = True
    return sub
