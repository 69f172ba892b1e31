"""Append-only, tamper-evident audit log: a Merkle tree with signed tree heads in SQLite.

Each entry is canonical JSON ``{index, ts, prev_root, event}``: ``index`` is its
position and ``prev_root`` the Merkle root of every entry before it, so an edit,
deletion or reordering breaks the first entry after it and ``verify`` names the
first bad index. After every append the log signs a tree head ``{tree_size,
root, timestamp}`` with the consortium audit key (Ed25519).

The log keeps its own heads, so on its own it cannot tell a shortened or wiped
log from a young one. Each party therefore keeps the last head it saw outside
the log (``witness.py``): an append refuses to extend a log that no longer
extends the newest witnessed head, and ``verify`` proves (RFC 6962 consistency)
that the log extends every stored witness. Truncation, wipes and rewrites, even
by someone who holds the audit key and recomputes every hash, fail there.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

from genba.govern import merkle, signing
from genba.govern.errors import AuditIntegrityError
from genba.govern.witness import Witness, parse_head

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (idx INTEGER PRIMARY KEY, body TEXT NOT NULL, leaf BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS heads (tree_size INTEGER PRIMARY KEY, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS state (k TEXT PRIMARY KEY, v TEXT NOT NULL);
"""


def head_body(head: dict) -> dict:
    return {k: head[k] for k in ("tree_size", "root", "timestamp")}


def _parse_entry(pos: int, body: str) -> dict:
    """The entry stored at ``pos``, or an error naming it: a hand edit can leave anything in the row."""
    try:
        entry = json.loads(body)
    except ValueError as e:
        raise AuditIntegrityError(f"audit entry {pos} was edited: its body is not valid JSON ({e})",
                                  index=pos, kind="malformed") from None
    if not isinstance(entry, dict) or not isinstance(entry.get("event"), dict):
        raise AuditIntegrityError(f"audit entry {pos} was edited: it is not an {{index, ts, prev_root, event}} object",
                                  index=pos, kind="malformed")
    return entry


