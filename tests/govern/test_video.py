"""Governance covers video: each camera file is sealed under its owner's key, hashed in the signed
manifest, read only through the governed opener (audited), and dead after a shred.

Videos here are opaque bytes (governance never decodes them); test_video_dataset.py reads real
MP4s of a camera dataset through the data layer.
"""

from __future__ import annotations

import json
import os

import pytest
from govern_world import VIDEO_FILE

from genba.govern import admin, envelope
from genba.govern.errors import AccessDenied, FileHashMismatch, KeyShredded, WrongOwnerKey
from genba.govern.kms import LocalKeyStore

VIDEO = os.urandom(3000) + b"ftypisom-a-recognisable-plaintext-marker" + os.urandom(3000)


@pytest.fixture
def vworld(world):
    world.ingest("a-cam", "a", seed=3, video=VIDEO)
    return world


def _run_events(world, run_id: str) -> list[dict]:
    log = admin.audit_log(world.c, signing=False)
    try:
        return [e["event"] for e in log.entries() if e["event"].get("run_id") == run_id]
    finally:
        log.close()


def _manifest_files(root) -> dict:
    return json.loads((root / "meta" / "manifest.json").read_text())["manifest"]["files"]


def test_video_is_sealed_at_ingest_and_listed_in_the_manifest(vworld):
    enc = vworld.ds("a-cam") / VIDEO_FILE
    sealed = enc.read_bytes()
    assert envelope.is_envelope(sealed) and b"plaintext-marker" not in sealed
    assert (vworld.tmp / "plain" / "a-cam" / VIDEO_FILE).read_bytes() == VIDEO  # the member's own copy stays plain
    assert _manifest_files(vworld.ds("a-cam"))[VIDEO_FILE] == envelope.signing.sha256_hex(sealed)


def test_owner_reads_the_video_in_memory_and_the_read_is_audited(vworld):
    acc = vworld.access("a/alice", run_id="own-read")
    assert acc.read_video(vworld.ds("a-cam") / VIDEO_FILE) == VIDEO
    plain = vworld.tmp / "plain"
    leaked = [p for p in vworld.tmp.rglob("*") if p.is_file() and not p.is_relative_to(plain)
              and b"plaintext-marker" in p.read_bytes()]
    assert leaked == []  # decrypted in memory: no clear copy anywhere but the member's own dataset
    ev = _run_events(vworld, "own-read")[-1]
    assert (ev["decision"], ev["file"], ev["dataset"]) == ("allow", VIDEO_FILE, "a-cam")
    assert acc.lineage()["datasets"][0]["files"] == {VIDEO_FILE: _manifest_files(vworld.ds("a-cam"))[VIDEO_FILE]}


def test_video_without_a_grant_is_refused_and_audited(vworld):
    acc = vworld.access("b/bob", run_id="no-grant")
    with pytest.raises(AccessDenied, match="no grant from 'a'"):
        acc.read_video(vworld.ds("a-cam") / VIDEO_FILE)
    assert [(e["decision"], e["policy_ids"]) for e in _run_events(vworld, "no-grant")] == [("deny", ["default-deny"])]


def test_granted_then_revoked_video(vworld):
    admin.grant(vworld.c, owner="a", grantee="b", dataset="a-cam", purpose="pretraining")
    assert vworld.access("b/bob", run_id="granted").read_video(vworld.ds("a-cam") / VIDEO_FILE) == VIDEO
    admin.revoke(vworld.c, owner="a", grantee="b", dataset="a-cam")
    with pytest.raises(AccessDenied):
        vworld.access("b/bob", run_id="revoked").read_video(vworld.ds("a-cam") / VIDEO_FILE)
    assert [e["decision"] for e in _run_events(vworld, "revoked")] == ["deny"]


def test_shredded_video_cannot_be_decrypted(vworld, tmp_path):
    sealed = (vworld.ds("a-cam") / VIDEO_FILE).read_bytes()
    store = LocalKeyStore(vworld.c.keys_dir)
    assert envelope.open_envelope(sealed, store, "a", VIDEO_FILE) == VIDEO
    live = vworld.access("a/alice", run_id="mid-run")
    live.authorize(vworld.ds("a-cam"))  # a run authorized before the shred
    admin.shred(vworld.c, "a")
    with pytest.raises(KeyShredded, match="crypto-shredded"):  # the bytes alone, outside any access
        envelope.open_envelope(sealed, store, "a", VIDEO_FILE)
    with pytest.raises(KeyShredded):
        live.read_video(vworld.ds("a-cam") / VIDEO_FILE)
    ev = _run_events(vworld, "mid-run")[-1]
    assert (ev["decision"], ev["policy_ids"], ev["file"]) == ("deny", ["kms"], VIDEO_FILE)
    with pytest.raises(KeyShredded):
        vworld.access("a/alice", run_id="after").read_video(vworld.ds("a-cam") / VIDEO_FILE)
    assert [(e["decision"], e["policy_ids"]) for e in _run_events(vworld, "after")] == [("deny", ["kms"])]


