"""Batch-1 ``Policy`` latency: p50 / p99 over 1000 calls, one thread.

Times the object serving and evaluation call (validation, history, transforms,
model call, un-normalization), on a given checkpoint or on an untrained
checkpoint of a preset built for three nominal embodiments (latency does not
depend on the weights' values). Modes: ``ensemble`` (``infer``, a fresh chunk
every step, temporal ensembling), ``replan`` (``infer``, a fresh chunk every k
steps) and ``chunk`` (``infer_chunk``: one fresh chunk per call, what the
server and a re-planning peer pay; the figure to compare with other policies).
Wall time and the calling thread's CPU time are both reported: on a shared
machine wall time mostly measures the other jobs, CPU time much less so (on a
quiet machine the two agree).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/infer_latency.py [--preset small | --checkpoint DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from genba.data.stats import compute_stats
from genba.model.bundle import save_bundle
from genba.model.config import EXECUTE_MODES, get_preset
from genba.model.counts import nominal_specs
from genba.model.generalist import build_model
from genba.model.policy import load_policy

MODES = (*EXECUTE_MODES, "chunk")  # chunk: a whole chunk played open loop per model call


def untrained_checkpoint(preset: str, root: Path) -> Path:
    specs = nominal_specs()
    model = build_model(get_preset(preset), specs, torch.device("cpu"), seed=0)
    rng = np.random.default_rng(0)
    stats = {n: compute_stats({"observation.state": rng.normal(size=(100, s.obs_dim)).astype(np.float32),
                               "action": rng.uniform(-1, 1, size=(100, s.action_dim)).astype(np.float32)})
             for n, s in specs.items()}
    return save_bundle(root / preset, model, stats=stats, preset=preset)


def measure(checkpoint: Path, calls: int, mode: str) -> dict:
    policy = load_policy(checkpoint, execute="replan" if mode == "replan" else "ensemble", device="cpu")
    call = policy.infer_chunk if mode == "chunk" else policy.infer
    name = sorted(policy.specs)[0]
    spec = policy.specs[name]
    rng = np.random.default_rng(0)
    obs = [{"embodiment": name, "state": rng.normal(size=spec.obs_dim).astype(np.float32),
            "instruction": "pick up the block and place it on the shelf"} for _ in range(calls)]
    for o in obs[:50]:  # warm-up
        call(o)
    policy.reset()
    wall, cpu = np.empty(calls), np.empty(calls)
    for i, o in enumerate(obs):
        c0, t0 = time.thread_time(), time.perf_counter()
        call(o)
        wall[i], cpu[i] = time.perf_counter() - t0, time.thread_time() - c0
    ms, cpu_ms = 1e3 * wall, 1e3 * cpu
    return {"checkpoint": str(checkpoint), "embodiment": name, "mode": mode, "calls": calls,
            "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
            "mean_ms": float(ms.mean()), "max_ms": float(ms.max()),
            "cpu_p50_ms": float(np.percentile(cpu_ms, 50)), "cpu_p99_ms": float(np.percentile(cpu_ms, 99)),
            "load_avg_1min": os.getloadavg()[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="small", help="untrained checkpoint of this preset (ignored with --checkpoint)")
    ap.add_argument("--checkpoint", type=Path, help="a trained checkpoint directory")
    ap.add_argument("--calls", type=int, default=1000)
    ap.add_argument("--mode", nargs="+", default=list(MODES), choices=MODES,
                    help="infer with ensembling, infer with re-planning, infer_chunk (a fresh chunk per call)")
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = args.checkpoint or untrained_checkpoint(args.preset, Path(tmp))
        rows = [measure(ckpt, args.calls, mode) for mode in args.mode]
    for r in rows:
        what = "infer_chunk" if r["mode"] == "chunk" else f"infer ({r['mode']})"
        print(f"{args.checkpoint or args.preset} {what} (batch 1, {r['embodiment']}): "
              f"p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms, mean {r['mean_ms']:.2f} ms over {r['calls']} calls; "
              f"thread CPU time p50 {r['cpu_p50_ms']:.2f} ms, p99 {r['cpu_p99_ms']:.2f} ms (load {r['load_avg_1min']:.1f})")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
