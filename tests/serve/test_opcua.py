"""OPC UA: a simulated drive behind a secured server, refusals, and the bridge end to end."""

from __future__ import annotations

import asyncio
import shutil
import socket
import threading

import numpy as np
import pytest
from asyncua import Client

from genba.data.lerobot import Episode, write_dataset
from genba.envs.collect import run_episode
from genba.envs.registry import get_task
from genba.envs.seeds import train_seed
from genba.model.policy import load_policy
from genba.serve.bridge import BridgeConfig, machine_nodes, run_bridge, secure_client
from genba.serve.certs import issue_cert, make_ca
from genba.serve.opcua_machine import SERVER_URI, MachineConfig, SimulatedMachine
from genba.serve.shield import ShieldConfig

TASK = "drive/dc-current"


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    d = tmp_path_factory.mktemp("certs")
    make_ca(d)
    (d / "trusted").mkdir()
    shutil.copy(d / "ca.cert.der", d / "trusted" / "ca.cert.der")
    issue_cert(d, "machine", SERVER_URI)
    issue_cert(d, "bridge", "urn:genba:bridge:bridge")
    issue_cert(d, "intruder", "urn:genba:bridge:intruder")  # signed by our CA but not a machine user
    issue_cert(d, "rogue", "urn:genba:bridge:rogue", self_signed=True)
    return d


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def machine(certs):
    """One secured machine for the module, on its own event loop in a thread (asyncua's server
    start costs seconds; the refusal tests each open their own client session against it)."""
    cfg = MachineConfig(task_id=TASK, endpoint=f"opc.tcp://127.0.0.1:{free_port()}/genba/", period_s=0.01,
                        cert_dir=str(certs))
    m = SimulatedMachine(cfg)
    loop = asyncio.new_event_loop()
    th = threading.Thread(target=loop.run_forever, daemon=True)
    th.start()
    asyncio.run_coroutine_threadsafe(m.start(), loop).result(60)
    yield m, cfg
    asyncio.run_coroutine_threadsafe(m.stop(), loop).result(30)
    loop.call_soon_threadsafe(loop.stop)
    th.join(10)


def run_with_machine(machine, body):
    m, cfg = machine
    return asyncio.run(body(m, cfg))


async def refused(client: Client) -> bool:
    try:
        async with client:
            await client.nodes.objects.get_children()
    except Exception:
        return True
    return False


def test_rogue_certificate_refused(certs, machine):
    async def body(m, cfg):
        return await refused(await secure_client(cfg.endpoint, str(certs), "rogue"))
    assert run_with_machine(machine, body)


def test_unencrypted_client_refused(certs, machine):
    async def body(m, cfg):
        return await refused(await secure_client(cfg.endpoint, str(certs), "bridge", encrypt=False))
    assert run_with_machine(machine, body)


def test_anonymous_session_refused(certs, machine):
    async def body(m, cfg):
        # encrypted channel with a trusted certificate, but no user identity: anonymous
        return await refused(await secure_client(cfg.endpoint, str(certs), "bridge", as_user=False))
    assert run_with_machine(machine, body)


def test_trusted_cert_that_is_not_a_user_refused(certs, machine):
    async def body(m, cfg):
        return await refused(await secure_client(cfg.endpoint, str(certs), "intruder"))
    assert run_with_machine(machine, body)


def test_stock_client_browses_and_reads(certs, machine):
    spec = get_task(TASK).spec

    async def body(m, cfg):
        client = await secure_client(cfg.endpoint, str(certs), "bridge")
        async with client:
            obs, sets, status = await machine_nodes(client, spec)
            names = [(await n.read_browse_name()).Name for n in obs]
            values = await client.read_values(obs)
            kids = [(await k.read_browse_name()).Name for k in await status.get_children()]
        return names, values, kids
    names, values, kids = run_with_machine(machine, body)
    assert names == list(spec.obs_names) and len(values) == spec.obs_dim
    assert {"Step", "TrackingError", "SetpointViolations"} <= set(kids)


def test_bridge_drives_machine_within_limits(certs, machine):
    """The bridge drives the simulated drive for ~2 s over SignAndEncrypt with the task's expert as
    policy (the trained-model variant is the next test); tracking error is reported and no command
    exceeds a limit."""
    task = get_task(TASK)
    spec = task.spec

    async def body(m, cfg):
        expert = task.make_expert(task.make_env(0))  # the expert reads only the observation
        bcfg = BridgeConfig(endpoint=cfg.endpoint, cert_dir=str(certs), period_s=0.01, deadline_s=0.008,
                            shield=ShieldConfig(deadline_s=0.05))
        v0 = m.violations
        rep = await run_bridge(spec, lambda s: expert.act(np.asarray(s, np.float32)), bcfg, seconds=2.0)
        return rep, m.violations - v0, np.array(m.errors), np.array(m.actions)
    rep, violations, errors, actions = run_with_machine(machine, body)
    s = rep.summary()
    print("bridge:", s)
    assert rep.cycles > 100 and violations == 0
    assert s["tracking_error_mean"] is not None and np.isfinite(errors[-50:]).all()
    u = np.array(rep.commands)
    lo, hi = np.array(spec.action_low), np.array(spec.action_high)
    assert np.all(u >= lo) and np.all(u <= hi)
    d1 = np.abs(np.diff(u, axis=0)) / spec.control_period
    assert np.all(d1 <= np.array(spec.safety.max_rate) * (1 + 1e-9))


