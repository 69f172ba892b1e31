"""`genba train`: train the generalist on one or more datasets.

    genba train --preset small --data runs/data/mt10,runs/data/drives --out runs/small \\
        [--weights 2,1] [--steps N | --minutes M] [--resume | --overwrite] [--precision bf16] [--seed 0]
    torchrun --nproc_per_node 2 -m genba.cli train --preset debug ... --dist fsdp

Data access goes through one seam: :func:`add_access_args` adds the options
that choose how dataset files are read, and :func:`access_from_args` turns them
into ``(read_table, lineage)`` for :func:`genba.train.trainer.train`. Without
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
from pathlib import Path
from typing import Callable

from genba.errors import CLIError
from genba.govern.manifest import PURPOSES


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("train", help="train the generalist on demonstration datasets",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="small", help="train preset (debug, small, small-20min, ...) or model preset")
    p.add_argument("--data", required=True, type=_dirs, help="dataset directories, comma-separated (one per embodiment)")
    p.add_argument("--weights", type=_floats, default=None, help="sampling weight per --data dir, comma-separated")
    p.add_argument("--out", required=True, type=Path, help="run directory (checkpoints, metrics.jsonl, tb/)")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--steps", type=int, help="number of optimizer steps")
    length.add_argument("--minutes", type=float, help="wall-time budget; the schedule fits the steps that fit")
    again = p.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true", help="continue from OUT's latest checkpoint")
    again.add_argument("--overwrite", action="store_true",
                       help="start over in an OUT that already holds a run (deletes its checkpoints, metrics, config)")
    p.add_argument("--precision", choices=("fp32", "bf16"), help="autocast precision")
    p.add_argument("--seed", type=int, help="seed for init and data order")
    p.add_argument("--batch-size", type=int, help="global batch size (split across processes)")
    p.add_argument("--lr", type=float, help="peak learning rate")
    p.add_argument("--min-lr-ratio", type=float, help="the cosine schedule ends at lr times this")
    p.add_argument("--ema-decay", type=float,
                   help="export the weights' moving average with this decay, e.g. 0.999 (0: the raw weights)")
    p.add_argument("--lang", choices=("en", "ja", "mix"), help="instruction language drawn in training")
    p.add_argument("--dist", choices=("none", "ddp", "fsdp"), help="data parallelism under torchrun")
    p.add_argument("--ckpt-every", type=int, help="checkpoint every N steps (0: only at the end)")
    p.add_argument("--tp", type=int, help="tensor-parallel ranks (needs --dist fsdp)")
    p.add_argument("--ep", type=int, help="expert-parallel ranks for MoE presets (needs --dist fsdp)")
    p.add_argument("--activation-checkpointing", action="store_true", help="recompute block activations")
    p.add_argument("--compile", action="store_true", help="torch.compile each block")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (logs only)")
    add_access_args(p)
    p.set_defaults(func=run)


def add_access_args(p: argparse.ArgumentParser) -> None:
    """Options choosing how dataset files are read: plain, or through the governance layer."""
    g = p.add_argument_group("governed data access (consortium datasets)")
    g.add_argument("--governed", action="store_true",
                   help="read every dataset through the governance layer (site claim, Cedar policy, audit, decryption)")
    g.add_argument("--home", type=Path, default=None, help="consortium home (default: $GENBA_HOME, else ~/.genba)")
    g.add_argument("--principal", default=None, help="who trains, as ORG/NAME (e.g. genba-lab/trainer)")
    g.add_argument("--site-claim", type=Path, default=None, help="signed site claim of this compute site (JSON)")
    g.add_argument("--purpose", default="pretraining", choices=PURPOSES, help="declared purpose of the reads")
    g.add_argument("--run-id", default=None, help="run id recorded in the audit log (default: the --out dir name)")


def access_from_args(args: argparse.Namespace) -> tuple[Callable | None, dict | Callable[[], dict] | None]:
    """``(read_table, lineage)`` for the trainer; ``(None, None)`` = plain parquet reads.

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
    return access.read_table, access.lineage


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
    from genba.train.config import TrainConfigError, get_train_preset
    from genba.train.trainer import train

    try:
        cfg = get_train_preset(args.preset)
        cfg = cfg.replace(**_overrides(args))
        read_table, lineage = access_from_args(args)
        result = train(cfg, args.data, args.out, weights=args.weights, resume=args.resume, overwrite=args.overwrite,
                       read_table=read_table, lineage=lineage, progress=not args.no_progress)
        if _is_main():
            print(f"trained {result.step} steps, loss {result.loss:.4f}, {result.samples_per_s:,.0f} samples/s; "
                  f"checkpoint {result.checkpoint}")
    except (TrainConfigError, DatasetError, CheckpointError, PresetError, BundleError, GovernanceError,
            NonFiniteError) as e:
        raise CLIError(str(e)) from None
    finally:
        _leave_group()
    return 0


def _overrides(args: argparse.Namespace) -> dict:
    """Only the options the user gave replace preset fields."""
    table = {"steps": args.steps, "minutes": args.minutes, "precision": args.precision, "seed": args.seed,
             "batch_size": args.batch_size, "lr": args.lr, "min_lr_ratio": args.min_lr_ratio,
             "ema_decay": args.ema_decay, "lang": args.lang, "dist": args.dist,
             "ckpt_every": args.ckpt_every, "tp": args.tp, "ep": args.ep}
    out = {k: v for k, v in table.items() if v is not None}
    if args.steps is not None:
        out["minutes"] = None  # an explicit step count wins over a preset's time budget
    if args.activation_checkpointing:
        out["activation_checkpointing"] = True
    if args.compile:
        out["compile"] = True
    return out


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
