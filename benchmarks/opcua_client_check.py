"""A stock asyncua client checks a genba machine's OPC UA address space from outside.

The client side is plain asyncua (no genba code beyond the certificate files it
connects with): it browses ``Objects/<machine>/{Observations,Setpoints}``, prints
each variable's type, EngineeringUnits, EURange and description, then writes
to every setpoint an out-of-range value above and below, NaN, +inf and -inf
(each must come back ``BadOutOfRange`` and leave the value unchanged), an
in-range value (must be Good and read back), and reads the machine's
``Status/RefusedWrites`` counter. Exit code 0 only if every check holds.

    # against a running machine (certificates: a client cert trusted by it, its server cert)
    .venv/bin/python benchmarks/opcua_client_check.py --endpoint opc.tcp://HOST:4840/genba/ --cert-dir certs
    # or start a simulated machine with throwaway certificates first
    .venv/bin/python benchmarks/opcua_client_check.py [--task drive/pmsm-current]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

from asyncua import Client, ua
from asyncua.crypto.security_policies import SecurityPolicyBasic256Sha256

MACHINE_NS = "urn:genba:machine"
ANALOG_ITEM = ua.NodeId(ua.ObjectIds.AnalogItemType)


@dataclass
class Variable:
    path: str
    type_definition: str
    unit: str
    unit_id: int
    low: float
    high: float
    description: str


@dataclass
class CheckReport:
    variables: list[Variable] = field(default_factory=list)
    writes: list[tuple[str, float, str, bool]] = field(default_factory=list)  # (setpoint, value, status, ok)
    refused_counter: tuple[int, int] | None = None  # RefusedWrites before, after
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures


async def connect(endpoint: str, cert_dir: str, name: str) -> Client:
    """A plain asyncua client: Basic256Sha256 SignAndEncrypt, the client certificate as user identity."""
    d = Path(cert_dir)
    client = Client(endpoint, timeout=5)
    client.application_uri = f"urn:genba:bridge:{name}"  # the URI the certificate was issued for
    cert, key = str(d / f"{name}.cert.der"), str(d / f"{name}.key.pem")
    await client.set_security(SecurityPolicyBasic256Sha256, cert, key, server_certificate=str(d / "machine.cert.der"),
                              mode=ua.MessageSecurityMode.SignAndEncrypt)
    await client.load_client_certificate(cert)
    await client.load_private_key(key)
    return client


async def describe(node, path: str) -> Variable:
    eu = await (await node.get_child("0:EngineeringUnits")).read_value()
    rng = await (await node.get_child("0:EURange")).read_value()
    tdef = await node.read_type_definition()
    return Variable(path, "AnalogItemType" if tdef == ANALOG_ITEM else str(tdef), eu.DisplayName.Text, eu.UnitId,
                    rng.Low, rng.High, (await node.read_description()).Text)


async def write_status(node, value: float) -> str:
    """The status a Write of ``value`` gets: 'Good' or the Bad code's name."""
    try:
        await node.write_value(ua.DataValue(ua.Variant(value, ua.VariantType.Double)))
    except ua.UaStatusCodeError as e:
        return ua.StatusCode(e.code).name
    return "Good"


async def check_setpoint(node, var: Variable, rep: CheckReport) -> None:
    span = var.high - var.low
    before = await node.read_value()
    for value in (var.high + 0.5 * span + 1.0, var.low - 100.0 * span, math.nan, math.inf, -math.inf):
        status = await write_status(node, value)
        after = await node.read_value()
        ok = status == "BadOutOfRange" and after == before
        rep.writes.append((var.path, value, status, ok))
        if not ok:
            rep.failures.append(f"{var.path} <- {value}: {status}, reads back {after} (expected BadOutOfRange, "
                                f"unchanged {before})")
    good = min(max(0.5 * (var.low + var.high), var.low), var.high)
    status = await write_status(node, good)
    back = await node.read_value()
    rep.writes.append((var.path, good, status, status == "Good" and back == good))
    if status != "Good" or back != good:
        rep.failures.append(f"{var.path} <- {good} (in range): {status}, reads back {back}")
    await write_status(node, before)


