"""End to end with the real data layer and the CLI: ingest, grant, governed open, lineage, audit."""

from __future__ import annotations

import json
import sqlite3
import sys
from pathlib import Path

import numpy as np
import pytest

from genba.cli import main
from genba.data.dataset import open_dataset
from genba.data.layout import write_dataset
from genba.govern.access import GovernedAccess
from genba.govern.errors import AccessDenied

sys.path.insert(0, str(Path(__file__).parents[1] / "data"))
from data_synth import TASKS, coded_episodes, make_spec  # noqa: E402  (the data layer's test helpers)


@pytest.fixture
def governed(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("GENBA_HOME", str(home))
    assert main(["consortium", "init", "--name", "demo", "--member", "acme:Acme Robotics:JP",
                 "--member", "kiso:Kiso Motors:JP", "--site", "tokyo-1:JP:Sakura DC",
                 "--site", "us-east:US:US cloud"]) == 0
    spec = make_spec()
    write_dataset(tmp_path / "plain", coded_episodes(spec, [30, 40, 25]), spec, TASKS)
    assert main(["data", "ingest", str(tmp_path / "plain"), str(tmp_path / "enc"), "--owner", "acme",
                 "--dataset-id", "acme-toy", "--classification", "confidential", "--purpose", "pretraining"]) == 0
    assert main(["site", "claim", "--site", "tokyo-1", "--out", str(tmp_path / "claim.json")]) == 0
    return tmp_path


def test_cli_pipeline_governed_open_and_lineage(governed, capsys):
    t = governed
    plain = open_dataset(t / "plain")
    with pytest.raises(AccessDenied, match="default-deny"):
        GovernedAccess(None, "kiso/ken", t / "claim.json", "pretraining", "run-1").open(t / "enc")
    assert main(["data", "grant", "--owner", "acme", "--to", "kiso", "--dataset", "acme-toy",
                 "--purpose", "pretraining"]) == 0
    acc = GovernedAccess(None, "kiso/ken", t / "claim.json", "pretraining", "run-2")
    ds = acc.open(t / "enc")
    np.testing.assert_array_equal(ds.observation, plain.observation)
    np.testing.assert_array_equal(ds.action, plain.action)
    assert [e.length for e in ds.episodes] == [e.length for e in plain.episodes]

    ckpt = t / "ckpt"
    ckpt.mkdir()
    (ckpt / "checkpoint.json").write_text(json.dumps({"preset": "debug", "lineage": acc.lineage()}))
    capsys.readouterr()
    assert main(["lineage", str(ckpt), "--verify", "--card", str(t / "card.md")]) == 0
    out = capsys.readouterr().out
    assert "owners whose data is inside: acme" in out and "lineage verified" in out
    assert "data/chunk-000/file-000.parquet" in out
    assert "**Owners whose data is inside this model:** acme" in (t / "card.md").read_text()

    assert main(["audit", "head", "--out", str(t / "head.json")]) == 0
    assert main(["audit", "verify", "--against", str(t / "head.json")]) == 0
    assert main(["audit", "show", "--last", "10"]) == 0
    assert "policy=default-deny" in capsys.readouterr().out  # the run-1 refusal is among the last entries

    # an edited audit entry cited by the lineage breaks both `audit verify` and `lineage --verify`
    idx = acc.lineage()["datasets"][0]["audit_entries"][1]
    db = sqlite3.connect(t / "home" / "audit.sqlite")
    body = db.execute("SELECT body FROM entries WHERE idx = ?", (idx,)).fetchone()[0]
    db.execute("UPDATE entries SET body = ? WHERE idx = ?", (body.replace("kiso/ken", "acme/ann"), idx))
    db.commit()
    db.close()
    capsys.readouterr()
    assert main(["audit", "verify"]) == 2
    assert f"audit entry {idx} was edited" in capsys.readouterr().err
    assert main(["lineage", str(ckpt), "--verify"]) == 2


def test_cli_refusals_are_clear_errors(governed, capsys):
    assert main(["data", "shred", "--owner", "acme"]) == 2
    assert "--yes" in capsys.readouterr().err
    assert main(["data", "revoke", "--owner", "acme", "--to", "kiso", "--dataset", "acme-toy"]) == 2
    assert "no grant" in capsys.readouterr().err
    assert main(["site", "claim", "--site", "nowhere"]) == 2
    assert "unknown site 'nowhere'" in capsys.readouterr().err
    assert main(["data", "shred", "--owner", "acme", "--yes"]) == 0
    with pytest.raises(Exception, match="crypto-shredded"):
        GovernedAccess(None, "acme/ann", governed / "claim.json", "pretraining", "r").open(governed / "enc")


def test_cli_train_after_shred_is_a_clear_error_and_logs_no_allow(governed, capsys, monkeypatch):
    t = governed
    assert main(["data", "shred", "--owner", "acme", "--yes"]) == 0
    capsys.readouterr()
    rc = main(["train", "--governed", "--principal", "acme/ann", "--site-claim", str(t / "claim.json"),
               "--purpose", "pretraining", "--preset", "debug", "--data", str(t / "enc"), "--out",
               str(t / "run-shredded"), "--steps", "1", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "crypto-shredded" in err and "stopped before reading any data" in err
    db = sqlite3.connect(t / "home" / "audit.sqlite")
    events = [json.loads(b)["event"] for (b,) in db.execute("SELECT body FROM entries ORDER BY idx")]
    db.close()
    run = [e for e in events if e.get("run_id") == "run-shredded"]
    assert [(e["decision"], e["policy_ids"]) for e in run] == [("deny", ["kms"])]


def test_cli_train_refused_mid_read_is_a_clear_error(governed, capsys):
    # the preflight authorizes the dataset; the altered data file is only met when the reader opens it
    t = governed
    data = next((t / "enc" / "data").rglob("*.parquet"))
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    data.write_bytes(bytes(raw))
    capsys.readouterr()
    rc = main(["train", "--governed", "--principal", "acme/ann", "--site-claim", str(t / "claim.json"),
               "--purpose", "pretraining", "--preset", "debug", "--data", str(t / "enc"), "--out",
               str(t / "run-altered"), "--steps", "1", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "swapped or altered" in err and data.name in err