class AuditLog:
    """One SQLite file. Appends take a write lock, so concurrent ranks of a training job interleave safely.

    ``witness`` (optional) is the party's external witness: appends and
    ``observe``/``verify`` check the log against it and move it forward.
    """

    def __init__(self, path: str | Path, *, public_key: str, signing_key=None, witness: Witness | None = None):
        self.path = Path(path)
        self.public_key = public_key
        self.signing_key = signing_key
        self.witness = witness
        if witness is not None:
            witness.check_outside(self.path.parent)
        self.db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        # WAL + FULL: every commit is on disk (one fsync) and readers never block the appending ranks.
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(_SCHEMA)

    def close(self) -> None:
        self.db.close()

    # --- writing -------------------------------------------------------------
    def append(self, event: dict) -> int:
        """Record ``event``; return its index. Signs the new tree head and advances the witness."""
        if self.signing_key is None:
            raise AuditIntegrityError("this audit log was opened read-only (no audit signing key)", index=None, kind="read-only")
        self.db.execute("BEGIN IMMEDIATE")
        try:
            rng = self._range()
            size = sum(s for s, _ in rng.nodes)
            self._check_rows_match(size)
            # Before writing: extending a log that was cut below a witnessed head would bury the evidence.
            self._check_witnesses(size, rng.root(), self._stored_leaves, every=False)
            entry = {"index": size, "ts": round(time.time(), 6), "prev_root": rng.root().hex(), "event": event}
            body = signing.canonical_json(entry)
            leaf = merkle.leaf_hash(body)
            rng.push(leaf)
            self.db.execute("INSERT INTO entries (idx, body, leaf) VALUES (?, ?, ?)", (size, body.decode(), leaf))
            self._save_range(rng)
            head = self._sign_head(size + 1, rng.root())
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        if self.witness is not None:
            self.witness.advance(head)
        return size

    def _range(self) -> merkle.CompactRange:
        row = self.db.execute("SELECT v FROM state WHERE k = 'range'").fetchone()
        try:
            nodes = [(int(s), bytes.fromhex(h)) for s, h in json.loads(row[0])] if row else []
        except (ValueError, TypeError) as e:
            raise AuditIntegrityError(f"the append state of {self.path} is corrupt ({e}): run `genba audit verify`",
                                      index=None, kind="state") from None
        return merkle.CompactRange(nodes)

    def _check_rows_match(self, size: int) -> None:
        # MAX on the primary key is O(log n); holes in the middle are verify's to find and locate.
        top = self.db.execute("SELECT COALESCE(MAX(idx) + 1, 0) FROM entries").fetchone()[0]
        if top != size:
            raise AuditIntegrityError(
                f"{self.path} holds entries up to #{top - 1} but its append state covers {size}: the log was "
                "edited outside genba; run `genba audit verify`", index=min(top, size), kind="state")

    def _save_range(self, rng: merkle.CompactRange) -> None:
        v = json.dumps([[s, h.hex()] for s, h in rng.nodes])
        self.db.execute("INSERT OR REPLACE INTO state (k, v) VALUES ('range', ?)", (v,))

    def _sign_head(self, size: int, root: bytes) -> dict:
        body = {"tree_size": size, "root": root.hex(), "timestamp": round(time.time(), 6)}
        head = {**body, "signature": signing.sign_obj(self.signing_key, body)}
        self.db.execute("INSERT OR REPLACE INTO heads (tree_size, body) VALUES (?, ?)", (size, json.dumps(head)))
        return head

    # --- reading -------------------------------------------------------------
    def head(self) -> dict | None:
        """The latest signed tree head (shape checked, signature not), or None for an empty log."""
        row = self.db.execute("SELECT tree_size, body FROM heads ORDER BY tree_size DESC LIMIT 1").fetchone()
        if row is None:
            return None
        try:
            doc = json.loads(row[1])
        except ValueError as e:
            raise AuditIntegrityError(f"the signed head of size {row[0]} in {self.path} is not valid JSON ({e})",
                                      index=None, kind="malformed") from None
        return parse_head(doc, f"the signed head of size {row[0]} in {self.path}")

    def entries(self, start: int = 0, end: int | None = None) -> list[dict]:
        end = 2**62 if end is None else end
        rows = self.db.execute("SELECT idx, body FROM entries WHERE idx >= ? AND idx < ? ORDER BY idx", (start, end))
        return [_parse_entry(idx, b) for idx, b in rows]

    def size(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM entries").fetchone()[0]

    def _rows(self) -> list[tuple[int, str, bytes]]:
        return list(self.db.execute("SELECT idx, body, leaf FROM entries ORDER BY idx"))

    def _leaves(self) -> list[bytes]:
        return [merkle.leaf_hash(body.encode()) for _, body, _ in self._rows()]

    def _stored_leaves(self) -> list[bytes]:
        # Proofs from the stored leaf hashes are sound: they are verified against signed roots, never trusted.
        return [bytes(leaf) for (leaf,) in self.db.execute("SELECT leaf FROM entries ORDER BY idx")]

    def inclusion_proof(self, index: int, tree_size: int | None = None) -> list[str]:
        leaves = self._leaves()
        leaves = leaves[: tree_size or len(leaves)]
        return [h.hex() for h in merkle.inclusion_proof(index, leaves)]

    def consistency_proof(self, old_size: int, new_size: int | None = None) -> list[str]:
        leaves = self._leaves()
        return [h.hex() for h in merkle.consistency_proof(old_size, leaves[: new_size or len(leaves)])]

    def verify_entry(self, index: int, body: dict, head: dict | None = None) -> bool:
        """True when entry ``body`` sits at ``index`` under the (verified) head: checks an inclusion proof."""
        head = head or self.head()
        if head is None or not self.verify_head_signature(head) or index >= head["tree_size"]:
            return False
        proof = [bytes.fromhex(h) for h in self.inclusion_proof(index, head["tree_size"])]
        leaf = merkle.leaf_hash(signing.canonical_json(body))
        return merkle.verify_inclusion(index, head["tree_size"], leaf, proof, bytes.fromhex(head["root"]))

    def verify_head_signature(self, head: dict) -> bool:
        return signing.verify_obj(self.public_key, head_body(head), head.get("signature") or {})

    def observe(self) -> dict | None:
        """The latest head, its signature checked, consistent with the newest witness; advances ours."""
        head = self.head()
        if head is not None and not self.verify_head_signature(head):
            raise AuditIntegrityError(
                f"signed tree head at size {head['tree_size']} does not verify with the consortium audit key: "
                "the head or its signature was replaced", index=None, kind="head-signature")
        size, root = (head["tree_size"], bytes.fromhex(head["root"])) if head else (0, merkle.EMPTY_ROOT)
        self._check_witnesses(size, root, self._stored_leaves, every=False)
        if head is not None and self.witness is not None:
            self.witness.advance(head)
        return head

    # --- verification ----------------------------------------------------------
    def verify(self, against: dict | None = None) -> dict:
        """Recompute the whole log and check it against every witness; raise at the first fault, else a summary."""
        leaves, root = self._recompute()
        size = len(leaves)
        head = self.head()
        if head is None:
            if size:
                raise AuditIntegrityError("audit log has entries but no signed tree head", index=0, kind="head-missing")
        elif not self.verify_head_signature(head):
            raise AuditIntegrityError(
                f"signed tree head at size {head.get('tree_size')} does not verify with the consortium audit key: "
                "the head or its signature was replaced", index=None, kind="head-signature")
        else:
            self._check_head(head, size, root, "latest signed head")
        result = {"tree_size": size, "root": root.hex(), "head": head,
                  "witnesses": self._check_witnesses(size, root, lambda: leaves, every=True)}
        if against is not None:
            old = parse_head(against, "the earlier head given to compare against")
            self._check_consistent(old, size, root, lambda: leaves, "the earlier head given to compare against")
            m = old["tree_size"]
            proof = merkle.consistency_proof(m, leaves) if 0 < m < size else []
            result["consistent_with"] = {"tree_size": m, "proof": [h.hex() for h in proof]}
        if head is not None and self.witness is not None:
            self.witness.advance(head)
        return result

    def _recompute(self) -> tuple[list[bytes], bytes]:
        """Leaf hashes of every entry and their root; checks positions, the prev_root chain and stored leaves."""
        rows = self._rows()
        entries = [_parse_entry(pos, body) for pos, (_, body, _) in enumerate(rows)]
        claimed = {e.get("index") for e in entries}
        rng, leaves = merkle.CompactRange(), []
        for pos, ((idx, body, leaf), entry) in enumerate(zip(rows, entries)):
            if idx != pos or entry.get("index") != pos:
                moved = pos in claimed
                kind = "reordered" if moved else "deleted"
                raise AuditIntegrityError(
                    f"audit entry {pos} is {'out of order' if moved else 'missing'}: position {pos} holds the "
                    f"entry that says it is #{entry.get('index')}", index=pos, kind=kind)
            if entry.get("prev_root") != rng.root().hex():
                raise AuditIntegrityError(
                    f"audit entry {pos - 1} was edited: entry {pos} records a different root for entries 0..{pos - 1}",
                    index=pos - 1, kind="edited")
            recomputed = merkle.leaf_hash(body.encode())
            if recomputed != leaf:
                raise AuditIntegrityError(f"audit entry {pos} was edited: its content no longer matches its leaf hash",
                                          index=pos, kind="edited")
            rng.push(recomputed)
            leaves.append(recomputed)
        return leaves, rng.root()

    def _check_head(self, head: dict, size: int, root: bytes, what: str) -> None:
        if head["tree_size"] > size:
            raise AuditIntegrityError(f"{what} covers {head['tree_size']} entries but the log holds {size}: "
                                      f"entries from #{size} were deleted", index=size, kind="deleted")
        if head["tree_size"] < size:
            raise AuditIntegrityError(f"entries #{head['tree_size']}..#{size - 1} are not covered by a signed head",
                                      index=head["tree_size"], kind="unsigned")
        if head["root"] != root.hex():
            raise AuditIntegrityError(f"audit entry {size - 1} was edited: the log's root differs from the {what}",
                                      index=size - 1, kind="edited")

    def _check_witnesses(self, size: int, root: bytes, leaves: Callable[[], list[bytes]], *, every: bool) -> list[dict]:
        """Check the log (``size`` entries, ``root``) against the stored witnesses: all, or only the newest.

        Within one witness directory every head was proven to extend the newest
        before it was stored, so the newest alone guards an append (one O(1)
        root comparison in the common case); ``verify`` still checks them all.
        """
        seen = self.witness.records() if self.witness is not None else []
        if not every and seen:
            seen = [s for s in seen if s.head["tree_size"] == seen[0].head["tree_size"]]
        for s in seen:
            self._check_consistent(s.head, size, root, leaves, s.label)
        return [{"party": s.party, "path": str(s.path), "tree_size": s.head["tree_size"]} for s in seen]

    def _check_consistent(self, old: dict, size: int, root: bytes, leaves: Callable[[], list[bytes]],
                          what: str) -> None:
        """``old`` (a signed head seen earlier) is a prefix of the log now: else say who saw what."""
        if not self.verify_head_signature(old):
            raise AuditIntegrityError(f"{what} holds a head of size {old['tree_size']} that is not signed by this "
                                      "log's audit key: the head was edited, or the log's key was replaced",
                                      index=None, kind="head-signature")
        m = old["tree_size"]
        if m > size:
            how = "wiped" if size == 0 else "truncated"
            raise AuditIntegrityError(f"{what} saw a signed head of size {m} but the log holds {size} entries: "
                                      f"entries #{size}..#{m - 1} were deleted (the log was {how})",
                                      index=size, kind="truncated")
        if m == 0:
            return
        if m == size:
            consistent = old["root"] == root.hex()
        else:
            proof = merkle.consistency_proof(m, leaves()[:size])
            consistent = merkle.verify_consistency(m, size, bytes.fromhex(old["root"]), root, proof)
        if not consistent:
            raise AuditIntegrityError(f"the log does not extend the signed head of size {m} that {what} saw: "
                                      f"history before entry #{m} was rewritten", index=None, kind="rewritten")
