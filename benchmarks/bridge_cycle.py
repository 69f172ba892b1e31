"""OPC UA bridge cycle time (p50/p99) and missed deadlines at 100 Hz on loopback.

A simulated drive behind a SignAndEncrypt OPC UA server (its own thread and
event loop), the bridge as a secured client with the drive's expert as policy
(so the figure is the bridge, not the model), the shield in the loop.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bridge_cycle.py [--seconds 10] [--task drive/pmsm-current]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import socket
import tempfile
import threading
from pathlib import Path

import numpy as np

from genba.envs.registry import get_task
from genba.serve.bridge import CLIENT_URI, BridgeConfig, run_bridge
from genba.serve.certs import issue_cert, make_ca
from genba.serve.opcua_machine import SERVER_URI, MachineConfig, SimulatedMachine


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="drive/pmsm-current")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--period-ms", type=float, default=10.0)
    ap.add_argument("--deadline-ms", type=float, default=8.0)
    args = ap.parse_args()
    task = get_task(args.task)
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        make_ca(d)
        (d / "trusted").mkdir()
        shutil.copy(d / "ca.cert.der", d / "trusted" / "ca.cert.der")
        issue_cert(d, "machine", SERVER_URI)
        issue_cert(d, "bridge", f"{CLIENT_URI}:bridge")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        mcfg = MachineConfig(task_id=args.task, endpoint=f"opc.tcp://127.0.0.1:{port}/genba/",
                             period_s=args.period_ms / 1e3, cert_dir=str(d))
        machine = SimulatedMachine(mcfg)
        loop = asyncio.new_event_loop()
        threading.Thread(target=loop.run_forever, daemon=True).start()
        asyncio.run_coroutine_threadsafe(machine.start(), loop).result(60)
        expert = task.make_expert(task.make_env(0))
        cfg = BridgeConfig(endpoint=mcfg.endpoint, cert_dir=str(d), period_s=args.period_ms / 1e3,
                           deadline_s=args.deadline_ms / 1e3)
        rep = asyncio.run(run_bridge(task.spec, lambda s: expert.act(np.asarray(s, np.float32)), cfg,
                                     seconds=args.seconds))
        asyncio.run_coroutine_threadsafe(machine.stop(), loop).result(30)
        s = rep.summary()
        print(f"task {args.task}, period {args.period_ms} ms, deadline {args.deadline_ms} ms, SignAndEncrypt")
        print(f"cycles {s['cycles']}  cycle p50 {s['cycle_ms_p50']:.2f} ms  p99 {s['cycle_ms_p99']:.2f} ms  "
              f"missed deadlines {s['missed_deadlines']}  overruns {s['overruns']}")
        print(f"tracking error mean {s['tracking_error_mean']}  machine setpoint violations {machine.violations}  "
              f"shield interventions {s['interventions']}")


if __name__ == "__main__":
    main()
