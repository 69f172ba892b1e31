"""The simulated machine and the policy server in their own processes, for the demo and the benchmark.

On a real line the machine is another device and the policy server another
host; sharing the bridge's process (one GIL, one event loop) makes the bridge
pay for the machine's simulation and the model's forward pass in its own cycle.
These helpers give each its own spawned process on loopback, with optional
priority (``nice``) and CPU pinning (``cpus``), and hand back what it measured.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import socket
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from genba.serve.prefetch import set_priority


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _machine_main(cfg, conn) -> None:
    from genba.serve.opcua_machine import SimulatedMachine

    m = SimulatedMachine(cfg)
    await m.start()
    conn.send(("ready", None))
    await asyncio.to_thread(conn.recv)  # the parent's stop
    await m.stop()
    err = np.asarray(m.errors, float)
    err = err[np.isfinite(err)]
    conn.send(("stats", {"steps": m.steps, "episodes": m.episode, "violations": m.violations,
                         "tracking_error_mean": float(err.mean()) if err.size else None}))


def _machine_proc(cfg, conn, nice, cpus, rt) -> None:
    set_priority(nice, cpus, "machine", rt=rt)
    try:
        asyncio.run(_machine_main(cfg, conn))
    except Exception as e:  # told to the parent, which raises it
        conn.send(("error", f"{type(e).__name__}: {e}"))


class MachineProcess:
    """A :class:`~genba.serve.opcua_machine.SimulatedMachine` in a child process; ``stop()`` returns
    its counts (steps, episodes, setpoint violations, mean tracking error)."""

    def __init__(self, cfg, *, nice: int | None = None, cpus: Sequence[int] | None = None,
                 rt: int | None = None, start_timeout: float = 120.0) -> None:
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_machine_proc, args=(cfg, child, nice, cpus, rt), name="genba-machine",
                                 daemon=True)
        self._proc.start()
        child.close()
        if not self._conn.poll(start_timeout):
            self._kill()
            raise RuntimeError(f"simulated machine {cfg.task_id}: not serving within {start_timeout:g} s")
        kind, payload = self._conn.recv()
        if kind != "ready":
            self._kill()
            raise RuntimeError(f"simulated machine {cfg.task_id}: {payload}")

    def stop(self, timeout: float = 30.0) -> dict:
        self._conn.send("stop")
        stats: dict = {}
        if self._conn.poll(timeout):
            kind, payload = self._conn.recv()
            stats = payload if kind == "stats" else {"error": payload}
        self._kill()
        return stats

    def _kill(self) -> None:
        self._proc.join(5)
        if self._proc.is_alive():
            self._proc.terminate()
            self._proc.join(5)


def _server_proc(checkpoint: str, tokens: str, port: int, nice, cpus, threads: int) -> None:
    set_priority(nice, cpus, "policy server")
    import torch
    import uvicorn

    from genba.serve.auth import TokenStore
    from genba.serve.backends import load_backend
    from genba.serve.server import PolicyServer, ServerConfig, build_app

    torch.set_num_threads(threads)
    server = PolicyServer(load_backend(checkpoint), TokenStore(Path(tokens)), ServerConfig())
    uvicorn.run(build_app(server), host="127.0.0.1", port=port, log_level="warning")


class ServerProcess:
    """``genba serve``'s app for ``checkpoint`` in a child process on a free loopback port."""

    def __init__(self, checkpoint: str | Path, tokens: str | Path, *, nice: int | None = None,
                 cpus: Sequence[int] | None = None, threads: int = 1, start_timeout: float = 120.0) -> None:
        import httpx

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        ctx = mp.get_context("spawn")
        self._proc = ctx.Process(target=_server_proc, name="genba-server", daemon=True,
                                 args=(str(checkpoint), str(tokens), self.port, nice, cpus, threads))
        self._proc.start()
        deadline = time.perf_counter() + start_timeout
        while True:
            if not self._proc.is_alive():
                raise RuntimeError(f"policy server for {checkpoint}: exited with code {self._proc.exitcode}")
            try:
                if httpx.get(self.url + "/v1/health", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.perf_counter() > deadline:
                self.stop()
                raise RuntimeError(f"policy server for {checkpoint}: not answering within {start_timeout:g} s")
            time.sleep(0.1)

    def stop(self) -> None:
        self._proc.terminate()  # uvicorn shuts down gracefully on SIGTERM
        self._proc.join(10)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join(5)
