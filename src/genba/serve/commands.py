"""CLI verbs of the serving layer: `genba serve`, `genba tokens ...`, `genba certs ...`, `genba bridge ...`."""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
from pathlib import Path

from genba.errors import CLIError


def register(sub: argparse._SubParsersAction) -> None:
    _register_serve(sub)
    _register_admin(sub)


def _register_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve a checkpoint over HTTP/websocket with auth and the safety shield")
    p.add_argument("--checkpoint", type=Path, required=True, help="checkpoint directory (model.safetensors + checkpoint.json)")
    p.add_argument("--tokens", type=Path, required=True, help="token store (see `genba tokens`)")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default loopback)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--tls-cert", type=Path, help="server certificate (PEM) to serve HTTPS/WSS")
    p.add_argument("--tls-key", type=Path, help="server key (PEM)")
    p.add_argument("--tls-ca", type=Path, help="CA (PEM) whose client certificates are required (mutual TLS)")
    p.add_argument("--batch-window-ms", type=float, default=1.5, help="micro-batching window")
    p.add_argument("--max-inflight", type=int, default=256, help="requests in flight before 503")
    p.add_argument("--max-sessions", type=int, default=1024,
                   help="sessions in all (latched ones count and are never evicted); 503 when full")
    p.add_argument("--sessions-per-org", type=int, default=256,
                   help="default session quota per organization (429 beyond); `tokens add-org --max-sessions` "
                        "overrides it")
    p.set_defaults(func=cmd_serve)


def _register_admin(sub: argparse._SubParsersAction) -> None:
    t = sub.add_parser("tokens", help="manage per-organization API tokens (hashed at rest)")
    t.add_argument("--store", type=Path, required=True, help="token store JSON file")
    ts = t.add_subparsers(dest="action", required=True)
    a = ts.add_parser("add-org", help="create or update an organization and its granted embodiments")
    a.add_argument("org")
    a.add_argument("--embodiments", required=True, help="comma-separated embodiment names ('*' = all)")
    a.add_argument("--can-reset-estop", action="store_true", help="its tokens may clear a latched e-stop")
    a.add_argument("--max-sessions", type=int, default=None,
                   help="its session quota on the server (default: the server's --sessions-per-org)")
    i = ts.add_parser("issue", help="print a new token for an organization (shown once)")
    i.add_argument("org")
    i.add_argument("--label", default="")
    r = ts.add_parser("revoke", help="revoke a token (by token or id)")
    r.add_argument("token")
    ts.add_parser("list", help="list tokens (no secrets)")
    t.set_defaults(func=cmd_tokens)

    c = sub.add_parser("certs", help="certificates for TLS and OPC UA")
    cs = c.add_subparsers(dest="action", required=True)
    ci = cs.add_parser("init", help="a CA, its trust list, and machine + bridge certificates in DIR")
    ci.add_argument("dir", type=Path)
    cn = cs.add_parser("issue", help="a key and certificate signed by DIR's CA")
    cn.add_argument("dir", type=Path)
    cn.add_argument("name")
    cn.add_argument("--uri", required=True, help="application URI placed in subjectAltName")
    cn.add_argument("--host", action="append", default=None, help="DNS name or IP (repeatable)")
    c.set_defaults(func=cmd_certs)

    b = sub.add_parser("bridge", help="OPC UA: run a simulated machine, or drive one with a policy")
    bs = b.add_subparsers(dest="action", required=True)
    m = bs.add_parser("machine", help="a simulated machine from the suite behind a secured OPC UA server")
    m.add_argument("--task", default="drive/pmsm-current")
    m.add_argument("--endpoint", default="opc.tcp://127.0.0.1:4840/genba/")
    m.add_argument("--certs", type=Path, required=True)
    m.add_argument("--period-ms", type=float, default=10.0, help="wall time per simulated control step")
    o = bs.add_parser("opcua", help="drive a machine: read observations, policy, shield, write setpoints")
    o.add_argument("--task", default="drive/pmsm-current", help="task whose spec names the nodes")
    o.add_argument("--endpoint", default="opc.tcp://127.0.0.1:4840/genba/")
    o.add_argument("--certs", type=Path, required=True)
    o.add_argument("--checkpoint", type=Path, help="in-process policy from this checkpoint")
    o.add_argument("--server", help="or a genba server URL (with --token)")
    o.add_argument("--token", help="API token for --server")
    o.add_argument("--period-ms", type=float, default=10.0)
    o.add_argument("--deadline-ms", type=float, default=8.0, help="a cycle's write landing later is counted late")
    o.add_argument("--seconds", type=float, default=5.0)
    o.add_argument("--cycle-nice", type=int, help="nice of the cycle thread (negative needs CAP_SYS_NICE)")
    o.add_argument("--cycle-rt", type=int, help="SCHED_FIFO priority 1-99 of the cycle thread (CAP_SYS_NICE)")
    o.add_argument("--policy-nice", type=int, help="nice of the --checkpoint policy's process (e.g. 5: below the cycle)")
    b.set_defaults(func=cmd_bridge)


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from genba.serve.auth import TokenStore
    from genba.serve.backends import load_backend
    from genba.serve.server import PolicyServer, ServerConfig, build_app, tls_options

    if not args.tokens.exists():
        raise CLIError(f"--tokens {args.tokens}: no such token store; create one with `genba tokens add-org`")
    if (args.tls_cert is None) != (args.tls_key is None):
        raise CLIError("--tls-cert and --tls-key go together")
    if args.tls_ca is not None and args.tls_cert is None:
        raise CLIError("--tls-ca (mutual TLS) needs --tls-cert and --tls-key")
    if args.max_sessions < 1 or args.sessions_per_org < 1:
        raise CLIError(f"--max-sessions ({args.max_sessions}) and --sessions-per-org ({args.sessions_per_org}) "
                       "must be >= 1")
    cfg = ServerConfig(batch_window_s=args.batch_window_ms / 1e3, max_inflight=args.max_inflight,
                       max_sessions=args.max_sessions, sessions_per_org=args.sessions_per_org)
    server = PolicyServer(_load(lambda: load_backend(str(args.checkpoint))), TokenStore(args.tokens), cfg)
    ssl_kw = tls_options(args.tls_cert, args.tls_key, args.tls_ca) if args.tls_cert is not None else {}
    uvicorn.run(build_app(server), host=args.host, port=args.port, ws_max_size=server.max_body_bytes,
                limit_concurrency=cfg.max_inflight * 2, log_level="info", **ssl_kw)
    return 0


