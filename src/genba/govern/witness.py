"""External witnesses of the audit log: the last signed head each party has seen, kept outside the log.

A signed tree head proves what the log held when it was signed, but the log
stores its own heads: whoever can write the consortium home can delete the
last entries together with their heads (or everything) and the log still
verifies against itself. Certificate Transparency closes this with gossip:
every client remembers the last head it saw and checks that each later head
extends it. Here each party that uses the log (``operator`` for the admin verbs,
a member's org for its governed reads, whoever runs ``genba audit verify``)
keeps one file::

    <witness dir>/<audit key id>/<party>.json   {"log", "party", "head", "seen"}

The directory is ``$GENBA_WITNESS_DIR``, else ``$XDG_STATE_HOME/genba/witness``,
else ``~/.local/state/genba/witness``; it must lie outside the consortium home
(a witness stored beside the log is rewritten with it). In a deployment each
member points it at storage of its own. A file only moves forward, and only
to a head the log proved consistent with what it held before (audit.py).
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from genba.atomic import write_atomic
from genba.govern import signing
from genba.govern.errors import AuditIntegrityError, GovernanceError

WITNESS_ENV = "GENBA_WITNESS_DIR"
_PARTY = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def default_witness_dir() -> Path:
    if os.environ.get(WITNESS_ENV):
        return Path(os.environ[WITNESS_ENV])
    state = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(state) / "genba" / "witness"


def parse_head(doc, source: str) -> dict:
    """``doc`` as a signed tree head, or AuditIntegrityError naming ``source`` and what is wrong with it."""
    def bad(why: str):
        raise AuditIntegrityError(f"{source} is not a signed tree head: {why}", index=None, kind="bad-head")

    if not isinstance(doc, dict):
        kind = {type(None): "null", list: "an array", str: "a string", bool: "a boolean"}.get(type(doc), "a number")
        bad(f"expected a JSON object with tree_size, root, timestamp and signature, got {kind}")
    lacking = [k for k in ("tree_size", "root", "timestamp", "signature") if k not in doc]
    if lacking:
        bad(f"it lacks {', '.join(lacking)}")
    size = doc["tree_size"]
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        bad(f"tree_size must be a non-negative integer, got {size!r}")
    if not isinstance(doc["root"], str) or not _HEX64.match(doc["root"]):
        bad(f"root must be 64 lowercase hex digits, got {doc['root']!r}")
    if not isinstance(doc["timestamp"], (int, float)) or isinstance(doc["timestamp"], bool):
        bad(f"timestamp must be a number, got {doc['timestamp']!r}")
    if not isinstance(doc["signature"], dict):
        bad("signature must be an object")
    return doc


def read_head_file(path: Path) -> dict:
    """A signed tree head from a JSON file (``genba audit head --out``), checked for shape."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise AuditIntegrityError(f"{path} does not exist: no signed tree head to compare against",
                                  index=None, kind="bad-head") from None
    try:
        doc = json.loads(text)
    except (ValueError, UnicodeDecodeError) as e:
        raise AuditIntegrityError(f"{path} is not a signed tree head: not valid JSON ({e})",
                                  index=None, kind="bad-head") from None
    return parse_head(doc, str(path))


@dataclass(frozen=True)
class Seen:
    """One party's last seen head of one log."""
    party: str
    path: Path
    head: dict

    @property
    def label(self) -> str:
        return f"witness {self.party!r} ({self.path})"


class Witness:
    """The witness files of one log (named by its audit key) in one directory; writes go to ``party``'s file."""

    def __init__(self, directory: str | Path, public_key: str, party: str):
        if not isinstance(party, str) or not party:
            raise GovernanceError(f"witness party {party!r} is invalid: name the member org or 'operator'")
        self.root = Path(directory)
        self.log_id = signing.key_id(public_key)
        self.party = party
        self.dir = self.root / self.log_id
        # Member orgs are slugs already; anything else (a principal the policies will refuse) gets a safe name.
        name = party if _PARTY.match(party) else f"p-{signing.sha256_hex(party.encode())[:16]}"
        self.file = self.dir / f"{name}.json"

    def check_outside(self, home: Path) -> None:
        """Refuse a witness kept inside the directory it is meant to watch."""
        if self.root.resolve().is_relative_to(Path(home).resolve()):
            raise GovernanceError(
                f"the audit witness directory {self.root} is inside the consortium home {home}: whoever can "
                f"rewrite the log could rewrite its witness too; set {WITNESS_ENV} to a directory elsewhere")

    def records(self) -> list[Seen]:
        """Every party's stored head for this log, largest first; a malformed file is an error naming it."""
        out = []
        for path in sorted(self.dir.glob("*.json")) if self.dir.is_dir() else []:
            try:
                doc = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError, UnicodeDecodeError) as e:
                raise AuditIntegrityError(f"audit witness {path} is unreadable: {e}", index=None,
                                          kind="bad-witness") from None
            if not isinstance(doc, dict) or doc.get("log") != self.log_id:
                raise AuditIntegrityError(f"audit witness {path} does not belong to the log of audit key "
                                          f"{self.log_id}", index=None, kind="bad-witness")
            head = parse_head(doc.get("head"), f"audit witness {path}")
            out.append(Seen(str(doc.get("party") or path.stem), path, head))
        return sorted(out, key=lambda s: -s.head["tree_size"])

    def advance(self, head: dict) -> None:
        """Record ``head`` as this party's last seen head if it is newer (the caller proved it consistent)."""
        path = self.file
        with self._locked():
            if path.is_file():
                try:
                    old = json.loads(path.read_text(encoding="utf-8"))["head"]["tree_size"]
                except (OSError, ValueError, KeyError, TypeError):
                    old = -1  # records() reports a broken file; a proven head replaces it here
                if old >= head["tree_size"]:
                    return
            doc = {"log": self.log_id, "party": self.party, "head": head,
                   "seen": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            write_atomic(path, json.dumps(doc, indent=1, sort_keys=True) + "\n")

    @contextmanager
    def _locked(self):
        # Ranks of one job advance the same party's file: the read-compare-write must not interleave.
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / ".lock", "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)


def default_witness(public_key: str, party: str, directory: str | Path | None = None) -> Witness:
    return Witness(directory if directory is not None else default_witness_dir(), public_key, party)
