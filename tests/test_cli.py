"""`genba <verb>`: any layer's UserError is one line on stderr and exit code 2 (issue 18, errors at the bottom)."""

from __future__ import annotations

import argparse

import pytest

from genba import cli
from genba.errors import CLIError, UserError
from genba.govern.errors import AccessDenied
from genba.model.checkpoints import CheckpointError


def _parser_with(func) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="genba")
    sub = parser.add_subparsers(dest="verb")
    sub.add_parser("x").set_defaults(func=func)
    return parser


@pytest.mark.parametrize("error", [CLIError("bad --flag"), AccessDenied("bad --flag", policy_id="p"),
                                   CheckpointError("bad --flag")])
def test_a_user_error_from_any_layer_is_one_line_and_exit_2(monkeypatch, capsys, error):
    def fail(args):
        raise error

    monkeypatch.setattr(cli, "build_parser", lambda: _parser_with(fail))
    assert isinstance(error, UserError)
    assert cli.main(["x"]) == 2
    assert capsys.readouterr().err == "genba x: error: bad --flag\n"


def test_a_bug_is_not_a_user_error(monkeypatch):
    def fail(args):
        raise KeyError("a bug keeps its traceback")

    monkeypatch.setattr(cli, "build_parser", lambda: _parser_with(fail))
    with pytest.raises(KeyError):
        cli.main(["x"])
