"""Shared fixtures: a toy embodiment with every kind of limit, a fake policy backend, a token store,
a real uvicorn server on loopback."""

from __future__ import annotations

import contextlib
import threading
import time

import numpy as np
import pytest
import uvicorn

from genba.data.spec import EmbodimentSpec, SafetyLimits
from genba.serve.auth import TokenStore
from genba.serve.backends import PolicyBackend


def toy_spec(name: str = "toy", dt: float = 0.01, **safety) -> EmbodimentSpec:
    limits = dict(max_rate=(5.0, 5.0, 2.0), max_accel=(50.0, 50.0, 40.0), max_jerk=(2000.0, 2000.0, 1500.0),
                  position_obs_index=(0, 1, -1), position_low=(-0.5, -0.5, 0.0), position_high=(0.5, 0.5, 0.0))
    limits.update(safety)
    return EmbodimentSpec(
        name=name, robot_type="arm", obs_names=("x", "y", "z", "tx", "ty"), obs_units=("m",) * 5,
        obs_low=(-1.0,) * 5, obs_high=(1.0,) * 5, action_names=("vx", "vy", "grip"),
        action_units=("m/s", "m/s", "1"), action_low=(-1.0, -1.0, -0.5), action_high=(1.0, 1.0, 1.0),
        control_period=dt, action_meaning="joint velocity", safety=SafetyLimits(**limits))


class FakePolicy:
    """Policy interface; the chunk is a fixed function of the state (or a scripted output)."""

    calls = 0

    def __init__(self, chunk: int, dim: int, script=None) -> None:
        self.chunk, self.dim, self.script = chunk, dim, script

    def reset(self) -> None:
        pass

    def infer_chunk(self, obs):
        FakePolicy.calls += 1
        if self.script is not None:
            return np.asarray(self.script(obs), dtype=np.float32)
        s = np.asarray(obs["state"], dtype=np.float32)
        return np.tile(np.array([0.5, -0.5, 0.2], np.float32) * np.sign(s[3] + 1e-3), (self.chunk, 1))


def fake_backend(chunk: int = 4, script=None, specs=None) -> PolicyBackend:
    specs = specs or {"toy": toy_spec(), "other": toy_spec("other")}
    return PolicyBackend(lambda: FakePolicy(chunk, 3, script), chunk=chunk, specs=specs,
                         meta={"model": {"preset": "fake"}, "lineage": {"dataset": "none"}})


@contextlib.contextmanager
def loopback_server(app, **uvicorn_options):
    """Serve ``app`` with uvicorn on a free loopback port in a thread; yields the port."""
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, **{"log_level": "warning", **uvicorn_options}))
    th = threading.Thread(target=srv.run, daemon=True)
    th.start()
    t0 = time.monotonic()
    while not srv.started:
        assert th.is_alive() and time.monotonic() - t0 < 30, "uvicorn did not start"
        time.sleep(0.01)
    try:
        yield srv.servers[0].sockets[0].getsockname()[1]
    finally:
        srv.should_exit = True
        th.join(5)


@pytest.fixture
def tokens(tmp_path):
    store = TokenStore(tmp_path / "tokens.json")
    store.add_org("acme", ["toy"], can_reset_estop=True)
    store.add_org("globex", ["other"])
    return store


@pytest.fixture(scope="session")
def random_checkpoint(tmp_path_factory):
    """(checkpoint dir, spec): a `debug` model with random weights for the PMSM drive, saved as a bundle
    (for the bridge's model-path tests; no training)."""
    import torch

    from genba.envs.registry import get_task
    from genba.model.bundle import save_bundle
    from genba.model.config import get_preset
    from genba.model.generalist import Generalist

    spec = get_task("drive/pmsm-current").spec

    def one(lo, hi):
        lo, hi = np.clip(np.asarray(lo, float), -10, 10), np.clip(np.asarray(hi, float), -10, 10)
        mid, half = (lo + hi) / 2, np.maximum((hi - lo) / 2, 1e-3)
        return {"mean": mid.tolist(), "std": half.tolist(), "min": lo.tolist(), "max": hi.tolist(),
                "q01": lo.tolist(), "q99": hi.tolist()}
    with torch.device("meta"):
        model = Generalist(get_preset("debug"), {spec.name: spec})
    model.to_empty(device="cpu")
    torch.manual_seed(0)
    model.init_weights()
    d = tmp_path_factory.mktemp("bridge-ckpt")
    stats = {spec.name: {"observation.state": one(spec.obs_low, spec.obs_high),
                         "action": one(spec.action_low, spec.action_high)}}
    save_bundle(d, model, stats=stats, preset="debug", lineage={"datasets": ["none: random weights for tests"]})
    return d, spec


@contextlib.contextmanager
def machine_in_thread(cfg):
    """A started SimulatedMachine on its own event loop in a thread (asyncua's server start costs seconds,
    so a test module shares one); yields the machine, stops it and the loop on exit."""
    import asyncio

    from genba.serve.opcua_machine import SimulatedMachine

    m = SimulatedMachine(cfg)
    loop = asyncio.new_event_loop()
    th = threading.Thread(target=loop.run_forever, daemon=True)
    th.start()
    asyncio.run_coroutine_threadsafe(m.start(), loop).result(60)
    try:
        yield m
    finally:
        asyncio.run_coroutine_threadsafe(m.stop(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        th.join(10)
