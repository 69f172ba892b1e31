"""Expert load balance of ``moe-small`` over training, with and without balancing.

    OMP_NUM_THREADS=1 python benchmarks/moe_balance.py [--data DIR,DIR] [--steps 300] [--batch 32]

Without ``--data`` it writes two small synthetic datasets (an arm and a drive,
learnable linear policies) with ``genba.data.layout.write_dataset``. Prints
the worst MoE layer's max/mean tokens per expert over 512 held-out draws, for:
no balancing; the switch balance loss (``moe-small`` as configured, 0.01); the
loss plus DeepSeek-V3's bias balancing (rate 1e-3, as in ``1t``).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from genba.data.layout import Episode, write_dataset
from genba.data.spec import EmbodimentSpec
from genba.data.windows import mixed_sampler
from genba.model.config import get_preset
from genba.train import trainer as T
from genba.train.config import get_train_preset

CPU = torch.device("cpu")
TASKS = [{"id": "toy/reach", "en": "reach the goal", "ja": "目標に到達する"},
         {"id": "toy/push", "en": "push the block", "ja": "ブロックを押す"}]


def synthetic_datasets(root: Path) -> list[Path]:
    out = []
    for name, obs, act, period, seed in (("toyarm", 5, 3, 0.0125, 0), ("toydrive", 4, 2, 0.001, 1)):
        spec = EmbodimentSpec(name=name, robot_type=name, obs_names=tuple(f"o{i}" for i in range(obs)),
                              obs_units=("",) * obs, obs_low=(-10.0,) * obs, obs_high=(10.0,) * obs,
                              action_names=tuple(f"a{i}" for i in range(act)), action_units=("",) * act,
                              action_low=(-1.0,) * act, action_high=(1.0,) * act, control_period=period,
                              action_meaning="joint velocity")
        rng = np.random.default_rng(seed)
        w = rng.normal(size=(obs, act)) / np.sqrt(obs)
        eps = []
        for e in range(6):
            o = np.cumsum(rng.normal(scale=0.3, size=(30, obs)), axis=0).astype(np.float32)
            eps.append(Episode(o, np.tanh(o @ w + 0.3 * (e % 2)).astype(np.float32), task_index=e % 2, seed=e))
        out.append(write_dataset(root / name, eps, spec, TASKS))
    return out


def run(dirs, steps: int, batch: int, **moe) -> tuple[list[float], float]:
    cfg = dataclasses.replace(get_preset("moe-small"), **moe)
    tcfg = get_train_preset("moe-small").replace(lr=2e-3, warmup_steps=10, steps=steps)
    data = T.build_datasets(tcfg, dirs, model_cfg=cfg)
    model = T.build_model(cfg, data.specs, CPU, seed=0)
    opt, sampler = T.build_optimizer(model, tcfg), mixed_sampler(data.mixed, 2**40, seed=0)
    for s in range(steps):
        for g in opt.param_groups:
            g["lr"] = T.lr_at(s, tcfg, steps)
        loss, _ = model.loss(T.make_batch(data, sampler.indices(s * batch, (s + 1) * batch), CPU))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    model.eval()
    with torch.no_grad():
        model.loss(T.make_batch(data, sampler.indices(10**9, 10**9 + 512), CPU))
    return [float(l.max() / l.mean()) for l in model.trunk.expert_load().values()], float(loss)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=None, help="dataset dirs, comma-separated (default: synthetic)")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=32)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        dirs = [Path(d) for d in args.data.split(",")] if args.data else synthetic_datasets(Path(tmp))
        print(f"{'balancing':<34} {'max/mean per MoE layer':<26} {'worst':>6} {'loss':>7} {'s':>6}")
        for name, moe in (("none", dict(aux_loss_coef=0.0)), ("aux loss 0.01 (moe-small)", {}),
                          ("aux loss 0.01 + bias 1e-3 (1t)", dict(router_bias_rate=1e-3))):
            t0 = time.perf_counter()
            loads, loss = run(dirs, args.steps, args.batch, **moe)
            print(f"{name:<34} {' '.join(f'{x:.2f}' for x in loads):<26} {max(loads):>6.2f} {loss:>7.3f} "
                  f"{time.perf_counter() - t0:>6.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
