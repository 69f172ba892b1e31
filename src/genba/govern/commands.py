"""CLI verbs of the governance layer.

``genba consortium init``, ``genba site claim|add``, ``genba data ingest|grant|revoke|shred``,
``genba audit verify|show|head``, ``genba lineage``. Every verb takes ``--home``
(default ``$GENBA_HOME``, else ``~/.genba``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from genba.configflags import verb_group
from genba.errors import CLIError
from genba.govern import admin, lineage, sites
from genba.govern.audit import AuditLog
from genba.govern.consortium import Consortium, Member, default_home, init_consortium
from genba.govern.errors import GovernanceError
from genba.govern.manifest import CLASSIFICATIONS, PURPOSES
from genba.govern.witness import WITNESS_ENV, Witness, default_witness, read_head_file


def _home(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--home", type=Path, default=None,
                        help="consortium home directory (default: $GENBA_HOME, else ~/.genba)")


def _witness_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--witness", type=Path, default=None,
                        help=f"directory of the audit witnesses: the last signed head each party saw, kept outside "
                             f"the home (default: ${WITNESS_ENV}, else ~/.local/state/genba/witness)")
    parser.add_argument("--party", default="operator",
                        help="whose witness this command advances: 'operator' or a member org (default operator)")


def _consortium(args) -> Consortium:
    return Consortium(args.home or default_home())


def _guard(func):
    """Turn governance refusals into CLI errors (printed without a traceback)."""
    def run(args):
        try:
            return func(args)
        except GovernanceError as e:
            raise CLIError(str(e)) from None
    return run


# --- consortium and sites ---------------------------------------------------------
def _parse_member(text: str) -> Member:
    parts = text.split(":")
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"member {text!r} must be ORG:NAME:JURISDICTION, e.g. acme:Acme Robotics:JP")
    return Member(*parts)


def _parse_site(text: str) -> tuple[str, str, str]:
    parts = text.split(":")
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"site {text!r} must be ID:JURISDICTION:OPERATOR, e.g. tokyo-1:JP:Sakura DC")
    return parts[0], parts[1], parts[2]


def cmd_consortium_init(args) -> int:
    c = init_consortium(args.home or default_home(), args.name, args.member, args.site)
    print(f"consortium {args.name!r} created in {c.home}: {len(args.member)} members, {len(args.site)} sites")
    return 0


def cmd_site_add(args) -> int:
    s = _consortium(args).add_site(args.site_id, args.jurisdiction, args.operator)
    print(f"registered site {s.site_id} ({s.jurisdiction}, {s.operator})")
    return 0


def cmd_site_claim(args) -> int:
    doc = admin.issue_claim(_consortium(args), args.site, ttl_s=int(args.ttl_hours * 3600))
    text = json.dumps(doc, indent=2, sort_keys=True)
    if args.out:
        args.out.write_text(text + "\n")
        print(f"site claim for {args.site} written to {args.out} (expires {sites._iso(doc['claim']['expires'])})")
    else:
        print(text)
    return 0


# --- data ---------------------------------------------------------------------------
def cmd_ingest(args) -> int:
    m = admin.ingest(_consortium(args), args.src, args.dest, owner=args.owner, dataset_id=args.dataset_id,
                     classification=args.classification, purposes=tuple(args.purpose),
                     personal_data=args.personal_data, retention_days=args.retention_days,
                     jurisdiction=args.jurisdiction, progress=True)
    print(f"ingested {args.src} -> {args.dest}: dataset {m.dataset_id} owner {m.owner} ({m.jurisdiction}, "
          f"{m.classification}), {len(m.files)} files, manifest {m.digest[:16]}")
    return 0


def cmd_grant(args) -> int:
    g = admin.grant(_consortium(args), owner=args.owner, grantee=args.to, dataset=args.dataset,
                    purpose=args.purpose, expires_days=args.expires_days)
    print(f"granted {g['grantee']} {g['purpose']} on {g['dataset']} (owner {g['owner']})")
    return 0


def cmd_revoke(args) -> int:
    n = admin.revoke(_consortium(args), owner=args.owner, grantee=args.to, dataset=args.dataset, purpose=args.purpose)
    print(f"revoked {n} grant(s) of {args.to} on {args.dataset}")
    return 0


def cmd_shred(args) -> int:
    if not args.yes:
        raise CLIError(f"crypto-shredding destroys every dataset of {args.owner!r} for good; pass --yes to confirm")
    r = admin.shred(_consortium(args), args.owner)
    print(f"shredded the key of {r['owner']} (fingerprint {r['kek_fingerprint']}); "
          f"unrecoverable datasets: {', '.join(r['datasets']) or 'none'}")
    return 0


# --- audit and lineage ----------------------------------------------------------------
def _witness(args) -> Witness:
    c = _consortium(args)
    return default_witness(c.public_key("audit"), getattr(args, "party", None) or "operator",
                           getattr(args, "witness", None))


def _log(args) -> AuditLog:
    """The log, read-only, with the caller's witness; a missing log that a witness has seen was deleted."""
    c = _consortium(args)
    witness = _witness(args)
    if not c.audit_path.is_file():
        seen = witness.records()
        if seen:
            s = seen[0]
            raise CLIError(f"{c.audit_path} does not exist, but {s.label} saw a signed head of size "
                           f"{s.head['tree_size']}: the audit log was deleted")
        raise CLIError(f"{c.audit_path} does not exist: nothing has been audited yet")
    return AuditLog(c.audit_path, public_key=c.public_key("audit"), witness=witness)


