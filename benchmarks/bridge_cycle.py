"""OPC UA bridge cycle time (p50/p99), missed deadlines and watchdog stops at 100 Hz on loopback, with load.

A simulated drive behind a SignAndEncrypt OPC UA server (its own process), the
bridge as a secured client with the shield in the loop, and the policy:

* ``--policy model``: a genba checkpoint in-process (``--worker process``: a
  Policy in a child process, as ``genba bridge opcua --checkpoint`` runs it;
  ``--worker thread``: in the bridge's own process);
* ``--policy server``: a genba policy server in its own process, over the
  token-authenticated websocket, as ``make demo`` runs it;
* ``--policy expert``: the drive's scripted expert (the bridge alone, no model).

``--load 0,1,2`` runs once per figure with that many busy-loop processes, each
pinned to its own core, started and stopped by the benchmark (each also ends
itself after the run's length plus a margin). Without ``--checkpoint``, or with
one that does not exist yet, a tiny ``debug`` checkpoint is trained first (8
expert episodes, 100 steps; printed) and, given a path, kept there for reuse.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bridge_cycle.py --policy model --load 0,1,2 [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from genba.envs.registry import get_task
from genba.serve.bridge import CLIENT_URI, BridgeConfig, run_bridge
from genba.serve.certs import issue_cert, make_ca
from genba.serve.loopback import MachineProcess, ServerProcess, free_port
from genba.serve.opcua_machine import SERVER_URI, MachineConfig
from genba.serve.prefetch import PolicySource, PrefetchConfig, ProcessPolicySource, ServerSource, StepSource


def _busy(cpu: int, until: float, started) -> None:
    try:
        os.sched_setaffinity(0, {cpu})
    except (OSError, AttributeError):
        pass
    started.set()
    while time.time() < until:
        pass


class Load:
    """``n`` busy-loop processes, the i-th pinned to CPU i (mod the CPUs this process may use);
    forked (a busy loop imports nothing), running before the measured run starts."""

    def __init__(self, n: int, seconds: float) -> None:
        cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count()))
        ctx = mp.get_context("fork")
        until = time.time() + seconds + 30.0  # bounded even if this benchmark dies
        self.started = [ctx.Event() for _ in range(n)]
        self.procs = [ctx.Process(target=_busy, args=(cpus[i % len(cpus)], until, ev), daemon=True)
                      for i, ev in enumerate(self.started)]

    def __enter__(self) -> Load:
        for p, ev in zip(self.procs, self.started):
            p.start()
            ev.wait(10)
        return self

    def __exit__(self, *exc) -> None:
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            p.join(5)


def train_tiny(task_id: str, out: Path, preset: str) -> Path:
    """A checkpoint of ``preset`` from 8 expert episodes and 100 steps (seconds on a CPU)."""
    from genba.data.layout import Episode, write_dataset
    from genba.envs.collect import run_episode
    from genba.envs.seeds import train_seed
    from genba.train.config import TrainConfig
    from genba.train.trainer import train

    print(f"no checkpoint: training a tiny {preset} checkpoint for {task_id} (8 expert episodes, 100 steps)",
          flush=True)
    task = get_task(task_id)
    env = task.make_env(0)
    expert = task.make_expert(env)
    episodes = []
    for k in range(8):
        seed = train_seed(task_id, k, 0)
        expert.reset()
        r = run_episode(task, env, expert.act, seed, k=k)
        episodes.append(Episode(r.observation, r.action, task_index=0, seed=seed))
    data = write_dataset(out / "data", episodes, task.spec, [task])
    cfg = TrainConfig(name="bridge-bench", model=preset, steps=100, batch_size=32, lr=3e-3, warmup_steps=10,
                      log_every=50, ckpt_every=0)
    return train(cfg, [data], out / "run", progress=False).checkpoint


def make_certs(d: Path) -> None:
    make_ca(d)
    (d / "trusted").mkdir()
    shutil.copy(d / "ca.cert.der", d / "trusted" / "ca.cert.der")
    issue_cert(d, "machine", SERVER_URI)
    issue_cert(d, "bridge", f"{CLIENT_URI}:bridge")


def open_source(args, task, ckpt: Path | None, d: Path):
    """(chunk source, close) for ``--policy``."""
    name, instr = task.spec.name, task.instruction_en
    if args.policy == "expert":
        expert = task.make_expert(task.make_env(0))
        return StepSource(lambda s: expert.act(np.asarray(s, np.float32))), lambda: None
    if args.policy == "model" and args.worker == "process":
        src = ProcessPolicySource(ckpt, name, instr, nice=args.policy_nice)
        return src, src.close
    if args.policy == "model":
        from genba.model.policy import load_policy

        return PolicySource(load_policy(ckpt, device="cpu"), name, instr), lambda: None
    from genba.client import PolicyClient
    from genba.serve.auth import TokenStore

    store = TokenStore(d / "tokens.json")
    store.add_org("bench", [name])
    token = store.issue("bench", "bridge benchmark")
    server = ServerProcess(ckpt, d / "tokens.json", nice=args.policy_nice)
    client = PolicyClient(server.url, token, transport="ws", session="bridge-bench")

    def close():
        client.close()
        server.stop()
    return ServerSource(client, name, instr), close


def one_run(args, task, cfg: BridgeConfig, source, load: int) -> dict:
    with Load(load, args.seconds):
        rep = asyncio.run(run_bridge(task.spec, None, cfg, source=source, seconds=args.seconds))
    s = rep.summary()
    s.update(load=load, policy=args.policy, replan=args.replan, missed_pct=100.0 * s["missed_deadlines"] / max(1, s["cycles"]))
    pf = s["prefetch"]
    print(f"{args.policy:6s} replan {args.replan} load {load}: cycles {s['cycles']}  missed {s['missed_deadlines']} ({s['missed_pct']:.1f}%,"
          f" {s['startup_misses']} before the first plan)"
          f"  cycle p50 {s['cycle_ms_p50']:.2f} p99 {s['cycle_ms_p99']:.2f} max {s['cycle_ms_max']:.1f} ms"
          f"  overruns {s['overruns']}  late {s['late']}  watchdog stops {s['watchdog_stops']}"
          f"  action age max {s['action_age_max']}  plans {pf['requests']} (latency p50 {pf['latency_ms_p50']:.1f}"
          f" p99 {pf['latency_ms_p99']:.1f} ms, max {pf['latency_cycles_max']} cycles, errors {pf['errors']})  phase p99 ms {_r(s['phase_ms_p99'])}"
          f"  tracking error {_r(s['tracking_error_mean'])}",
          flush=True)
    return s


def _r(x):
    return {k: round(v, 2) for k, v in x.items()} if isinstance(x, dict) else None if x is None else round(x, 4)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="drive/pmsm-current")
    ap.add_argument("--policy", choices=("expert", "model", "server"), default="model")
    ap.add_argument("--checkpoint", type=Path, help="genba checkpoint (trained here if absent)")
    ap.add_argument("--preset", default="tiny", help="preset of a checkpoint trained here (tiny: the quick "
                    "demo's, chunk 8; debug: chunk 4)")
    ap.add_argument("--worker", choices=("process", "thread"), default="process", help="where --policy model runs")
    ap.add_argument("--load", default="0", help="comma-separated numbers of saturated cores, one run each")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--period-ms", type=float, default=10.0)
    ap.add_argument("--deadline-ms", type=float, default=8.0, help="a cycle's write landing later is counted late")
    ap.add_argument("--replan", type=int, default=1, help="cycles between plans")
    ap.add_argument("--policy-nice", type=int, help="nice of the model/server process (e.g. 5)")
    ap.add_argument("--cycle-nice", type=int, help="nice of the bridge's cycle thread (negative: CAP_SYS_NICE)")
    ap.add_argument("--cycle-rt", type=int, help="SCHED_FIFO priority of the cycle thread (1-99; CAP_SYS_NICE)")
    ap.add_argument("--machine-rt", type=int, help="SCHED_FIFO priority of the simulated machine's process")
    ap.add_argument("--machine-nice", type=int, help="nice of the simulated machine's process (it stands in for "
                    "a separate device; e.g. -10 keeps the load from starving it)")
    ap.add_argument("--json", type=Path, help="also write the summaries here")
    args = ap.parse_args()
    loads = [int(x) for x in args.load.split(",")]
    task = get_task(args.task)
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        make_certs(d)
        ckpt = args.checkpoint
        if args.policy != "expert" and (ckpt is None or not ckpt.exists()):
            ckpt = train_tiny(args.task, d / "tiny", args.preset)
            if args.checkpoint is not None:  # kept for the next run
                ckpt = Path(shutil.copytree(ckpt, args.checkpoint))
        mcfg = MachineConfig(task_id=args.task, endpoint=f"opc.tcp://127.0.0.1:{free_port()}/genba/",
                             period_s=args.period_ms / 1e3, cert_dir=str(d))
        machine = MachineProcess(mcfg, nice=args.machine_nice, rt=args.machine_rt)
        source, close = open_source(args, task, ckpt, d)
        cfg = BridgeConfig(endpoint=mcfg.endpoint, cert_dir=str(d), period_s=args.period_ms / 1e3,
                           deadline_s=args.deadline_ms / 1e3, cycle_nice=args.cycle_nice, cycle_rt_priority=args.cycle_rt,
                           prefetch=PrefetchConfig(replan_every=args.replan))
        print(f"task {args.task}, policy {args.policy} ({args.worker if args.policy == 'model' else ''}), period "
              f"{args.period_ms} ms, SignAndEncrypt, {os.cpu_count()} CPUs, load avg {os.getloadavg()[0]:.2f}")
        try:
            results = [one_run(args, task, cfg, source, n) for n in loads]
        finally:
            close()
            m = machine.stop()
        print(f"machine: {m}")
    if args.json:
        args.json.write_text(json.dumps({"runs": results, "machine": m}, indent=1, default=float))


if __name__ == "__main__":
    main()
