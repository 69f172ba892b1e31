"""The governed open: the only path by which consortium data reaches a reader or trainer.

Order of checks (each refusal is audited and raised before any dataset content
is read): site claim and signed registries -> signed manifest -> Cedar decision
and owner key check (per dataset, cached) -> per-file sha256 against the
manifest -> key check and decryption -> the file's allow entry. The
reader's ``read_table`` hook (``genba.data.dataset.open_dataset``) calls
``GovernedAccess.read_table`` for every Parquet file, and its ``read_bytes``
hook ``GovernedAccess.read_video`` for every camera file (an envelope per MP4,
decrypted in memory), so an epoch of training pays the governance cost once
per file, never per sample.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from genba.govern import audit as audit_mod
from genba.govern.consortium import Consortium, default_home
from genba.govern.encryption import Decryptor, is_content
from genba.govern.errors import (
    AccessDenied,
    ConsortiumError,
    FileHashMismatch,
    GovernanceError,
    KeyUnavailable,
    ManifestError,
    SiteClaimError,
    WrongOwnerKey,
)
from genba.govern.kms import KeyStore, LocalKeyStore
from genba.govern.manifest import MANIFEST_PATH, Manifest, read_manifest
from genba.govern.policy import PolicyEngine, Request
from genba.govern.signing import sha256_hex
from genba.govern.sites import load_claim, verify_claim
from genba.govern.witness import default_witness


@dataclass
class _Opened:
    """What one authorized dataset has cost and produced so far."""
    root: Path
    manifest: Manifest
    decryptor: Decryptor
    files: dict[str, str] = field(default_factory=dict)  # relative path -> sha256 actually read
    audit_entries: list[int] = field(default_factory=list)


class GovernedAccess:
    """One principal, at one verified site, for one purpose and run: authorizes, audits, decrypts.

    Raises SiteClaimError at construction when the claim does not verify (and
    audits the refusal). Use ``open(root)`` for a ``genba.data`` Dataset or pass
    ``read_table`` to any reader.
    """

    def __init__(self, home: str | Path | None, principal: str, site_claim: dict | str | Path, purpose: str,
                 run_id: str, *, action: str = "read", key_store: KeyStore | None = None, now: float | None = None):
        self.consortium = Consortium(home if home is not None else default_home())
        self.principal, self.purpose, self.run_id, self.action = principal, purpose, run_id, action
        self.now = now
        public = self.consortium.public_key("audit")
        # The member's own witness: its reads are what it has seen of the log (party = its org).
        self.log = audit_mod.AuditLog(self.consortium.audit_path, public_key=public,
                                      signing_key=self.consortium.private_key("audit"),
                                      witness=default_witness(public, principal.partition("/")[0] or principal))
        self.store = key_store or LocalKeyStore(self.consortium.keys_dir)
        claim = load_claim(site_claim) if isinstance(site_claim, (str, Path)) else site_claim
        claimed_site = (claim.get("claim") or {}).get("site_id") if isinstance(claim, dict) else None
        try:
            self.site = verify_claim(self.consortium, claim, now=now)
        except SiteClaimError as e:
            self._audit(None, decision="deny", policy_ids=["site-claim"], reason=str(e), site=claimed_site)
            raise
        except ConsortiumError as e:  # sites.json fails its registry signature: no site can be trusted
            self._audit(None, decision="deny", policy_ids=["registry-signature"], reason=str(e), site=claimed_site)
            raise
        try:
            grants = self.consortium.grants()
        except ConsortiumError as e:
            self._audit(None, decision="deny", policy_ids=["registry-signature"], reason=str(e))
            raise
        self.engine = PolicyEngine(self.consortium.members(), grants)
        self._opened: dict[Path, _Opened] = {}

    # --- public API --------------------------------------------------------------
    def authorize(self, root: str | Path) -> Manifest:
        """Verify the manifest and decide; AccessDenied names the policy. Cached per dataset."""
        root = Path(root).resolve()
        if root in self._opened:
            return self._opened[root].manifest
        try:
            manifest = read_manifest(root, self.consortium.public_key("registry"))
        except ManifestError as e:
            self._audit(None, decision="deny", policy_ids=["manifest-signature"], reason=str(e), dataset=str(root))
            raise
        decision = self.engine.decide(Request(self.principal, self.action, manifest, self.site, self.purpose,
                                              self.run_id, int(self.now or 0)))
        if decision.allowed:  # a shredded (or missing) key is a refusal, decided before any allow is logged
            self._check_key(manifest)
        idx = self._audit(manifest, decision="allow" if decision.allowed else "deny",
                          policy_ids=list(decision.policy_ids), reason=decision.reason)
        if not decision.allowed:
            raise AccessDenied(f"{self.principal} may not {self.action} dataset {manifest.dataset_id!r} "
                               f"(owner {manifest.owner}, {manifest.jurisdiction}) at site {self.site.site_id} "
                               f"({self.site.jurisdiction}) for {self.purpose}: {decision.reason}",
                               policy_id=decision.policy_id, policy_ids=decision.policy_ids)
        opened = _Opened(root, manifest, Decryptor(self.store, manifest.owner), audit_entries=[idx])
        self._check_plain_files(opened)
        self._opened[root] = opened
        return manifest

    def read_table(self, path: str | Path) -> pa.Table:
        """The ``read_table`` hook: authorize the file's dataset, check its hash and key, decrypt, audit.

        The allow entry is written once the file has decrypted and before its
        table is returned; any refusal on the way is one deny entry, never an
        allow followed by a failure.
        """
        return self._decrypt(path, lambda d, data, rel: d.read(data))

    def read_video(self, path: str | Path) -> bytes:
        """The ``read_video`` hook: a camera file's plaintext bytes (an MP4), in memory only.

        The same checks and audit entries as ``read_table``: hash against the
        signed manifest before anything is decrypted, the owner's key now, one
        allow entry per file once it has decrypted (or one deny). The caller
        decodes from these bytes; nothing is written in the clear.
        """
        return self._decrypt(path, lambda d, data, rel: d.open_envelope(data, rel))

    def _decrypt(self, path: str | Path, decrypt):
        path = Path(path).resolve()
        opened = self._opened_for(path)
        rel = path.relative_to(opened.root).as_posix()
        data = self._read_checked(opened, rel)
        self._check_key(opened.manifest, opened, rel)  # re-read per file: a shred during a run stops its next read
        try:
            out = decrypt(opened.decryptor, data, rel)
        except (WrongOwnerKey, KeyUnavailable) as e:
            opened.audit_entries.append(self._audit(opened.manifest, decision="deny", policy_ids=["kms"],
                                                    reason=str(e), file=rel))
            raise
        except FileHashMismatch as e:  # an envelope whose tag fails: altered after the manifest was signed
            self._refuse_file(opened, rel, str(e))
        idx = self._audit(opened.manifest, decision="allow", policy_ids=["file-hash"], reason="file read",
                          file=rel, sha256=opened.manifest.files[rel])
        opened.audit_entries.append(idx)
        opened.files[rel] = opened.manifest.files[rel]
        return out

    def open(self, root: str | Path):
        """A ``genba.data`` Dataset whose every Parquet and video read goes through this access.

        ``cache_dir=None``: the frames decoded from governed videos stay in memory, never on disk in the
        clear (docs/governance.md, Video, says why not an encrypted cache).
        """
        from genba.data.dataset import open_dataset  # the data layer below us; imported late to keep startup cheap

        self.authorize(root)
        return open_dataset(Path(root), read_table=self.read_table, read_bytes=self.read_video, cache_dir=None)

    def export_to(self, root: str | Path, dest: str | Path) -> list[Path]:
        """Write decrypted copies of a dataset's Parquet and video files (action ``export``; restricted data never leaves)."""
        if self.action != "export":
            raise GovernanceError("export needs a GovernedAccess opened with action='export'")
        manifest = self.authorize(root)
        written = []
        for rel in sorted(r for r in manifest.files if is_content(r)):
            out = Path(dest) / rel
            out.parent.mkdir(parents=True, exist_ok=True)
            if is_content(rel) == "parquet":
                pq.write_table(self.read_table(Path(root) / rel), out)
            else:
                out.write_bytes(self.read_video(Path(root) / rel))
            written.append(out)
        return written

    def lineage(self) -> dict:
        """What this access read, for the checkpoint's checkpoint.json ``lineage`` key."""
        from genba.govern.lineage import access_lineage

        return access_lineage(self)

    def opened(self) -> list[_Opened]:
        return list(self._opened.values())

    def close(self) -> None:
        self.log.close()

    # --- internals ---------------------------------------------------------------
    def _opened_for(self, path: Path) -> _Opened:
        for root, opened in self._opened.items():
            if path.is_relative_to(root):
                return opened
        for parent in path.parents:  # a reader handed us a file of a dataset not yet authorized
            if (parent / MANIFEST_PATH).is_file():
                self.authorize(parent)
                return self._opened[parent]
        raise GovernanceError(f"{path} belongs to no governed dataset (no {MANIFEST_PATH} above it)")

    def _read_checked(self, opened: _Opened, rel: str) -> bytes:
        """File bytes whose sha256 matches the manifest; hashing the bytes we decrypt leaves no swap window."""
        expected = opened.manifest.files.get(rel)
        if expected is None:
            self._refuse_file(opened, rel, f"{rel} is not listed in the manifest of {opened.manifest.dataset_id!r}")
        try:
            data = (opened.root / rel).read_bytes()
        except FileNotFoundError:
            self._refuse_file(opened, rel, f"{rel} of dataset {opened.manifest.dataset_id!r} is missing")
        actual = sha256_hex(data)
        if actual != expected:
            self._refuse_file(opened, rel, f"{rel} of dataset {opened.manifest.dataset_id!r} was swapped or altered: "
                                           f"sha256 {actual[:16]}... but the signed manifest says {expected[:16]}...")
        return data

    def _check_plain_files(self, opened: _Opened) -> None:
        """Metadata the reader opens itself (JSON) is checked against the manifest up front.

        Encrypted files (parquet, videos) are hashed when they are read, on the very bytes decrypted.
        """
        for rel in sorted(opened.manifest.files):
            if not is_content(rel):
                self._read_checked(opened, rel)

    def _check_key(self, manifest: Manifest, opened: _Opened | None = None, rel: str | None = None) -> None:
        """The owner's KEK is usable now (not shredded, not restored after a shred), else one audited deny."""
        try:
            self.store.check(manifest.owner)
        except KeyUnavailable as e:
            idx = self._audit(manifest, decision="deny", policy_ids=["kms"], reason=str(e), file=rel)
            if opened is not None:
                opened.audit_entries.append(idx)
            raise

    def _refuse_file(self, opened: _Opened, rel: str, message: str):
        self._audit(opened.manifest, decision="deny", policy_ids=["file-hash"], reason=message, file=rel)
        raise FileHashMismatch(message, path=rel)

    def _audit(self, manifest: Manifest | None, *, decision: str, policy_ids: list[str], reason: str, **extra) -> int:
        event = {
            "kind": "access", "principal": self.principal, "action": self.action, "purpose": self.purpose,
            "run_id": self.run_id, "site": getattr(self, "site", None) and self.site.site_id,
            "site_jurisdiction": getattr(self, "site", None) and self.site.jurisdiction,
            "decision": decision, "policy_ids": policy_ids, "reason": reason, "time": time.time(),
        }
        if manifest is not None:
            event.update(dataset=manifest.dataset_id, owner=manifest.owner, manifest=manifest.digest)
        event.update({k: v for k, v in extra.items() if v is not None})
        return self.log.append(event)


