"""Regenerate the golden files: two tiny checkpoints, a baseline, fixed observations and today's actions.

Run from the repository root, only when a change of the numbers is intended
(and say why in the commit)::

    PYTHONPATH=src OMP_NUM_THREADS=1 python -m tests.golden.make_golden

It rewrites ``tests/golden/{flow,l1,baseline}/`` and ``tests/golden/golden.npz``
(inputs ``obs/...`` and outputs ``out/...``); ``tests/golden/test_golden.py``
then checks that the code still produces those outputs.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import torch

from tests.golden import scenarios

ROOT = Path(__file__).parent


def main() -> None:
    torch.set_num_threads(1)  # the stored numbers are those of one thread (as make test runs)
    for d in (*scenarios.CHECKPOINTS, "baseline"):
        shutil.rmtree(ROOT / d, ignore_errors=True)
    scenarios.build(ROOT)
    obs = scenarios.observations()
    out = scenarios.run(ROOT, obs)
    arrays = {**{f"obs/{k}": v for k, v in obs.items()}, **{f"out/{k}": v for k, v in out.items()}}
    np.savez_compressed(ROOT / "golden.npz", **arrays)
    size = sum(f.stat().st_size for f in ROOT.rglob("*") if f.is_file() and "__pycache__" not in f.parts)
    print(f"{len(out)} outputs, tests/golden holds {size / 1e3:.0f} kB")


if __name__ == "__main__":
    main()
