"""The attacker's moves: each must be refused with its specific error AND leave a deny in the audit log."""

from __future__ import annotations

import json
import shutil

import pyarrow.parquet as pq
import pytest
from govern_world import DATA_FILE

from genba.govern import admin, signing
from genba.govern.access import GovernedAccess
from genba.govern.encryption import Decryptor
from genba.govern.errors import (
    AccessDenied,
    ConsortiumError,
    FileHashMismatch,
    KeyShredded,
    KeyUnavailable,
    ManifestError,
    SiteClaimError,
    WrongOwnerKey,
)
from genba.govern.kms import LocalKeyStore


def test_site_outside_jp_reading_jp_data_is_denied(world):
    acc = world.access("a/alice", site="virginia")  # even the owner, even with a valid US claim
    with pytest.raises(AccessDenied, match="data-residency") as e:
        acc.authorize(world.ds("a-ds"))
    assert e.value.policy_id == "data-residency"
    ev = world.last_event()
    assert (ev["decision"], ev["policy_ids"], ev["site"], ev["dataset"]) == ("deny", ["data-residency"], "virginia", "a-ds")


def test_residency_forbid_overrides_a_grant(world):
    admin.grant(world.c, owner="a", grantee="b", dataset="a-ds", purpose="pretraining")
    with pytest.raises(AccessDenied) as e:
        world.access("b/bob", site="virginia").authorize(world.ds("a-ds"))
    assert e.value.policy_id == "data-residency"


def test_member_without_grant_is_denied(world):
    with pytest.raises(AccessDenied, match="no grant from 'a'") as e:
        world.access("b/bob").authorize(world.ds("a-ds"))
    assert e.value.policy_id == "default-deny"
    assert world.last_event()["decision"] == "deny"


def test_denial_happens_before_any_data_is_read(world, monkeypatch):
    import genba.data.dataset as dataset

    def must_not_run(*a, **k):
        raise AssertionError("the data layer was reached for a denied principal")

    monkeypatch.setattr(dataset, "open_dataset", must_not_run)
    acc = world.access("b/bob")
    monkeypatch.setattr(acc.__class__, "_read_checked", lambda *a: pytest.fail("a file was read"))
    with pytest.raises(AccessDenied):
        acc.open(world.ds("a-ds"))


def test_forged_site_claim_is_rejected(world):
    doc = world.claim("tokyo")
    doc["signature"] = signing.sign_obj(signing.new_private_key(), doc["claim"])  # attacker's own key
    with pytest.raises(SiteClaimError, match="forged"):
        GovernedAccess(world.home, "a/alice", doc, "pretraining", "run-x")
    ev = world.last_event()
    assert (ev["decision"], ev["policy_ids"]) == ("deny", ["site-claim"])


def test_edited_site_claim_is_rejected(world):
    doc = world.claim("virginia")
    doc["claim"]["jurisdiction"] = "JP"  # pretend the US site is in Japan
    with pytest.raises(SiteClaimError, match="forged or altered"):
        GovernedAccess(world.home, "a/alice", doc, "pretraining", "run-x")


def test_expired_site_claim_is_rejected(world):
    doc = world.claim("tokyo", ttl_s=60, now=1_000_000)
    with pytest.raises(SiteClaimError, match="expired"):
        GovernedAccess(world.home, "a/alice", doc, "pretraining", "run-x")
    assert world.last_event()["policy_ids"] == ["site-claim"]


def test_claim_for_unknown_site_is_rejected(world):
    doc = world.claim("tokyo")
    doc["claim"]["site_id"] = "secret-dc"
    doc["signature"] = signing.sign_obj(world.c.private_key("site_authority"), doc["claim"])
    with pytest.raises(SiteClaimError, match="unknown site 'secret-dc'"):
        GovernedAccess(world.home, "a/alice", doc, "pretraining", "run-x")


