"""`genba train`: train the generalist on one or more datasets.

    genba train --preset small --data runs/data/mt10,runs/data/drives --out runs/small \\
        [--weights 2,1] [--steps N | --minutes M] [--resume] [--precision bf16] [--seed 0]
    torchrun --nproc_per_node 2 -m genba.cli train --preset debug ... --dist fsdp

Data access goes through one seam: :func:`add_access_args` adds the options
that choose how dataset files are read, and :func:`access_from_args` turns them
into ``(read_table, lineage)`` for :func:`genba.train.trainer.train`. Today
that is the plain reader; the governance layer plugs its governed reader in
there (site claim, principal, purpose) without touching the trainer.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable

from genba.cli import CLIError


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
    p.add_argument("--resume", action="store_true", help="continue from OUT's latest checkpoint")
    p.add_argument("--precision", choices=("fp32", "bf16"), help="autocast precision")
    p.add_argument("--seed", type=int, help="seed for init and data order")
    p.add_argument("--batch-size", type=int, help="global batch size (split across processes)")
    p.add_argument("--lr", type=float, help="peak learning rate")
    p.add_argument("--lang", choices=("en", "ja", "mix"), help="instruction language drawn in training")
    p.add_argument("--dist", choices=("none", "ddp", "fsdp"), help="data parallelism under torchrun")
    p.add_argument("--ckpt-every", type=int, help="checkpoint every N steps (0: only at the end)")
    p.add_argument("--activation-checkpointing", action="store_true", help="recompute block activations")
    p.add_argument("--compile", action="store_true", help="torch.compile each block")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (logs only)")
    add_access_args(p)
    p.set_defaults(func=run)


def add_access_args(p: argparse.ArgumentParser) -> None:
    """Options choosing how dataset files are read (the governance layer adds its own here)."""


def access_from_args(args: argparse.Namespace) -> tuple[Callable | None, dict | Callable[[], dict] | None]:
    """``(read_table, lineage)`` for the trainer; ``(None, None)`` = plain parquet reads."""
    return None, None


def run(args: argparse.Namespace) -> int:
    from genba.data.lerobot import DatasetError
    from genba.model.bundle import BundleError
    from genba.model.config import PresetError
    from genba.train.checkpoint import CheckpointError
    from genba.train.config import TrainConfigError, get_train_preset
    from genba.train.trainer import train

    try:
        cfg = get_train_preset(args.preset)
        cfg = cfg.replace(**_overrides(args))
        read_table, lineage = access_from_args(args)
        result = train(cfg, args.data, args.out, weights=args.weights, resume=args.resume, read_table=read_table,
                       lineage=lineage, progress=not args.no_progress)
        if _is_main():
            print(f"trained {result.step} steps, loss {result.loss:.4f}, {result.samples_per_s:,.0f} samples/s; "
                  f"checkpoint {result.checkpoint}")
    except (TrainConfigError, DatasetError, CheckpointError, PresetError, BundleError) as e:
        raise CLIError(str(e)) from None
    finally:
        _leave_group()
    return 0


def _overrides(args: argparse.Namespace) -> dict:
    """Only the options the user gave replace preset fields."""
    table = {"steps": args.steps, "minutes": args.minutes, "precision": args.precision, "seed": args.seed,
             "batch_size": args.batch_size, "lr": args.lr, "lang": args.lang, "dist": args.dist,
             "ckpt_every": args.ckpt_every}
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
