"""A real camera dataset (genba's writer, MP4 per camera) through ingest and the governed opener:
the frames read with the key equal the plaintext dataset's; without a grant, after a shred, or with a
tampered video the open is refused and audited; decoded frames never reach the disk.
"""

from __future__ import annotations

import json
import sqlite3
import sys
from pathlib import Path

import numpy as np
import pytest

from genba.data.dataset import open_dataset
from genba.data.layout import write_dataset
from genba.govern import admin, envelope
from genba.govern.access import GovernedAccess
from genba.govern.consortium import Member, init_consortium
from genba.govern.errors import AccessDenied, FileHashMismatch, KeyShredded
from genba.govern.sites import issue_claim

sys.path.insert(0, str(Path(__file__).parents[1] / "data"))
from data_synth import TASKS  # noqa: E402  (the data layer's test helpers)
from video_synth import camera_episodes, camera_spec  # noqa: E402

CAMS = ("corner2", "gripper")
MP4 = "videos/observation.images.{}/chunk-000/file-000.mp4"


@pytest.fixture
def cam(tmp_path):
    home = tmp_path / "home"
    c = init_consortium(home, "cam", [Member("acme", "Acme", "JP"), Member("kiso", "Kiso", "JP")],
                        [("tokyo", "JP", "Tokyo DC")])
    spec = camera_spec(cameras=tuple((n, 32, 32) for n in CAMS))
    plain = write_dataset(tmp_path / "plain", camera_episodes(spec, [6, 9, 4]), spec, TASKS)
    admin.ingest(c, plain, tmp_path / "enc", owner="acme", dataset_id="acme-cam", classification="confidential",
                 purposes=("pretraining",))
    claim = issue_claim(c, "tokyo")
    return tmp_path, c, claim


def _access(t: Path, claim: dict, principal: str = "acme/ann", run_id: str = "r") -> GovernedAccess:
    return GovernedAccess(t / "home", principal, claim, "pretraining", run_id)


def _events(t: Path, run_id: str) -> list[dict]:
    db = sqlite3.connect(t / "home" / "audit.sqlite")
    try:
        events = [json.loads(b)["event"] for (b,) in db.execute("SELECT body FROM entries ORDER BY idx")]
    finally:
        db.close()
    return [e for e in events if e.get("run_id") == run_id]


def test_governed_frames_equal_the_plaintext_datasets_and_stay_in_memory(cam):
    t, _, claim = cam
    for n in CAMS:
        assert envelope.is_envelope((t / "enc" / MP4.format(n)).read_bytes())
    plain = open_dataset(t / "plain", cache_dir=None)
    acc = _access(t, claim, run_id="read")
    ds = acc.open(t / "enc")
    rows = np.arange(plain.num_frames)
    for n in CAMS:
        np.testing.assert_array_equal(ds.images[n].take(rows), plain.images[n].take(rows))
    np.testing.assert_array_equal(ds.observation, plain.observation)
    assert not list(t.rglob(".cache"))  # neither the governed open nor this test cached frames on disk
    videos = {MP4.format(n) for n in CAMS}
    assert videos <= set(acc.lineage()["datasets"][0]["files"])
    allowed = {e.get("file") for e in _events(t, "read") if e["decision"] == "allow"}
    assert videos <= allowed


def test_camera_dataset_without_a_grant_is_refused_before_a_video_is_read(cam, monkeypatch):
    t, _, claim = cam
    acc = _access(t, claim, "kiso/ken", run_id="no-grant")
    monkeypatch.setattr(envelope, "open_envelope", lambda *a: pytest.fail("a video was decrypted"))
    with pytest.raises(AccessDenied, match="no grant"):
        acc.open(t / "enc")
    assert [(e["decision"], e["policy_ids"]) for e in _events(t, "no-grant")] == [("deny", ["default-deny"])]


def test_camera_dataset_after_shred_is_unreadable_and_audited(cam):
    t, c, claim = cam
    admin.shred(c, "acme")
    with pytest.raises(KeyShredded, match="crypto-shredded"):
        _access(t, claim, run_id="shredded").open(t / "enc")
    assert [(e["decision"], e["policy_ids"]) for e in _events(t, "shredded")] == [("deny", ["kms"])]


def test_tampered_video_refuses_the_open_naming_the_file(cam):
    t, _, claim = cam
    rel = MP4.format("gripper")
    raw = bytearray((t / "enc" / rel).read_bytes())
    raw[-10] ^= 0xFF
    (t / "enc" / rel).write_bytes(bytes(raw))
    with pytest.raises(FileHashMismatch, match="swapped or altered") as e:
        _access(t, claim, run_id="tampered").open(t / "enc")
    assert e.value.path == rel and rel in str(e.value)
    last = _events(t, "tampered")[-1]
    assert (last["decision"], last["policy_ids"], last["file"]) == ("deny", ["file-hash"], rel)


def test_governed_training_reads_camera_data_through_the_opener(cam, monkeypatch):
    """`genba train --governed` opens datasets with GovernedAccess.open: videos decrypted in memory, cited in lineage."""
    from genba.cli import main

    t, c, _ = cam
    monkeypatch.setenv("GENBA_HOME", str(t / "home"))
    assert main(["site", "claim", "--site", "tokyo", "--out", str(t / "claim.json")]) == 0
    rc = main(["train", "--governed", "--principal", "acme/ann", "--site-claim", str(t / "claim.json"),
               "--purpose", "pretraining", "--preset", "debug", "--data", str(t / "enc"), "--out",
               str(t / "run"), "--steps", "1", "--no-progress"])
    assert rc == 0
    lineage = json.loads(next((t / "run").rglob("checkpoint.json")).read_text())["lineage"]
    files = {f for d in lineage.get("datasets", []) for f in d.get("files", {})}
    assert {MP4.format(n) for n in CAMS} <= files, lineage
    assert not list(t.rglob(".cache"))
