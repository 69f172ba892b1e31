"""Per-organization API tokens for the policy server, hashed at rest.

A token reads ``gbt_<id>_<secret>``: ``id`` (8 hex) finds the record, ``secret``
(32 random bytes, urlsafe base64) proves possession. The store keeps only
``sha256(salt || secret)`` with a per-token random salt: the secrets are 256-bit
random strings, not passwords, so a slow KDF (scrypt) would add ~50 ms per
request and no security; constant-time comparison avoids timing leaks.

Each organization is granted a set of embodiments; a token may only be used for
those (403 otherwise). Revoked or unknown tokens authenticate as nobody (401).
``can_reset_estop`` marks organizations whose tokens may clear a latched e-stop;
``max_sessions`` (optional) is the organization's session quota on the server.
The store is a JSON file written atomically with mode 0600.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from genba.atomic import write_atomic

TOKEN_RE = re.compile(r"^gbt_([0-9a-f]{8})_([A-Za-z0-9_-]{43})$")
ORG_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class AuthError(ValueError):
    """A bad token-store operation (unknown org, malformed store, ...)."""


@dataclass(frozen=True)
class Principal:
    """Who a valid token speaks for."""

    org: str
    token_id: str
    embodiments: frozenset[str]
    can_reset_estop: bool
    max_sessions: int | None = None  # the organization's session quota (None: the server's default)

    def allows(self, embodiment: str) -> bool:
        return embodiment in self.embodiments or "*" in self.embodiments


def _hash(salt: bytes, secret: str) -> str:
    return hashlib.sha256(salt + secret.encode()).hexdigest()


class TokenStore:
    """Organizations, their grants and their (hashed) tokens."""

    def __init__(self, path: str | os.PathLike | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self.orgs: dict[str, dict] = {}
        self.tokens: dict[str, dict] = {}
        if self.path is not None and self.path.exists():
            self._load()

    # ---- persistence ---------------------------------------------------
    def _load(self) -> None:
        try:
            data = json.loads(self.path.read_text())
            self.orgs, self.tokens = dict(data["orgs"]), dict(data["tokens"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise AuthError(f"token store {self.path}: unreadable or malformed ({e})") from None

    def save(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(self.path, json.dumps({"orgs": self.orgs, "tokens": self.tokens}, indent=2, sort_keys=True),
                     mode=0o600)

    # ---- administration ------------------------------------------------
    def add_org(self, org: str, embodiments: list[str] | tuple[str, ...], *, can_reset_estop: bool = False,
                max_sessions: int | None = None) -> None:
        """Create or update an organization, its granted embodiments and its session quota."""
        if not ORG_RE.match(org or ""):
            raise AuthError(f"organization name {org!r}: use letters, digits, '_', '.', '-' (max 64)")
        if max_sessions is not None and (isinstance(max_sessions, bool) or not isinstance(max_sessions, int)
                                         or max_sessions < 1):
            raise AuthError(f"max_sessions for {org!r} must be a positive integer, got {max_sessions!r}")
        self.orgs[org] = {"embodiments": sorted(set(embodiments)), "can_reset_estop": bool(can_reset_estop)}
        if max_sessions is not None:
            self.orgs[org]["max_sessions"] = max_sessions
        self.save()

    def issue(self, org: str, label: str = "") -> str:
        """A new token for ``org``; the only time the secret is visible."""
        if org not in self.orgs:
            raise AuthError(f"unknown organization {org!r}; known: {sorted(self.orgs)}")
        tid = secrets.token_hex(4)
        while tid in self.tokens:
            tid = secrets.token_hex(4)
        secret = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")
        salt = secrets.token_bytes(16)
        self.tokens[tid] = {"org": org, "label": label, "salt": salt.hex(), "sha256": _hash(salt, secret),
                            "created": time.time(), "revoked": False}
        self.save()
        return f"gbt_{tid}_{secret}"

    def revoke(self, token_or_id: str) -> None:
        m = TOKEN_RE.match(token_or_id)
        tid = m.group(1) if m else token_or_id
        if tid not in self.tokens:
            raise AuthError(f"unknown token id {tid!r}")
        self.tokens[tid]["revoked"] = True
        self.save()

    def listing(self) -> list[dict]:
        """Token records without salts or hashes."""
        return [{"id": tid, "org": r["org"], "label": r["label"], "revoked": r["revoked"], "created": r["created"]}
                for tid, r in sorted(self.tokens.items())]

    # ---- checks --------------------------------------------------------
    def authenticate(self, token: str | None) -> Principal | None:
        """The principal a token speaks for, or None (unknown, malformed or revoked)."""
        m = TOKEN_RE.match(token or "")
        if not m:
            return None
        rec = self.tokens.get(m.group(1))
        if rec is None:
            return None
        ok = hmac.compare_digest(_hash(bytes.fromhex(rec["salt"]), m.group(2)), rec["sha256"])
        org = self.orgs.get(rec["org"])
        if not ok or rec["revoked"] or org is None:
            return None
        return Principal(rec["org"], m.group(1), frozenset(org["embodiments"]), org["can_reset_estop"],
                         org.get("max_sessions"))

    def can_reset(self, token: str) -> bool:
        p = self.authenticate(token)
        return bool(p and p.can_reset_estop)


def bearer(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, else None."""
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None
