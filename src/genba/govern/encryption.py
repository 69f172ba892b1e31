"""Parquet modular encryption with per-owner keys (pyarrow CryptoFactory + GenbaKmsClient).

Every column and the footer are encrypted with AES-GCM under a per-file data
key; the data key is wrapped by the owner's KEK (kms.py). ``kms_instance_id`` is
set to the owner so pyarrow's client cache never hands owner A's client to a
read of owner B's file.

Files that are not Parquet but carry dataset content (the videos under
``videos/``) are sealed as envelopes (envelope.py) under the same owner's KEK;
``is_content`` says which files of a dataset are encrypted at ingest.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pyarrow.parquet.encryption as pe

from genba.govern import envelope
from genba.govern.kms import GenbaKmsClient, KeyStore

VIDEO_DIR = "videos/"


def is_content(rel: str) -> str | None:
    """How a dataset file (path relative to its root) is encrypted at ingest: "parquet", "envelope" or None (plain).

    Only metadata stays plain (``meta/*.json``: feature names, shapes, counts, the spec), which the
    manifest's hashes protect; every frame of state, action and camera is encrypted.
    """
    if rel.endswith(".parquet"):
        return "parquet"
    if rel.startswith(VIDEO_DIR):
        return "envelope"
    return None


def build_crypto(store: KeyStore, owner: str) -> tuple[pe.CryptoFactory, pe.KmsConnectionConfig]:
    """A CryptoFactory whose KMS client is bound to ``owner``, and its connection config."""
    factory = pe.CryptoFactory(lambda cfg: GenbaKmsClient(store, cfg.kms_instance_id))
    return factory, pe.KmsConnectionConfig(kms_instance_id=owner)


def write_encrypted(source: pa.Table | pq.ParquetFile, path: str | Path, store: KeyStore, owner: str) -> None:
    """Write ``source`` as Parquet with every column and the footer encrypted under ``owner``'s key.

    A ``ParquetFile`` source keeps its row groups (the reader maps one row group to one episode).
    """
    factory, kms = build_crypto(store, owner)
    config = pe.EncryptionConfiguration(
        footer_key=owner, uniform_encryption=True, encryption_algorithm="AES_GCM_V1",
        data_key_length_bits=256, double_wrapping=False, plaintext_footer=False)
    props = factory.file_encryption_properties(kms, config)
    if isinstance(source, pa.Table):
        pq.write_table(source, str(path), encryption_properties=props)
        return
    with pq.ParquetWriter(str(path), source.schema_arrow, encryption_properties=props) as writer:
        for i in range(source.num_row_groups):
            writer.write_table(source.read_row_group(i))


class Decryptor:
    """Reads one owner's encrypted Parquet bytes and envelopes; reuses one factory for all files of a dataset."""

    def __init__(self, store: KeyStore, owner: str):
        self.owner, self.store = owner, store
        factory, kms = build_crypto(store, owner)
        # Short cache: a long-lived process still notices a shredded key within a minute.
        self.properties = factory.file_decryption_properties(kms, pe.DecryptionConfiguration(
            cache_lifetime=timedelta(seconds=60)))

    def read(self, data: bytes) -> pa.Table:
        return pq.read_table(pa.BufferReader(data), decryption_properties=self.properties)

    def open_envelope(self, data: bytes, rel: str) -> bytes:
        """A sealed file's plaintext (e.g. an MP4), in memory; the KEK is read on every call, so a shred stops it."""
        return envelope.open_envelope(data, self.store, self.owner, rel)
