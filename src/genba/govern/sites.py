"""Site claims: a signed statement that a process runs at a registered compute site.

The consortium's site authority signs ``{site_id, jurisdiction, site_key, issued,
expires, nonce}`` with Ed25519. Verification refuses a claim whose signature is
not the authority's (forged or edited), that has expired or is not yet valid,
that names a site missing from the registry, or whose jurisdiction or site key
no longer matches the registry (so re-keying a site revokes its old claims).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from genba.govern import signing
from genba.govern.consortium import Consortium, Site
from genba.govern.errors import SiteClaimError

CLOCK_SKEW_S = 60  # tolerate small clock differences between issuer and verifier


def issue_claim(consortium: Consortium, site_id: str, *, ttl_s: int = 24 * 3600, now: float | None = None) -> dict:
    """A claim for a registered site, signed by the site-authority key."""
    sites = consortium.sites()
    if site_id not in sites:
        raise SiteClaimError(f"cannot issue a claim for unknown site {site_id!r}; registered sites are {sorted(sites)}")
    if ttl_s <= 0:
        raise SiteClaimError(f"claim lifetime must be positive, got {ttl_s} s")
    site = sites[site_id]
    issued = int(now if now is not None else time.time())
    claim = {
        "site_id": site.site_id,
        "jurisdiction": site.jurisdiction,
        "site_key": site.public_key,
        "issued": issued,
        "expires": issued + int(ttl_s),
        "nonce": os.urandom(16).hex(),
    }
    return {"claim": claim, "signature": signing.sign_obj(consortium.private_key("site_authority"), claim)}


def load_claim(path: str | Path) -> dict:
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SiteClaimError(f"site claim {path} does not exist") from None
    except json.JSONDecodeError as e:
        raise SiteClaimError(f"site claim {path} is not valid JSON: {e}") from None
    if not isinstance(doc, dict) or "claim" not in doc or "signature" not in doc:
        raise SiteClaimError(f"site claim {path} lacks the 'claim' and 'signature' fields")
    return doc


def verify_claim(consortium: Consortium, doc: dict, *, now: float | None = None) -> Site:
    """The registered site a claim proves, or SiteClaimError saying why it proves nothing."""
    claim = doc.get("claim") if isinstance(doc, dict) else None
    if not isinstance(claim, dict):
        raise SiteClaimError("site claim is malformed: no 'claim' object")
    if not signing.verify_obj(consortium.public_key("site_authority"), claim, doc.get("signature") or {}):
        raise SiteClaimError(
            f"site claim for {claim.get('site_id')!r} is forged or altered: "
            "its signature does not verify with the consortium's site-authority key")
    now = time.time() if now is None else now
    if now > claim["expires"]:
        raise SiteClaimError(f"site claim for {claim['site_id']!r} expired at {_iso(claim['expires'])} "
                             f"(now {_iso(now)}): issue a new one with `genba site claim`")
    if now + CLOCK_SKEW_S < claim["issued"]:
        raise SiteClaimError(f"site claim for {claim['site_id']!r} is not valid before {_iso(claim['issued'])}")
    sites = consortium.sites()
    site = sites.get(claim["site_id"])
    if site is None:
        raise SiteClaimError(f"site claim names unknown site {claim['site_id']!r}; registered sites are {sorted(sites)}")
    if site.jurisdiction != claim["jurisdiction"]:
        raise SiteClaimError(f"site claim says {claim['site_id']!r} is in {claim['jurisdiction']} "
                             f"but the registry says {site.jurisdiction}")
    if site.public_key != claim["site_key"]:
        raise SiteClaimError(f"site claim for {claim['site_id']!r} names a revoked site key (the site was re-keyed)")
    return site


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))
