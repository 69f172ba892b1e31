"""Merkle proofs against a naive reference, and every way of tampering with the log."""

from __future__ import annotations

import json
import sqlite3

import pytest

from genba.govern import merkle, signing
from genba.govern.audit import AuditLog
from genba.govern.errors import AuditIntegrityError


@pytest.fixture
def log(tmp_path):
    key = signing.new_private_key()
    lg = AuditLog(tmp_path / "audit.sqlite", public_key=signing.public_key_b64(key), signing_key=key)
    for i in range(10):
        lg.append({"kind": "access", "n": i, "decision": "allow"})
    yield lg
    lg.close()


def _sql(log, q, *args):
    db = sqlite3.connect(log.path, isolation_level=None)
    db.execute(q, args)
    db.close()


def _body(log, idx):
    return log.db.execute("SELECT body FROM entries WHERE idx = ?", (idx,)).fetchone()[0]


def test_proofs_verify_for_every_size():
    leaves = [merkle.leaf_hash(bytes([i])) for i in range(17)]
    for n in range(1, 18):
        root = merkle.root(leaves[:n])
        rng = merkle.CompactRange()
        for leaf in leaves[:n]:
            rng.push(leaf)
        assert rng.root() == root
        for i in range(n):
            assert merkle.verify_inclusion(i, n, leaves[i], merkle.inclusion_proof(i, leaves[:n]), root)
            assert not merkle.verify_inclusion(i, n, leaves[(i + 1) % 17], merkle.inclusion_proof(i, leaves[:n]), root)
        for m in range(1, n + 1):
            proof = merkle.consistency_proof(m, leaves[:n])
            assert merkle.verify_consistency(m, n, merkle.root(leaves[:m]), root, proof)
            if m < n:
                assert not merkle.verify_consistency(m, n, merkle.root(leaves[1:m + 1]), root, proof)


def test_clean_log_verifies_and_extends_its_earlier_head(log):
    old = log.head()
    log.append({"kind": "access", "n": 10})
    r = log.verify(against=old)
    assert r["tree_size"] == 11 and r["consistent_with"]["tree_size"] == 10
    assert log.verify_entry(3, json.loads(_body(log, 3)))


def test_naively_edited_entry_is_located(log):
    _sql(log, "UPDATE entries SET body = ? WHERE idx = 4", _body(log, 4).replace('"allow"', '"deny"'))
    with pytest.raises(AuditIntegrityError, match="entry 4 was edited") as e:
        log.verify()
    assert (e.value.index, e.value.kind) == (4, "edited")


def test_edited_entry_with_recomputed_leaf_hash_is_located(log):
    body = _body(log, 4).replace('"allow"', '"deny"')
    _sql(log, "UPDATE entries SET body = ?, leaf = ? WHERE idx = 4", body, merkle.leaf_hash(body.encode()))
    with pytest.raises(AuditIntegrityError) as e:
        log.verify()
    assert (e.value.index, e.value.kind) == (4, "edited")


def test_edited_last_entry_is_caught_by_the_signed_head(log):
    body = _body(log, 9).replace('"allow"', '"deny"')
    _sql(log, "UPDATE entries SET body = ?, leaf = ? WHERE idx = 9", body, merkle.leaf_hash(body.encode()))
    with pytest.raises(AuditIntegrityError) as e:
        log.verify()
    assert (e.value.index, e.value.kind) == (9, "edited")


def test_deleted_entry_is_located(log):
    _sql(log, "DELETE FROM entries WHERE idx = 6")
    with pytest.raises(AuditIntegrityError, match="entry 6 is missing") as e:
        log.verify()
    assert (e.value.index, e.value.kind) == (6, "deleted")


def test_deleted_and_renumbered_entry_is_located(log):
    _sql(log, "DELETE FROM entries WHERE idx = 6")
    _sql(log, "UPDATE entries SET idx = idx - 1 WHERE idx > 6")
    with pytest.raises(AuditIntegrityError) as e:
        log.verify()
    assert (e.value.index, e.value.kind) == (6, "deleted")


def test_deleted_tail_is_caught_by_the_signed_head(log):
    _sql(log, "DELETE FROM entries WHERE idx = 9")
    with pytest.raises(AuditIntegrityError, match="deleted") as e:
        log.verify()
    assert (e.value.index, e.value.kind) == (9, "deleted")


def test_reordered_entries_are_located(log):
    b3, b5 = _body(log, 3), _body(log, 5)
    _sql(log, "UPDATE entries SET body = ?, leaf = ? WHERE idx = 3", b5, merkle.leaf_hash(b5.encode()))
    _sql(log, "UPDATE entries SET body = ?, leaf = ? WHERE idx = 5", b3, merkle.leaf_hash(b3.encode()))
    with pytest.raises(AuditIntegrityError, match="out of order") as e:
        log.verify()
    assert (e.value.index, e.value.kind) == (3, "reordered")


def test_replaced_head_signature_is_detected(log):
    head = log.head()
    head["signature"] = signing.sign_obj(signing.new_private_key(), {k: head[k] for k in ("tree_size", "root", "timestamp")})
    _sql(log, "UPDATE heads SET body = ? WHERE tree_size = ?", json.dumps(head), head["tree_size"])
    with pytest.raises(AuditIntegrityError, match="signature") as e:
        log.verify()
    assert e.value.kind == "head-signature"


def test_history_rewritten_with_the_audit_key_is_caught_by_an_earlier_head(tmp_path):
    key = signing.new_private_key()
    pub = signing.public_key_b64(key)
    honest = AuditLog(tmp_path / "honest.sqlite", public_key=pub, signing_key=key)
    forged = AuditLog(tmp_path / "forged.sqlite", public_key=pub, signing_key=key)
    for i in range(6):
        honest.append({"n": i})
        forged.append({"n": i if i != 2 else "hidden"})  # the same history with entry 2 rewritten
    old = honest.head()
    assert forged.verify()["tree_size"] == 6  # self-consistent: only the earlier head can catch it
    with pytest.raises(AuditIntegrityError, match="rewritten") as e:
        forged.verify(against=old)
    assert e.value.kind == "rewritten"
    honest.close()
    forged.close()