def cmd_audit_verify(args) -> int:
    against = read_head_file(args.against) if args.against else None
    log = _log(args)
    try:
        r = log.verify(against)
    finally:
        log.close()
    msg = f"audit log OK: {r['tree_size']} entries, root {r['root'][:16]}, signed head verified"
    if r["witnesses"]:
        msg += "; consistent with witnesses: " + ", ".join(f"{w['party']} at {w['tree_size']}" for w in r["witnesses"])
    else:
        msg += f"; no witness in {log.witness.root} had seen this log (first use): this verify starts one"
    if against is not None:
        msg += f"; consistent with the earlier head of size {r['consistent_with']['tree_size']}"
    print(msg)
    return 0


def cmd_audit_show(args) -> int:
    log = _log(args)
    head = log.observe()
    size = log.size()
    for e in log.entries(max(0, size - args.last)):
        ev = e["event"]
        who = ev.get("principal") or ev.get("owner") or ""
        what = ev.get("dataset") or ""
        extra = f" {ev['file']}" if ev.get("file") else ""
        print(f"#{e['index']:<5} {ev.get('kind', ''):7} {ev.get('decision', ''):5} {who:16} {what}{extra} "
              f"site={ev.get('site') or '-'} purpose={ev.get('purpose') or '-'} "
              f"policy={','.join(ev.get('policy_ids') or []) or '-'}")
    log.close()
    if head:
        print(f"signed tree head: size {head['tree_size']} root {head['root']}")
    return 0


def cmd_audit_head(args) -> int:
    log = _log(args)
    head = log.observe()  # never export a head that contradicts what a witness saw
    log.close()
    if head is None:
        raise CLIError("the audit log is empty: no head to export")
    args.out.write_text(json.dumps(head, indent=2, sort_keys=True) + "\n")
    print(f"signed tree head of size {head['tree_size']} written to {args.out}")
    return 0


def cmd_lineage(args) -> int:
    lin = lineage.read_checkpoint_lineage(args.checkpoint)
    print(lineage.format_lineage(lin))
    if args.verify:
        log = _log(args)
        log.observe()
        problems = lineage.verify_lineage(lin, log)
        if problems:
            raise CLIError("lineage does not verify against the audit log:\n  " + "\n  ".join(problems))
        print("lineage verified: every audit entry is proven included in the signed log")
    if args.card:
        args.card.write_text(lineage.model_card(lin, model_name=Path(args.checkpoint).name))
        print(f"model card written to {args.card}")
    return 0


