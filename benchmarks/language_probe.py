"""Does a checkpoint listen to the instruction? Swap instructions on fixed states and measure the change.

For each task of a dataset, take up to ``--frames`` training windows of that task
and predict action chunks (normalized units) once with the task's own
instruction and once with every other task's. Prints per task:

- ``L1(own)``: error against the demonstrated chunk with the right instruction,
- ``|swap-own|``: mean change of the prediction when the instruction is swapped
  (0.000 means the model ignores language on that task's states),
- ``L1(best swap)``: the lowest error any wrong instruction reaches.

Tasks that share a scene (Meta-World reach / push / pick-place) can only be
told apart by the instruction, so a working model shows a clear change there.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/language_probe.py CKPT --data runs/mix/sawyer [--lang ja]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from genba.data.dataset import open_dataset
from genba.data.language import LANGS
from genba.data.windows import WindowDataset
from genba.model.policy import load_policy


def predict(policy, embodiment: str, batch: dict, instruction: str) -> torch.Tensor:
    """Normalized chunks (B, C, A) for the windows in ``batch`` under ``instruction``."""
    state = policy._normalize({"embodiment": embodiment, "observation.state": batch["observation.state"].numpy()})
    n = len(batch["instruction"])
    lang = policy._encode_instruction(instruction).expand(n, -1, -1)
    inputs = {embodiment: {"observation.state": torch.as_tensor(np.asarray(state["observation.state"])).float(),
                           "observation.state_is_pad": batch["observation.state_is_pad"], "lang_summary": lang}}
    with torch.inference_mode():
        return policy.model.sample_actions(inputs)[embodiment]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--data", required=True, help="one dataset directory (one embodiment)")
    ap.add_argument("--frames", type=int, default=256, help="windows per task")
    ap.add_argument("--lang", choices=LANGS, default="en")
    args = ap.parse_args()
    policy = load_policy(args.checkpoint)
    ds = open_dataset(args.data)
    cfg = policy.model.cfg
    windows = WindowDataset(ds, history=cfg.history, chunk=cfg.chunk)
    ids = [t["id"] for t in ds.tasks]
    rng = np.random.default_rng(0)
    for ti, tid in enumerate(ids):
        frames = np.flatnonzero(ds.task_index == ti)
        if frames.size == 0:
            print(f"{tid:34s} no frames in {args.data}")
            continue
        batch = windows.gather(rng.choice(frames, size=min(args.frames, frames.size), replace=False))
        target = policy._normalize({"embodiment": windows.embodiment, "action": batch["action"].numpy()})
        target = torch.as_tensor(np.asarray(target["action"])).float()
        preds = {other: predict(policy, windows.embodiment, batch, ds.tasks[j][args.lang])
                 for j, other in enumerate(ids)}
        own = preds[tid]
        swaps = [(p - own).abs().mean().item() for o, p in preds.items() if o != tid]
        best = min((p - target).abs().mean().item() for o, p in preds.items() if o != tid)
        print(f"{tid:34s} L1(own) {(own - target).abs().mean().item():.3f}  |swap-own| mean {np.mean(swaps):.3f} "
              f"min {min(swaps):.3f}  L1(best swap) {best:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
