"""External witnesses of the audit log: truncation, wipes and rewrites that the log alone cannot see.

Each attack edits ``audit.sqlite`` the way someone with write access to the
consortium home would: entries, their signed heads and the log's own append
state all go together, so the log is self-consistent afterwards. Only the
heads that the operator and the members keep outside the home catch it.
"""

from __future__ import annotations

import json
import shutil
import sqlite3

import pytest
from govern_world import DATA_FILE

from genba.cli import main
from genba.govern import admin, merkle, signing
from genba.govern.audit import AuditLog
from genba.govern.errors import AuditIntegrityError, GovernanceError


def _db(world) -> sqlite3.Connection:
    return sqlite3.connect(world.home / "audit.sqlite", isolation_level=None)


def _size(world) -> int:
    db = _db(world)
    try:
        return db.execute("SELECT COUNT(*) FROM entries").fetchone()[0]
    finally:
        db.close()


def truncate(world, keep: int) -> None:
    """Drop every entry from ``keep`` on, with its signed head, and rewind the append state to match."""
    db = _db(world)
    db.execute("DELETE FROM entries WHERE idx >= ?", (keep,))
    db.execute("DELETE FROM heads WHERE tree_size > ?", (keep,))
    rng = merkle.CompactRange()
    for (leaf,) in db.execute("SELECT leaf FROM entries ORDER BY idx"):
        rng.push(leaf)
    db.execute("INSERT OR REPLACE INTO state (k, v) VALUES ('range', ?)",
               (json.dumps([[s, h.hex()] for s, h in rng.nodes]),))
    db.close()


def verify(world, capsys, *extra: str) -> tuple[int, str]:
    capsys.readouterr()
    rc = main(["audit", "verify", "--home", str(world.home), *extra])
    out = capsys.readouterr()
    return rc, out.out + out.err


def test_clean_log_verifies_against_its_witnesses(world, capsys, witness_dir):
    world.access("a/alice").read_table(world.ds("a-ds") / DATA_FILE)
    rc, text = verify(world, capsys)
    assert rc == 0, text
    # the operator ingested, member a read: both keep a head outside the home
    assert "witnesses: a at " in text and "operator at " in text
    files = sorted(p.name for p in witness_dir.rglob("*.json"))
    assert files == ["a.json", "operator.json"]
    assert not witness_dir.is_relative_to(world.home)


@pytest.mark.parametrize("dropped", [1, 5])
def test_truncated_tail_with_its_heads_is_caught(world, capsys, dropped):
    acc = world.access("a/alice")
    for _ in range(5):
        acc.read_table(world.ds("a-ds") / DATA_FILE)
    n = _size(world)
    truncate(world, n - dropped)
    rc, text = verify(world, capsys)
    assert rc == 2
    assert "witness 'a'" in text and f"size {n}" in text and f"holds {n - dropped}" in text
    assert "truncated" in text and "Traceback" not in text


def test_wiped_log_is_caught(world, capsys):
    n = _size(world)
    truncate(world, 0)
    rc, text = verify(world, capsys)
    assert rc == 2 and "witness 'operator'" in text and f"size {n}" in text and "holds 0" in text


def test_deleted_log_file_is_caught(world, capsys):
    (world.home / "audit.sqlite").unlink()
    rc, text = verify(world, capsys)
    assert rc == 2 and "witness 'operator'" in text and "deleted" in text
    # ...and the next governed read refuses to start a fresh log over the witnessed one
    with pytest.raises(AuditIntegrityError, match="witness 'operator'"):
        world.access("a/alice").read_table(world.ds("a-ds") / DATA_FILE)


def test_truncated_log_refuses_new_entries(world):
    n = _size(world)
    truncate(world, n - 1)
    with pytest.raises(AuditIntegrityError, match="truncated") as e:
        world.access("a/alice").authorize(world.ds("a-ds"))
    assert e.value.kind == "truncated"
    assert _size(world) == n - 1, "an entry was appended to a truncated log"


def test_history_rewritten_with_the_audit_key_is_caught(world, capsys, tmp_path):
    # the attacker holds the audit key and rebuilds a same-length log with one refusal edited out
    log = admin.audit_log(world.c)
    entries = [e["event"] for e in log.entries()]
    log.close()
    entries[1] = {**entries[1], "reason": "nothing happened"}
    forged_path = tmp_path / "forged.sqlite"
    key = world.c.private_key("audit")
    forged = AuditLog(forged_path, public_key=signing.public_key_b64(key), signing_key=key)
    for ev in entries:
        forged.append(ev)
    forged.close()
    shutil.copyfile(forged_path, world.home / "audit.sqlite")
    rc, text = verify(world, capsys)
    assert rc == 2 and "rewritten" in text and "witness 'operator'" in text


