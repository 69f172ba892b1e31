"""The server and the bridge with the real model (`debug` preset, random weights, saved as a bundle)."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient

from genba.envs.registry import get_task
from genba.serve.backends import load_backend
from genba.serve.server import PolicyServer, ServerConfig, build_app
from tests.fixtures import limit_stats, tiny_checkpoint

TASKS = ("drive/dc-current", "drive/pmsm-current")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    specs = {get_task(t).spec.name: get_task(t).spec for t in TASKS}
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt"), specs, stats={n: limit_stats(s) for n, s in specs.items()},
                           linear=False, lineage={"datasets": ["none: random weights for tests"]})


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
    alone[0].infer_chunk(obs[0])
    twice = backend.infer_batch([(sessions[0], obs[0]), (sessions[0], obs[0])])  # one session, two requests
    np.testing.assert_allclose(twice[0], alone[0].infer_chunk(obs[0]), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(twice[1], alone[0].infer_chunk(obs[0]), rtol=1e-4, atol=1e-5)  # served in order