async def check(endpoint: str, cert_dir: str, name: str = "bridge") -> CheckReport:
    """Browse every machine on the server, describe its variables, probe its setpoints' write checks."""
    rep = CheckReport()
    client = await connect(endpoint, cert_dir, name)
    async with client:
        ns = await client.get_namespace_index(MACHINE_NS)
        for machine in await client.nodes.objects.get_children():
            if (await machine.read_browse_name()).NamespaceIndex != ns:
                continue
            mname = (await machine.read_browse_name()).Name
            try:
                counter = await machine.get_child([f"{ns}:Status", f"{ns}:RefusedWrites"])
                refused0 = await counter.read_value()
            except ua.UaError:
                counter, refused0 = None, 0
                rep.failures.append(f"{mname}: no Status/RefusedWrites counter")
            for folder in ("Observations", "Setpoints"):
                for node in await (await machine.get_child(f"{ns}:{folder}")).get_children():
                    path = f"{mname}/{folder}/{(await node.read_browse_name()).Name}"
                    try:
                        var = await describe(node, path)
                    except ua.UaError as e:
                        rep.failures.append(f"{path}: no EngineeringUnits/EURange ({e})")
                        continue
                    rep.variables.append(var)
                    if var.type_definition != "AnalogItemType" or not (var.unit and var.low <= var.high):
                        rep.failures.append(f"{path}: {var}")
                    if folder == "Setpoints":
                        await check_setpoint(node, var, rep)
            if counter is None:
                continue
            await asyncio.sleep(0.1)  # the machine publishes its counters once per period
            rep.refused_counter = (refused0, await counter.read_value())
            expected = sum(1 for w in rep.writes if w[2] == "BadOutOfRange")
            if rep.refused_counter[1] - refused0 < expected:
                rep.failures.append(f"RefusedWrites went {refused0} -> {rep.refused_counter[1]}, "
                                    f"{expected} writes were refused")
    if not rep.variables:
        rep.failures.append(f"no variables found under a {MACHINE_NS} machine object")
    return rep


def print_report(rep: CheckReport) -> None:
    print(f"{'variable':44} {'type':15} {'unit (UnitId)':40} EURange")
    for v in rep.variables:
        print(f"{v.path:44} {v.type_definition:15} {f'{v.unit} ({v.unit_id})':40} [{v.low:g}, {v.high:g}]")
        print(f"{'':44} {v.description}")
    for path, value, status, ok in rep.writes:
        print(f"write {path} <- {value!r}: {status} {'ok' if ok else 'FAIL'}")
    if rep.refused_counter:
        print(f"Status/RefusedWrites: {rep.refused_counter[0]} -> {rep.refused_counter[1]}")
    print("PASS" if rep.ok else "FAIL:\n  " + "\n  ".join(rep.failures))


def local_machine_check(task: str) -> CheckReport:
    """Start a simulated genba machine with throwaway certificates (server side), then run the stock client."""
    import shutil
    import socket
    import tempfile
    import threading

    from genba.serve.certs import issue_cert, make_ca
    from genba.serve.opcua_machine import SERVER_URI, MachineConfig, SimulatedMachine

    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        make_ca(d)
        (d / "trusted").mkdir()
        shutil.copy(d / "ca.cert.der", d / "trusted" / "ca.cert.der")
        issue_cert(d, "machine", SERVER_URI)
        issue_cert(d, "bridge", "urn:genba:bridge:bridge")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        cfg = MachineConfig(task_id=task, endpoint=f"opc.tcp://127.0.0.1:{port}/genba/", cert_dir=str(d))
        machine = SimulatedMachine(cfg)
        loop = asyncio.new_event_loop()
        threading.Thread(target=loop.run_forever, daemon=True).start()
        asyncio.run_coroutine_threadsafe(machine.start(), loop).result(60)
        try:
            return asyncio.run(check(cfg.endpoint, str(d)))
        finally:
            asyncio.run_coroutine_threadsafe(machine.stop(), loop).result(30)
            loop.call_soon_threadsafe(loop.stop)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--endpoint", help="a running machine; without it a simulated one is started")
    ap.add_argument("--cert-dir", default="certs", help="holds NAME.cert.der, NAME.key.pem, machine.cert.der")
    ap.add_argument("--name", default="bridge", help="client certificate name")
    ap.add_argument("--task", default="drive/pmsm-current", help="task of the simulated machine")
    args = ap.parse_args()
    rep = (asyncio.run(check(args.endpoint, args.cert_dir, args.name)) if args.endpoint
           else local_machine_check(args.task))
    print_report(rep)
    sys.exit(0 if rep.ok else 1)


if __name__ == "__main__":
    main()
