"""Owner and consortium operations: ingest (encrypt + register), grant, revoke, shred.

Every operation is recorded in the audit log, so the log shows not only who
read what but also who allowed it and when a key was destroyed. The log is
checked (signed head, operator's witness) before an operation takes effect, so
nothing changes that could not be recorded.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pyarrow.parquet as pq
from rich.progress import Progress

from genba.govern import audit as audit_mod
from genba.govern import sites
from genba.govern.consortium import Consortium, check_id
from genba.govern.encryption import is_content, write_encrypted
from genba.govern.envelope import seal_file
from genba.govern.errors import ConsortiumError, GovernanceError
from genba.govern.kms import KeyStore, LocalKeyStore
from genba.govern.manifest import PURPOSES, Manifest, hash_files, retention_from_days, write_manifest
from genba.govern.witness import default_witness


def audit_log(consortium: Consortium, party: str = "operator", *, signing: bool = True) -> audit_mod.AuditLog:
    """The consortium's audit log as ``party`` sees it: checked against, and advancing, that party's witness."""
    public = consortium.public_key("audit")
    return audit_mod.AuditLog(consortium.audit_path, public_key=public,
                              signing_key=consortium.private_key("audit") if signing else None,
                              witness=default_witness(public, party))


def _check_log(consortium: Consortium) -> None:
    """Before an operation takes effect: the log it will be recorded in is sound (signed, witnessed)."""
    log = audit_log(consortium)
    try:
        log.observe()
    finally:
        log.close()


def _record(consortium: Consortium, event: dict) -> int:
    log = audit_log(consortium)
    try:
        return log.append({**event, "time": time.time()})
    finally:
        log.close()


def ingest(consortium: Consortium, src: str | Path, dest: str | Path, *, owner: str, dataset_id: str,
           classification: str, purposes: tuple[str, ...], personal_data: bool = False,
           retention_days: int | None = None, jurisdiction: str | None = None,
           key_store: KeyStore | None = None, progress: bool = False) -> Manifest:
    """Encrypt a plaintext LeRobot dataset under ``owner``'s key, sign its manifest, register it.

    Parquet files get modular encryption, videos an envelope each (encryption.is_content); the
    plaintext source stays the member's own (what LeRobot reads); only ``dest`` is shared.
    """
    src, dest = Path(src), Path(dest)
    if not (src / "meta" / "info.json").is_file():
        raise ConsortiumError(f"{src} is not a LeRobot dataset (no meta/info.json)")
    if dest.exists():
        raise ConsortiumError(f"{dest} already exists; choose a new output directory")
    member = consortium.member(owner)
    check_id("dataset", dataset_id)
    if dataset_id in consortium.datasets():
        raise ConsortiumError(f"dataset id {dataset_id!r} is already registered")
    _check_log(consortium)
    store = key_store or LocalKeyStore(consortium.keys_dir)
    store.create_key(owner)
    tmp = dest.with_name(dest.name + ".ingest-tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    files = _dataset_files(src)
    with Progress(disable=not progress) as bar:
        task = bar.add_task(f"encrypting {src.name}", total=len(files))
        for p in files:
            rel = p.relative_to(src).as_posix()
            out = tmp / rel
            out.parent.mkdir(parents=True, exist_ok=True)
            kind = is_content(rel)
            if kind == "parquet":
                write_encrypted(pq.ParquetFile(p), out, store, owner)
            elif kind == "envelope":  # a camera's video: sealed whole, under the same owner's key
                seal_file(p, out, store, owner, rel)
            else:
                shutil.copyfile(p, out)
            bar.advance(task)
    manifest = Manifest(
        dataset_id=dataset_id, owner=owner, jurisdiction=jurisdiction or member.jurisdiction,
        classification=classification, personal_data=personal_data, purposes=tuple(purposes),
        retain_until=retention_from_days(retention_days), files=hash_files(tmp),
        embodiment=_embodiment_name(tmp), created=int(time.time()))
    write_manifest(tmp, manifest, consortium.private_key("registry"))
    os.replace(tmp, dest)
    consortium.register_dataset(dataset_id, dest, owner)
    _record(consortium, {"kind": "ingest", "dataset": dataset_id, "owner": owner, "manifest": manifest.digest,
                         "files": len(manifest.files), "decision": "allow", "policy_ids": [], "reason": "ingested"})
    return manifest


def _dataset_files(src: Path) -> list[Path]:
    """The files ``ingest`` encrypts or copies: the dataset's own, never a hidden path.

    Hidden paths are local state, not data: above all ``.cache/frames/`` (genba.data.frame_cache),
    the decoded camera frames in the clear, which a governed copy must not carry.
    """
    out = []
    for p in sorted(src.rglob("*")):
        rel = p.relative_to(src)
        if p.is_file() and rel.as_posix() != "meta/manifest.json" and not any(x.startswith(".") for x in rel.parts):
            out.append(p)
    return out


def _embodiment_name(root: Path) -> str:
    import json

    path = root / "meta" / "genba.json"
    if not path.is_file():
        return ""
    spec = json.loads(path.read_text()).get("spec") or {}
    return spec.get("name", "") if isinstance(spec, dict) else ""


def grant(consortium: Consortium, *, owner: str, grantee: str, dataset: str, purpose: str,
          expires_days: int | None = None) -> dict:
    """``owner`` lets ``grantee`` read ``dataset`` (or ``*``: all of owner's datasets) for ``purpose``."""
    consortium.member(owner)
    consortium.member(grantee)
    if purpose not in PURPOSES:
        raise ConsortiumError(f"purpose {purpose!r} is not one of {PURPOSES}")
    if dataset != "*":
        reg = consortium.datasets()
        if dataset not in reg:
            raise ConsortiumError(f"unknown dataset {dataset!r}; registered: {sorted(reg)}")
        if reg[dataset]["owner"] != owner:
            raise ConsortiumError(f"dataset {dataset!r} belongs to {reg[dataset]['owner']!r}, not {owner!r}")
    _check_log(consortium)
    now = int(time.time())
    g = {"owner": owner, "grantee": grantee, "dataset": dataset, "purpose": purpose, "granted": now,
         "expires": None if expires_days is None else now + int(expires_days) * 86400}
    grants = [x for x in _grants(consortium)
              if (x["owner"], x["grantee"], x["dataset"], x["purpose"]) != (owner, grantee, dataset, purpose)]
    consortium.write_grants(grants + [g])
    _record(consortium, {"kind": "grant", **g, "decision": "allow", "policy_ids": [], "reason": "granted by owner"})
    return g


def _grants(consortium: Consortium) -> list[dict]:
    """The signed grants; a forged file is refused and the refusal audited before it is raised."""
    try:
        return consortium.grants()
    except ConsortiumError as e:
        _record(consortium, {"kind": "registry", "decision": "deny", "policy_ids": ["registry-signature"],
                             "reason": str(e)})
        raise


def issue_claim(consortium: Consortium, site_id: str, *, ttl_s: int) -> dict:
    """A signed site claim (:func:`genba.govern.sites.issue_claim`); a forged ``sites.json`` is refused
    and the refusal audited before it is raised, like every other registry refusal."""
    try:
        return sites.issue_claim(consortium, site_id, ttl_s=ttl_s)
    except ConsortiumError as e:
        _record(consortium, {"kind": "site-claim", "decision": "deny", "policy_ids": ["registry-signature"],
                             "site": site_id, "reason": str(e)})
        raise


def revoke(consortium: Consortium, *, owner: str, grantee: str, dataset: str, purpose: str | None = None) -> int:
    """Remove matching grants; returns how many. Runs already holding data keep what they read."""
    grants = _grants(consortium)
    keep = [g for g in grants if not (g["owner"] == owner and g["grantee"] == grantee and g["dataset"] == dataset
                                      and (purpose is None or g["purpose"] == purpose))]
    removed = len(grants) - len(keep)
    if not removed:
        raise ConsortiumError(f"no grant from {owner!r} to {grantee!r} on {dataset!r}"
                              + (f" for {purpose!r}" if purpose else "") + " to revoke")
    _check_log(consortium)
    consortium.write_grants(keep)
    _record(consortium, {"kind": "revoke", "owner": owner, "grantee": grantee, "dataset": dataset,
                         "purpose": purpose, "removed": removed, "decision": "allow", "policy_ids": [],
                         "reason": "revoked by owner"})
    return removed


def shred(consortium: Consortium, owner: str, *, key_store: KeyStore | None = None) -> dict:
    """Crypto-shred: destroy ``owner``'s key-encryption key; every dataset of theirs becomes unreadable."""
    consortium.member(owner)
    _check_log(consortium)
    store = key_store or LocalKeyStore(consortium.keys_dir)
    try:
        stone = store.shred(owner)
    except GovernanceError as e:
        raise ConsortiumError(str(e)) from None
    affected = sorted(d for d, r in consortium.datasets().items() if r["owner"] == owner)
    _record(consortium, {"kind": "shred", "owner": owner, "datasets": affected, **stone, "decision": "allow",
                         "policy_ids": [], "reason": "owner key destroyed (crypto-shredding)"})
    return {"owner": owner, "datasets": affected, **stone}
