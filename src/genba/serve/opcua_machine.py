"""A simulated machine from the suite behind an OPC UA server (asyncua).

Address space (namespace ``urn:genba:machine``), names from the embodiment spec::

    Objects/<spec.name>/Observations/<obs_name>   Double, read-only
    Objects/<spec.name>/Setpoints/<action_name>   Double, writable
    Objects/<spec.name>/Status/{Step, Episode, TrackingError, SetpointViolations, Instruction}

The machine steps its env once per ``period_s`` of wall time with the current
setpoints (zero-order hold). Drives run at 10 kHz in simulation; a Python OPC UA
loop cannot, so by default one control period of simulated time passes per
``period_s`` of wall time (time dilation): the bridge then sees exactly the
step-by-step loop the policy was trained on, at a supervisory 100 Hz.
Setpoints outside the action limits are clipped by the machine and counted.

Security: only Basic256Sha256 SignAndEncrypt endpoints; client certificates
validated against a trust store (our CA) with time, URI and key-usage checks;
users are certificate users (anonymous refused) from ``CertificateUserManager``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from asyncua import Server, ua
from asyncua.crypto.truststore import TrustStore
from asyncua.crypto.validator import CertificateValidator, CertificateValidatorOptions
from asyncua.server.user_managers import CertificateUserManager

from genba.envs.registry import get_task

log = logging.getLogger(__name__)
NAMESPACE = "urn:genba:machine"
SERVER_URI = "urn:genba:machine:server"


@dataclass(frozen=True)
class MachineConfig:
    task_id: str = "drive/pmsm-current"
    endpoint: str = "opc.tcp://127.0.0.1:4840/genba/"
    period_s: float = 0.01
    seed: int = 0
    cert_dir: str = "certs"  # holds machine.{cert.der,key.pem}, trusted/ and the allowed client certs
    clients: tuple[str, ...] = ("bridge",)  # names of client certs granted a user role


async def build_secure_server(cfg: MachineConfig) -> Server:
    """An asyncua server with SignAndEncrypt only, a trust store and certificate users."""
    d = Path(cfg.cert_dir)
    users = CertificateUserManager()
    for name in cfg.clients:
        await users.add_user(d / f"{name}.cert.der", name=name)
    server = Server(user_manager=users)
    await server.init()
    server.set_endpoint(cfg.endpoint)
    server.set_server_name("genba simulated machine")
    await server.set_application_uri(SERVER_URI)
    server.set_security_policy([ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt])
    # asyncua hands an anonymous session's *channel* certificate to the user manager, so a
    # trusted channel alone would pass as a certificate user: accept X.509 identity tokens only
    server.set_identity_tokens([ua.X509IdentityToken])
    await server.load_certificate(str(d / "machine.cert.der"))
    await server.load_private_key(str(d / "machine.key.pem"))
    store = TrustStore([d / "trusted"], [])
    await store.load()
    options = CertificateValidatorOptions.TRUSTED_VALIDATION | CertificateValidatorOptions.PEER_CLIENT
    server.set_certificate_validator(CertificateValidator(options, store))
    return server


class SimulatedMachine:
    """One env from the suite exposed over OPC UA, stepping on a wall-clock period."""

    def __init__(self, cfg: MachineConfig) -> None:
        self.cfg = cfg
        self.task = get_task(cfg.task_id)
        self.spec = self.task.spec
        self.env = self.task.make_env(cfg.seed)
        self.obs, _ = self.env.reset(seed=cfg.seed)
        self.steps = self.episode = self.violations = 0
        self.errors: list[float] = []
        self.actions: list[np.ndarray] = []
        self.server: Server | None = None

    async def start(self) -> None:
        self.server = await build_secure_server(self.cfg)
        idx = await self.server.register_namespace(NAMESPACE)
        root = await self.server.nodes.objects.add_object(idx, self.spec.name)
        obs_f = await root.add_folder(idx, "Observations")
        set_f = await root.add_folder(idx, "Setpoints")
        st_f = await root.add_folder(idx, "Status")
        self.obs_nodes = [await obs_f.add_variable(idx, n, float(v)) for n, v in zip(self.spec.obs_names, self.obs)]
        self.set_nodes = []
        for n in self.spec.action_names:
            node = await set_f.add_variable(idx, n, 0.0)
            await node.set_writable()
            self.set_nodes.append(node)
        self.status = {k: await st_f.add_variable(idx, k, v) for k, v in
                       (("Step", 0), ("Episode", 0), ("TrackingError", 0.0), ("SetpointViolations", 0),
                        ("Instruction", self.task.instruction_en))}
        await self.server.start()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass
        await self.server.stop()

    async def _run(self) -> None:
        next_t = time.perf_counter()
        while True:
            next_t += self.cfg.period_s
            await self._tick()
            await asyncio.sleep(max(0.0, next_t - time.perf_counter()))

    async def _tick(self) -> None:
        a = np.array([await n.read_value() for n in self.set_nodes], dtype=np.float64)
        lo, hi = np.asarray(self.spec.action_low), np.asarray(self.spec.action_high)
        if not np.all(np.isfinite(a)) or np.any(a < lo) or np.any(a > hi):
            self.violations += 1  # the machine protects itself too, and says so
            a = np.clip(np.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0), lo, hi)
        self.actions.append(a)
        self.obs, _, term, trunc, info = self.env.step(a.astype(np.float32))
        self.steps += 1
        err = float(info.get("tracking_error", np.nan))
        self.errors.append(err)
        if term or trunc:
            self.episode += 1
            self.obs, _ = self.env.reset(seed=self.cfg.seed + self.episode)
        for node, v in zip(self.obs_nodes, self.obs):
            await node.write_value(float(v))
        await self.status["Step"].write_value(self.steps, ua.VariantType.Int64)
        await self.status["Episode"].write_value(self.episode, ua.VariantType.Int64)
        await self.status["TrackingError"].write_value(err if np.isfinite(err) else 0.0)
        await self.status["SetpointViolations"].write_value(self.violations, ua.VariantType.Int64)
