"""Training throughput of a preset (default `small`): samples/s and fraction of the matmul peak.

One process, one thread (as torchrun gives each rank), the trainer's own
optimizer and step (forward, backward, clip, AdamW) on batches of the shapes
training sees (three nominal embodiments mixed; instructions drawn from a pool
of ``--instructions`` distinct ones, 32 like the 16 tasks x 2 languages of the
acceptance mix, since the model encodes each distinct instruction once).
FLOPs per sample are counted by ``torch.utils.flop_counter`` on one training
step (matmuls and attention, forward + backward) and compared with the usual
``6 * N_trunk * tokens`` estimate; achieved FLOP/s over the peak measured by
``matmul_peak.py`` in the same dtype is the utilization.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/train_throughput.py [--preset small] [--steps 30]

``--pixels`` (issue 21): every sample is a camera machine (a Sawyer-like 8-entry state plus one
``--camera-size`` camera, 64x64 by default; preset ``small-pixels``, history 2), its uint8 frames
shifted (DrQ, pad 4) and normalized inside the timed step as the trainer does; the image encoder's
share is its own forward + backward on the step's frames over the step time.
"""


from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).parent))
import matmul_peak  # noqa: E402

from genba.data.spec import CameraSpec  # noqa: E402
from genba.data.transforms import NormalizeImages, RandomShift  # noqa: E402
from genba.model.config import get_preset  # noqa: E402
from genba.model.counts import nominal_specs  # noqa: E402
from genba.model.generalist import build_model  # noqa: E402
from genba.train.config import get_train_preset  # noqa: E402
from genba.train.trainer import build_optimizer  # noqa: E402


def synthetic_batch(cfg, specs, batch_size: int, seed: int = 0, instructions: int = 32) -> dict:
    """Normalized-looking inputs split evenly over the embodiments; each embodiment draws its
    instructions (20-60 bytes) from its share of a pool of ``instructions`` distinct ones."""
    g = torch.Generator().manual_seed(seed)
    pool_g = torch.Generator().manual_seed(12345)  # the same pool in every batch, like a dataset's tasks
    names = sorted(specs)
    L = cfg.max_lang_len
    pool_mask = torch.arange(L)[None, :] < torch.randint(20, min(L, 60) + 1, (instructions, 1), generator=pool_g)
    pool_tokens = torch.randint(1, 257, (instructions, L), generator=pool_g) * pool_mask
    # tensor_split always gives len(names) parts (chunk can give fewer); with fewer instructions than
    # embodiments every embodiment draws from the whole pool
    shares = torch.arange(instructions).tensor_split(len(names)) if instructions >= len(names) else \
        [torch.arange(instructions)] * len(names)
    out = {}
    for i, name in enumerate(names):
        B = batch_size // len(names) + (1 if i < batch_size % len(names) else 0)
        s = specs[name]
        pick = shares[i][torch.randint(len(shares[i]), (B,), generator=g)]
        out[name] = {"observation.state": torch.randn(B, cfg.history, s.obs_dim, generator=g),
                     "observation.state_is_pad": torch.zeros(B, cfg.history, dtype=torch.bool),
                     "lang_tokens": pool_tokens[pick], "lang_mask": pool_mask[pick],
                     "action": torch.randn(B, cfg.chunk, s.action_dim, generator=g),
                     "action_is_pad": torch.zeros(B, cfg.chunk, dtype=torch.bool)}
    return out


def pixel_specs(size: int) -> dict:
    """One camera machine: 8 state entries (hand, gripper, goal), 4 actions, one size x size camera."""
    import dataclasses

    from genba.model.counts import _spec

    return {"campx": dataclasses.replace(_spec("campx", 8, 4), cameras=(CameraSpec("corner2", size, size, "corner2"),),
                                         obs_mode="pixels")}


def pixel_stats(specs) -> dict:
    one = {"mean": np.full((3, 1, 1), 0.3), "std": np.full((3, 1, 1), 0.2)}
    return {n: {c.feature: one for c in s.cameras} for n, s in specs.items()}


def add_frames(batch, cfg, specs, seed: int) -> dict:
    """uint8 frames (B, H, h, w, 3) per camera, as the reader gathers them."""
    g = torch.Generator().manual_seed(seed)
    for name, b in batch.items():
        B = b["observation.state"].shape[0]
        b["raw_images"] = {c.name: torch.randint(0, 256, (B, cfg.history, *c.shape), generator=g, dtype=torch.uint8)
                           for c in specs[name].cameras}
    return batch


