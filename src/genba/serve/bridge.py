"""`genba bridge opcua`: drive an OPC UA machine with a policy, through the shield.

Each cycle (``period_s``, default 100 Hz): read every observation node in one
request, ask the policy for the next action (in-process Policy, or a genba
server through ``genba.client``), pass it through the :class:`SafetyShield`,
write every setpoint node in one request. A cycle whose policy answer misses
the deadline sends the shield's no-fresh-command step instead (the watchdog
turns a lasting outage into a controlled stop) and is counted, as is every
cycle that overruns its period.

The client session uses Basic256Sha256 SignAndEncrypt with its own
certificate, and validates the machine's certificate against the same trust
store (our CA).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from asyncua import Client, ua
from asyncua.crypto.security_policies import SecurityPolicyBasic256Sha256
from asyncua.crypto.truststore import TrustStore
from asyncua.crypto.validator import CertificateValidator, CertificateValidatorOptions

from genba.data.spec import EmbodimentSpec
from genba.serve.opcua_machine import NAMESPACE
from genba.serve.shield import SafetyShield, ShieldConfig

CLIENT_URI = "urn:genba:bridge"


@dataclass(frozen=True)
class BridgeConfig:
    endpoint: str = "opc.tcp://127.0.0.1:4840/genba/"
    cert_dir: str = "certs"
    name: str = "bridge"  # client certificate name in cert_dir
    period_s: float = 0.01
    deadline_s: float = 0.008  # policy answer deadline within a cycle
    instruction: str = ""
    shield: ShieldConfig = field(default_factory=lambda: ShieldConfig(deadline_s=0.05))


@dataclass
class BridgeReport:
    cycles: int = 0
    missed_deadlines: int = 0
    overruns: int = 0
    cycle_ms: list[float] = field(default_factory=list)
    commands: list[np.ndarray] = field(default_factory=list)
    tracking_error: list[float] = field(default_factory=list)
    interventions: dict = field(default_factory=dict)

    def summary(self) -> dict:
        c = np.asarray(self.cycle_ms) if self.cycle_ms else np.zeros(1)
        te = np.asarray([e for e in self.tracking_error if np.isfinite(e)]) if self.tracking_error else np.zeros(0)
        return {"cycles": self.cycles, "missed_deadlines": self.missed_deadlines, "overruns": self.overruns,
                "cycle_ms_p50": float(np.percentile(c, 50)), "cycle_ms_p99": float(np.percentile(c, 99)),
                "tracking_error_mean": float(te.mean()) if te.size else None, "interventions": self.interventions}


async def secure_client(endpoint: str, cert_dir: str, name: str, *, encrypt: bool = True,
                        as_user: bool = True) -> Client:
    """An asyncua client with our certificate, SignAndEncrypt, a validator for the server's
    certificate, and (``as_user``) the same certificate as its user identity (no anonymous session)."""
    d = Path(cert_dir)
    client = Client(endpoint, timeout=5)
    client.application_uri = f"{CLIENT_URI}:{name}"
    if encrypt:
        await client.set_security(SecurityPolicyBasic256Sha256, str(d / f"{name}.cert.der"), str(d / f"{name}.key.pem"),
                                  server_certificate=str(d / "machine.cert.der"), mode=ua.MessageSecurityMode.SignAndEncrypt)
        store = TrustStore([d / "trusted"], [])
        await store.load()
        client.certificate_validator = CertificateValidator(
            CertificateValidatorOptions.TRUSTED_VALIDATION | CertificateValidatorOptions.PEER_SERVER, store)
    if as_user:
        await client.load_client_certificate(str(d / f"{name}.cert.der"))
        await client.load_private_key(str(d / f"{name}.key.pem"))
    return client


async def machine_nodes(client: Client, spec: EmbodimentSpec):
    """(observation nodes, setpoint nodes, status folder) by browse path from the spec's names."""
    idx = await client.get_namespace_index(NAMESPACE)
    root = await client.nodes.objects.get_child(f"{idx}:{spec.name}")
    obs = [await root.get_child([f"{idx}:Observations", f"{idx}:{n}"]) for n in spec.obs_names]
    sets = [await root.get_child([f"{idx}:Setpoints", f"{idx}:{n}"]) for n in spec.action_names]
    status = await root.get_child(f"{idx}:Status")
    return obs, sets, status


async def run_bridge(spec: EmbodimentSpec, act: Callable[[np.ndarray], np.ndarray], cfg: BridgeConfig,
                     *, cycles: int | None = None, seconds: float | None = None,
                     stop: asyncio.Event | None = None) -> BridgeReport:
    """Drive the machine at ``cfg.period_s`` until ``cycles``/``seconds``/``stop``; returns a report.

    ``act(state) -> action`` is a blocking call (an in-process Policy or a server client);
    it runs in a worker thread so a slow answer cannot stall the cycle past its deadline.
    """
    shield = SafetyShield(spec, cfg.shield)
    report = BridgeReport()
    client = await secure_client(cfg.endpoint, cfg.cert_dir, cfg.name)
    pending: asyncio.Future | None = None
    async with client:
        obs_nodes, set_nodes, status = await machine_nodes(client, spec)
        err_node = await status.get_child(f"{await client.get_namespace_index(NAMESPACE)}:TrackingError")
        loop = asyncio.get_running_loop()
        t_end = None if seconds is None else time.perf_counter() + seconds
        next_t = time.perf_counter()
        while not ((cycles is not None and report.cycles >= cycles) or (t_end and time.perf_counter() >= t_end)
                   or (stop is not None and stop.is_set())):
            t0 = time.perf_counter()
            state = np.asarray(await client.read_values(obs_nodes + [err_node]), dtype=np.float64)
            state, err = state[:-1], state[-1]
            if pending is None or pending.done():  # never queue a second call behind a late one
                pending = loop.run_in_executor(None, act, state)
            left = cfg.deadline_s - (time.perf_counter() - t0)
            try:
                action = await asyncio.wait_for(asyncio.shield(pending), max(left, 0.0))
                pending = None
                u = shield.step(action, state, now=t0)
            except (asyncio.TimeoutError, TimeoutError):
                report.missed_deadlines += 1
                u = shield.step(None, state, now=t0)
            await client.write_values(set_nodes, [ua.DataValue(ua.Variant(float(x), ua.VariantType.Double))
                                                  for x in u])
            report.commands.append(u)
            report.tracking_error.append(float(err))
            report.cycles += 1
            dt_ms = (time.perf_counter() - t0) * 1e3
            report.cycle_ms.append(dt_ms)
            next_t += cfg.period_s
            if time.perf_counter() > next_t:
                report.overruns += 1
                next_t = time.perf_counter()
            await asyncio.sleep(max(0.0, next_t - time.perf_counter()))
    report.interventions = dict(shield.counts)
    return report
