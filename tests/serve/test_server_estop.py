"""E-stop latches and session quotas (issue 19, item 1): a latched session survives every
other organization's traffic and its own, and only an authorized reset releases it."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient

from genba.serve.auth import AuthError
from genba.serve.server import PolicyServer, ServerConfig, build_app
from tests.serve.conftest import fake_backend

OBS = {"embodiment": "toy", "state": [0.0, 0.0, 0.0, 0.5, 0.1], "instruction": "move"}
OTHER = {**OBS, "embodiment": "other"}


def auth(tok):
    return {"Authorization": f"Bearer {tok}"}


def make(tokens, **cfg):
    server = PolicyServer(fake_backend(), tokens, ServerConfig(batch_window_s=0.0, **cfg))
    return TestClient(build_app(server)), server


def infer(client, tok, session, obs=OBS):
    r = client.post("/v1/infer", json={"obs": obs, "session": session}, headers=auth(tok))
    assert r.status_code == 200, r.text
    return r.json()


def assert_stopping(client, tok, session):
    """Latched, and the commands ramp to the stop value and hold there."""
    for _ in range(30):
        body = infer(client, tok, session)
        assert body["shield"]["latched"] is True, body
    assert np.allclose(body["actions"], 0.0)


def test_another_orgs_flood_of_new_sessions_cannot_release_a_latch(tokens):
    """The attack as reported: A latches 'default'; B, without the reset right, sends more than
    max_sessions resets with new names (then as many infers); A's next infer must still stop."""
    client, server = make(tokens)  # the default table: 1024 sessions
    a, b = tokens.issue("acme"), tokens.issue("globex")
    infer(client, a, "default")
    assert client.post("/v1/estop", json={"session": "default"}, headers=auth(a)).json()["latched"]
    for i in range(server.cfg.max_sessions + 100):
        r = client.post("/v1/reset", json={"session": f"flood-{i}"}, headers=auth(b))
        assert r.status_code == 200, r.text
    assert infer(client, a, "default")["shield"]["latched"] is True
    for i in range(server.cfg.sessions_per_org + 20):  # B's own quota: it evicts its own idle sessions
        infer(client, b, f"flood-infer-{i}", OTHER)
    assert len(server.sessions) <= server.cfg.sessions_per_org + 1
    assert_stopping(client, a, "default")
    assert client.post("/v1/estop/reset", json={"session": "default"}, headers=auth(b)).status_code == 403
    assert client.post("/v1/estop/reset", json={"session": "default"}, headers=auth(a)).json()["latched"] is False
    assert infer(client, a, "default")["shield"]["latched"] is False


def test_an_orgs_own_traffic_never_evicts_its_latched_session(tokens):
    client, server = make(tokens, sessions_per_org=8)
    a = tokens.issue("acme")
    infer(client, a, "press-1")
    client.post("/v1/estop", json={"session": "press-1"}, headers=auth(a))
    for i in range(40):
        infer(client, a, f"s{i}")
    assert server.sessions.get("acme", "press-1").latched and len(server.sessions) == 8
    assert server.sessions.evicted == 40 - 7  # its own idle unlatched sessions, oldest first
    assert_stopping(client, a, "press-1")


def test_quota_full_of_latches_is_a_429_naming_it_and_others_are_untouched(tokens):
    tokens.add_org("globex", ["other"], max_sessions=3)
    client, server = make(tokens, max_sessions=16, sessions_per_org=8)
    a, b = tokens.issue("acme"), tokens.issue("globex")
    for i in range(5):
        infer(client, a, f"a{i}")
    for i in range(3):
        assert client.post("/v1/estop", json={"session": f"b{i}"}, headers=auth(b)).json()["latched"]
    r = client.post("/v1/infer", json={"obs": OTHER, "session": "b-new"}, headers=auth(b))
    assert r.status_code == 429 and "quota (3)" in r.json()["detail"] and "globex" in r.json()["detail"], r.text
    assert client.post("/v1/estop", json={"session": "b-new"}, headers=auth(b)).status_code == 429
    assert all(server.sessions.get("acme", f"a{i}") is not None for i in range(5))
    infer(client, a, "a-new")  # A's quota is A's own
    infer(client, b, "b0", OTHER)  # B may still use its existing (latched) sessions: stop actions
    assert server.health()["latched_sessions"] == 3


def test_a_full_table_is_a_503_and_evicts_only_the_callers_sessions(tokens):
    tokens.add_org("initech", ["toy"])
    client, server = make(tokens, max_sessions=6, sessions_per_org=6)
    a, c = tokens.issue("acme"), tokens.issue("initech")
    for i in range(6):
        infer(client, a, f"a{i}")
        client.post("/v1/estop", json={"session": f"a{i}"}, headers=auth(a))
    r = client.post("/v1/infer", json={"obs": OBS, "session": "c0"}, headers=auth(c))
    assert r.status_code == 503 and "max_sessions=6" in r.json()["detail"], r.text
    client.post("/v1/estop/reset", json={"session": "a0"}, headers=auth(a))  # a0 is idle and unlatched now
    r = client.post("/v1/infer", json={"obs": OBS, "session": "c0"}, headers=auth(c))
    assert r.status_code == 503, "initech must not evict acme's session"
    infer(client, a, "a-new")  # acme gives up its own idle a0
    assert server.sessions.get("acme", "a0") is None and all(
        server.sessions.get("acme", f"a{i}").latched for i in range(1, 6))


def test_estop_before_the_first_infer_latches_the_session(tokens):
    client, _ = make(tokens)
    a = tokens.issue("acme")
    r = client.post("/v1/estop", json={"session": "new-line", "reason": "guard door open"}, headers=auth(a))
    assert r.status_code == 200 and r.json()["latched"] is True, r.text
    assert client.post("/v1/reset", json={"session": "new-line"}, headers=auth(a)).json()["latched"] is True
    body = infer(client, a, "new-line")
    assert body["shield"]["latched"] is True and np.allclose(body["actions"], 0.0)


def test_the_latch_survives_an_embodiment_change_and_the_websocket_path(tokens):
    tokens.add_org("acme", ["toy", "other"], can_reset_estop=True)
    client, _ = make(tokens)
    a = tokens.issue("acme")
    import msgpack

    with client.websocket_connect("/v1/ws", headers=auth(a)) as ws:
        ws.send_bytes(msgpack.packb({"op": "estop", "session": "w"}))
        assert msgpack.unpackb(ws.receive_bytes())["latched"] is True
        for obs in (OBS, OTHER):
            ws.send_bytes(msgpack.packb({"op": "infer", "obs": obs, "session": "w"}))
            out = msgpack.unpackb(ws.receive_bytes())
            assert out["ok"] and out["shield"]["latched"] is True
        ws.send_bytes(msgpack.packb({"op": "estop_reset", "session": "w"}))
        assert msgpack.unpackb(ws.receive_bytes())["latched"] is False


def test_org_session_quota_in_the_token_store(tmp_path):
    from genba.serve.auth import TokenStore

    store = TokenStore(tmp_path / "t.json")
    store.add_org("acme", ["toy"], max_sessions=12)
    tok = store.issue("acme")
    assert TokenStore(tmp_path / "t.json").authenticate(tok).max_sessions == 12
    store.add_org("globex", ["toy"])
    assert store.authenticate(store.issue("globex")).max_sessions is None
    for bad in (0, -3, 2.5, True):
        with pytest.raises(AuthError, match="max_sessions"):
            store.add_org("acme", ["toy"], max_sessions=bad)
