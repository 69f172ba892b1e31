"""The demo's serving stage: policy server, simulated machine over OPC UA, and the bridge between them.

Everything here runs on loopback, each part in its own process as on a real
line (the machine is another device, the server another host): the policy
server (token auth, websocket) and :class:`genba.serve.opcua_machine.SimulatedMachine`
(SignAndEncrypt, certificates from a fresh CA) run in spawned processes
(:mod:`genba.serve.loopback`), and :func:`genba.serve.bridge.run_bridge` closes the
loop through the safety shield at 100 Hz, taking action chunks from the server
ahead of time (:class:`genba.serve.prefetch.ServerSource`) so its cycle never
waits on the model.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

SERVE_TASK = "drive/pmsm-current"
PERIOD_S = 0.01
CYCLE_RT, MACHINE_RT, SERVER_NICE = 20, 10, -5  # SCHED_FIFO priorities and a nice (see docs/safety.md)


async def serve_and_bridge(ckpt: Path, out: Path, seconds: float, console) -> dict:
    """Policy server (HTTP/websocket, token auth) + simulated machine (OPC UA, SignAndEncrypt) + bridge."""
    import numpy as np

    from genba.client import PolicyClient
    from genba.envs.registry import get_task
    from genba.serve.auth import TokenStore
    from genba.serve.bridge import CLIENT_URI, BridgeConfig, run_bridge
    from genba.serve.certs import issue_cert, make_ca
    from genba.serve.loopback import MachineProcess, ServerProcess, free_port
    from genba.serve.opcua_machine import SERVER_URI, MachineConfig
    from genba.serve.prefetch import ServerSource

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
    endpoint = f"opc.tcp://127.0.0.1:{free_port()}/genba/"
    # priorities where the OS grants them (else a warning, and the run goes on): the cycle and the
    # machine (a stand-in for a separate device) in the real-time class, the server above other work
    server = ServerProcess(ckpt, out / "tokens.json", nice=SERVER_NICE)
    try:
        machine = MachineProcess(MachineConfig(task_id=SERVE_TASK, endpoint=endpoint, period_s=PERIOD_S,
                                               cert_dir=str(certs)), rt=MACHINE_RT)
    except BaseException:
        server.stop()
        raise
    client = PolicyClient(server.url, token, transport="ws", session="opcua-bridge")
    console.print(f"policy server {server.url} (token auth), machine {SERVE_TASK} at {endpoint} (SignAndEncrypt); "
                  f"bridging for {seconds:g} s")
    m_stats: dict = {}
    try:
        cfg = BridgeConfig(endpoint=endpoint, cert_dir=str(certs), period_s=PERIOD_S, deadline_s=0.008,
                           instruction=task.instruction_en, cycle_rt_priority=CYCLE_RT)
        rep = await run_bridge(task.spec, None, cfg, seconds=seconds,
                               source=ServerSource(client, task.spec.name, task.instruction_en))
    finally:
        client.close()
        m_stats = machine.stop()
        server.stop()
    summary = {**rep.summary(), "task": SERVE_TASK, "machine_steps": m_stats.get("steps"),
               "machine_setpoint_violations": m_stats.get("violations"), "server": server.url,
               "endpoint": endpoint}
    np.save(out / "commands.npy", np.asarray(rep.commands))
    (out / "bridge.json").write_text(json.dumps(summary, indent=1, default=float))
    console.print(f"bridge: {rep.cycles} cycles, p50 {summary['cycle_ms_p50']:.1f} ms, p99 "
                  f"{summary['cycle_ms_p99']:.1f} ms, missed deadlines {rep.missed_deadlines}, watchdog stops "
                  f"{summary['watchdog_stops']}, shield interventions {rep.interventions or 'none'}")
    return summary
