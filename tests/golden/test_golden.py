"""Golden outputs: today's actions of two frozen tiny checkpoints and a baseline on fixed observations.

Every path from an observation to an action (``Policy.infer`` / ``infer_chunk``,
``infer_many`` / ``infer_chunk_many``, the server backend, eval's batched
policy, the MLP baseline policy) must reproduce the stored actions exactly
(bit for bit), so a refactor that changes a number fails here. To regenerate
after an intended change (see ``make_golden.py`` and README.md)::

    PYTHONPATH=src OMP_NUM_THREADS=1 python -m tests.golden.make_golden
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.golden import scenarios

ROOT = Path(__file__).parent


@pytest.fixture(scope="module")
def golden():
    with np.load(ROOT / "golden.npz") as z:
        stored = {k: z[k] for k in z.files}
    obs = {k[4:]: v for k, v in stored.items() if k.startswith("obs/")}
    want = {k[4:]: v for k, v in stored.items() if k.startswith("out/")}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as they were made
    try:
        got = scenarios.run(ROOT, obs)
    finally:
        torch.set_num_threads(threads)
    return want, got


def test_every_scenario_is_covered(golden):
    want, got = golden
    assert sorted(got) == sorted(want)


@pytest.mark.parametrize("prefix", ["flow.", "l1.", "baseline."])
def test_actions_equal_the_stored_ones(golden, prefix):
    want, got = golden
    keys = [k for k in want if k.startswith(prefix)]
    assert keys
    diffs = {k: float(np.max(np.abs(got[k].astype(np.float64) - want[k]))) for k in keys}
    worst = max(diffs, key=diffs.get)
    assert all(got[k].dtype == want[k].dtype and got[k].shape == want[k].shape for k in keys)
    assert diffs[worst] == 0.0, f"{worst}: max abs diff {diffs[worst]:.3g}"
