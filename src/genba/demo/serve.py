"""The demo's serving stage: policy server, simulated machine over OPC UA, and the bridge between them.

Everything here runs on loopback: uvicorn serves the checkpoint (token auth,
websocket), :class:`genba.serve.opcua_machine.SimulatedMachine` plays the drive
(SignAndEncrypt with certificates issued from a fresh CA), and
:func:`genba.serve.bridge.run_bridge` closes the loop through the safety shield.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from genba.errors import CLIError

SERVE_TASK = "drive/pmsm-current"


async def serve_and_bridge(ckpt: Path, out: Path, seconds: float, console) -> dict:
    """Policy server (HTTP/websocket, token auth) + simulated machine (OPC UA, SignAndEncrypt) + bridge."""
    import asyncio

    import numpy as np
    from genba.client import PolicyClient
    from genba.envs.registry import get_task
    from genba.serve.auth import TokenStore
    from genba.serve.bridge import CLIENT_URI, BridgeConfig, run_bridge
    from genba.serve.certs import issue_cert, make_ca
    from genba.serve.opcua_machine import SERVER_URI, MachineConfig, SimulatedMachine
    from genba.serve.backends import load_backend
    from genba.serve.server import PolicyServer, ServerConfig, build_app

    task = get_task(SERVE_TASK)
    certs = out / "certs"
    make_ca(certs)
    (certs / "trusted").mkdir(parents=True, exist_ok=True)
    shutil.copy(certs / "ca.cert.der", certs / "trusted" / "ca.cert.der")
    issue_cert(certs, "machine", SERVER_URI)
    issue_cert(certs, "bridge", f"{CLIENT_URI}:bridge")
    store = TokenStore(out / "tokens.json")
    store.add_org("steelworks", [task.spec.name])
    token = store.issue("steelworks", "demo bridge")
    server = PolicyServer(load_backend(str(ckpt)), store, ServerConfig())
    http, http_thread = _start_http(build_app(server))
    url = f"http://127.0.0.1:{http.config.port}"
    endpoint = f"opc.tcp://127.0.0.1:{_free_port()}/genba/"
    machine = SimulatedMachine(MachineConfig(task_id=SERVE_TASK, endpoint=endpoint, period_s=0.02, cert_dir=str(certs)))
    await machine.start()
    client = PolicyClient(url, token, transport="ws", session="opcua-bridge")
    console.print(f"policy server {url} (token auth), machine {SERVE_TASK} at {endpoint} (SignAndEncrypt); "
                  f"bridging for {seconds:g} s")

    def act(state):
        return client.infer(task.spec.name, state, task.instruction_en, horizon=1)["actions"][0]

    try:
        cfg = BridgeConfig(endpoint=endpoint, cert_dir=str(certs), period_s=0.02, deadline_s=0.015,
                           instruction=task.instruction_en)
        rep = await run_bridge(task.spec, act, cfg, seconds=seconds)
    finally:
        client.close()
        await machine.stop()
        http.should_exit = True
        await asyncio.to_thread(http_thread.join, 10)
    summary = {**rep.summary(), "task": SERVE_TASK, "machine_steps": machine.steps,
               "machine_setpoint_violations": machine.violations, "server": url, "endpoint": endpoint}
    np.save(out / "commands.npy", np.asarray(rep.commands))
    (out / "bridge.json").write_text(json.dumps(summary, indent=1, default=float))
    console.print(f"bridge: {rep.cycles} cycles, p50 {summary['cycle_ms_p50']:.1f} ms, missed deadlines "
                  f"{rep.missed_deadlines}, shield interventions {rep.interventions or 'none'}")
    return summary


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_http(app):
    """uvicorn in a background thread on a free loopback port; (server, thread) once it accepts."""
    import threading

    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=_free_port(), log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.perf_counter() + 30
    while not server.started:
        if time.perf_counter() > deadline or not thread.is_alive():
            raise CLIError("the policy server did not start")
        time.sleep(0.05)
    return server, thread