def test_tampered_manifest_is_rejected(world):
    path = world.ds("a-ds") / "meta" / "manifest.json"
    doc = json.loads(path.read_text())
    doc["manifest"]["classification"] = "public"  # try to downgrade the data
    path.write_text(json.dumps(doc))
    with pytest.raises(ManifestError, match="tampered"):
        world.access("a/alice").authorize(world.ds("a-ds"))
    assert world.last_event()["policy_ids"] == ["manifest-signature"]


def test_swapped_file_is_detected(world):
    # b's (validly encrypted) data file dropped into a's dataset under a's file name
    shutil.copyfile(world.ds("b-ds") / DATA_FILE, world.ds("a-ds") / DATA_FILE)
    acc = world.access("a/alice")
    with pytest.raises(FileHashMismatch, match="swapped or altered") as e:
        acc.read_table(world.ds("a-ds") / DATA_FILE)
    assert e.value.path == DATA_FILE
    ev = world.last_event()
    assert (ev["decision"], ev["file"]) == ("deny", DATA_FILE)


def test_other_owners_key_cannot_decrypt(world):
    # a's KEK file replaced by b's key bytes: the wrapped data key no longer opens
    keys = world.home / "keys"
    shutil.copyfile(keys / "b.kek", keys / "a.kek")
    acc = world.access("a/alice")
    with pytest.raises(WrongOwnerKey, match="another owner's key"):
        acc.read_table(world.ds("a-ds") / DATA_FILE)
    assert world.last_event()["policy_ids"] == ["kms"]


def test_key_session_of_one_owner_refuses_another_owners_file(world):
    data = (world.ds("b-ds") / DATA_FILE).read_bytes()
    with pytest.raises(WrongOwnerKey, match="bound to owner 'a'"):
        Decryptor(LocalKeyStore(world.home / "keys"), "a").read(data)


def test_encrypted_file_is_unreadable_without_the_kms(world):
    with pytest.raises(OSError, match="no decryption"):
        pq.read_table(world.ds("a-ds") / DATA_FILE)


def test_read_after_crypto_shredding_fails(world):
    admin.grant(world.c, owner="a", grantee="b", dataset="a-ds", purpose="pretraining")
    admin.shred(world.c, "a")
    assert not (world.home / "keys" / "a.kek").exists()
    with pytest.raises(KeyShredded, match="crypto-shredded"):
        world.access("b/bob").read_table(world.ds("a-ds") / DATA_FILE)
    assert world.last_event()["decision"] == "deny"
    # b's own data is untouched
    assert world.access("b/bob").read_table(world.ds("b-ds") / DATA_FILE).num_rows == 50


def test_restricted_data_is_never_exported(world, tmp_path):
    world.ingest("a-restricted", "a", seed=3, classification="restricted")
    acc = world.access("a/alice", action="export")
    with pytest.raises(AccessDenied) as e:
        acc.export_to(world.ds("a-restricted"), tmp_path / "out")
    assert e.value.policy_id == "restricted-no-export"
    assert not (tmp_path / "out").exists()
    # ...but the owner exports confidential data, and a grantee may not export at all
    assert len(world.access("a/alice", action="export").export_to(world.ds("a-ds"), tmp_path / "ok")) == 2
    admin.grant(world.c, owner="a", grantee="b", dataset="a-ds", purpose="pretraining")
    with pytest.raises(AccessDenied):
        world.access("b/bob", action="export").authorize(world.ds("a-ds"))


def test_personal_data_stays_with_its_owner(world):
    world.ingest("a-personal", "a", seed=4, personal_data=True)
    admin.grant(world.c, owner="a", grantee="b", dataset="a-personal", purpose="pretraining")
    with pytest.raises(AccessDenied) as e:
        world.access("b/bob").authorize(world.ds("a-personal"))
    assert e.value.policy_id == "personal-data-owner-only"


def test_tampered_grants_file_is_rejected(world):
    path = world.home / "grants.json"
    doc = json.loads(path.read_text())
    doc["grants"].append({"owner": "a", "grantee": "b", "dataset": "*", "purpose": "pretraining",
                          "granted": 0, "expires": None})
    path.write_text(json.dumps(doc))
    with pytest.raises(Exception, match="registry signature"):
        world.access("b/bob")


