"""OPC UA: a simulated drive behind a secured server, refusals, and the bridge end to end."""

from __future__ import annotations

import asyncio
import dataclasses
import importlib.util
import math
import shutil
import socket
import sys
from pathlib import Path

import numpy as np
import pytest
from asyncua import Client, ua

from genba.data.layout import Episode, write_dataset
from genba.envs.collect import run_episode
from genba.envs.registry import get_task
from genba.envs.seeds import train_seed
from genba.model.policy import load_policy
from genba.serve.bridge import BridgeConfig, machine_nodes, run_bridge, secure_client
from genba.serve.certs import issue_cert, make_ca
from genba.serve.opcua_machine import SERVER_URI, MachineConfig
from genba.serve.shield import ShieldConfig

from .conftest import machine_in_thread

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
    with machine_in_thread(cfg) as m:
        yield m, cfg


def run_with_machine(machine, body):
    m, cfg = machine
    return asyncio.run(body(m, cfg))


async def refusal(client: Client) -> Exception | None:
    """The exception a session attempt ends in (None: it browsed). Callers assert the specific
    refusal, so a helper that breaks in some other way fails the test instead of passing it."""
    try:
        async with client:
            await client.nodes.objects.get_children()
    except Exception as e:
        return e
    return None


def test_rogue_certificate_refused(certs, machine):
    async def body(m, cfg):
        return await refusal(await secure_client(cfg.endpoint, str(certs), "rogue"))
    err = run_with_machine(machine, body)
    assert isinstance(err, ua.uaerrors.BadCertificateUntrusted), repr(err)  # the server's trust store said no


def any_endpoint(endpoints, security_mode, policy_uri):
    """Client.find_endpoint for a client that does not check the server offers its security mode:
    it asks for a session over a channel without security anyway, so the refusal must come from the server."""
    return dataclasses.replace(endpoints[0], SecurityMode=security_mode, SecurityPolicyUri=policy_uri)


def test_unencrypted_client_refused(certs, machine, monkeypatch):
    async def body(m, cfg):
        stock = await refusal(await secure_client(cfg.endpoint, str(certs), "bridge", encrypt=False))
        with monkeypatch.context() as mp:
            mp.setattr(Client, "find_endpoint", staticmethod(any_endpoint))
            forced = await refusal(await secure_client(cfg.endpoint, str(certs), "bridge", encrypt=False))
        return stock, forced
    stock, forced = run_with_machine(machine, body)
    # the machine offers no endpoint without security, so a stock client finds none to use ...
    assert type(stock) is ua.UaError and "No matching endpoints" in str(stock) and "#None" in str(stock), repr(stock)
    # ... and one that insists anyway gets its session activation refused by the server
    assert isinstance(forced, ua.uaerrors.BadIdentityTokenInvalid), repr(forced)


def test_anonymous_session_refused(certs, machine):
    async def body(m, cfg):
        # encrypted channel with a trusted certificate, but no user identity: anonymous
        return await refusal(await secure_client(cfg.endpoint, str(certs), "bridge", as_user=False))
    err = run_with_machine(machine, body)
    assert isinstance(err, ua.uaerrors.BadIdentityTokenRejected), repr(err)


def test_trusted_cert_that_is_not_a_user_refused(certs, machine):
    async def body(m, cfg):
        return await refusal(await secure_client(cfg.endpoint, str(certs), "intruder"))
    err = run_with_machine(machine, body)
    assert isinstance(err, ua.uaerrors.BadUserAccessDenied), repr(err)


def test_refusal_helper_reports_a_session_that_got_in(certs, machine):
    """The helper itself: a trusted user's session is not a refusal."""
    async def body(m, cfg):
        return await refusal(await secure_client(cfg.endpoint, str(certs), "bridge"))
    assert run_with_machine(machine, body) is None


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


