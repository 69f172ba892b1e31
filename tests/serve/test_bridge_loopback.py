"""The demo's serving path end to end: policy server and simulated machine each in their own process."""

from __future__ import annotations

import asyncio
import shutil

import numpy as np
import pytest

from genba.client import PolicyClient
from genba.envs.registry import get_task
from genba.serve.auth import TokenStore
from genba.serve.bridge import CLIENT_URI, BridgeConfig, run_bridge
from genba.serve.certs import issue_cert, make_ca
from genba.serve.loopback import MachineProcess, ServerProcess, free_port
from genba.serve.opcua_machine import SERVER_URI, MachineConfig
from genba.serve.prefetch import ServerSource


def test_bridge_through_server_and_machine_processes(random_checkpoint, tmp_path):
    """Chunks come from a genba server process over the websocket, setpoints go to a machine process;
    every command the bridge wrote is inside the limits, the machine saw no violation, and its
    counts come back from its process."""
    ckpt, spec = random_checkpoint
    task = get_task("drive/pmsm-current")
    certs = tmp_path / "certs"
    make_ca(certs)
    (certs / "trusted").mkdir()
    shutil.copy(certs / "ca.cert.der", certs / "trusted" / "ca.cert.der")
    issue_cert(certs, "machine", SERVER_URI)
    issue_cert(certs, "bridge", f"{CLIENT_URI}:bridge")
    store = TokenStore(tmp_path / "tokens.json")
    store.add_org("plant", [spec.name])
    token = store.issue("plant")
    endpoint = f"opc.tcp://127.0.0.1:{free_port()}/genba/"
    server = ServerProcess(ckpt, tmp_path / "tokens.json")
    try:
        machine = MachineProcess(MachineConfig(task_id=task.id,
                                               endpoint=endpoint, period_s=0.01, cert_dir=str(certs)))
        client = PolicyClient(server.url, token, transport="ws", session="bridge")
        try:
            cfg = BridgeConfig(endpoint=endpoint, cert_dir=str(certs))
            rep = asyncio.run(run_bridge(spec, None, cfg, cycles=80,
                                         source=ServerSource(client, spec.name, task.instruction_en)))
        finally:
            client.close()
            stats = machine.stop()
    finally:
        server.stop()
    assert rep.cycles == 80 and rep.prefetch["requests"] >= 1 and rep.prefetch["errors"] == 0
    assert rep.missed_deadlines == rep.ages.count(-1) and max(rep.ages) < 4  # debug chunk: 4 slots
    u = np.array(rep.commands)
    assert np.all(u >= np.array(spec.action_low)) and np.all(u <= np.array(spec.action_high))
    assert stats["steps"] > 0 and stats["violations"] == 0


def test_machine_process_that_cannot_start_says_why(tmp_path):
    with pytest.raises(RuntimeError, match="simulated machine drive/pmsm-current"):
        MachineProcess(MachineConfig(task_id="drive/pmsm-current", endpoint=f"opc.tcp://127.0.0.1:{free_port()}/x/",
                                     cert_dir=str(tmp_path / "missing")), start_timeout=60)