def test_members_witness_catches_what_the_operators_missed(world, capsys):
    n = _size(world)  # the operator last saw this size
    acc = world.access("b/bob")
    acc.read_table(world.ds("b-ds") / DATA_FILE)
    truncate(world, n)  # only b's own entries go
    rc, text = verify(world, capsys)
    assert rc == 2 and "witness 'b'" in text


def test_forged_witness_file_is_named(world, capsys, witness_dir):
    path = next(witness_dir.rglob("operator.json"))
    doc = json.loads(path.read_text())
    doc["head"]["root"] = "00" * 32
    path.write_text(json.dumps(doc))
    rc, text = verify(world, capsys)
    assert rc == 2 and str(path) in text and "not signed" in text


def test_witness_inside_the_home_is_refused(world, monkeypatch):
    monkeypatch.setenv("GENBA_WITNESS_DIR", str(world.home / "witness"))
    with pytest.raises(GovernanceError, match="inside the consortium home"):
        world.access("a/alice")


@pytest.mark.parametrize("content", ["", "null", "{}", "[]", '{"tree_size": "ten"}', "{not json"])
def test_against_a_malformed_head_is_a_clear_error(world, capsys, tmp_path, content):
    head = tmp_path / "head.json"
    head.write_text(content)
    rc, text = verify(world, capsys, "--against", str(head))
    assert rc == 2 and str(head) in text and "signed tree head" in text and "Traceback" not in text


def test_against_a_missing_head_file_is_a_clear_error(world, capsys, tmp_path):
    rc, text = verify(world, capsys, "--against", str(tmp_path / "nope.json"))
    assert rc == 2 and "does not exist" in text


def test_entry_with_broken_json_names_its_index(world, capsys):
    db = _db(world)
    body = db.execute("SELECT body FROM entries WHERE idx = 1").fetchone()[0]
    db.execute("UPDATE entries SET body = ? WHERE idx = 1", (body[:-7],))
    db.close()
    log = admin.audit_log(world.c)
    with pytest.raises(AuditIntegrityError, match="audit entry 1 ") as e:
        log.verify()
    log.close()
    assert (e.value.index, e.value.kind) == (1, "malformed")
    for verb in (["audit", "verify"], ["audit", "show"]):
        capsys.readouterr()
        assert main([*verb, "--home", str(world.home)]) == 2
        assert "audit entry 1 " in capsys.readouterr().err


def _append_many(home: str, party: str, n: int) -> None:
    from genba.govern.consortium import Consortium

    log = admin.audit_log(Consortium(home), party)
    for i in range(n):
        log.append({"kind": "test", "party": party, "i": i})
    log.close()


def test_concurrent_appenders_with_their_witnesses_raise_no_false_alarm(world, capsys):
    import multiprocessing as mp

    ctx = mp.get_context("fork")  # starts at once, so the appenders overlap
    procs = [ctx.Process(target=_append_many, args=(str(world.home), party, 40)) for party in ("a", "b", "operator")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    rc, text = verify(world, capsys)
    assert rc == 0, text
    assert f"{_size(world)} entries" in text


def test_tail_deleted_behind_the_append_state_refuses_new_entries(world):
    db = _db(world)
    db.execute("DELETE FROM entries WHERE idx = (SELECT MAX(idx) FROM entries)")  # heads and state untouched
    db.close()
    with pytest.raises(AuditIntegrityError, match="append state") as e:
        admin.grant(world.c, owner="a", grantee="b", dataset="a-ds", purpose="pretraining")
    assert e.value.kind == "state"


def test_admin_verbs_change_nothing_on_a_truncated_log(world):
    truncate(world, _size(world) - 1)
    grants = (world.home / "grants.json").read_text()
    with pytest.raises(AuditIntegrityError, match="witness 'operator'"):
        admin.grant(world.c, owner="a", grantee="b", dataset="a-ds", purpose="pretraining")
    assert (world.home / "grants.json").read_text() == grants, "the grant took effect without its audit entry"
    with pytest.raises(AuditIntegrityError):
        admin.shred(world.c, "a")
    assert (world.home / "keys" / "a.kek").is_file()
