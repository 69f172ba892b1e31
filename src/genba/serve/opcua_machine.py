"""A simulated machine from the suite behind an OPC UA server (asyncua).

Nodes are named from the embodiment spec (``Objects/<spec.name>/Observations``,
``Setpoints``, ``Status``); every one is an ``AnalogItemType`` with the spec's
unit (``EngineeringUnits``) and limits (``EURange``), so a client that never
saw the spec can read them, and a setpoint write that is non-finite or out of
range is refused with ``BadOutOfRange`` for that node alone and counted. The
env steps once per ``period_s`` of wall time with the current setpoints (one
control period of simulated time per step, so a 10 kHz drive runs the loop the
policy was trained on at 100 Hz). Only Basic256Sha256 SignAndEncrypt
endpoints and certificate users. The address space, units, time dilation and
security in full: docs/safety.md#the-opc-ua-machine-units-ranges-refused-writes.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from asyncua import Node, Server, ua
from asyncua.crypto.permission_rules import User, UserRole
from asyncua.crypto.truststore import TrustStore
from asyncua.crypto.validator import CertificateValidator, CertificateValidatorOptions
from asyncua.server.address_space import AttributeService, NodeData
from asyncua.server.user_managers import CertificateUserManager

from genba.envs.registry import get_task

log = logging.getLogger(__name__)
NAMESPACE = "urn:genba:machine"
SERVER_URI = "urn:genba:machine:server"
UNECE_URI = "http://www.opcfoundation.org/UA/units/un/cefact"  # OPC UA Part 8 5.6.3

# spec unit strings -> UNECE Rec. 20 common codes (the ones the suite's specs use, and their neighbours)
UNECE = {"m": "MTR", "rad": "C81", "rad/s": "2A", "rad/s^2": "2B", "m/s": "MTS", "m/s^2": "MSK", "s": "SEC",
         "Hz": "HTZ", "V": "VLT", "A": "AMP", "N": "NEW", "N*m": "NU", "W": "WTT", "kg": "KGM", "K": "KEL",
         "degC": "CEL", "deg": "DD", "1": "C62", "": "C62"}


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
    # a refused write answers for its own node: asyncua turns a setter's error into a fault of the whole
    # Write service call (and keeps the nodes written before it), so run each node as its own write
    server.iserver.attribute_service = PerNodeWrites(server.iserver.aspace)
    return server


class PerNodeWrites(AttributeService):
    """The Write service with one result per node (Part 4 5.10.4): a value setter's ``UaStatusCodeError``
    becomes that node's status, the other nodes of the request are written."""

    async def write(self, params: ua.WriteParameters, user: User = User(role=UserRole.Admin)) -> list[ua.StatusCode]:  # noqa: B008
        out = []
        for item in params.NodesToWrite:
            try:
                out += await super().write(ua.WriteParameters(NodesToWrite=[item]), user=user)
            except ua.UaStatusCodeError as e:
                out.append(ua.StatusCode(e.code))
        return out


def unece_code_id(code: str) -> int:
    """UnitId of a UNECE common code: its (up to 3) ASCII characters packed big-endian (Part 8 5.6.3)."""
    uid = 0
    for c in code:
        uid = (uid << 8) | ord(c)
    return uid


def eu_information(unit: str) -> ua.EUInformation:
    """EngineeringUnits of a spec unit string. Normalized quantities and flags are pure numbers ("one",
    C62) whose display name keeps the spec's scale; a unit without a UNECE code gets UnitId -1."""
    u = unit.strip()
    code = UNECE.get(u.replace(" ", "").replace("·", "*"))
    if code is None and re.match(r"^(normalized|flag)\b", u):
        code = "C62"
    return ua.EUInformation(NamespaceUri=UNECE_URI, UnitId=unece_code_id(code) if code else -1,
                            DisplayName=ua.LocalizedText(u or "1"), Description=ua.LocalizedText(
                                f"{u or '1'} (UNECE {code})" if code else f"{u} (no UNECE code)"))


def _unit_text(unit: str) -> str:
    return "dimensionless" if unit.strip() in ("", "1") else unit


