"""The server shields each chunk with ``SafetyShield.plan`` on the shield's own clock (issue 19, item 2):
back-to-back chunks are one continuous jerk-limited command stream, a lapsed stream starts again from rest,
and a model answering NaN gets the shield's controlled stop, never an error."""

from __future__ import annotations

import functools

import numpy as np
import pytest
from fastapi.testclient import TestClient

from genba.serve import server as server_module
from genba.serve.server import PolicyServer, ServerConfig, build_app
from genba.serve.shield import ManualClock, SafetyShield
from tests.serve.conftest import fake_backend, toy_spec

OBS = {"embodiment": "toy", "state": [0.0, 0.0, 0.0, 0.5, 0.1], "instruction": "move"}
SPEC = toy_spec()
RATE = np.array(SPEC.safety.max_rate) * SPEC.control_period * (1 + 1e-9)  # largest step per period


@pytest.fixture
def clock(monkeypatch):
    """The sessions' shields run on a clock the test moves (wall time under CI load would lapse streams)."""
    c = ManualClock(50.0)
    monkeypatch.setattr(server_module, "SafetyShield", functools.partial(SafetyShield, clock=c))
    return c


@pytest.fixture
def serve(tokens, clock):
    def run(script=None):
        server = PolicyServer(fake_backend(script=script), tokens, ServerConfig())
        tok = tokens.issue("acme", "test")
        client = TestClient(build_app(server))

        def infer(session="m"):
            r = client.post("/v1/infer", json={"obs": OBS, "session": session},
                            headers={"Authorization": f"Bearer {tok}"})
            assert r.status_code == 200, r.text
            return np.asarray(r.json()["actions"]), r.json()["shield"]
        return client, infer
    return run


def test_back_to_back_chunks_are_one_rate_limited_stream_and_a_lapse_restarts_from_rest(serve, clock):
    client, infer = serve()
    with client:
        stream = [np.zeros(3)]
        for _ in range(15):
            acts, stats = infer()
            stream.extend(acts)
            clock.advance(len(acts) * SPEC.control_period)  # the machine runs the chunk, then asks again
        assert np.all(np.abs(np.diff(np.array(stream), axis=0)) <= RATE)  # the chunks join without a jump
        assert abs(stream[-1][2]) > 0.19 and "watchdog" not in stats["interventions"]
        deadline = max(ServerConfig().shield.deadline_s, 6 * SPEC.control_period)
        clock.advance(deadline + 0.15)  # the client went away: the machine's own watchdog stopped the axes
        acts, stats = infer()
        assert stats["interventions"]["watchdog"] == 1
        assert np.all(np.abs(acts[0]) <= RATE)  # the new chunk starts from rest, not from the old command


def test_model_answering_nan_is_a_controlled_stop(serve, clock):
    calls = []

    def script(obs):
        calls.append(1)
        return np.full((4, 3), 0.2 if len(calls) <= 10 else np.nan, np.float32)

    client, infer = serve(script)
    with client:
        stream = [np.zeros(3)]
        for k in range(30):
            acts, stats = infer()
            stream.extend(acts)
            clock.advance(len(acts) * SPEC.control_period)
            if k == 9:
                assert stream[-1][2] > 0.1 and "nonfinite_action" not in stats["interventions"]
        assert stats["interventions"]["nonfinite_action"] == 80
        assert np.allclose(stream[-1], 0.0) and np.all(np.abs(np.diff(np.array(stream), axis=0)) <= RATE)