def assert_within_limits(u: np.ndarray, spec) -> None:
    """Commands (T, A) inside the action box and the rate, acceleration and jerk limits (per control period)."""
    s, dt = spec.safety, spec.control_period
    assert np.all(u >= np.array(spec.action_low)) and np.all(u <= np.array(spec.action_high))
    for k, limit in ((1, s.max_rate), (2, s.max_accel), (3, s.max_jerk)):
        d = np.abs(np.diff(u, n=k, axis=0)) / dt ** k
        assert np.all(d <= np.array(limit) * (1 + 1e-6) + 1e-9), f"derivative {k} exceeds {limit}"


@pytest.fixture(scope="module")
def trained_checkpoint(tmp_path_factory):
    """A `debug` model trained for ~100 steps (~5 s) on 8 expert demonstrations of the drive task."""
    from genba.train.config import TrainConfig
    from genba.train.trainer import train

    task = get_task(TASK)
    env = task.make_env(0)
    expert = task.make_expert(env)
    episodes = []
    for k in range(8):
        seed = train_seed(TASK, k, 0)
        expert.reset()
        r = run_episode(task, env, expert.act, seed, k=k)
        episodes.append(Episode(r.observation, r.action, task_index=0, seed=seed))
    d = tmp_path_factory.mktemp("trained")
    data = write_dataset(d / "data", episodes, task.spec, [task])
    cfg = TrainConfig(name="bridge-test", model="debug", steps=100, batch_size=32, lr=3e-3, warmup_steps=10,
                      log_every=50, ckpt_every=0)
    result = train(cfg, [data], d / "run", progress=False)
    assert result.checkpoint is not None and np.isfinite(result.loss)
    return result.checkpoint


def test_bridge_drives_machine_with_trained_policy(certs, machine, trained_checkpoint):
    """The issue's end-to-end check: a trained checkpoint drives the simulated drive through the
    bridge over SignAndEncrypt for 3 s (300 cycles at 100 Hz); the machine never sees a setpoint
    outside its limits, every command keeps the shield's derivative limits, and the tracking error
    is reported."""
    task = get_task(TASK)
    spec = task.spec
    policy = load_policy(trained_checkpoint, device="cpu")
    answered = []
    env = task.make_env(0)  # baseline: zero voltage, same task, no bridge (it trips the current limit)
    zero = run_episode(task, env, lambda o: np.zeros(spec.action_dim, np.float32), 10_000, record=False)

    def act(state):
        answered.append(1)
        return policy.infer({"embodiment": spec.name, "state": np.asarray(state, np.float32),
                             "instruction": task.instruction_en})

    async def body(m, cfg):
        bcfg = BridgeConfig(endpoint=cfg.endpoint, cert_dir=str(certs), period_s=0.01, deadline_s=0.008,
                            instruction=task.instruction_en, shield=ShieldConfig(deadline_s=0.05))
        v0, n0 = m.violations, len(m.actions)
        rep = await run_bridge(spec, act, bcfg, cycles=300)
        return rep, m.violations - v0, np.array(m.actions[n0:]), np.array(m.errors[n0:])
    rep, violations, applied, errors = run_with_machine(machine, body)
    s = rep.summary()
    print("bridge with trained policy:", s)
    assert rep.cycles == 300 and len(rep.commands) == 300 and len(rep.tracking_error) == 300
    assert len(answered) >= 300 - rep.missed_deadlines  # the policy was asked on every cycle it could be
    assert violations == 0 and len(applied) > 200  # machine side: every applied setpoint within limits
    lo, hi = np.array(spec.action_low), np.array(spec.action_high)
    assert np.all(applied >= lo) and np.all(applied <= hi)
    assert_within_limits(np.array(rep.commands), spec)
    assert s["tracking_error_mean"] is not None and np.isfinite(s["tracking_error_mean"])
    assert np.isfinite(errors).all()
    # the trained policy controls the drive: better than zero voltage (seen: 0.1-0.25 against 0.75; the
    # margin is wide because missed deadlines under CPU load make the shield hold or ramp down)
    assert s["tracking_error_mean"] < zero.tracking_error
