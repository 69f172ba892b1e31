"""The consortium home: members, sites, authority keys, grants, dataset registry.

Layout of a home directory (``$GENBA_HOME`` or a path argument)::

    consortium.json        name, members {org: {name, jurisdiction}}, authority public keys
    sites.json             site registry, signed by the registry key
    grants.json            grants (owner -> member, dataset, purpose), signed by the registry key
    datasets.json          registered datasets {dataset_id: {path, owner}}
    authority/*.key        Ed25519 private keys: site_authority, registry, audit (0600)
    keys/<owner>.kek       per-owner key-encryption keys of the local KMS (see kms.py)
    audit.sqlite           the append-only Merkle audit log (see audit.py)

One process holding every authority key is a demo convenience; docs/governance.md
says which key belongs to which party in a real deployment.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from genba.atomic import write_atomic
from genba.govern import signing
from genba.govern.errors import ConsortiumError

AUTHORITY_KEYS = ("site_authority", "registry", "audit")
_ID = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
_JURISDICTION = re.compile(r"^[A-Z]{2}$")


def check_id(kind: str, value: str) -> str:
    """Ids (orgs, sites, datasets) are short lowercase slugs: they appear in paths and Cedar uids."""
    if not isinstance(value, str) or not _ID.match(value):
        raise ConsortiumError(f"{kind} id {value!r} is invalid: use 1-64 chars of a-z 0-9 _ . - starting alphanumeric")
    return value


def check_jurisdiction(value: str) -> str:
    if not isinstance(value, str) or not _JURISDICTION.match(value):
        raise ConsortiumError(f"jurisdiction {value!r} is invalid: use an ISO 3166 alpha-2 code such as JP")
    return value


def default_home() -> Path:
    return Path(os.environ.get("GENBA_HOME", Path.home() / ".genba"))


@dataclass(frozen=True)
class Member:
    org: str
    name: str
    jurisdiction: str


@dataclass(frozen=True)
class Site:
    site_id: str
    jurisdiction: str
    operator: str
    public_key: str  # the site's own key; rotating it in the registry revokes old claims


def _write_json(path: Path, obj) -> None:
    """Atomic write: a crash never leaves half a registry file behind."""
    write_atomic(path, json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConsortiumError(f"{path} is missing: run `genba consortium init` first") from None
    except json.JSONDecodeError as e:
        raise ConsortiumError(f"{path} is not valid JSON: {e}") from None


class Consortium:
    """Read and update one consortium home. Cheap to construct; reads files on demand."""

    def __init__(self, home: str | Path):
        self.home = Path(home)
        if not (self.home / "consortium.json").is_file():
            raise ConsortiumError(f"{self.home} is not a consortium home (no consortium.json): run `genba consortium init`")
        self.config = _read_json(self.home / "consortium.json")

    # --- paths and keys ----------------------------------------------------
    @property
    def audit_path(self) -> Path:
        return self.home / "audit.sqlite"

    @property
    def keys_dir(self) -> Path:
        return self.home / "keys"

    def public_key(self, role: str) -> str:
        return self.config["authority"][role]

    def private_key(self, role: str):
        path = self.home / "authority" / f"{role}.key"
        if not path.is_file():
            raise ConsortiumError(f"{path} is missing: this process does not hold the {role} key")
        return signing.load_private_key(path)

    # --- members -----------------------------------------------------------
    def members(self) -> dict[str, Member]:
        return {org: Member(org, m["name"], m["jurisdiction"]) for org, m in self.config["members"].items()}

    def member(self, org: str) -> Member:
        members = self.members()
        if org not in members:
            raise ConsortiumError(f"unknown member {org!r}; members are {sorted(members)}")
        return members[org]

    # --- signed registries (sites, grants) --------------------------------
    def _read_signed(self, name: str, key: str) -> list:
        doc = _read_json(self.home / name)
        body = doc.get(key)
        if not signing.verify_obj(self.public_key("registry"), body, doc.get("signature", {})):
            raise ConsortiumError(f"{self.home / name} fails its registry signature: the file was edited outside genba")
        return body

    def _write_signed(self, name: str, key: str, body) -> None:
        _write_json(self.home / name, {key: body, "signature": signing.sign_obj(self.private_key("registry"), body)})

    def sites(self) -> dict[str, Site]:
        return {s["site_id"]: Site(**s) for s in self._read_signed("sites.json", "sites")}

    def add_site(self, site_id: str, jurisdiction: str, operator: str) -> Site:
        check_id("site", site_id)
        check_jurisdiction(jurisdiction)
        sites = self.sites()
        if site_id in sites:
            raise ConsortiumError(f"site {site_id!r} is already registered")
        key = signing.new_private_key()
        signing.save_private_key(key, self.home / "sites" / f"{site_id}.key")
        site = Site(site_id, jurisdiction, operator, signing.public_key_b64(key))
        body = [vars(s) for s in sites.values()] + [vars(site)]
        self._write_signed("sites.json", "sites", body)
        return site

    def grants(self) -> list[dict]:
        return self._read_signed("grants.json", "grants")

    def write_grants(self, grants: list[dict]) -> None:
        self._write_signed("grants.json", "grants", grants)

    # --- dataset registry --------------------------------------------------
    def datasets(self) -> dict[str, dict]:
        return _read_json(self.home / "datasets.json")

    def register_dataset(self, dataset_id: str, path: Path, owner: str) -> None:
        reg = self.datasets()
        reg[dataset_id] = {"path": str(Path(path).resolve()), "owner": owner, "registered": int(time.time())}
        _write_json(self.home / "datasets.json", reg)


def init_consortium(home: str | Path, name: str, members: list[Member], sites: list[tuple[str, str, str]]) -> Consortium:
    """Create a consortium home with fresh authority keys, members and sites."""
    home = Path(home)
    if (home / "consortium.json").exists():
        raise ConsortiumError(f"{home} already holds a consortium; choose an empty directory")
    if not members:
        raise ConsortiumError("a consortium needs at least one member")
    for m in members:
        check_id("member", m.org)
        check_jurisdiction(m.jurisdiction)
    home.mkdir(parents=True, exist_ok=True)
    authority = {}
    for role in AUTHORITY_KEYS:
        key = signing.new_private_key()
        signing.save_private_key(key, home / "authority" / f"{role}.key")
        authority[role] = signing.public_key_b64(key)
    (home / "keys").mkdir(exist_ok=True)
    _write_json(home / "consortium.json", {
        "name": name,
        "members": {m.org: {"name": m.name, "jurisdiction": m.jurisdiction} for m in members},
        "authority": authority,
        "created": int(time.time()),
    })
    _write_json(home / "datasets.json", {})
    c = Consortium(home)
    c._write_signed("sites.json", "sites", [])
    c.write_grants([])
    for site_id, jurisdiction, operator in sites:
        c.add_site(site_id, jurisdiction, operator)
    return c
