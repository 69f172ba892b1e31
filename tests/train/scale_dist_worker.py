"""Scale layouts of ``moe-small`` under torchrun (gloo, CPU), used by test_scale_dist.py.

    torchrun --standalone --nproc_per_node 2 scale_dist_worker.py OUT DATA_DIR [DATA_DIR...]

One launch runs three layouts in turn on the same 20 synthetic-dataset steps:
``fsdp`` (FSDP2 over 2 ranks), ``tp`` (tensor parallel over 2 ranks, each
seeing the whole batch) and ``ep`` (experts split over 2 ranks with all-to-all
dispatch, the dense rest FSDP2-sharded), each saving a
torch.distributed.checkpoint. Then every checkpoint is loaded into a
*different* layout (ep -> fsdp, fsdp -> tp, tp -> ep) and evaluated on a fixed
batch. Last, ``genba.train.trainer.train`` itself runs 3 steps with ``tp=2``
and with ``ep=2``. Results go to ``OUT/<layout>/result.json`` (rank 0).

Every layout draws the same global batch per step: 8 samples per embodiment;
data-parallel ranks take equal halves of each embodiment, so the mean of the
ranks' losses is the single-process loss. :func:`run_layout` with
``layout="single"`` is the single-process reference (called by the test).
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from genba.model.config import get_preset
from genba.train import checkpoint as ckpt
from genba.train import trainer as T
from genba.train.config import get_train_preset
from genba.train.expert_parallel import grad_norm_
from genba.train.parallelize import ParallelPlan, build_mesh, data_rank, parallelize

PRESET, STEPS, PER_EMB = "moe-small", 20, 8
# The switch balance loss is computed per rank (as in any data-parallel MoE trainer), so its gradient
# depends on how the batch is split and top-k routing amplifies that into different curves; the
# equivalence runs turn it off. Routing, experts and all-to-all are unchanged; balance is tested apart.
MODEL_CFG = dataclasses.replace(get_preset(PRESET), aux_loss_coef=0.0)
LAYOUTS = {"fsdp": dict(tp=1, ep=1), "tp": dict(tp=2, ep=1), "ep": dict(tp=1, ep=2)}
RELOAD = {"ep": "fsdp", "fsdp": "tp", "tp": "ep"}  # checkpoint of key is loaded into layout of value


def train_config():
    return get_train_preset(PRESET).replace(steps=STEPS, lr=2e-3, warmup_steps=2, ckpt_every=0)


def global_batch(data, step: int) -> dict:
    """PER_EMB samples of every embodiment, drawn from a step-seeded generator (same on every rank)."""
    rng = np.random.default_rng(1000 + step)
    idx = [off + rng.choice(len(part), PER_EMB, replace=False)
           for off, part in zip(data.mixed.offsets, data.mixed.parts)]
    batch = T.make_batch(data, np.concatenate(idx), torch.device("cpu"))
    for g in batch.values():  # the loss averages over valid steps per rank: equal counts keep halves exact
        g["action_is_pad"] = torch.zeros_like(g["action_is_pad"])
    return batch


def rank_slice(batch: dict, rank: int, world: int) -> dict:
    return {e: {k: v[rank::world] for k, v in g.items()} for e, g in batch.items()}


def build(layout: str, data, cfg):
    """Model (same seed everywhere) wrapped for ``layout`` by the trainer's ``parallelize``;
    returns (model, optimizer, (dp_rank, dp_size))."""
    model = T.build_model(MODEL_CFG, data.specs, torch.device("cpu"), cfg.seed)
    if layout == "single":
        return model, T.build_optimizer(model, cfg), (0, 1)
    plan = ParallelPlan("fsdp", **LAYOUTS[layout])
    parallelize(model, plan, build_mesh(torch.device("cpu")))
    return model, T.build_optimizer(model, cfg), data_rank(dist.get_rank(), dist.get_world_size(), plan)


def _mean(x: float, dp) -> float:
    """Mean over ranks (TP ranks hold equal copies, so the world mean is the data-parallel mean)."""
    if dp[1] == 1 and not dist.is_initialized():
        return x
    t = torch.tensor([x], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t) / dist.get_world_size()


def _local(batch, dp):
    return rank_slice(batch, *dp)


def eval_loss(model, data, dp) -> float:
    with torch.no_grad():
        loss, _ = model.loss(_local(global_batch(data, 10_000), dp))
    return _mean(loss.item(), dp)


def run_layout(layout: str, data, out: Path | None) -> dict:
    """Train STEPS steps in ``layout``; save a DCP checkpoint to ``out`` if given."""
    cfg = train_config()
    model, optim, dp = build(layout, data, cfg)
    losses, norms, t0 = [], [], time.perf_counter()
    for step in range(STEPS):
        for g in optim.param_groups:
            g["lr"] = T.lr_at(step, cfg, STEPS)
        loss, _ = model.loss(_local(global_batch(data, step), dp))
        loss.backward()
        norms.append(grad_norm_(model.parameters(), cfg.grad_clip))
        optim.step()
        optim.zero_grad(set_to_none=True)
        losses.append(_mean(loss.item(), dp))
    res = {"layout": layout, "losses": losses, "grad_norms": norms, "train_s": time.perf_counter() - t0,
           "eval": eval_loss(model, data, dp)}
    if out is not None:
        write = lambda d, sd: T._save_weights(d, MODEL_CFG, data, sd, cfg, {})  # noqa: E731
        ckpt.save_checkpoint(out, STEPS, model, optim, {"step": STEPS, "layout": layout}, write)
    return res


def reload_into(layout: str, src: Path, data) -> float:
    """Load the checkpoint in ``src`` (written by another layout) into ``layout``; eval loss."""
    cfg = train_config()
    model, optim, dp = build(layout, data, cfg)
    state, _ = ckpt.load_checkpoint(ckpt.latest_checkpoint(src), model, optim)
    assert state["step"] == STEPS
    return eval_loss(model, data, dp)


def main() -> None:
    out, dirs = Path(sys.argv[1]), [Path(p) for p in sys.argv[2:]]
    dist.init_process_group("gloo")
    torch.set_num_threads(1)
    data = T.build_datasets(train_config(), dirs, model_cfg=MODEL_CFG)
    results = {}
    for layout in LAYOUTS:
        results[layout] = run_layout(layout, data, out / layout)
    for src, dst in RELOAD.items():
        t0 = time.perf_counter()
        results[src]["reloaded_into"] = dst
        results[src]["reloaded_eval"] = reload_into(dst, out / src, data)
        results[src]["reload_s"] = time.perf_counter() - t0
    for layout in ("tp", "ep"):  # the trainer's own loop with the same layouts (a few steps)
        cfg = get_train_preset(PRESET).replace(steps=3, batch_size=8, dist="fsdp", log_every=1, ckpt_every=0,
                                               **LAYOUTS[layout])
        t0 = time.perf_counter()
        run = T.train(cfg, dirs, out / f"trainer-{layout}", progress=False)
        results[layout]["trainer_losses"] = [h["loss"] for h in run.history]
        results[layout]["trainer_s"] = time.perf_counter() - t0
    if dist.get_rank() == 0:
        for layout, res in results.items():
            (out / layout / "result.json").write_text(json.dumps(res, indent=1))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
