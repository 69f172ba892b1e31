"""The Cedar policy engine: one decision per (principal, action, dataset, site, purpose), cached.

Policies and their schema are files shipped in ``genba/govern/policies/``;
they are validated against the schema when loaded, and every policy must carry
an ``@id`` annotation so a refusal can name the rule that made it. Entities
are built from trusted inputs only: the verified site claim, the signed
manifest, the signed grants file and the consortium member list.
"""

from __future__ import annotations

import functools
import json
import time
from dataclasses import dataclass
from pathlib import Path

import cedarpy

from genba.govern.consortium import Member, Site
from genba.govern.errors import GovernanceError
from genba.govern.manifest import Manifest

POLICY_DIR = Path(__file__).parent / "policies"
ACTIONS = ("read", "export")
DEFAULT_DENY = "default-deny"


class PolicyError(GovernanceError):
    """The policy files are missing, do not parse, or fail schema validation."""


@dataclass(frozen=True)
class Request:
    principal: str  # "org/name"
    action: str  # "read" | "export"
    manifest: Manifest
    site: Site
    purpose: str
    run_id: str = ""
    now: int = 0  # unix seconds; 0 means "now"


@dataclass(frozen=True)
class Decision:
    allowed: bool
    policy_ids: tuple[str, ...]  # the determining policies: permits if allowed, forbids (or default-deny) if not
    reason: str

    @property
    def policy_id(self) -> str:
        return self.policy_ids[0] if self.policy_ids else DEFAULT_DENY


def principal_org(principal: str) -> str:
    org, sep, name = principal.partition("/")
    if not sep or not org or not name:
        raise GovernanceError(f"principal {principal!r} must look like ORG/NAME, e.g. member-a/alice")
    return org


def load_policies(policy_dir: str | Path = POLICY_DIR) -> tuple[str, str, dict[str, str]]:
    """(policies text, schema text, {policy id: description}); validated against the schema."""
    policy_dir = Path(policy_dir).resolve()
    stamp = tuple((p.name, p.stat().st_mtime_ns) for p in sorted(policy_dir.glob("*.cedar*")))
    return _load_policies(policy_dir, stamp)


@functools.lru_cache(maxsize=8)
def _load_policies(policy_dir: Path, stamp: tuple) -> tuple[str, str, dict[str, str]]:
    # Cached by directory and file mtimes: validation costs milliseconds, and every run builds an engine.
    try:
        policies = "\n".join(p.read_text(encoding="utf-8") for p in sorted(policy_dir.glob("*.cedar")))
        schema = (policy_dir / "genba.cedarschema").read_text(encoding="utf-8")
    except FileNotFoundError as e:
        raise PolicyError(f"policy file missing: {e.filename}") from None
    if not policies.strip():
        raise PolicyError(f"no *.cedar policy files in {policy_dir}")
    result = cedarpy.validate_policies(policies, schema)
    if not result.validation_passed:
        errors = "; ".join(str(e) for e in result.errors)
        raise PolicyError(f"policies in {policy_dir} fail validation against genba.cedarschema: {errors}")
    described = {}
    for pid, pol in json.loads(cedarpy.policies_to_json_str(policies))["staticPolicies"].items():
        ann = pol.get("annotations", {})
        if "id" not in ann:
            raise PolicyError(f"a {pol['effect']} policy in {policy_dir} has no @id annotation ({pid}); "
                              "every policy needs one so refusals can name it")
        described[ann["id"]] = ann.get("description", "")
    return policies, schema, described


def _uid(kind: str, ident: str) -> dict:
    return {"__entity": {"type": kind, "id": ident}}