def register(subparsers) -> None:
    """Add the governance verbs to the top-level ``genba`` parser."""
    cons = verb_group(subparsers, "consortium", "create a consortium home (members, sites, authority keys)")
    p = cons.add_parser("init", help="create a consortium home with fresh keys")
    _home(p)
    p.add_argument("--name", required=True, help="consortium name")
    p.add_argument("--member", type=_parse_member, action="append", required=True, help="ORG:NAME:JURISDICTION (repeat)")
    p.add_argument("--site", type=_parse_site, action="append", default=[], help="ID:JURISDICTION:OPERATOR (repeat)")
    p.set_defaults(func=_guard(cmd_consortium_init))

    site = verb_group(subparsers, "site", "compute sites and signed site claims")
    p = site.add_parser("claim", help="issue a signed claim that this process runs at SITE")
    _home(p)
    p.add_argument("--site", required=True, help="registered site id")
    p.add_argument("--ttl-hours", type=float, default=24.0, help="claim lifetime in hours")
    p.add_argument("--out", type=Path, default=None, help="write the claim here instead of stdout")
    p.set_defaults(func=_guard(cmd_site_claim))
    p = site.add_parser("add", help="register a compute site")
    _home(p)
    p.add_argument("site_id", help="site id, e.g. tokyo-1")
    p.add_argument("jurisdiction", help="ISO 3166 alpha-2 code, e.g. JP")
    p.add_argument("operator", help="who operates the site")
    p.set_defaults(func=_guard(cmd_site_add))

    data = verb_group(subparsers, "data", "governed datasets: ingest, grant, revoke, shred")
    p = data.add_parser("ingest", help="encrypt a member's LeRobot dataset, sign its manifest, register it")
    _home(p)
    p.add_argument("src", type=Path, help="plaintext LeRobot dataset directory")
    p.add_argument("dest", type=Path, help="new directory for the encrypted governed dataset")
    p.add_argument("--owner", required=True, help="owning member org id")
    p.add_argument("--dataset-id", required=True, help="consortium-wide dataset id")
    p.add_argument("--classification", choices=CLASSIFICATIONS, required=True, help="data classification")
    p.add_argument("--purpose", choices=PURPOSES, action="append", required=True, help="allowed purpose (repeat)")
    p.add_argument("--personal-data", action="store_true", help="the data may contain personal data")
    p.add_argument("--retention-days", type=int, default=None, help="refuse reads after this many days")
    p.add_argument("--jurisdiction", default=None, help="data jurisdiction (default: the owner's)")
    p.set_defaults(func=_guard(cmd_ingest))
    for name, helptext, func in (("grant", "let a member read an owner's dataset for a purpose", cmd_grant),
                                 ("revoke", "withdraw grants", cmd_revoke)):
        p = data.add_parser(name, help=helptext)
        _home(p)
        p.add_argument("--owner", required=True, help="owning member org id")
        p.add_argument("--to", required=True, help="grantee member org id")
        p.add_argument("--dataset", required=True, help="dataset id, or * for all of the owner's datasets")
        p.add_argument("--purpose", choices=PURPOSES, required=(name == "grant"), default=None, help="purpose")
        if name == "grant":
            p.add_argument("--expires-days", type=int, default=None, help="grant lifetime in days")
        p.set_defaults(func=_guard(func))
    p = data.add_parser("shred", help="crypto-shred: destroy an owner's key so its data is unrecoverable")
    _home(p)
    p.add_argument("--owner", required=True, help="member org id whose key is destroyed")
    p.add_argument("--yes", action="store_true", help="confirm the irreversible destruction")
    p.set_defaults(func=_guard(cmd_shred))

    _register_audit(subparsers)


def _register_audit(subparsers) -> None:
    """``genba audit verify|show|head`` and ``genba lineage``: the verbs that read the log and advance a witness."""
    aud = verb_group(subparsers, "audit", "the tamper-evident audit log")
    p = aud.add_parser("verify", help="recompute the Merkle log; check its signed head and every stored witness")
    _home(p)
    _witness_args(p)
    p.add_argument("--against", type=Path, default=None, help="an earlier signed head (JSON) the log must extend")
    p.set_defaults(func=_guard(cmd_audit_verify))
    p = aud.add_parser("show", help="print the latest entries and the signed head")
    _home(p)
    _witness_args(p)
    p.add_argument("--last", type=int, default=20, help="how many entries")
    p.set_defaults(func=_guard(cmd_audit_show))
    p = aud.add_parser("head", help="export the latest signed tree head for a monitor")
    _home(p)
    _witness_args(p)
    p.add_argument("--out", type=Path, required=True, help="where to write HEAD.json")
    p.set_defaults(func=_guard(cmd_audit_head))

    p = subparsers.add_parser("lineage", help="print the data lineage recorded in a checkpoint")
    _home(p)
    _witness_args(p)
    p.add_argument("checkpoint", type=Path, help="checkpoint directory (or its checkpoint.json)")
    p.add_argument("--verify", action="store_true", help="prove each audit entry against the audit log")
    p.add_argument("--card", type=Path, default=None, help="also write a Markdown model card here")
    p.set_defaults(func=_guard(cmd_lineage))
