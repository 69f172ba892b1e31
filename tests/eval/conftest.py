"""A debug-preset checkpoint for the real embodiments of a few tasks (untrained weights)."""

from __future__ import annotations

import pytest

from genba.envs.registry import get_task
from tests.fixtures import spec_stats, tiny_checkpoint

TASKS = ("metaworld/reach-v3", "drive/pmsm-current")


@pytest.fixture(scope="session")
def debug_checkpoint(tmp_path_factory):
    specs = {get_task(t).spec.name: get_task(t).spec for t in TASKS}
    out = tmp_path_factory.mktemp("ckpt") / "step-000000"
    return tiny_checkpoint(out, specs, stats={n: spec_stats(s) for n, s in specs.items()}, linear=False)


@pytest.fixture(scope="session")
def pixel_checkpoint(tmp_path_factory):
    return make_pixel_checkpoint(tmp_path_factory.mktemp("pxckpt") / "step-000000")


def make_pixel_checkpoint(out):
    """A `debug-pixels` bundle (untrained) for the Jaco's pixels-mode spec at 16x16 and a camera-less drive."""
    import numpy as np

    from genba.model.bundle import save_bundle
    from genba.model.config import get_preset
    from genba.model.generalist import build_model

    jaco = get_task("arm/jaco-reach").pixel_spec(16)
    drive = get_task("drive/pmsm-current").spec
    specs = {jaco.name: jaco, drive.name: drive}
    stats = {n: spec_stats(s) for n, s in specs.items()}
    for cam in jaco.cameras:  # LeRobot's image stats: per channel, in [0, 1]
        stats[jaco.name][cam.feature] = {k: np.full((3, 1, 1), v, np.float32) for k, v in
                                         (("mean", 0.5), ("std", 0.25), ("min", 0.0), ("max", 1.0))}
    model = build_model(get_preset("debug-pixels"), specs, seed=0)
    return save_bundle(out, model, stats=stats, preset="debug-pixels")