def _load(load):
    """``load()``, with a missing, truncated or corrupt checkpoint said in one line instead of a traceback."""
    from genba.model.bundle import BundleError

    try:
        return load()
    except BundleError as e:
        raise CLIError(f"cannot serve this checkpoint: {e}") from None


def cmd_tokens(args: argparse.Namespace) -> int:
    from genba.serve.auth import AuthError, TokenStore

    try:
        store = TokenStore(args.store)
        if args.action == "add-org":
            store.add_org(args.org, [e.strip() for e in args.embodiments.split(",") if e.strip()],
                          can_reset_estop=args.can_reset_estop, max_sessions=args.max_sessions)
            print(f"organization {args.org}: {store.orgs[args.org]}")
        elif args.action == "issue":
            print(store.issue(args.org, args.label))
        elif args.action == "revoke":
            store.revoke(args.token)
            print("revoked")
        else:
            print(json.dumps(store.listing(), indent=2))
    except AuthError as e:
        raise CLIError(str(e)) from None
    return 0


def cmd_certs(args: argparse.Namespace) -> int:
    from genba.serve.bridge import CLIENT_URI
    from genba.serve.certs import issue_cert, make_ca
    from genba.serve.opcua_machine import SERVER_URI

    d: Path = args.dir
    if args.action == "init":
        if (d / "ca.key.pem").exists():
            raise CLIError(f"{d} already holds a CA; use `genba certs issue` to add certificates")
        make_ca(d)
        (d / "trusted").mkdir(parents=True, exist_ok=True)
        shutil.copy(d / "ca.cert.der", d / "trusted" / "ca.cert.der")
        issue_cert(d, "machine", SERVER_URI)
        issue_cert(d, "bridge", f"{CLIENT_URI}:bridge")
        issue_cert(d, "server", "urn:genba:policy-server")
        issue_cert(d, "client", "urn:genba:policy-client")
        print(f"CA, trust list and machine/bridge/server/client certificates in {d}")
    else:
        if not (d / "ca.key.pem").exists():
            raise CLIError(f"{d} has no CA; run `genba certs init {d}` first")
        hosts = tuple(args.host) if args.host else ("localhost", "127.0.0.1")
        f = issue_cert(d, args.name, args.uri, hosts=hosts)
        print(f"{f.cert_pem} ({args.uri})")
    return 0


def cmd_bridge(args: argparse.Namespace) -> int:
    from genba.envs.registry import UnknownTaskError, get_task

    try:
        task = get_task(args.task)
    except UnknownTaskError as e:
        raise CLIError(str(e)) from None
    if args.action == "machine":
        return asyncio.run(_machine(args))
    return asyncio.run(_bridge(args, task))


async def _machine(args) -> int:
    from genba.serve.opcua_machine import MachineConfig, SimulatedMachine

    m = SimulatedMachine(MachineConfig(task_id=args.task, endpoint=args.endpoint, period_s=args.period_ms / 1e3,
                                       cert_dir=str(args.certs)))
    await m.start()
    print(f"machine {args.task} on {args.endpoint} (SignAndEncrypt, certificate users only); Ctrl-C stops")
    try:
        while True:
            await asyncio.sleep(5)
            print(f"step {m.steps} episode {m.episode} setpoint violations {m.violations}")
    finally:
        await m.stop()


async def _bridge(args, task) -> int:
    from genba.serve.bridge import BridgeConfig, run_bridge
    from genba.serve.prefetch import ProcessPolicySource, ServerSource

    spec, instruction = task.spec, task.instruction_en
    if args.checkpoint is not None:  # the model in its own process: its compute never holds the cycle's GIL
        try:
            source = ProcessPolicySource(args.checkpoint, spec.name, instruction, nice=args.policy_nice)
        except RuntimeError as e:
            raise CLIError(f"--checkpoint {args.checkpoint}: {e}") from None
        close = source.close
    elif args.server and args.token:
        from genba.client import PolicyClient

        client = PolicyClient(args.server, args.token, transport="ws", session="bridge")
        source, close = ServerSource(client, spec.name, instruction), client.close
    else:
        raise CLIError("give --checkpoint DIR, or --server URL with --token")
    cfg = BridgeConfig(endpoint=args.endpoint, cert_dir=str(args.certs), period_s=args.period_ms / 1e3,
                       deadline_s=args.deadline_ms / 1e3, instruction=instruction, cycle_nice=args.cycle_nice,
                       cycle_rt_priority=args.cycle_rt)
    try:
        rep = await run_bridge(spec, None, cfg, source=source, seconds=args.seconds)
    finally:
        close()
    print(json.dumps(rep.summary(), indent=2))
    return 0
