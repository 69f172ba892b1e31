"""Batch-1 ``Policy.infer`` latency: p50 / p99 over 1000 calls, one thread.

Times the object serving and evaluation call (validation, history, transforms,
one model call per step with temporal ensembling, un-normalization), on a given
checkpoint or on an untrained checkpoint of a preset built for three nominal
embodiments (latency does not depend on the weights' values).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/infer_latency.py [--preset small | --checkpoint DIR]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from genba.data.stats import compute_stats
from genba.model.bundle import save_bundle
from genba.model.commands import nominal_specs
from genba.model.config import get_preset
from genba.model.policy import load_policy
from genba.train.trainer import build_model


def untrained_checkpoint(preset: str, root: Path) -> Path:
    specs = nominal_specs()
    model = build_model(get_preset(preset), specs, torch.device("cpu"), seed=0)
    rng = np.random.default_rng(0)
    stats = {n: compute_stats({"observation.state": rng.normal(size=(100, s.obs_dim)).astype(np.float32),
                               "action": rng.uniform(-1, 1, size=(100, s.action_dim)).astype(np.float32)})
             for n, s in specs.items()}
    return save_bundle(root / preset, model, stats=stats, preset=preset)


def measure(checkpoint: Path, calls: int, execute: str) -> dict:
    policy = load_policy(checkpoint, execute=execute, device="cpu")
    name = sorted(policy.specs)[0]
    spec = policy.specs[name]
    rng = np.random.default_rng(0)
    obs = [{"embodiment": name, "state": rng.normal(size=spec.obs_dim).astype(np.float32),
            "instruction": "pick up the block and place it on the shelf"} for _ in range(calls)]
    for o in obs[:50]:  # warm-up
        policy.infer(o)
    policy.reset()
    times = np.empty(calls)
    for i, o in enumerate(obs):
        t0 = time.perf_counter()
        policy.infer(o)
        times[i] = time.perf_counter() - t0
    ms = 1e3 * times
    return {"checkpoint": str(checkpoint), "embodiment": name, "execute": execute, "calls": calls,
            "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
            "mean_ms": float(ms.mean()), "max_ms": float(ms.max())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="small", help="untrained checkpoint of this preset (ignored with --checkpoint)")
    ap.add_argument("--checkpoint", type=Path, help="a trained checkpoint directory")
    ap.add_argument("--calls", type=int, default=1000)
    ap.add_argument("--execute", nargs="+", default=["ensemble", "replan"], choices=["ensemble", "replan"])
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = args.checkpoint or untrained_checkpoint(args.preset, Path(tmp))
        rows = [measure(ckpt, args.calls, ex) for ex in args.execute]
    for r in rows:
        print(f"{args.checkpoint or args.preset} infer ({r['execute']}, batch 1, {r['embodiment']}): "
              f"p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms, mean {r['mean_ms']:.2f} ms over {r['calls']} calls")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
