"""The server and the bridge with the real model (`debug` preset, random weights, saved as a bundle)."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient

from genba.envs.registry import get_task
from genba.model.bundle import save_bundle
from genba.model.config import get_preset
from genba.model.generalist import build_model
from genba.serve.backends import load_backend
from genba.serve.server import PolicyServer, ServerConfig, build_app

TASKS = ("drive/dc-current", "drive/pmsm-current")


def stats_for(spec):
    def one(lo, hi):
        lo = np.clip(np.asarray(lo, float), -10, 10)
        hi = np.clip(np.asarray(hi, float), -10, 10)
        mid, half = (lo + hi) / 2, np.maximum((hi - lo) / 2, 1e-3)
        return {"mean": mid.tolist(), "std": half.tolist(), "min": lo.tolist(), "max": hi.tolist(),
                "q01": lo.tolist(), "q99": hi.tolist()}
    return {"observation.state": one(spec.obs_low, spec.obs_high), "action": one(spec.action_low, spec.action_high)}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    specs = {get_task(t).spec.name: get_task(t).spec for t in TASKS}
    model = build_model(get_preset("debug"), specs)
    d = tmp_path_factory.mktemp("ckpt")
    save_bundle(d, model, stats={n: stats_for(s) for n, s in specs.items()}, preset="debug",
                lineage={"datasets": ["none: random weights for tests"]})
    return d


def test_model_server_batches_across_embodiments(checkpoint, tokens):
    tokens.add_org("acme", ["dc", "pmsm"], can_reset_estop=True)
    tok = tokens.issue("acme")
    backend = load_backend(str(checkpoint))
    server = PolicyServer(backend, tokens, ServerConfig(batch_window_s=0.002))
    items = []
    for t in TASKS:
        env = get_task(t).make_env(0)
        obs, _ = env.reset(seed=0)
        items.append((get_task(t).spec, obs))
    # one batched call for two sessions of two embodiments, and the per-session policy state advances
    pols = [backend.new_state() for _ in items]
    chunks = backend.infer_batch([(p, {"embodiment": s.name, "state": o, "instruction": "track"})
                                  for p, (s, o) in zip(pols, items)])
    assert [c.shape for c in chunks] == [(backend.chunk, s.action_dim) for s, _ in items]
    with TestClient(build_app(server)) as client:
        meta = client.get("/v1/metadata", headers={"Authorization": f"Bearer {tok}"}).json()
        assert meta["model"]["preset"] == "debug" and len(meta["model"]["sha256"]["model.safetensors"]) == 64
        for spec, obs in items:
            r = client.post("/v1/infer", json={"obs": {"embodiment": spec.name, "state": obs.tolist(),
                                                       "instruction": "track"}, "session": spec.name},
                            headers={"Authorization": f"Bearer {tok}"})
            assert r.status_code == 200, r.text
            acts = np.asarray(r.json()["actions"])
            assert acts.shape == (backend.chunk, spec.action_dim)
            assert np.all(acts >= np.array(spec.action_low)) and np.all(acts <= np.array(spec.action_high))


def test_batched_sessions_match_their_own_policies(checkpoint):
    """The micro-batch (one trunk pass, two embodiments, three sessions) gives each session what
    its own Policy gives alone, step after step; a bad observation fails only its own request."""
    backend = load_backend(str(checkpoint))
    specs = [get_task(t).spec for t in (*TASKS, TASKS[0])]
    sessions, alone = [backend.new_state() for _ in specs], [backend.new_state() for _ in specs]
    rng = np.random.default_rng(0)
    for _ in range(4):
        obs = [{"embodiment": s.name, "state": rng.uniform(-0.5, 0.5, s.obs_dim).astype(np.float32),
                "instruction": "track"} for s in specs]
        got = backend.infer_batch(list(zip(sessions, obs)))
        for g, p, o in zip(got, alone, obs):
            np.testing.assert_allclose(g, p.infer_chunk(o), rtol=1e-4, atol=1e-5)
    bad = {"embodiment": specs[1].name, "state": np.zeros(specs[1].obs_dim + 1, np.float32), "instruction": ""}
    outs = backend.infer_batch([(sessions[0], obs[0]), (sessions[1], bad)])
    assert isinstance(outs[1], ValueError) and "obs['state'] has shape" in str(outs[1])
    assert outs[0].shape == (backend.chunk, specs[0].action_dim)
