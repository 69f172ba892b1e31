"""The policy server with a fake policy: auth, validation, shielding, websocket, client."""

from __future__ import annotations

import asyncio
import math
import threading

import msgpack
import numpy as np
import pytest
from fastapi.testclient import TestClient

from genba.client import PolicyClient, ServerError
from genba.serve.server import InferRequest, PolicyServer, ServeError, ServerConfig, build_app
from tests.serve.conftest import FakePolicy, fake_backend, loopback_server

OBS = {"embodiment": "toy", "state": [0.0, 0.0, 0.0, 0.5, 0.1], "instruction": "move"}


@pytest.fixture
def setup(tokens):
    server = PolicyServer(fake_backend(), tokens, ServerConfig(max_body_bytes=4096))
    good = tokens.issue("acme", "test")
    other = tokens.issue("globex", "test")
    with TestClient(build_app(server)) as client:  # one event loop for every request
        yield client, server, good, other


def auth(tok):
    return {"Authorization": f"Bearer {tok}"}


def test_infer_returns_shielded_chunk_with_timing(setup):
    client, server, good, _ = setup
    r = client.post("/v1/infer", json={"obs": OBS, "session": "m1"}, headers=auth(good))
    assert r.status_code == 200, r.text
    body = r.json()
    acts = np.asarray(body["actions"])
    assert acts.shape == (4, 3)
    assert np.all(np.abs(np.diff(np.vstack([[0, 0, 0], acts]), axis=0)) <= 5.0 * 0.01 + 1e-9)  # rate-limited
    assert {"queue_ms", "model_ms", "server_ms", "batch_size"} <= set(body["timing"])
    assert body["shield"]["interventions"]["derivative_limit"] >= 1


def test_refusals_never_reach_the_model(setup, tokens):
    client, server, good, other = setup
    FakePolicy.calls = 0
    cases = [
        ({"obs": OBS}, {}, 401),
        ({"obs": OBS}, auth("gbt_00000000_" + "A" * 43), 401),
        ({"obs": OBS}, auth(other), 403),  # globex is not granted 'toy'
        ({"obs": {**OBS, "embodiment": "nope"}}, auth(good), 422),
        ({"obs": {**OBS, "state": [0.0] * 4}}, auth(good), 422),
        ({"obs": {**OBS, "state": ["a"] * 5}}, auth(good), 422),
        ({"obs": {**OBS, "state": 3}}, auth(good), 422),
        ({"obs": OBS, "extra": 1}, auth(good), 422),
        ({"obs": {**OBS, "state": [0.0] * 5000}}, auth(good), 413),
    ]
    for body, headers, status in cases:
        r = client.post("/v1/infer", json=body, headers=headers)
        assert r.status_code == status, (body, r.text)
        assert r.json()["detail"]
    r = client.post("/v1/infer", content=b'{"obs": {"embodiment": "toy", "state": [NaN, 0, 0, 0, 0]}}',
                    headers={**auth(good), "content-type": "application/json"})
    assert r.status_code == 422 and "finite" in r.text
    assert FakePolicy.calls == 0


def test_revoked_token_refused(setup, tokens):
    client, _, good, _ = setup
    assert client.post("/v1/infer", json={"obs": OBS}, headers=auth(good)).status_code == 200
    tokens.revoke(good)
    r = client.post("/v1/infer", json={"obs": OBS}, headers=auth(good))
    assert r.status_code == 401 and "revoked" in r.json()["detail"]


def test_metadata_health_openapi(setup):
    client, _, good, _ = setup
    assert client.get("/v1/health").json()["status"] == "ok"
    meta = client.get("/v1/metadata", headers=auth(good)).json()
    assert meta["granted"] == ["toy"] and "toy" in meta["specs"] and meta["lineage"]
    assert "/v1/infer" in client.get("/openapi.json").json()["paths"]


def test_estop_latch_needs_authorized_reset(setup, tokens):
    client, _, good, _ = setup
    tokens.add_org("acme-ops", ["toy"])  # same grants, no right to reset
    client.post("/v1/infer", json={"obs": OBS, "session": "m"}, headers=auth(good))
    assert client.post("/v1/estop", json={"session": "m"}, headers=auth(good)).json()["latched"]
    for _ in range(30):
        acts = np.asarray(client.post("/v1/infer", json={"obs": OBS, "session": "m"}, headers=auth(good)).json()["actions"])
    assert np.allclose(acts[-1], 0.0)
    assert client.post("/v1/reset", json={"session": "m"}, headers=auth(good)).json()["latched"]
    assert client.post("/v1/estop/reset", json={"session": "m"}, headers=auth(good)).json()["latched"] is False


