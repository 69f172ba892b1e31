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