def test_tampered_encrypted_video_is_refused_naming_the_file(vworld):
    path = vworld.ds("a-cam") / VIDEO_FILE
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    path.write_bytes(bytes(raw))
    acc = vworld.access("a/alice", run_id="tampered")
    with pytest.raises(FileHashMismatch, match="swapped or altered") as e:
        acc.read_video(path)
    assert e.value.path == VIDEO_FILE and VIDEO_FILE in str(e.value)
    ev = _run_events(vworld, "tampered")[-1]
    assert (ev["decision"], ev["policy_ids"], ev["file"]) == ("deny", ["file-hash"], VIDEO_FILE)


def test_envelope_refuses_alteration_truncation_moves_and_other_owners(vworld):
    """Below the manifest: the envelope itself authenticates every byte and its place."""
    store = LocalKeyStore(vworld.c.keys_dir)
    sealed = (vworld.ds("a-cam") / VIDEO_FILE).read_bytes()
    flipped = bytearray(sealed)
    flipped[-5] ^= 0x80
    with pytest.raises(FileHashMismatch, match="authentication tag"):
        envelope.open_envelope(bytes(flipped), store, "a", VIDEO_FILE)
    with pytest.raises(FileHashMismatch, match="truncated"):
        envelope.open_envelope(sealed[:-100], store, "a", VIDEO_FILE)
    with pytest.raises(FileHashMismatch, match="sealed for"):
        envelope.open_envelope(sealed, store, "a", VIDEO_FILE.replace("corner2", "gripper"))
    with pytest.raises(WrongOwnerKey, match="owner 'a'"):
        envelope.open_envelope(sealed, store, "b", VIDEO_FILE)
    with pytest.raises(FileHashMismatch, match="not a genba envelope"):
        envelope.open_envelope(VIDEO, store, "a", VIDEO_FILE)


@pytest.mark.parametrize("size", [0, 1, 1000, 1024, 3000])
def test_envelope_round_trip_across_segments(world, tmp_path, monkeypatch, size):
    monkeypatch.setattr(envelope, "SEGMENT", 1024)  # several segments without a large file
    store = LocalKeyStore(world.c.keys_dir)
    data = os.urandom(size)
    (tmp_path / "clip.mp4").write_bytes(data)
    envelope.seal_file(tmp_path / "clip.mp4", tmp_path / "clip.env", store, "a", "videos/k/clip.mp4")
    sealed = (tmp_path / "clip.env").read_bytes()
    assert envelope.open_envelope(sealed, store, "a", "videos/k/clip.mp4") == data
    if size > 1024:  # a whole segment dropped is caught by the header's size, not just the tag
        with pytest.raises(FileHashMismatch, match="truncated"):
            envelope.open_envelope(sealed[:-1040], store, "a", "videos/k/clip.mp4")


def test_export_writes_the_decrypted_video(vworld, tmp_path):
    acc = vworld.access("a/alice", action="export", run_id="export")
    written = acc.export_to(vworld.ds("a-cam"), tmp_path / "out")
    assert tmp_path / "out" / VIDEO_FILE in written
    assert (tmp_path / "out" / VIDEO_FILE).read_bytes() == VIDEO


def test_ingest_leaves_the_decoded_frame_cache_behind(world):
    """The member's own cache of decoded frames (plaintext, next to its dataset) never enters the governed copy."""
    from govern_world import write_plain

    src = write_plain(world.tmp / "plain" / "cached", seed=4, video=VIDEO)
    (src / ".cache" / "frames").mkdir(parents=True)
    (src / ".cache" / "frames" / "0abc.u8").write_bytes(b"decoded plaintext-marker frames")
    admin.ingest(world.c, src, world.ds("cached"), owner="a", dataset_id="cached", classification="internal",
                 purposes=("pretraining",))
    assert not (world.ds("cached") / ".cache").exists()
    assert not any(k.startswith(".") for k in _manifest_files(world.ds("cached")))