def step_fn(model, optimizer, precision: str, images=None):
    dtype = {"fp32": None, "bf16": torch.bfloat16}[precision]
    shift = RandomShift(4)

    def step(batch):
        for name, b in batch.items():  # the trainer's make_batch: shift, then normalize (timed)
            if "raw_images" in b:
                b["images"] = images(shift({"embodiment": name, "images": b["raw_images"]}))["images"]
        with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
            loss, _ = model.loss(batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def measure(preset: str, precision: str, batch_size: int, steps: int, instructions: int = 32,
            camera_size: int | None = None) -> dict:
    cfg, tcfg = get_preset(preset), get_train_preset("small").replace(model=preset)
    specs = nominal_specs() if camera_size is None else pixel_specs(camera_size)
    model = build_model(cfg, specs, torch.device("cpu"), seed=0)
    optimizer = build_optimizer(model, tcfg)
    step = step_fn(model, optimizer, precision, NormalizeImages(pixel_stats(specs)))
    batches = [synthetic_batch(cfg, specs, batch_size, seed=i, instructions=instructions) for i in range(4)]
    if camera_size is not None:
        batches = [add_frames(b, cfg, specs, i) for i, b in enumerate(batches)]
    with FlopCounterMode(display=False) as fc:
        step(batches[0])
    flops_per_sample = fc.get_total_flops() / batch_size
    for b in batches[1:]:  # warm-up: allocator, oneDNN kernel choice
        step(b)
    t0 = time.perf_counter()
    for i in range(steps):
        step(batches[i % len(batches)])
    dt = time.perf_counter() - t0
    trunk = sum(p.numel() for n, p in model.named_parameters() if n.startswith("trunk."))
    encoder_share = None if camera_size is None else encoder_seconds(model, batches[0], precision, steps) / (dt / steps)
    n_cams = max(len(s.cameras) for s in specs.values())
    return {"preset": preset, "precision": precision, "batch_size": batch_size, "camera_size": camera_size,
            "encoder_share": encoder_share, "tokens_with_cameras": cfg.tokens_with_cameras(n_cams),
            "params": sum(p.numel() for p in model.parameters()), "trunk_params": trunk,
            "tokens_per_sample": cfg.tokens_per_step, "samples_per_s": steps * batch_size / dt,
            "step_ms": 1e3 * dt / steps, "flops_per_sample_counted": flops_per_sample,
            "flops_per_sample_6NT": 6.0 * trunk * (cfg.tokens_per_step if camera_size is None
                                                   else cfg.tokens_with_cameras(n_cams))}


def encoder_seconds(model, batch, precision: str, steps: int) -> float:
    """Seconds of one image-encoder forward + backward on a step's frames (the share's numerator)."""
    dtype = {"fp32": None, "bf16": torch.bfloat16}[precision]
    frames = torch.cat([v.flatten(0, 1) for b in batch.values() for v in b["images"].values()])  # (B*H, h, w, 3)
    times = []
    for _ in range(max(3, steps // 3)):
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
            out = model.image(frames)
        out.float().square().mean().backward()
        times.append(time.perf_counter() - t0)
    model.zero_grad(set_to_none=True)
    return float(np.median(times))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="small")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--precision", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    ap.add_argument("--instructions", type=int, default=32, help="distinct instructions in the data (>= 1)")
    ap.add_argument("--pixels", action="store_true", help="camera samples (one camera, preset small-pixels)")
    ap.add_argument("--camera-size", type=int, default=64)
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args()
    if args.pixels and args.preset == "small":
        args.preset = "small-pixels"
    if args.instructions < 1:
        ap.error(f"--instructions must be >= 1, got {args.instructions}")
    torch.set_num_threads(1)
    peak = matmul_peak.measure(threads=1, seconds=0.5)
    rows = []
    for prec in args.precision:
        r = measure(args.preset, prec, args.batch_size, args.steps, args.instructions,
                    args.camera_size if args.pixels else None)
        r["peak_gflops"] = peak[prec]["peak"]
        r["achieved_gflops"] = r["samples_per_s"] * r["flops_per_sample_counted"] / 1e9
        r["fraction_of_peak"] = r["achieved_gflops"] / r["peak_gflops"]
        rows.append(r)
        print(f"{args.preset} {prec}: {r['samples_per_s']:,.0f} samples/s ({r['step_ms']:.0f} ms/step at batch "
              f"{args.batch_size}); {r['flops_per_sample_counted'] / 1e6:.1f} MFLOP/sample counted "
              f"(6*N*T estimate {r['flops_per_sample_6NT'] / 1e6:.1f}); {r['achieved_gflops']:.1f} GFLOP/s = "
              f"{100 * r['fraction_of_peak']:.0f}% of the {r['peak_gflops']:.0f} GFLOP/s {prec} matmul peak "
              f"[{r['params'] / 1e6:.2f}M params, 1 thread]")
        if args.pixels:
            print(f"  one {args.camera_size}x{args.camera_size} camera, history {get_preset(args.preset).history}, "
                  f"{r['tokens_with_cameras']} trunk tokens/sample: image encoder (fwd + bwd) "
                  f"{100 * r['encoder_share']:.0f}% of the step")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    np.set_printoptions()


if __name__ == "__main__":
    main()
