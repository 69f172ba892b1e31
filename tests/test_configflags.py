"""Flags generated from config dataclasses: no flag without a field, no field without a flag; named recipes.

torchtitan tests that no CLI flag sneaks past its JobConfig; the drift test
below does that for `genba train`, `genba eval` and `genba finetune`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from genba import cli
from genba.configflags import add_config_flags, config_fields, flag_name, given_values
from genba.eval.commands import EvalArgs
from genba.eval.rollout import EvalConfig
from genba.train.commands import DataAccess, TrainArgs
from genba.train.config import TRAIN_PRESETS, TrainConfig
from genba.train.finetune import TRAIN_FLAGS, FinetuneArgs, FinetuneConfig
from genba.train.recipes import RECIPES, RecipeError, get_recipe


def _names(cls, **kw) -> set[str]:
    return {f.name for f in config_fields(cls, **kw)}


VERBS = {  # each verb's flags are exactly the fields of these configs
    "train": _names(TrainArgs) | _names(TrainConfig, skip=("name",)) | _names(DataAccess),
    "eval": _names(EvalConfig) | _names(EvalArgs),
    "finetune": _names(FinetuneArgs) | _names(FinetuneConfig, skip=("train",)) | set(TRAIN_FLAGS)
    | _names(DataAccess),
}
ALIASES = {"--from-scratch": "init"}  # kept for old command lines: the same field as --init scratch


def _verb_parser(verb: str) -> argparse.ArgumentParser:
    sub = next(a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[verb]


@pytest.mark.parametrize("verb", sorted(VERBS))
def test_every_field_has_a_flag_and_every_flag_a_field(verb):
    actions = [a for a in _verb_parser(verb)._actions if not isinstance(a, argparse._HelpAction)]
    assert {a.dest for a in actions} == VERBS[verb]
    for a in actions:
        assert a.help, f"genba {verb} {a.dest}: no help"
        for opt in a.option_strings:  # the flag is the field's name (or --no-NAME for a switch that is on)
            assert opt in (flag_name(a.dest), "--no-" + a.dest.replace("_", "-")) or ALIASES.get(opt) == a.dest


def test_train_defaults_keep_the_preset_and_given_flags_replace_fields(tmp_path):
    p = _verb_parser("train")
    args = p.parse_args(["--out", str(tmp_path), "--preset", "debug"])
    assert given_values(args, TrainConfig, skip=("name",)) == {}
    args = p.parse_args(["--out", str(tmp_path), "--betas", "0.8,0.9", "--no-progress", "--keep-last", "3",
                         "--activation-checkpointing"])
    assert given_values(args, TrainConfig) == {"betas": (0.8, 0.9), "keep_last": 3, "activation_checkpointing": True}
    assert args.progress is False and args.resume is False
    with pytest.raises(SystemExit):  # at most one of --steps / --minutes
        p.parse_args(["--out", str(tmp_path), "--steps", "3", "--minutes", "1"])


def test_finetune_flags_build_its_config(tmp_path):
    args = _verb_parser("finetune").parse_args(["ckpt", "--data", str(tmp_path), "--out", "x", "--from-scratch",
                                                "--steps", "7", "--no-tensorboard", "--channel-map", "a=b"])
    values = given_values(args, FinetuneConfig, skip=("train",))
    assert values["init"] == "scratch" and values["tensorboard"] is False and values["channel_map"] == "a=b"
    assert given_values(args, TrainConfig, only=TRAIN_FLAGS) == {"steps": 7}
    assert args.purpose == "finetune" and args.data == [tmp_path]


# ---- the helper on its own ---------------------------------------------------------------
@dataclass(frozen=True)
class Toy:
    n: int  # a count
    mode: Literal["a", "b"] = "a"  # a mode
    ratio: float | None = None  # an optional ratio
    names: tuple[str, ...] = ()  # names, comma-separated
    on: bool = True  # switch it off
    path: Path = field(default=Path("."), metadata={"help": "from metadata"})


def test_helper_maps_each_type():
    p = argparse.ArgumentParser()
    add_config_flags(p, Toy, defaults=True, required=("n",))
    args = p.parse_args(["--n", "3", "--mode", "b", "--ratio", "0.5", "--names", "x, y", "--no-on", "--path", "/t"])
    assert Toy(**given_values(args, Toy)) == Toy(3, "b", 0.5, ("x", "y"), False, Path("/t"))
    assert given_values(p.parse_args(["--n", "1"]), Toy) == {"n": 1, "mode": "a", "names": (), "on": True,
                                                            "path": Path(".")}
    helps = {a.dest: a.help for a in p._actions}
    assert helps["n"] == "a count" and helps["path"] == "from metadata"
    with pytest.raises(SystemExit):
        p.parse_args(["--n", "1", "--mode", "c"])


def test_a_field_without_help_is_refused_at_registration():
    @dataclass(frozen=True)
    class Bare:
        x: int = 0

    with pytest.raises(TypeError, match="Bare.x has no help"):
        add_config_flags(argparse.ArgumentParser(), Bare)


# ---- recipes ---------------------------------------------------------------------------
def test_recipes_are_listed_and_shown(capsys):
    assert cli.main(["recipes"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in RECIPES)
    assert cli.main(["recipes", "accept-20min"]) == 0
    out = capsys.readouterr().out
    assert "genba collect --tasks arms --episodes 150 --noise 0.2 --out runs/dart" in out
    assert "--preset small-20min --data runs/mix/sawyer,runs/dartd/pmsm,runs/dartd/dc,runs/dart/jaco" in out
    assert "--weights 5,2,2,4" in out


def test_unknown_recipe_suggests_the_closest(capsys, tmp_path):
    with pytest.raises(RecipeError, match="did you mean accept-20min"):
        get_recipe("acept-20min")
    assert cli.main(["train", "--recipe", "accept-20mn", "--out", str(tmp_path), "--dry-run"]) == 2
    assert "did you mean accept-20min" in capsys.readouterr().err


def test_train_recipe_resolves_to_its_preset_data_and_weights(tmp_path, capsys):
    recipe = get_recipe("accept-20min")
    argv = ["train", "--recipe", recipe.name, "--data-root", str(tmp_path), "--out", str(tmp_path / "run"),
            "--dry-run"]
    assert cli.main(argv) == 2  # nothing collected yet: the error names the command that makes the data
    assert "genba collect --tasks mt10,drives --episodes 50 --out runs/mix" in capsys.readouterr().err
    for d in recipe.data_dirs(tmp_path):
        d.mkdir(parents=True)
    assert cli.main([*argv, "--steps", "3"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["config"] == dataclasses.replace(TRAIN_PRESETS["small-20min"], steps=3, minutes=None).to_dict()
    assert plan["data"] == [str(tmp_path / s.path) for s in recipe.sources] and plan["weights"] == [5, 2, 2, 4]
    assert not (tmp_path / "run").exists()


def test_train_needs_data_or_a_recipe(tmp_path, capsys):
    assert cli.main(["train", "--out", str(tmp_path), "--dry-run"]) == 2
    assert "--data DIR[,DIR...] or --recipe NAME" in capsys.readouterr().err


def test_demo_recipes_are_the_demo_datasets(tmp_path):
    from genba.demo import run as demo

    for quick in (False, True):
        args = argparse.Namespace(quick=quick, budget=None, out=tmp_path / str(quick), fresh=False, procs=None)
        (tmp_path / str(quick)).mkdir()
        run = demo.Demo(demo.build_config(args), console=None)
        recipe = get_recipe(demo.RECIPE[quick])
        assert [str(d["governed"]) for d in run.datasets()] == [str(d) for d in recipe.data_dirs(run.root)]
        assert [len(d["tasks"]) for d in run.datasets()] == recipe.weights  # one weight per task
        assert run.cfg.preset == recipe.preset and run.cfg.episodes == recipe.collections[0].episodes
        cmd = demo.train_command(run, tmp_path / "claim.json")
        assert cmd[cmd.index("--recipe") + 1] == recipe.name
