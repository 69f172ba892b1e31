"""Run under torchrun by test_ddp_idle.py: DDP where one rank's batch lacks an embodiment.

    torchrun --standalone --nproc_per_node 2 ddp_idle_worker.py OUT ARM_DIR DRIVE_DIR

Rank 0 sees only arm samples, rank 1 arm and drive samples, for two steps.
The DDP gradients (the ranks' average) are compared with a single-process
reference that averages both ranks' losses on an unwrapped copy of the same
model; rank 0 writes ``OUT/result.json``.
"""

from __future__ import annotations

import copy
import json
import sys
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from genba.model.config import get_preset
from genba.train import trainer as T
from genba.train.config import get_train_preset
from genba.train.parallelize import ParallelPlan, build_mesh, parallelize


def main() -> None:
    out, data = Path(sys.argv[1]), [Path(p) for p in sys.argv[2:]]
    dist.init_process_group("gloo", timeout=timedelta(seconds=60))  # a collective mismatch fails, not hangs
    rank, cpu = dist.get_rank(), torch.device("cpu")
    cfg = get_train_preset("debug")
    td = T.build_datasets(cfg, data)
    model = T.build_model(get_preset("debug"), td.specs, cpu, seed=0)
    ref = copy.deepcopy(model)
    module = parallelize(model, ParallelPlan("ddp"), build_mesh(cpu))
    drive0 = int(td.mixed.offsets[1])
    steps = [{0: np.arange(0, 6), 1: np.r_[6:9, drive0:drive0 + 3]},
             {0: np.arange(20, 26), 1: np.r_[30:32, drive0 + 10:drive0 + 14]}]
    for idx in steps:
        loss, _ = module(T.make_batch(td, idx[rank], cpu))
        loss.backward()
        for r in (0, 1):  # the reference: DDP's gradient is the mean over ranks
            ref_loss, _ = ref.loss(T.make_batch(td, idx[r], cpu))
            (ref_loss / 2).backward()
    diffs = {}
    for (name, p), (_, q) in zip(model.named_parameters(), ref.named_parameters()):
        g = p.grad if p.grad is not None else torch.zeros_like(p)
        h = q.grad if q.grad is not None else torch.zeros_like(q)
        diffs[name] = float((g - h).abs().max() / (h.abs().max() + 1e-12))
    if rank == 0:
        idle = [n for n in diffs if n.startswith(("stems.toydrive", "heads.toydrive"))]
        (out / "result.json").write_text(json.dumps({
            "find_unused_parameters": bool(module.find_unused_parameters),
            "max_rel_diff": max(diffs.values()), "worst": max(diffs, key=diffs.get),
            "idle_params": len(idle), "idle_grad_max": max(float(dict(model.named_parameters())[n].grad.abs().max())
                                                          for n in idle)}))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
