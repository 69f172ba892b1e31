"""Measure this CPU's matmul peak (GFLOP/s) with torch, one thread, fp32 and bf16.

The figure is the denominator of the training-throughput fraction reported by
``benchmarks/train_throughput.py``. Square matmuls of a few sizes are timed;
the best sustained rate per dtype is the peak (2*n^3 FLOPs per n x n matmul).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/matmul_peak.py [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

SIZES = (256, 512, 1024, 2048)


def gflops(n: int, dtype: torch.dtype, seconds: float = 1.0) -> float:
    """Sustained GFLOP/s of n x n @ n x n in ``dtype`` over about ``seconds``."""
    a = torch.randn(n, n).to(dtype)
    b = torch.randn(n, n).to(dtype)
    out = torch.empty(n, n, dtype=dtype)
    for _ in range(3):  # warm up: oneDNN picks and caches its kernel
        torch.matmul(a, b, out=out)
    reps, t0 = 0, time.perf_counter()
    while True:
        torch.matmul(a, b, out=out)
        reps += 1
        dt = time.perf_counter() - t0
        if dt >= seconds:
            return 2.0 * n**3 * reps / dt / 1e9


def measure(threads: int = 1, seconds: float = 1.0) -> dict:
    """``{"fp32": {"peak": ..., "by_size": {...}}, "bf16": {...}, "threads": n}``."""
    torch.set_num_threads(threads)
    out: dict = {"threads": threads, "torch": torch.__version__}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        by_size = {n: gflops(n, dtype, seconds) for n in SIZES}
        out[name] = {"peak": max(by_size.values()), "by_size": by_size}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seconds", type=float, default=1.0, help="timing window per size")
    ap.add_argument("--json", help="also write the figures to this JSON file")
    args = ap.parse_args()
    res = measure(args.threads, args.seconds)
    for name in ("fp32", "bf16"):
        sizes = "  ".join(f"n={n}: {g:6.1f}" for n, g in res[name]["by_size"].items())
        print(f"{name}: peak {res[name]['peak']:6.1f} GFLOP/s ({args.threads} thread)   {sizes}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
