"""The Cedar engine against a plain-Python reference of the same rules, on random worlds."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from genba.govern.consortium import Member, Site
from genba.govern.manifest import CLASSIFICATIONS, PURPOSES, Manifest
from genba.govern.policy import PolicyEngine, Request, load_policies

ORGS = ("a", "b", "c")
NOW = 1_700_000_000
MEMBERS = {o: Member(o, o.upper(), "JP") for o in ORGS}
SITES = [Site("tokyo", "JP", "t", "k1"), Site("osaka", "JP", "o", "k2"), Site("virginia", "US", "v", "k3"),
         Site("frankfurt", "DE", "f", "k4")]


def reference(org: str, action: str, m: Manifest, site: Site, purpose: str, grants: list[dict]) -> tuple[bool, set]:
    """The rules of docs/governance.md, written the obvious way."""
    forbids = set()
    if site.jurisdiction != m.jurisdiction:
        forbids.add("data-residency")
    if purpose not in m.purposes:
        forbids.add("purpose-not-allowed")
    if action == "export" and m.classification == "restricted":
        forbids.add("restricted-no-export")
    if m.personal_data and org != m.owner:
        forbids.add("personal-data-owner-only")
    if NOW > m.retain_until:
        forbids.add("retention-expired")
    if forbids:
        return False, forbids
    permits = set()
    if org == m.owner:
        permits.add("owner-access")
    if action == "read" and any(
            g["owner"] == m.owner and g["dataset"] in (m.dataset_id, "*") and g["grantee"] == org
            and g["purpose"] == purpose and (g["expires"] is None or g["expires"] > NOW) for g in grants):
        permits.add("granted-member-read")
    return (True, permits) if permits else (False, {"default-deny"})


manifests = st.builds(
    lambda owner, j, cls, pd, purposes, retain, ds: Manifest(
        dataset_id=ds, owner=owner, jurisdiction=j, classification=cls, personal_data=pd,
        purposes=tuple(sorted(purposes)), retain_until=retain),
    st.sampled_from(ORGS), st.sampled_from(["JP", "US"]), st.sampled_from(CLASSIFICATIONS), st.booleans(),
    st.sets(st.sampled_from(PURPOSES), min_size=1), st.sampled_from([NOW - 10, NOW + 10, 2**53]),
    st.sampled_from(["ds-1", "ds-2"]))
grants = st.lists(st.fixed_dictionaries({
    "owner": st.sampled_from(ORGS), "grantee": st.sampled_from(ORGS + ("x",)),
    "dataset": st.sampled_from(["ds-1", "ds-2", "*"]), "purpose": st.sampled_from(PURPOSES),
    "expires": st.sampled_from([None, NOW - 5, NOW + 5])}), max_size=6)


@settings(max_examples=150, deadline=None)
@given(org=st.sampled_from(ORGS + ("x",)), action=st.sampled_from(["read", "export"]), m=manifests,
       site=st.sampled_from(SITES), purpose=st.sampled_from(PURPOSES), gs=grants)
def test_engine_matches_reference(org, action, m, site, purpose, gs):
    engine = PolicyEngine(MEMBERS, gs)
    d = engine.decide(Request(f"{org}/someone", action, m, site, purpose, "run", NOW))
    allowed, ids = reference(org, action, m, site, purpose, gs)
    assert d.allowed == allowed
    assert set(d.policy_ids) == ids


def test_every_policy_is_covered_by_the_reference():
    # a policy added to the files without a reference rule would otherwise go untested
    _, _, described = load_policies()
    assert set(described) == {"data-residency", "purpose-not-allowed", "restricted-no-export",
                              "personal-data-owner-only", "retention-expired", "owner-access", "granted-member-read"}


def test_invalid_policy_is_refused_on_load(tmp_path):
    import shutil

    import pytest

    from genba.govern.policy import POLICY_DIR, PolicyError

    shutil.copy(POLICY_DIR / "genba.cedarschema", tmp_path)
    (tmp_path / "bad.cedar").write_text('@id("typo")\npermit (principal, action, resource) when { resource.ownr == principal.org };\n')
    with pytest.raises(PolicyError, match="fail validation"):
        load_policies(tmp_path)
    (tmp_path / "bad.cedar").write_text('permit (principal, action, resource) when { resource.owner == principal.org };\n')
    with pytest.raises(PolicyError, match="no @id"):
        load_policies(tmp_path)
