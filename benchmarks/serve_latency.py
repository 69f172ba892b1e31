"""Policy-server latency and throughput on loopback: 1, 8 and 32 concurrent clients.

A `small`-preset model with random weights (latency does not depend on the
weights) for the drive embodiments, served by uvicorn on 127.0.0.1; the clients
run in another process (asyncio), each on a persistent websocket with msgpack
frames (the protocol genba.client speaks). Bounded in count and time; every
request must be answered without error (the script fails otherwise).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/serve_latency.py [--preset small] [--requests 40] [--seconds 30]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
import uvicorn

from genba.envs.registry import get_task
from genba.model.bundle import save_bundle
from genba.model.config import get_preset
from genba.model.generalist import build_model
from genba.serve.auth import TokenStore
from genba.serve.backends import load_backend
from genba.serve.server import PolicyServer, ServerConfig, build_app

TASKS = ("drive/pmsm-current", "drive/dc-current")


def build_checkpoint(preset: str, d: Path) -> Path:
    specs = {get_task(t).spec.name: get_task(t).spec for t in TASKS}
    model = build_model(get_preset(preset), specs)

    def stats(lo, hi):
        lo, hi = np.clip(lo, -10, 10), np.clip(hi, -10, 10)
        return {"mean": ((lo + hi) / 2).tolist(), "std": np.maximum((hi - lo) / 2, 1e-3).tolist(), "min": lo.tolist(),
                "max": hi.tolist(), "q01": lo.tolist(), "q99": hi.tolist()}
    st = {n: {"observation.state": stats(np.array(s.obs_low), np.array(s.obs_high)),
              "action": stats(np.array(s.action_low), np.array(s.action_high))} for n, s in specs.items()}
    return save_bundle(d, model, stats=st, preset=preset)


def start(server: PolicyServer) -> tuple[uvicorn.Server, str]:
    srv = uvicorn.Server(uvicorn.Config(build_app(server), host="127.0.0.1", port=0, log_level="warning"))
    threading.Thread(target=srv.run, daemon=True).start()
    while not srv.started:
        time.sleep(0.01)
    return srv, f"http://127.0.0.1:{srv.servers[0].sockets[0].getsockname()[1]}"


def load(url: str, token: str, clients: int, requests: int, seconds: float) -> dict:
    """Run the clients in a separate process (asyncio, one websocket each) so the
    load generator does not share the server's interpreter lock."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    proc = ctx.Process(target=_client_process, args=(url, token, clients, requests, seconds, q))
    proc.start()
    out = q.get(timeout=seconds + 120)
    proc.join(30)
    return out


def _client_process(url, token, clients, requests, seconds, q) -> None:
    q.put(asyncio.run(_clients(url, token, clients, requests, seconds)))


async def _clients(url, token, clients, requests, seconds) -> dict:
    import msgpack
    from websockets.asyncio.client import connect

    lat, errors, sent = [], [], [0]
    end = time.perf_counter() + seconds
    obs = {t: get_task(t).make_env(0).reset(seed=0)[0].tolist() for t in TASKS}

    async def worker(i: int) -> None:
        task = TASKS[i % len(TASKS)]
        spec = get_task(task).spec
        try:
            async with connect("ws" + url[4:] + "/v1/ws", additional_headers={"Authorization": f"Bearer {token}"},
                               max_size=2 ** 22) as ws:
                for _ in range(requests):
                    if time.perf_counter() > end:
                        break
                    t0 = time.perf_counter()
                    sent[0] += 1
                    await ws.send(msgpack.packb({"op": "infer", "session": f"c{i}", "obs": {
                        "embodiment": spec.name, "state": obs[task], "instruction": "track the reference"}}))
                    out = msgpack.unpackb(await ws.recv())
                    if not out.get("ok") or len(out["actions"][0]) != spec.action_dim:
                        raise RuntimeError(f"bad answer: {str(out)[:200]}")
                    lat.append((time.perf_counter() - t0) * 1e3)
        except Exception as e:
            errors.append(repr(e))

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(clients)))
    wall = time.perf_counter() - t0
    a = np.asarray(lat) if lat else np.zeros(1)
    return {"clients": clients, "sent": sent[0], "answered": len(lat), "errors": errors,
            "p50_ms": float(np.percentile(a, 50)), "p99_ms": float(np.percentile(a, 99)),
            "throughput_rps": len(lat) / wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="small")
    ap.add_argument("--requests", type=int, default=40, help="per client")
    ap.add_argument("--seconds", type=float, default=30.0, help="per concurrency level")
    ap.add_argument("--clients", default="1,8,32")
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = build_checkpoint(args.preset, Path(tmp) / "ckpt")
        tokens = TokenStore(Path(tmp) / "tokens.json")
        tokens.add_org("bench", ["pmsm", "dc"])
        token = tokens.issue("bench")
        server = PolicyServer(load_backend(str(ckpt)), tokens, ServerConfig())
        srv, url = start(server)
        print(f"preset {args.preset}, chunk {server.backend.chunk}, {url}")
        print(f"{'clients':>7} {'sent':>6} {'answered':>8} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>8} errors")
        failed = False
        for n in (int(x) for x in args.clients.split(",")):
            r = load(url, token, n, args.requests, args.seconds)
            print(f"{r['clients']:>7} {r['sent']:>6} {r['answered']:>8} {r['p50_ms']:>8.1f} {r['p99_ms']:>8.1f} "
                  f"{r['throughput_rps']:>8.1f} {len(r['errors'])}")
            failed |= bool(r["errors"]) or r["sent"] != r["answered"]
        print(f"model calls {server.batcher.batches} for {server.batcher.items} requests "
              f"(mean batch {server.batcher.items / max(server.batcher.batches, 1):.1f})")
        srv.should_exit = True
        if failed:
            raise SystemExit("FAILED: a request was lost or answered with an error")
        print("OK: no request lost, no error")


if __name__ == "__main__":
    main()
