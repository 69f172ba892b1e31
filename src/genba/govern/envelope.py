"""Envelope encryption of whole files (a dataset's videos): AES-256-GCM under a per-file data key.

Parquet has its own modular encryption (encryption.py); an MP4 has none, so
each video is sealed as one envelope: a fresh 256-bit data key (DEK) per file,
wrapped by the KMS client bound to the owner (kms.py, the same KEK and wrap
format as the parquet files' keys), and the file in segments of
``SEGMENT`` bytes, each AES-GCM with its own nonce. Segments keep memory flat
while a large file is sealed and stay far below AES-GCM's per-call limit.

Layout: ``MAGIC`` | header length (4 bytes, big-endian) | header (canonical
JSON: owner, the file's path in its dataset, the wrapped DEK, nonce prefix,
plaintext size, segment size) | segment 0 ciphertext+tag | segment 1 ... .
Every segment's AAD is the header plus the segment's index, so an edited
header (another owner, another path), reordered, dropped or truncated
segments all fail the tag. Shredding the owner's KEK leaves the wrapped DEK
unopenable: the envelope, and every copy of it, is then noise.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from genba.govern import signing
from genba.govern.errors import FileHashMismatch
from genba.govern.kms import GenbaKmsClient, KeyStore

MAGIC = b"GENBA-ENVELOPE-1"
SEGMENT = 4 << 20  # 4 MiB: one 64x64 camera's chunk file is usually a single segment
_TAG = 16
_ALG = "AES-256-GCM"


def is_envelope(data: bytes) -> bool:
    return data[:len(MAGIC)] == MAGIC


def seal_file(src: str | Path, dst: str | Path, store: KeyStore, owner: str, rel: str) -> None:
    """Write ``src`` encrypted under ``owner``'s key to ``dst``; ``rel`` is its path inside the dataset."""
    size = os.path.getsize(src)
    segments = max(1, -(-size // SEGMENT))  # one (empty) segment even for an empty file: the header is still tagged
    dek = AESGCM.generate_key(bit_length=256)
    prefix = os.urandom(8)
    header = signing.canonical_json({
        "alg": _ALG, "owner": owner, "path": rel, "size": size, "segment": SEGMENT,
        "nonce_prefix": signing.b64(prefix), "wrapped_key": GenbaKmsClient(store, owner).wrap_key(dek, owner)})
    aead = AESGCM(dek)
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        fout.write(MAGIC + len(header).to_bytes(4, "big") + header)
        for i in range(segments):
            fout.write(aead.encrypt(prefix + i.to_bytes(4, "big"), fin.read(SEGMENT), header + i.to_bytes(4, "big")))


def open_envelope(data: bytes, store: KeyStore, owner: str, rel: str) -> bytes:
    """The plaintext of an envelope, in memory only; ``owner`` is the owner this read is bound to.

    Raises FileHashMismatch (naming ``rel``) for a malformed, truncated or
    altered envelope or one sealed for another path; WrongOwnerKey for another
    owner's file; KeyShredded / KeyUnavailable when the owner's KEK is gone.
    """
    header, body_at, h = _parse_header(data, rel)
    if h["path"] != rel:
        raise FileHashMismatch(f"{rel}: this envelope was sealed for {h['path']!r}, not for this path "
                               "(a file moved between datasets or cameras)", path=rel)
    size, seg = h["size"], h["segment"]
    segments = max(1, -(-size // seg))
    if len(data) - body_at != size + segments * _TAG:
        raise FileHashMismatch(f"{rel}: envelope holds {len(data) - body_at} bytes of ciphertext, its header says "
                               f"{size + segments * _TAG} (truncated or appended to)", path=rel)
    dek = GenbaKmsClient(store, owner).unwrap_key(h["wrapped_key"], h["owner"])  # refuses another owner's file
    aead, prefix = AESGCM(dek), signing.unb64(h["nonce_prefix"])
    out, at = bytearray(), body_at
    for i in range(segments):
        n = min(seg, size - i * seg) + _TAG
        try:
            out += aead.decrypt(prefix + i.to_bytes(4, "big"), data[at:at + n], header + i.to_bytes(4, "big"))
        except InvalidTag:
            raise FileHashMismatch(f"{rel}: envelope segment {i} fails its authentication tag "
                                   "(the encrypted file was altered)", path=rel) from None
        at += n
    return bytes(out)


def _parse_header(data: bytes, rel: str) -> tuple[bytes, int, dict]:
    """(header bytes, offset of the first segment, header fields), or FileHashMismatch naming ``rel``."""
    if not is_envelope(data):
        raise FileHashMismatch(f"{rel}: not a genba envelope (no {MAGIC.decode()} header): "
                               "the file was not sealed by `genba data ingest` or was overwritten", path=rel)
    start = len(MAGIC) + 4
    n = int.from_bytes(data[len(MAGIC):start], "big")
    header = data[start:start + n]
    try:
        h = json.loads(header)
        ok = (isinstance(h, dict) and h.get("alg") == _ALG and isinstance(h.get("size"), int) and h["size"] >= 0
              and isinstance(h.get("segment"), int) and h["segment"] > 0
              and all(isinstance(h.get(k), str) for k in ("owner", "path", "nonce_prefix", "wrapped_key")))
    except (ValueError, UnicodeDecodeError):
        ok = False
    if len(header) != n or not ok:
        raise FileHashMismatch(f"{rel}: envelope header is truncated or malformed", path=rel)
    return header, start + n, h