def open_governed(root: str | Path, *, home: str | Path | None, principal: str, site_claim, purpose: str,
                  run_id: str, key_store: KeyStore | None = None):
    """One-shot governed open: returns ``(dataset, access)``; keep ``access`` for ``lineage()``."""
    access = GovernedAccess(home, principal, site_claim, purpose, run_id, key_store=key_store)
    return access.open(root), access


def governed_access(home: str | Path | None, principal: str, site_claim: Path | dict, purpose: str, run_id: str,
                    data_dirs: list[Path]) -> GovernedAccess:
    """A GovernedAccess that has authorized every dataset in ``data_dirs`` (nothing of them read yet).

    Raises the :class:`GovernanceError` of the first refusal (bad claim, policy
    denial, tampered manifest), already in the audit log; :func:`refusal` words it.
    ``genba train --governed`` and the demo call this before opening any dataset.
    """
    access = GovernedAccess(home, principal, site_claim, purpose, run_id)
    try:
        for d in data_dirs:
            access.authorize(d)
    except GovernanceError:
        access.close()
        raise
    return access


def refusal(e: GovernanceError) -> str:
    """One line saying a job stopped before reading any data, naming the denying policy if one did."""
    why = f"denied by policy {e.policy_id}: {e}" if isinstance(e, AccessDenied) else str(e)
    return f"training stopped before reading any data: {why}"