def test_websocket_msgpack_and_errors(setup):
    client, _, good, other = setup
    with client.websocket_connect("/v1/ws", headers=auth(good)) as ws:
        ws.send_bytes(msgpack.packb({"op": "infer", "obs": OBS, "session": "w", "horizon": 2}))
        out = msgpack.unpackb(ws.receive_bytes())
        assert out["ok"] and np.asarray(out["actions"]).shape == (2, 3)
        ws.send_bytes(msgpack.packb({"op": "infer", "obs": {**OBS, "state": [1.0]}}))
        bad = msgpack.unpackb(ws.receive_bytes())
        assert not bad["ok"] and bad["status"] == 422
        ws.send_bytes(b"\xc1garbage")
        assert msgpack.unpackb(ws.receive_bytes())["status"] == 400
    with client.websocket_connect("/v1/ws", headers=auth(other)) as ws:
        ws.send_bytes(msgpack.packb({"op": "infer", "obs": OBS}))
        assert msgpack.unpackb(ws.receive_bytes())["status"] == 403


@pytest.fixture
def live(tokens):
    """A real uvicorn server on loopback, for the client."""
    server = PolicyServer(fake_backend(), tokens)
    with loopback_server(build_app(server)) as port:
        yield f"http://127.0.0.1:{port}", server


@pytest.mark.parametrize("transport", ["http", "ws"])
def test_client_roundtrip_and_refusals(live, tokens, transport):
    url, server = live
    good, other = tokens.issue("acme"), tokens.issue("globex")
    with PolicyClient(url, good, transport=transport, session="c") as c:
        out = c.infer("toy", OBS["state"], "move")
        assert out["actions"].shape == (4, 3) and c.metadata()["granted"] == ["toy"]
        with pytest.raises(ServerError) as e:
            c.infer("toy", [math.nan] * 5)
        assert e.value.status == 422
    with PolicyClient(url, other, transport=transport) as c, pytest.raises(ServerError) as e:
        c.infer("toy", OBS["state"])
    assert e.value.status == 403
    with PolicyClient(url, "gbt_deadbeef_" + "B" * 43, transport=transport) as c, pytest.raises(ServerError) as e:
        c.infer("toy", OBS["state"])
    assert e.value.status == 401


def test_concurrent_clients_are_batched(live, tokens):
    url, server = live
    tok = tokens.issue("acme")
    errors = []

    def worker(i):
        try:
            with PolicyClient(url, tok, session=f"s{i}") as c:
                for _ in range(5):
                    c.infer("toy", OBS["state"])
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    [t.start() for t in threads]
    [t.join(30) for t in threads]
    assert not errors and server.served == 40
    assert server.batcher.items == 40 and server.batcher.batches < 40  # some calls shared a batch


def test_a_failing_item_fails_only_its_own_request(tokens):
    """A batch where one session's policy refuses its observation: that caller gets a 422 naming
    the problem, the other sessions in the same micro-batch are served."""
    def script(obs):
        if obs["state"][4] > 0.9:
            raise ValueError("obs['state'] refused by the policy")
        return np.zeros((4, 3), np.float32)

    server = PolicyServer(fake_backend(script=script), tokens, ServerConfig(batch_window_s=0.05))
    tok = tokens.issue("acme")

    async def main():
        bad = {**OBS, "state": [0.0, 0.0, 0.0, 0.5, 0.95]}
        reqs = [InferRequest.model_validate({"obs": o, "session": f"s{i}"}) for i, o in enumerate([OBS, bad, OBS])]
        p = server.principal(f"Bearer {tok}")
        return await asyncio.gather(*(server.infer(p, r) for r in reqs), return_exceptions=True)

    ok1, err, ok2 = asyncio.run(main())
    assert isinstance(err, ServeError) and err.status == 422 and "refused by the policy" in err.message
    assert ok1["timing"]["batch_size"] == 3 and np.asarray(ok2["actions"]).shape == (4, 3)
    assert server.batcher.batches == 1
