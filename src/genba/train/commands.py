"""`genba train`: train the generalist on one or more datasets.

    genba train --preset small --data runs/data/mt10,runs/data/drives --out runs/small \\
        [--weights 2,1] [--steps N | --minutes M] [--resume | --overwrite] [--precision bf16] [--seed 0]
    genba train --recipe accept-20min --out runs/accept    # datasets, weights and preset by name
    torchrun --nproc_per_node 2 -m genba.cli train --preset debug ... --dist fsdp

Data access goes through one seam: :func:`add_access_args` adds the options
that choose how dataset files are read, and :func:`access_from_args` turns them
into ``(opener, lineage)`` (a dataset opener and its lineage) for :func:`genba.train.trainer.train`. Without
``--governed`` that is the plain reader; with it every file goes through a
:class:`genba.govern.access.GovernedAccess` (site claim, principal, purpose):

    genba train --governed --home H --principal genba-lab/trainer --site-claim CLAIM.json \
        --purpose pretraining --preset small --data D1,D2 --out runs/small

Every dataset is authorized before the trainer opens anything, so a job at a
site outside the data's jurisdiction, or by a principal without a grant, stops
before reading a byte with an error naming the policy that denied it.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from genba.configflags import add_config_flags, given_values
from genba.errors import CLIError
from genba.govern.manifest import PURPOSES
from genba.train.config import CHOICES, TrainConfig


@dataclass(frozen=True)
class TrainArgs:
    """What `genba train` takes besides the TrainConfig; each field is a flag, its comment the help."""

    out: Path  # run directory (checkpoints, metrics.jsonl, tb/)
    recipe: str | None = None  # named recipe: preset, datasets and their weights (list: `genba recipes`)
    preset: str | None = None  # train or model preset, e.g. debug, small, small-20min (default: the recipe's, else small)
    data: tuple[Path, ...] = ()  # dataset directories, comma-separated (one per embodiment); default: the recipe's
    data_root: Path = Path(".")  # the directory a recipe's dataset paths are relative to
    weights: tuple[float, ...] | None = None  # sampling weight per dataset, comma-separated; default: the recipe's
    resume: bool = False  # continue from OUT's latest checkpoint
    overwrite: bool = False  # start over in an OUT holding a run (deletes its checkpoints, metrics, config)
    dry_run: bool = False  # print the resolved config, datasets and weights as JSON; train nothing
    progress: bool = True  # no progress bar (logs only)


@dataclass(frozen=True)
class DataAccess:
    """How dataset files are read: plainly, or through the governance layer (see the module docstring)."""

    governed: bool = False  # read every dataset through governance (site claim, Cedar policy, audit, decryption)
    home: Path | None = None  # consortium home (default: $GENBA_HOME, else ~/.genba)
    principal: str | None = None  # who trains, as ORG/NAME (e.g. genba-lab/trainer)
    site_claim: Path | None = None  # signed site claim of this compute site (JSON)
    purpose: str = "pretraining"  # declared purpose of the reads
    run_id: str | None = None  # run id recorded in the audit log (default: the --out dir name)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("train", help="train the generalist on demonstration datasets",
                              description=__doc__.split("\n\n")[0])
    add_config_flags(p, TrainArgs, defaults=True, required=("out",), exclusive=(("resume", "overwrite"),),
                     kw={"data": {"type": _dirs}, "weights": {"type": _floats}})
    add_config_flags(p, TrainConfig, skip=("name",), exclusive=(("steps", "minutes"),), choices=CHOICES)
    add_access_args(p)
    p.set_defaults(func=run)
    r = subparsers.add_parser("recipes", help="named training recipes: datasets, weights, DART noise, preset",
                              description="List the recipes `genba train --recipe` takes, or show one's commands.")
    r.add_argument("name", nargs="?", help="show this recipe's collect and train commands")
    r.set_defaults(func=run_recipes)


def add_access_args(p: argparse.ArgumentParser) -> None:
    """Options choosing how dataset files are read: plain, or through the governance layer."""
    g = p.add_argument_group("governed data access (consortium datasets)")
    add_config_flags(g, DataAccess, defaults=True, choices={"purpose": PURPOSES})


def access_from_args(args: argparse.Namespace) -> tuple[Callable | None, dict | Callable[[], dict] | None]:
    """``(opener, lineage)`` for the trainer; ``(None, None)`` = the plain reader.

    With ``--governed`` every dataset is authorized here, before the trainer
    opens anything; a refusal raises CLIError naming the denying policy.
    """
    if not args.governed:
        _refuse_ungoverned(args)
        return None, None
    missing = [f"--{n.replace('_', '-')}" for n in ("principal", "site_claim") if getattr(args, n) is None]
    if missing:
        raise CLIError(f"--governed needs {' and '.join(missing)}")
    from genba.govern.access import governed_access, refusal
    from genba.govern.errors import GovernanceError

    try:
        access = governed_access(args.home, args.principal, args.site_claim, args.purpose,
                                 args.run_id or Path(args.out).name, args.data)
    except GovernanceError as e:
        raise CLIError(refusal(e)) from None
    return access.open, access.lineage


def _refuse_ungoverned(args: argparse.Namespace) -> None:
    """Governed options without --governed, or a governed dataset read plainly, are mistakes: say so."""
    given = [f"--{n.replace('_', '-')}" for n in ("principal", "site_claim", "home", "run_id")
             if getattr(args, n, None) is not None]
    if given:
        raise CLIError(f"{', '.join(given)} only apply with --governed")
    from genba.govern.manifest import MANIFEST_PATH

    governed = [str(d) for d in args.data if (Path(d) / MANIFEST_PATH).is_file()]
    if governed:
        raise CLIError(f"{', '.join(governed)} is a governed (encrypted) dataset: train with --governed "
                       "--principal ORG/NAME --site-claim CLAIM.json")


def run(args: argparse.Namespace) -> int:
    from genba.data.layout import DatasetError
    from genba.finite import NonFiniteError
    from genba.govern.errors import GovernanceError  # a refusal met mid-read (file altered, key shredded)
    from genba.model.bundle import BundleError
    from genba.model.config import PresetError
    from genba.train.checkpoint import CheckpointError
    from genba.train.config import TrainConfigError
    from genba.train.recipes import RecipeError
    from genba.train.trainer import train

    try:
        cfg, args.data, weights = resolve_run(args)
        if args.dry_run:
            print(json.dumps({"recipe": args.recipe, "config": cfg.to_dict(), "data": [str(d) for d in args.data],
                              "weights": weights}, indent=1))
            return 0
        opener, lineage = access_from_args(args)
        result = train(cfg, args.data, args.out, weights=weights, resume=args.resume, overwrite=args.overwrite,
                       opener=opener, lineage=lineage, progress=args.progress)
        if _is_main():
            print(f"trained {result.step} steps, loss {result.loss:.4f}, {result.samples_per_s:,.0f} samples/s; "
                  f"checkpoint {result.checkpoint}")
    except (TrainConfigError, DatasetError, CheckpointError, PresetError, BundleError, GovernanceError,
            NonFiniteError, RecipeError) as e:
        raise CLIError(str(e)) from None
    finally:
        _leave_group()
    return 0


def resolve_run(args: argparse.Namespace) -> tuple[TrainConfig, list[Path], list[float] | None]:
    """The train config, datasets and weights of a `genba train` command line.

    The preset is --preset, else the recipe's, else ``small``; the options the
    user gave replace its fields. Datasets are --data, else the recipe's under
    --data-root; weights are --weights, else the recipe's when its datasets are used.
    """
    from genba.train.config import get_train_preset
    from genba.train.recipes import get_recipe

    recipe = get_recipe(args.recipe) if args.recipe else None
    cfg = get_train_preset(args.preset or (recipe.preset if recipe else "small")).replace(**_overrides(args))
    weights = list(args.weights) if args.weights is not None else None
    if args.data:
        return cfg, list(args.data), weights
    if recipe is None:
        raise CLIError("give the datasets: --data DIR[,DIR...] or --recipe NAME (list: genba recipes)")
    return cfg, recipe.check_data(args.data_root), weights or recipe.weights


def _overrides(args: argparse.Namespace) -> dict:
    """Only the options the user gave replace preset fields."""
    out = given_values(args, TrainConfig, skip=("name",))
    if args.steps is not None:
        out["minutes"] = None  # an explicit step count wins over a preset's time budget
    return out


def run_recipes(args: argparse.Namespace) -> int:
    from genba.train.recipes import RECIPES, RecipeError, get_recipe

    if args.name is None:
        for r in RECIPES.values():
            print(f"{r.name:<24} preset {r.preset:<12} {len(r.sources)} datasets  {r.about}")
        return 0
    try:
        r = get_recipe(args.name)
    except RecipeError as e:
        raise CLIError(str(e)) from None
    print(f"# {r.name}: {r.about}")
    for c in r.collections:
        print(c.command())
    print(f"{r.train_command()} --out OUT   # = genba train --recipe {r.name} --out OUT")
    return 0


def _dirs(text: str) -> list[Path]:
    parts = [Path(p.strip()) for p in text.split(",") if p.strip()]
    if not parts:
        raise argparse.ArgumentTypeError("give at least one dataset directory")
    missing = [str(p) for p in parts if not p.is_dir()]
    if missing:
        raise argparse.ArgumentTypeError(f"not a directory: {', '.join(missing)}")
    return parts


def _floats(text: str) -> list[float]:
    try:
        vals = [float(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"weights {text!r}: expected comma-separated numbers") from None
    if any(not v >= 0 for v in vals):
        raise argparse.ArgumentTypeError(f"weights {text!r}: must be >= 0")
    return vals


def _leave_group() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _is_main() -> bool:
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0
