"""Key management: one key-encryption key (KEK) per owner, behind a pluggable interface.

Envelope encryption: Parquet modular encryption draws a fresh data key (DEK)
per file; the KMS wraps it with the owner's KEK and the wrapped DEK travels in
the file's key metadata. Only the KMS ever sees a KEK. ``KeyStore`` is the
interface an HSM or external KMS implements; ``LocalKeyStore`` keeps KEKs in
files (0600) under the consortium home, for development and the demo.

Crypto-shredding: destroying an owner's KEK makes every DEK it wrapped, and so
every file of that owner, unrecoverable, including copies and backups of the
encrypted files.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Protocol

import pyarrow.parquet.encryption as pe
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from genba.govern import signing
from genba.govern.errors import KeyShredded, KeyUnavailable, WrongOwnerKey

_WRAP_VERSION = "genba-kek-v1"


class KeyStore(Protocol):
    """What the governance layer needs from a KMS (implement this for an HSM)."""

    def create_key(self, owner: str) -> None: ...
    def check(self, owner: str) -> None: ...  # raise KeyShredded / KeyUnavailable unless the KEK is usable now
    def wrap(self, owner: str, data_key: bytes) -> str: ...
    def unwrap(self, owner: str, wrapped: str) -> bytes: ...
    def shred(self, owner: str) -> dict: ...


class LocalKeyStore:
    """KEKs as 32-byte AES-256 keys in ``<dir>/<owner>.kek``; a tombstone file records shredding."""

    def __init__(self, directory: str | Path):
        self.dir = Path(directory)

    def _kek_path(self, owner: str) -> Path:
        return self.dir / f"{owner}.kek"

    def _tombstones(self) -> dict:
        path = self.dir / "shredded.json"
        if not path.is_file():
            return {}
        try:
            stones = json.loads(path.read_text())
            why = "not an object of tombstones"
        except (OSError, ValueError) as e:
            stones, why = None, str(e)
        if not isinstance(stones, dict) or not all(isinstance(v, dict) for v in stones.values()):
            # It lists the destroyed keys: unreadable, any key might be one of them, so none is used.
            raise KeyUnavailable(f"{path} is unreadable or malformed ({why}): no key is used until it is repaired")
        return stones

    def has_key(self, owner: str) -> bool:
        return self._kek_path(owner).is_file()

    def create_key(self, owner: str) -> None:
        if self.has_key(owner):
            return
        if owner in self._tombstones():
            raise KeyShredded(f"owner {owner!r} had its key crypto-shredded; a new key would not recover old data "
                              "and re-using the name would blur the audit trail")
        self.dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self._kek_path(owner), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(AESGCM.generate_key(bit_length=256))

    def check(self, owner: str) -> None:
        """Raise KeyShredded or KeyUnavailable unless ``owner``'s KEK can be used now (before any read is allowed)."""
        self._load(owner)

    def _load(self, owner: str) -> bytes:
        # Read on every use (a few times per dataset), tombstones too, so a shred takes effect at once and a
        # key file that comes back from a backup stays dead: shredded.json holds every destroyed fingerprint.
        stones = self._tombstones()
        stone = stones.get(owner)
        path = self._kek_path(owner)
        try:
            key = path.read_bytes()
        except FileNotFoundError:
            if stone:
                raise KeyShredded(f"the key of owner {owner!r} was crypto-shredded at {stone.get('at_iso')}: "
                                  "its data is unrecoverable") from None
            raise KeyUnavailable(f"no key-encryption key for owner {owner!r} in {self.dir}") from None
        fingerprint = signing.sha256_hex(key)[:16]
        for who, st in sorted(stones.items()):
            if st.get("kek_fingerprint") == fingerprint:
                raise KeyShredded(f"{path} holds the key of owner {who!r} (fingerprint {fingerprint}) that was "
                                  f"crypto-shredded at {st.get('at_iso')}: a restored copy is refused")
        if stone:
            raise KeyShredded(f"the key of owner {owner!r} was crypto-shredded at {stone.get('at_iso')} (fingerprint "
                              f"{stone.get('kek_fingerprint')}); the key file {path} that is present again "
                              f"(fingerprint {fingerprint}) is refused")
        return key

    def wrap(self, owner: str, data_key: bytes) -> str:
        nonce = os.urandom(12)
        ct = AESGCM(self._load(owner)).encrypt(nonce, bytes(data_key), _aad(owner))
        return f"{_WRAP_VERSION}:{signing.b64(nonce + ct)}"

    def unwrap(self, owner: str, wrapped: str) -> bytes:
        version, _, body = wrapped.partition(":")
        if version != _WRAP_VERSION:
            raise WrongOwnerKey(f"wrapped data key has unknown format {version!r}")
        raw = signing.unb64(body)
        try:
            return AESGCM(self._load(owner)).decrypt(raw[:12], raw[12:], _aad(owner))
        except InvalidTag:
            raise WrongOwnerKey(f"the key held for owner {owner!r} does not open this file's data key: "
                                "the file was encrypted under another owner's key") from None

    def shred(self, owner: str) -> dict:
        """Overwrite and delete the owner's KEK; record a tombstone. Irreversible."""
        path = self._kek_path(owner)
        if not path.is_file():
            raise KeyUnavailable(f"no key for owner {owner!r} in {self.dir} to shred")
        fingerprint = signing.sha256_hex(path.read_bytes())[:16]
        with open(path, "r+b") as f:  # best effort on copy-on-write storage; an HSM destroys for real
            f.write(os.urandom(path.stat().st_size))
            f.flush()
            os.fsync(f.fileno())
        path.unlink()
        now = time.time()
        stones = self._tombstones()
        stones[owner] = {"at": int(now), "at_iso": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
                         "kek_fingerprint": fingerprint}
        (self.dir / "shredded.json").write_text(json.dumps(stones, indent=2, sort_keys=True) + "\n")
        return stones[owner]


def _aad(owner: str) -> bytes:
    # Binding the owner into the AEAD tag: a DEK wrapped for A never unwraps as B's, even with A's key bytes.
    return f"genba-dek|{owner}".encode()


class GenbaKmsClient(pe.KmsClient):
    """pyarrow's KMS hook, bound to ONE owner (the dataset's manifest owner).

    A file whose master key id names another owner is refused outright: a
    process authorized for owner A's dataset cannot use that session to open B's.
    """

    def __init__(self, store: KeyStore, owner: str):
        super().__init__()
        self.store = store
        self.owner = owner

    def _check(self, master_key_identifier: str) -> None:
        if master_key_identifier != self.owner:
            raise WrongOwnerKey(f"file is encrypted under owner {master_key_identifier!r}'s key, "
                                f"but this read is bound to owner {self.owner!r}'s key")

    def wrap_key(self, key_bytes, master_key_identifier):
        self._check(master_key_identifier)
        return self.store.wrap(master_key_identifier, bytes(key_bytes))

    def unwrap_key(self, wrapped_key, master_key_identifier):
        self._check(master_key_identifier)
        return self.store.unwrap(master_key_identifier, wrapped_key)