def test_address_space_carries_units_ranges_and_descriptions(certs, machine):
    """Before: no EngineeringUnits or EURange properties, and descriptions repeated the node name."""
    spec = get_task(TASK).spec

    async def body(m, cfg):
        client = await secure_client(cfg.endpoint, str(certs), "bridge")
        async with client:
            obs, sets, _ = await machine_nodes(client, spec)
            out = []
            for node in obs + sets:
                eu = await (await node.get_child("0:EngineeringUnits")).read_value()
                rng = await (await node.get_child("0:EURange")).read_value()
                out.append((await node.read_type_definition(), eu, rng, (await node.read_description()).Text))
        return out
    got = run_with_machine(machine, body)
    names = list(spec.obs_names) + list(spec.action_names)
    units = list(spec.obs_units) + list(spec.action_units)
    lows, highs = list(spec.obs_low) + list(spec.action_low), list(spec.obs_high) + list(spec.action_high)
    for (tdef, eu, rng, desc), name, unit, lo, hi in zip(got, names, units, lows, highs, strict=True):
        assert tdef == ua.NodeId(ua.ObjectIds.AnalogItemType)
        assert isinstance(eu, ua.EUInformation) and eu.DisplayName.Text == unit
        assert eu.NamespaceUri == "http://www.opcfoundation.org/UA/units/un/cefact"
        assert (rng.Low, rng.High) == (lo, hi)
        assert desc != name and desc.startswith(name) and f"[{lo:g}, {hi:g}]" in desc
    assert all(eu.UnitId == 0x433632 for _, eu, _, _ in got)  # "C62" (one): the drive's units are normalized


@pytest.mark.parametrize("unit, code", [("m", "MTR"), ("rad/s", "2A"), ("N*m", "NU"), ("normalized (1 = 60 V)", "C62"),
                                        ("1", "C62"), ("furlong/fortnight", None)])
def test_engineering_units_use_unece_codes(unit, code):
    from genba.serve.opcua_machine import eu_information
    eu = eu_information(unit)
    assert eu.DisplayName.Text == unit
    assert eu.UnitId == (-1 if code is None else int.from_bytes(code.encode(), "big"))  # Part 8 5.6.3 packing


def test_setpoint_writes_outside_the_range_are_refused_and_counted(certs, machine):
    """Before: 5.0, -100, NaN and inf written to a setpoint returned Good and read back as written."""
    spec = get_task(TASK).spec

    async def body(m, cfg):
        client = await secure_client(cfg.endpoint, str(certs), "bridge")
        async with client:
            _, sets, _ = await machine_nodes(client, spec)
            node, r0 = sets[0], m.refused_writes
            before, results = await node.read_value(), []
            for value in (5.0, -100.0, math.nan, math.inf, -math.inf, spec.action_high[0] + 1e-9):
                try:
                    await node.write_value(ua.DataValue(ua.Variant(value, ua.VariantType.Double)))
                    results.append(("Good", await node.read_value()))
                except ua.uaerrors.BadOutOfRange:
                    results.append(("BadOutOfRange", await node.read_value()))
            # one Write request, two nodes: the refused one answers for itself, the good one is written
            both = [ua.DataValue(ua.Variant(v, ua.VariantType.Double)) for v in (0.25, 7.0)]
            codes = await client.uaclient.write_attributes([sets[0].nodeid, sets[0].nodeid], both,
                                                           ua.AttributeIds.Value)
            mixed = ([c.name for c in codes], await node.read_value())
            await node.write_value(ua.DataValue(ua.Variant(spec.action_high[0], ua.VariantType.Double)))  # the edge
            edge = await node.read_value()
            await node.write_value(ua.DataValue(ua.Variant(before, ua.VariantType.Double)))
        await asyncio.sleep(0.05)  # the machine publishes its counter once per period
        return before, results, mixed, edge, m.refused_writes - r0
    before, results, mixed, edge, refused = run_with_machine(machine, body)
    assert results == [("BadOutOfRange", before)] * 6
    assert mixed == (["Good", "BadOutOfRange"], 0.25) and edge == spec.action_high[0]
    assert refused == 7


def load_client_check():
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "opcua_client_check.py"
    spec = importlib.util.spec_from_file_location("opcua_client_check", path)
    mod = sys.modules["opcua_client_check"] = importlib.util.module_from_spec(spec)  # its dataclasses look it up
    spec.loader.exec_module(mod)
    return mod


def test_stock_client_check_script_passes(certs, machine):
    """``benchmarks/opcua_client_check.py`` (plain asyncua on the client side) against the machine: every
    variable an AnalogItem with units and range, every probing write refused with BadOutOfRange and counted."""
    check = load_client_check()
    spec = get_task(TASK).spec
    rep = run_with_machine(machine, lambda m, cfg: check.check(cfg.endpoint, str(certs)))
    check.print_report(rep)
    assert rep.ok, rep.failures
    assert len(rep.variables) == spec.obs_dim + spec.action_dim
    refused = [w for w in rep.writes if w[2] == "BadOutOfRange"]
    assert len(refused) == 5 * spec.action_dim and all(w[3] for w in rep.writes)
    assert rep.refused_counter[1] - rep.refused_counter[0] >= len(refused)


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
