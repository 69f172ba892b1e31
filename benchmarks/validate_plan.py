"""Check the capacity planner against what PyTorch really allocates (single process, fp32, CPU).

    OMP_NUM_THREADS=1 python benchmarks/validate_plan.py [--presets small,moe-small] [--batch 8]

For each preset: the planner's parameter count vs the materialized model's,
and its predicted bytes of weights, gradients, AdamW state (after one
optimizer step) and saved activations (one batch, measured with
``torch.autograd.graph.saved_tensors_hooks``) vs the measured bytes. The
tests (tests/train/test_plan.py) hold the same comparison to 10%.
"""

from __future__ import annotations

import argparse
import sys

import torch

from genba.model.config import get_preset
from genba.model.counts import nominal_specs
from genba.train import plan as P
from genba.train import trainer as T
from genba.train.config import get_train_preset


def synthetic_batch(cfg, specs, B: int) -> dict:
    """Full-length, all-distinct instructions: the planner's worst case (one encoder row per sample)."""
    g = torch.Generator().manual_seed(0)
    return {n: {"observation.state": torch.randn(B, cfg.history, s.obs_dim, generator=g),
                "observation.state_is_pad": torch.zeros(B, cfg.history, dtype=torch.bool),
                "lang_tokens": torch.randint(1, 257, (B, cfg.max_lang_len), generator=g),
                "lang_mask": torch.ones(B, cfg.max_lang_len, dtype=torch.bool),
                "action": torch.randn(B, cfg.chunk, s.action_dim, generator=g),
                "action_is_pad": torch.zeros(B, cfg.chunk, dtype=torch.bool)} for n, s in specs.items()}


def compare(preset: str, B: int) -> list[tuple[str, float, float]]:
    cfg, specs = get_preset(preset), nominal_specs()
    model = T.build_model(cfg, specs, torch.device("cpu"), seed=0)
    optim = T.build_optimizer(model, get_train_preset(preset))
    batch = synthetic_batch(cfg, specs, B)
    act, (loss, _) = P.measure_activations(model, lambda: model.loss(batch))
    loss.backward()
    optim.step()
    states = P.measure_states(model, optim)
    facts = P.describe(preset)
    tokens = B * len(specs) * cfg.tokens_per_step
    mem = P.memory(facts, P.Layout(), precision="fp32", micro_tokens=tokens, seq_len=cfg.tokens_per_step)
    return [("parameters", facts.total, sum(p.numel() for p in model.parameters())),
            ("weights B", mem.weights, states["weights"]), ("grads B", mem.grads, states["grads"]),
            ("AdamW state B", mem.optimizer, states["optimizer"]),
            (f"activations B ({B * len(specs)} samples)", mem.activations, act)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", default="small,moe-small")
    ap.add_argument("--batch", type=int, default=8, help="samples per embodiment (3 nominal embodiments)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    print(f"{'preset':<10} {'quantity':<32} {'predicted':>16} {'measured':>16} {'error':>8}")
    worst = 0.0
    for preset in args.presets.split(","):
        for name, pred, meas in compare(preset, args.batch):
            err = (pred - meas) / meas
            worst = max(worst, abs(err))
            print(f"{preset:<10} {name:<32} {pred:>16,.0f} {meas:>16,.0f} {err:>+8.2%}")
    print(f"worst error {worst:.2%} (tests require <= 10%)")
    return 0 if worst <= 0.10 else 1


if __name__ == "__main__":
    sys.exit(main())
