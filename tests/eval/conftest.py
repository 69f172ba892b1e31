"""A debug-preset checkpoint for the real embodiments of a few tasks (untrained weights)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from genba.data.stats import compute_stats
from genba.envs.registry import get_task
from genba.model.bundle import save_bundle
from genba.model.config import get_preset
from genba.model.generalist import Generalist

TASKS = ("metaworld/reach-v3", "drive/pmsm-current")


def fake_stats(spec, seed: int = 0) -> dict:
    """Plausible stats: observations around 0, actions spread over the spec's limits."""
    rng = np.random.default_rng(seed)
    lo, hi = np.asarray(spec.action_low), np.asarray(spec.action_high)
    return compute_stats({"observation.state": rng.normal(size=(200, spec.obs_dim)).astype(np.float32),
                          "action": rng.uniform(lo, hi, size=(200, spec.action_dim)).astype(np.float32)})


@pytest.fixture(scope="session")
def debug_checkpoint(tmp_path_factory):
    specs = {get_task(t).spec.name: get_task(t).spec for t in TASKS}
    with torch.device("meta"):
        model = Generalist(get_preset("debug"), specs)
    model.to_empty(device="cpu")
    torch.manual_seed(0)
    model.init_weights()
    out = tmp_path_factory.mktemp("ckpt") / "step-000000"
    save_bundle(out, model, stats={n: fake_stats(s) for n, s in specs.items()}, preset="debug")
    return out
