"""The OPC UA bridge end to end with a slow policy: no answer is played after its validity.

The fault from the field: a policy slower than the cycle. The bridge used to wait for the answer
inside the cycle and, once it came (three cycles later at 30 ms), play it as if it were fresh.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import time

import numpy as np
import pytest

import genba.serve.bridge as bridge
from genba.envs.registry import get_task
from genba.serve.bridge import BridgeConfig, run_bridge
from genba.serve.certs import issue_cert, make_ca
from genba.serve.opcua_machine import SERVER_URI, MachineConfig
from genba.serve.shield import SafetyShield, ShieldConfig

from .conftest import machine_in_thread

TASK = "drive/dc-current"


@pytest.fixture(scope="module")
def machine(tmp_path_factory):
    d = tmp_path_factory.mktemp("certs")
    make_ca(d)
    (d / "trusted").mkdir()
    shutil.copy(d / "ca.cert.der", d / "trusted" / "ca.cert.der")
    issue_cert(d, "machine", SERVER_URI)
    issue_cert(d, "bridge", "urn:genba:bridge:bridge")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = MachineConfig(task_id=TASK, endpoint=f"opc.tcp://127.0.0.1:{port}/genba/", period_s=0.01, cert_dir=str(d))
    with machine_in_thread(cfg) as m:
        yield m, cfg


def test_bridge_slow_policy_over_opcua_plays_no_stale_answer(machine, monkeypatch):
    """A per-step policy taking 30 ms (3 periods): each answer tags the observation it was computed
    from; a spy on the bridge's shield sees, per cycle, which observation the played action came
    from. An answer is valid for its own cycle and the next; nothing older may reach the shield,
    and every cycle without a valid answer is counted as missed."""
    m, mcfg = machine
    spec = get_task(TASK).spec
    seen: list[tuple] = []  # observation of each cycle, in order
    played: list[int | None] = []  # per cycle: age in cycles of the played answer's observation
    answers: dict[int, tuple] = {}

    class Spy(SafetyShield):
        def step(self, action=None, obs=None, now=None):
            seen.append(tuple(np.asarray(obs, float)))
            if action is None:
                played.append(None)
            else:
                src = answers[int(round(float(np.asarray(action).reshape(-1)[0]) / 1e-6))]
                k0 = max(i for i, o in enumerate(seen) if o == src)  # latest cycle that read it
                played.append(len(seen) - 1 - k0)
            return super().step(action, obs, now)
    monkeypatch.setattr(bridge, "SafetyShield", Spy)

    def slow(state):
        tag = len(answers) + 1
        answers[tag] = tuple(np.asarray(state, float))
        time.sleep(0.03)
        return np.full(spec.action_dim, tag * 1e-6)

    cfg = BridgeConfig(endpoint=mcfg.endpoint, cert_dir=mcfg.cert_dir, period_s=0.01, deadline_s=0.008,
                       shield=ShieldConfig(deadline_s=0.05))
    rep = asyncio.run(run_bridge(spec, slow, cfg, cycles=60))
    assert rep.cycles == 60 == len(played)
    ages = [a for a in played if a is not None]
    assert all(a <= 1 for a in ages), f"stale answers played: ages {sorted(set(ages))}"
    assert rep.missed_deadlines == played.count(None) >= 1