def _run_events(world, run_id: str) -> list[dict]:
    log = admin.audit_log(world.c)
    try:
        return [e["event"] for e in log.entries() if e["event"].get("run_id") == run_id]
    finally:
        log.close()


@pytest.mark.parametrize("name,key", [("grants.json", "grants"), ("sites.json", "sites")])
def test_forged_registry_refusal_is_audited(world, name, key):
    claim = world.claim()  # issued while the registry was intact
    path = world.home / name
    doc = json.loads(path.read_text())
    if key == "grants":
        doc[key].append({"owner": "a", "grantee": "b", "dataset": "*", "purpose": "pretraining",
                         "granted": 0, "expires": None})
    else:
        doc[key][0]["jurisdiction"] = "US"
    path.write_text(json.dumps(doc))
    with pytest.raises(ConsortiumError, match="registry signature"):
        GovernedAccess(world.home, "b/bob", claim, "pretraining", "run-forged")
    ev = world.last_event()
    assert (ev["decision"], ev["policy_ids"], ev["principal"], ev["run_id"]) == \
        ("deny", ["registry-signature"], "b/bob", "run-forged")
    assert name in ev["reason"]


def test_read_after_shred_is_refused_before_any_allow_is_logged(world):
    admin.shred(world.c, "a")
    acc = world.access("a/alice", run_id="after-shred")
    with pytest.raises(KeyShredded, match="crypto-shredded"):
        acc.authorize(world.ds("a-ds"))
    events = _run_events(world, "after-shred")
    assert [(e["decision"], e["policy_ids"]) for e in events] == [("deny", ["kms"])]
    with pytest.raises(KeyShredded):  # a file read straight through the hook: still no allow
        acc.read_table(world.ds("a-ds") / "meta" / "tasks.parquet")
    assert all(e["decision"] == "deny" for e in _run_events(world, "after-shred"))


def test_key_file_restored_after_shred_is_refused(world, tmp_path):
    keys = world.home / "keys"
    shutil.copyfile(keys / "a.kek", tmp_path / "a.kek.backup")
    admin.shred(world.c, "a")
    shutil.copyfile(tmp_path / "a.kek.backup", keys / "a.kek")  # the pre-shred backup comes back
    acc = world.access("a/alice", run_id="restored")
    with pytest.raises(KeyShredded, match="fingerprint"):
        acc.read_table(world.ds("a-ds") / DATA_FILE)
    assert [e["decision"] for e in _run_events(world, "restored")] == ["deny"]
    # the same bytes under another owner's name are refused too (the tombstone holds the fingerprint)
    with pytest.raises(KeyShredded, match="fingerprint"):
        LocalKeyStore(keys).check("a")
    shutil.copyfile(tmp_path / "a.kek.backup", keys / "c.kek")
    with pytest.raises(KeyShredded, match="fingerprint"):
        LocalKeyStore(keys).unwrap("c", "genba-kek-v1:" + signing.b64(b"\0" * 40))


def test_malformed_tombstone_file_fails_closed(world):
    (world.home / "keys" / "shredded.json").write_text("{broken")
    with pytest.raises(KeyUnavailable, match="shredded.json"):
        world.access("a/alice").read_table(world.ds("a-ds") / DATA_FILE)


def test_forged_sites_refusal_of_a_site_claim_is_audited(world, capsys):
    """`genba site claim` on a forged sites.json: one line, exit 2, and a deny entry in the audit log
    (before, the refusal was raised but never audited)."""
    from genba.cli import main

    path = world.home / "sites.json"
    doc = json.loads(path.read_text())
    doc["sites"][0]["jurisdiction"] = "US"
    path.write_text(json.dumps(doc))
    assert main(["site", "claim", "--home", str(world.home), "--site", "tokyo"]) == 2
    assert "registry signature" in capsys.readouterr().err
    ev = world.last_event()
    assert (ev["kind"], ev["decision"], ev["policy_ids"], ev["site"]) == \
        ("site-claim", "deny", ["registry-signature"], "tokyo")
    assert "sites.json" in ev["reason"]
