"""Ed25519 keys and signatures over canonical JSON.

Canonical JSON (sorted keys, no whitespace, UTF-8) makes a signature depend on
content only, never on how a file happened to be formatted.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey


def canonical_json(obj) -> bytes:
    """The one byte string that is signed and hashed for a JSON-able object."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"), validate=True)


def new_private_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def public_key_b64(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    """Raw 32-byte public key, base64: the form stored in consortium.json."""
    pub = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return b64(pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))


def load_public_key(text: str) -> Ed25519PublicKey:
    return Ed25519PublicKey.from_public_bytes(unb64(text))


def key_id(public_b64: str) -> str:
    """Short fingerprint naming a public key in signatures and messages."""
    return sha256_hex(unb64(public_b64))[:16]


def save_private_key(key: Ed25519PrivateKey, path: Path) -> None:
    """Write a raw private key readable by the owner only (0600)."""
    raw = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                            serialization.NoEncryption())
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(raw)


def load_private_key(path: Path) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(Path(path).read_bytes())


def sign_obj(key: Ed25519PrivateKey, obj) -> dict:
    """Signature block for ``obj``: which key signed it and the signature."""
    pub = public_key_b64(key)
    return {"alg": "Ed25519", "key_id": key_id(pub), "sig": b64(key.sign(canonical_json(obj)))}


def verify_obj(public_b64: str, obj, signature: dict) -> bool:
    """True when ``signature`` is a valid Ed25519 signature of ``obj`` by that public key."""
    try:
        if signature.get("alg") != "Ed25519" or signature.get("key_id") != key_id(public_b64):
            return False
        load_public_key(public_b64).verify(unb64(signature["sig"]), canonical_json(obj))
        return True
    except (InvalidSignature, KeyError, ValueError, TypeError, AttributeError):
        return False