class PolicyEngine:
    """Evaluates the policy set for requests; decisions are cached per request key."""

    def __init__(self, members: dict[str, Member], grants: list[dict], policy_dir: str | Path = POLICY_DIR):
        text, schema, self.descriptions = load_policies(policy_dir)
        self.policies = cedarpy.PolicySet.from_str(text)
        self.schema = cedarpy.Schema.from_str(schema)
        self.members = members
        self.grants = grants
        self._cache: dict[tuple, Decision] = {}

    def grants_for(self, manifest: Manifest, now: int) -> list[dict]:
        """Grants by the dataset's owner that cover this dataset and have not expired."""
        return [g for g in self.grants
                if g["owner"] == manifest.owner and g["dataset"] in (manifest.dataset_id, "*")
                and (g.get("expires") is None or g["expires"] > now)]

    def entities(self, req: Request, now: int) -> list[dict]:
        org = principal_org(req.principal)
        m = req.manifest
        orgs = {o: mem.jurisdiction for o, mem in self.members.items()}
        orgs.setdefault(org, "")
        grants = [{"org": _uid("Org", g["grantee"]), "purpose": g["purpose"]} for g in self.grants_for(m, now)]
        return [
            *({"uid": {"type": "Org", "id": o}, "attrs": {"jurisdiction": j}, "parents": []} for o, j in orgs.items()),
            {"uid": {"type": "Principal", "id": req.principal}, "attrs": {"org": _uid("Org", org)},
             "parents": [{"type": "Org", "id": org}]},
            {"uid": {"type": "Site", "id": req.site.site_id},
             "attrs": {"jurisdiction": req.site.jurisdiction, "operator": req.site.operator}, "parents": []},
            {"uid": {"type": "Dataset", "id": m.dataset_id}, "parents": [], "attrs": {
                "owner": _uid("Org", m.owner), "jurisdiction": m.jurisdiction, "classification": m.classification,
                "personal_data": m.personal_data, "purposes": sorted(m.purposes), "grants": grants,
                "retain_until": int(m.retain_until)}},
        ]

    def decide(self, req: Request) -> Decision:
        """The (cached) decision for ``req``."""
        if req.action not in ACTIONS:
            raise GovernanceError(f"unknown action {req.action!r}; actions are {ACTIONS}")
        key = (req.principal, req.action, req.manifest.digest, req.site.site_id, req.site.jurisdiction,
               req.purpose, req.run_id, req.now)
        if key not in self._cache:
            self._cache[key] = self._evaluate(req)
        return self._cache[key]

    def _evaluate(self, req: Request) -> Decision:
        now = req.now or int(time.time())
        request = {
            "principal": {"type": "Principal", "id": req.principal},
            "action": {"type": "Action", "id": req.action},
            "resource": {"type": "Dataset", "id": req.manifest.dataset_id},
            "context": {"site": _uid("Site", req.site.site_id), "purpose": req.purpose, "now": now,
                        "run_id": req.run_id},
        }
        entities = cedarpy.Entities.from_json_str(json.dumps(self.entities(req, now)), schema=self.schema)
        result = cedarpy.is_authorized(request, self.policies, entities, self.schema)
        diag = result.diagnostics
        if diag.errors:
            raise PolicyError(f"policy evaluation failed for {req.principal} on {req.manifest.dataset_id}: {diag.errors}")
        ids = tuple(sorted(diag.id_annotations_by_reason.get(r, r) for r in diag.reasons))
        if result.allowed:
            return Decision(True, ids, f"allowed by {', '.join(ids)}")
        if not ids:
            return Decision(False, (DEFAULT_DENY,), self._default_deny_reason(req))
        why = "; ".join(f"{i}: {self.descriptions.get(i, '')}" for i in ids)
        return Decision(False, ids, f"denied by policy {', '.join(ids)} ({why})")

    def _default_deny_reason(self, req: Request) -> str:
        m = req.manifest
        return (f"denied by policy {DEFAULT_DENY}: no permit matched; {req.principal} is not a principal of owner "
                f"{m.owner!r} and {principal_org(req.principal)!r} holds no grant from {m.owner!r} for purpose "
                f"{req.purpose!r} on dataset {m.dataset_id!r} (see permits owner-access, granted-member-read)")