async def add_analog_item(parent: Node, idx: int, name: str, value: float, lo: float, hi: float, unit: str,
                          description: str, writable: bool = False) -> Node:
    """A Double ``AnalogItemType`` variable with its ``EURange`` and ``EngineeringUnits`` properties."""
    attrs = ua.VariableAttributes(DisplayName=ua.LocalizedText(name), Description=ua.LocalizedText(description),
                                  Value=ua.Variant(float(value), ua.VariantType.Double),
                                  DataType=ua.NodeId(ua.ObjectIds.Double), ValueRank=ua.ValueRank.Scalar,
                                  WriteMask=0, UserWriteMask=0, Historizing=False)
    access = ua.AccessLevel.CurrentRead.mask | (ua.AccessLevel.CurrentWrite.mask if writable else 0)
    attrs.AccessLevel = attrs.UserAccessLevel = access
    item = ua.AddNodesItem(RequestedNewNodeId=ua.NodeId(NamespaceIndex=idx), BrowseName=ua.QualifiedName(name, idx),
                           NodeClass=ua.NodeClass.Variable, ParentNodeId=parent.nodeid,
                           ReferenceTypeId=ua.NodeId(ua.ObjectIds.HasComponent),
                           TypeDefinition=ua.NodeId(ua.ObjectIds.AnalogItemType), NodeAttributes=attrs)
    res = (await parent.session.add_nodes([item]))[0]
    res.StatusCode.check()
    node = Node(parent.session, res.AddedNodeId)
    for prop, val, dtype in (("EURange", ua.Range(Low=float(lo), High=float(hi)), ua.ObjectIds.Range),
                             ("EngineeringUnits", eu_information(unit), ua.ObjectIds.EUInformation)):
        await node.add_property(ua.NodeId(NamespaceIndex=idx), ua.QualifiedName(prop, 0), val,
                                varianttype=ua.VariantType.ExtensionObject, datatype=ua.NodeId(dtype))
    return node


STATUS = (("Step", 0, "control periods stepped since start"), ("Episode", 0, "episodes finished since start"),
          ("TrackingError", 0.0, "the task's tracking error at the last step (0 when undefined)"),
          ("SetpointViolations", 0, "steps whose setpoints the machine had to clip into the action limits"),
          ("RefusedWrites", 0, "setpoint writes refused (BadOutOfRange: outside EURange or not finite)"),
          ("Instruction", "", "the task's instruction"))


class SimulatedMachine:
    """One env from the suite exposed over OPC UA, stepping on a wall-clock period."""

    def __init__(self, cfg: MachineConfig) -> None:
        self.cfg = cfg
        self.task = get_task(cfg.task_id)
        self.spec = self.task.spec
        self.env = self.task.make_env(cfg.seed)
        self.obs, _ = self.env.reset(seed=cfg.seed)
        self.steps = self.episode = self.violations = 0
        self.refused_writes = 0  # setpoint writes refused with BadOutOfRange / BadTypeMismatch
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
        sp = self.spec
        self.obs_nodes = []
        for n, v, lo, hi, unit in zip(sp.obs_names, self.obs, sp.obs_low, sp.obs_high, sp.obs_units):
            desc = f"{n}: observation, {_unit_text(unit)}, range [{lo:g}, {hi:g}]"
            self.obs_nodes.append(await add_analog_item(obs_f, idx, n, v, lo, hi, unit, desc))
        self.set_nodes = []
        for n, lo, hi, unit in zip(sp.action_names, sp.action_low, sp.action_high, sp.action_units):
            desc = (f"{n}: setpoint, {sp.action_meaning}; {_unit_text(unit)}, range [{lo:g}, {hi:g}]; "
                    "a write outside the range or not finite is refused with BadOutOfRange")
            node = await add_analog_item(set_f, idx, n, min(max(0.0, lo), hi), lo, hi, unit, desc, writable=True)
            self.server.set_attribute_value_setter(node.nodeid, self._range_setter(n, float(lo), float(hi)))
            self.set_nodes.append(node)
        self.status = {}
        for k, v, desc in STATUS:
            self.status[k] = node = await st_f.add_variable(idx, k, v)
            await node.write_attribute(ua.AttributeIds.Description, ua.DataValue(ua.Variant(ua.LocalizedText(desc))))
        await self.status["Instruction"].write_value(self.task.instruction_en)
        await self.server.start()
        self._task = asyncio.get_running_loop().create_task(self._run())

    def _range_setter(self, name: str, lo: float, hi: float):
        """A value setter for one setpoint: store a finite Double inside [lo, hi], refuse anything else."""
        def setter(node: NodeData, attr: ua.AttributeIds, value: ua.DataValue) -> None:
            x = value.Value.Value if value.Value is not None else None
            if not isinstance(x, float) or not (math.isfinite(x) and lo <= x <= hi):
                self.refused_writes += 1
                level = logging.WARNING if self.refused_writes == 1 else logging.DEBUG
                log.log(level, "refused write %r to setpoint %s (EURange [%g, %g])", x, name, lo, hi)
                if not isinstance(x, float):
                    raise ua.uaerrors.BadTypeMismatch()
                raise ua.uaerrors.BadOutOfRange()
            node.attributes[attr].value = value
            node.attributes[attr].value_callback = None
        return setter

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
        await self.status["RefusedWrites"].write_value(self.refused_writes, ua.VariantType.Int64)
