"""`genba train --governed`: the trainer reads consortium data only through the governance layer.

A job at a site outside the data's jurisdiction, or by a principal whose org
holds no grant, must stop before reading a byte (the trainer is never entered,
no file read is audited) with an error naming the denying policy; an allowed
job trains and stores the lineage (owners, files, audit entries) in its checkpoint.
"""

from __future__ import annotations

import json

import pytest

from genba import cli
from genba.govern import admin, sites
from genba.govern.consortium import Member, init_consortium


@pytest.fixture
def consortium(tmp_path, toy_data):
    """Owner `maker` ingests both toy datasets and grants `lab` pretraining; `rival` has no grant."""
    home = tmp_path / "home"
    c = init_consortium(home, "toy", [Member("maker", "Maker", "JP"), Member("lab", "Lab", "JP"),
                                      Member("rival", "Rival", "JP")],
                        [("tokyo", "JP", "Tokyo DC"), ("virginia", "US", "US cloud")])
    governed = []
    for src in toy_data:
        dest = tmp_path / "governed" / src.name
        admin.ingest(c, src, dest, owner="maker", dataset_id=f"maker-{src.name}", classification="confidential",
                     purposes=("pretraining", "evaluation"))
        governed.append(dest)
    admin.grant(c, owner="maker", grantee="lab", dataset="*", purpose="pretraining")
    claims = {}
    for site in ("tokyo", "virginia"):
        claims[site] = tmp_path / f"claim-{site}.json"
        claims[site].write_text(json.dumps(sites.issue_claim(c, site)))
    return {"c": c, "home": home, "data": ",".join(map(str, governed)), "claims": claims, "tmp": tmp_path}


def _train_argv(w: dict, principal: str, site: str, out, *extra: str) -> list[str]:
    return ["train", "--governed", "--home", str(w["home"]), "--principal", principal,
            "--site-claim", str(w["claims"][site]), "--purpose", "pretraining", "--preset", "debug",
            "--data", w["data"], "--out", str(out), "--steps", "2", "--no-progress", *extra]


def _events(c, run_id: str) -> list[dict]:
    log = admin.audit_log(c)
    try:
        return [e["event"] for e in log.entries() if e["event"].get("run_id") == run_id]
    finally:
        log.close()


@pytest.fixture
def no_trainer(monkeypatch):
    """Fail the test if the trainer (and with it the dataset reader) is ever entered."""
    import genba.train.trainer as trainer

    def forbidden(*a, **k):
        raise AssertionError("the trainer started although access was denied")

    monkeypatch.setattr(trainer, "train", forbidden)


@pytest.mark.parametrize("principal,site,policy", [
    ("lab/trainer", "virginia", "data-residency"),  # JP data, US site: a forbid no grant overrides
    ("rival/eve", "tokyo", "default-deny"),  # JP site, but rival holds no grant from maker
])
def test_denied_job_stops_before_reading_a_byte(consortium, no_trainer, capsys, principal, site, policy):
    out = consortium["tmp"] / f"run-{site}"
    rc = cli.main(_train_argv(consortium, principal, site, out))
    err = capsys.readouterr().err
    assert rc == 2
    assert "stopped before reading any data" in err and f"denied by policy {policy}" in err
    assert not (out / "checkpoints").exists()
    events = _events(consortium["c"], out.name)
    denials = [e for e in events if e["decision"] == "deny"]
    assert denials and denials[0]["policy_ids"] == [policy] and denials[0]["principal"] == principal
    assert not [e for e in events if e.get("file", "").endswith(".parquet")], "a data file was read"


def test_expired_claim_stops_the_job(consortium, no_trainer, capsys):
    c = consortium["c"]
    stale = consortium["tmp"] / "stale.json"
    stale.write_text(json.dumps(sites.issue_claim(c, "tokyo", ttl_s=1, now=1_000_000)))
    consortium["claims"]["stale"] = stale
    rc = cli.main(_train_argv(consortium, "lab/trainer", "stale", consortium["tmp"] / "run-stale"))
    assert rc == 2 and "expired" in capsys.readouterr().err


def test_granted_job_trains_and_records_lineage(consortium, capsys):
    out = consortium["tmp"] / "run-ok"
    rc = cli.main(_train_argv(consortium, "lab/trainer", "tokyo", out))
    assert rc == 0, capsys.readouterr().err
    meta = json.loads(next(out.glob("checkpoints/*/checkpoint.json")).read_text())
    lin = meta["lineage"]
    assert lin["owners"] == ["maker"] and lin["principal"] == "lab/trainer" and lin["site"]["id"] == "tokyo"
    assert {d["dataset_id"] for d in lin["datasets"]} == {"maker-toyarm", "maker-toydrive"}
    reads = [e for e in _events(consortium["c"], "run-ok") if e.get("file", "").endswith(".parquet")]
    assert reads and all(e["decision"] == "allow" for e in reads)
    cited = {i for d in lin["datasets"] for i in d["audit_entries"]}
    assert cited, "lineage cites no audit entry"


def test_governed_dataset_without_governed_flag_is_refused(consortium, capsys):
    argv = ["train", "--preset", "debug", "--data", consortium["data"], "--out", str(consortium["tmp"] / "plain"),
            "--steps", "1", "--no-progress"]
    assert cli.main(argv) == 2
    assert "train with --governed" in capsys.readouterr().err


def test_governed_options_need_the_flag(consortium, capsys):
    argv = ["train", "--principal", "lab/trainer", "--preset", "debug", "--data", consortium["data"],
            "--out", str(consortium["tmp"] / "x"), "--no-progress"]
    assert cli.main(argv) == 2
    assert "--principal only apply with --governed" in capsys.readouterr().err
