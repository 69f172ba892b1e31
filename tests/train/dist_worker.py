"""Run under torchrun by test_train_distributed.py: the debug preset with FSDP2, with DDP,
FSDP2 on one embodiment, and FSDP2 with the weights' moving average.

One launch for both keeps the test inside its time budget (process start and
imports dominate). Usage: ``torchrun ... dist_worker.py OUT DATA_DIR [DATA_DIR...]``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch.distributed as dist

from genba.train.config import get_train_preset
from genba.train.trainer import train


def main() -> None:
    out, data = Path(sys.argv[1]), [Path(p) for p in sys.argv[2:]]
    cfg = get_train_preset("debug").replace(steps=6, ckpt_every=3, keep_last=5)
    for mode in ("fsdp", "ddp"):
        train(cfg.replace(dist=mode), data, out / mode, progress=False)
    # one embodiment: every rank's loss has the same normalization as the single process's
    train(cfg.replace(dist="fsdp", batch_size=16), data[:1], out / "fsdp-one", progress=False)
    # the weights' moving average on sharded (DTensor) parameters, gathered into the bundle
    train(cfg.replace(dist="fsdp", ema_decay=0.6), data, out / "fsdp-ema", progress=False)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
