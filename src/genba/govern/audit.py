"""Append-only, tamper-evident audit log: a Merkle tree with signed tree heads in SQLite.

Each entry is canonical JSON ``{index, ts, prev_root, event}``: ``index`` is its
position and ``prev_root`` the Merkle root of every entry before it, so an edit,
deletion or reordering breaks the first entry after it and ``verify`` names the
first bad index. After every append the log signs a tree head ``{tree_size,
root, timestamp}`` with the consortium audit key (Ed25519). A monitor that kept
an earlier head checks, with an RFC 6962 consistency proof, that today's log
extends it: history cannot be rewritten even by someone who recomputes hashes.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

from genba.govern import merkle, signing
from genba.govern.errors import AuditIntegrityError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (idx INTEGER PRIMARY KEY, body TEXT NOT NULL, leaf BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS heads (tree_size INTEGER PRIMARY KEY, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS state (k TEXT PRIMARY KEY, v TEXT NOT NULL);
"""


def head_body(head: dict) -> dict:
    return {k: head[k] for k in ("tree_size", "root", "timestamp")}


class AuditLog:
    """One SQLite file. Appends take a write lock, so concurrent ranks of a training job interleave safely."""

    def __init__(self, path: str | Path, *, public_key: str, signing_key=None):
        self.path = Path(path)
        self.public_key = public_key
        self.signing_key = signing_key
        self.db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        # WAL + FULL: every commit is on disk (one fsync) and readers never block the appending ranks.
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(_SCHEMA)

    def close(self) -> None:
        self.db.close()

    # --- writing -------------------------------------------------------------
    def append(self, event: dict) -> int:
        """Record ``event``; return its index. Signs the new tree head."""
        if self.signing_key is None:
            raise AuditIntegrityError("this audit log was opened read-only (no audit signing key)", index=None, kind="read-only")
        self.db.execute("BEGIN IMMEDIATE")
        try:
            rng = self._range()
            size = sum(s for s, _ in rng.nodes)
            entry = {"index": size, "ts": round(time.time(), 6), "prev_root": rng.root().hex(), "event": event}
            body = signing.canonical_json(entry)
            leaf = merkle.leaf_hash(body)
            rng.push(leaf)
            self.db.execute("INSERT INTO entries (idx, body, leaf) VALUES (?, ?, ?)", (size, body.decode(), leaf))
            self._save_range(rng)
            self._sign_head(size + 1, rng.root())
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        return size

    def _range(self) -> merkle.CompactRange:
        row = self.db.execute("SELECT v FROM state WHERE k = 'range'").fetchone()
        nodes = [(s, bytes.fromhex(h)) for s, h in json.loads(row[0])] if row else []
        return merkle.CompactRange(nodes)

    def _save_range(self, rng: merkle.CompactRange) -> None:
        v = json.dumps([[s, h.hex()] for s, h in rng.nodes])
        self.db.execute("INSERT OR REPLACE INTO state (k, v) VALUES ('range', ?)", (v,))

    def _sign_head(self, size: int, root: bytes) -> None:
        body = {"tree_size": size, "root": root.hex(), "timestamp": round(time.time(), 6)}
        head = {**body, "signature": signing.sign_obj(self.signing_key, body)}
        self.db.execute("INSERT OR REPLACE INTO heads (tree_size, body) VALUES (?, ?)", (size, json.dumps(head)))

    # --- reading -------------------------------------------------------------
    def head(self) -> dict | None:
        """The latest signed tree head, or None for an empty log."""
        row = self.db.execute("SELECT body FROM heads ORDER BY tree_size DESC LIMIT 1").fetchone()
        return json.loads(row[0]) if row else None

    def entries(self, start: int = 0, end: int | None = None) -> list[dict]:
        end = 2**62 if end is None else end
        rows = self.db.execute("SELECT body FROM entries WHERE idx >= ? AND idx < ? ORDER BY idx", (start, end))
        return [json.loads(b) for (b,) in rows]

    def size(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM entries").fetchone()[0]

    def _rows(self) -> list[tuple[int, str, bytes]]:
        return list(self.db.execute("SELECT idx, body, leaf FROM entries ORDER BY idx"))

    def _leaves(self) -> list[bytes]:
        return [merkle.leaf_hash(body.encode()) for _, body, _ in self._rows()]

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

    # --- verification ----------------------------------------------------------
    def verify(self, against: dict | None = None) -> dict:
        """Recompute the whole log; raise AuditIntegrityError at the first fault, else return a summary."""
        rows = self._rows()
        claimed = {json.loads(body).get("index") for _, body, _ in rows}
        rng = merkle.CompactRange()
        for pos, (idx, body, leaf) in enumerate(rows):
            entry = json.loads(body)
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
        size, root = len(rows), rng.root()
        head = self.head()
        if head is None:
            if size:
                raise AuditIntegrityError("audit log has entries but no signed tree head", index=0, kind="head-missing")
            return {"tree_size": 0, "root": root.hex(), "head": None}
        if not self.verify_head_signature(head):
            raise AuditIntegrityError(
                f"signed tree head at size {head.get('tree_size')} does not verify with the consortium audit key: "
                "the head or its signature was replaced", index=None, kind="head-signature")
        self._check_head(head, size, root, "latest signed head")
        result = {"tree_size": size, "root": root.hex(), "head": head}
        if against is not None:
            result["consistent_with"] = self._check_against(against, size, root)
        return result

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

    def _check_against(self, old: dict, size: int, root: bytes) -> dict:
        if not self.verify_head_signature(old):
            raise AuditIntegrityError("the earlier head given to compare against is not signed by the consortium audit key",
                                      index=None, kind="head-signature")
        m = old["tree_size"]
        if m > size:
            raise AuditIntegrityError(f"the earlier head covers {m} entries but the log now holds {size}: "
                                      f"entries from #{size} were deleted", index=size, kind="deleted")
        if m == 0:
            return {"tree_size": 0, "proof": []}
        leaves = self._leaves()
        proof = merkle.consistency_proof(m, leaves)
        if not merkle.verify_consistency(m, size, bytes.fromhex(old["root"]), root, proof):
            raise AuditIntegrityError(
                f"the log does not extend the earlier signed head of size {m}: history before entry #{m} was rewritten",
                index=None, kind="rewritten")
        return {"tree_size": m, "proof": [h.hex() for h in proof]}
