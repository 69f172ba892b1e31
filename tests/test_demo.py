"""`genba demo`: the end-to-end quick run, and the stage bookkeeping that makes it re-runnable.

The end-to-end test runs `genba demo --quick` (about 2-3 minutes on 2 cores)
and checks the report's content, not only that files exist: every task is
evaluated in both languages, the two refused accesses are in the audit log
with the policies that refused them, the log verifies, and the checkpoint's
lineage names each owner.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
from rich.console import Console

from genba import cli
from genba.demo import run as demo
from genba.envs.registry import resolve

PNG = b"\x89PNG\r\n\x1a\n"


# ---- stage bookkeeping (fast) ----------------------------------------------------------
def _demo(tmp_path: Path, **kw) -> demo.Demo:
    args = argparse.Namespace(quick=True, budget=None, out=tmp_path / "run", fresh=False, procs=None, **kw)
    cfg = demo.build_config(args)
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    return demo.Demo(cfg, Console(quiet=True))


def test_interrupted_stage_is_redone_and_completed_ones_skipped(tmp_path):
    calls = []

    def ok(name):
        def fn(d):
            calls.append(name)
            return {"ran": name}
        return fn

    def interrupted(d):
        calls.append("b")
        raise KeyboardInterrupt

    d = _demo(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        demo.run_stages(d, (("a", "A", ok("a")), ("b", "B", interrupted), ("c", "C", ok("c"))))
    assert calls == ["a", "b"] and d.state.done("a") and not d.state.done("b")
    d2 = _demo(tmp_path)  # a new process reads the state file back
    demo.run_stages(d2, (("a", "A", ok("a")), ("b", "B", ok("b")), ("c", "C", ok("c"))))
    assert calls == ["a", "b", "b", "c"]
    assert d2.state.summary("c") == {"ran": "c"} and all(d2.state.done(s) for s in "abc")


def test_rerun_with_other_settings_is_refused(tmp_path):
    d = _demo(tmp_path)
    d.state.save()
    args = argparse.Namespace(quick=False, budget=None, out=tmp_path / "run", fresh=False, procs=None)
    with pytest.raises(cli.CLIError, match="--fresh"):
        demo.Demo(demo.build_config(args), Console(quiet=True))


def test_run_made_with_other_embodiment_specs_is_refused(tmp_path):
    d = _demo(tmp_path)
    d.state.doc["specs"]["pmsm"] = {**d.state.doc["specs"]["pmsm"], "control_period": 1.0}
    d.state.save()
    with pytest.raises(cli.CLIError, match=r"pmsm changed since"):
        _demo(tmp_path)


def test_fresh_refuses_to_delete_a_directory_that_is_no_demo_run(tmp_path, capsys):
    victim = tmp_path / "precious"
    victim.mkdir()
    (victim / "thesis.tex").write_text("years of work")
    assert cli.main(["demo", "--quick", "--fresh", "--out", str(victim)]) == 2
    assert "refusing to delete" in capsys.readouterr().err and (victim / "thesis.tex").is_file()


def test_budget_must_be_positive(tmp_path, capsys):
    assert cli.main(["demo", "--quick", "--budget", "0", "--out", str(tmp_path / "x")]) == 2
    assert "--budget" in capsys.readouterr().err


# ---- the end-to-end quick demo --------------------------------------------------------------
@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "quick"
    rc = cli.main(["demo", "--quick", "--out", str(out)])
    assert rc == 0
    return out


def _audit_entries(out: Path) -> tuple[list[dict], dict]:
    from genba.govern import admin
    from genba.govern.consortium import Consortium

    log = admin.audit_log(Consortium(out / "consortium"))
    try:
        return log.entries(), log.verify()
    finally:
        log.close()


def test_report_evaluates_every_task_in_both_languages(quick_run):
    report = (quick_run / "report.md").read_text(encoding="utf-8")
    tasks = [t.id for m in demo.MEMBERS for t in resolve(m.tasks)]
    assert len(tasks) == 16
    for lang in ("en", "ja"):
        res = json.loads((quick_run / f"eval-{lang}" / "results.json").read_text())
        assert res["config"]["lang"] == lang
        assert list(res["tasks"]) == tasks and all(s["episodes"] == 2 for s in res["tasks"].values())
    rows = {line.split("|")[1].strip(): line for line in report.splitlines() if line.startswith("| ")}
    for t in tasks:
        cells = [c.strip() for c in rows[t].split("|")[1:-1]]
        assert len(cells) == 6, f"row of {t} lacks a column: {rows[t]}"  # task, embodiment, expert, en, ja, error
        assert all(0.0 <= float(c) <= 1.0 for c in cells[2:5])
    for emb in ("sawyer", "pmsm", "dc", "jaco"):
        assert emb in rows, f"no per-embodiment row for {emb}"


def test_denied_accesses_are_in_the_audit_log_and_it_verifies(quick_run):
    entries, verified = _audit_entries(quick_run)
    assert verified["tree_size"] == len(entries)
    denials = [e["event"] for e in entries if e["event"].get("decision") == "deny"]
    offshore = [e for e in denials if e.get("site") == demo.FOREIGN_SITE]
    no_grant = [e for e in denials if e.get("principal") == demo.OUTSIDER]
    assert offshore and offshore[0]["policy_ids"] == ["data-residency"]
    assert no_grant and no_grant[0]["policy_ids"] == ["default-deny"]
    for run_id in {e["run_id"] for e in offshore + no_grant}:  # refused before reading a byte
        assert not [e for e in entries if e["event"].get("run_id") == run_id and e["event"].get("file")]
    report = (quick_run / "report.md").read_text(encoding="utf-8")
    assert "**data-residency**" in report and "**default-deny**" in report
    assert f"**Audit log verified**: {len(entries)} entries" in report


def test_lineage_names_each_owner_and_report_has_its_plots(quick_run):
    state = json.loads((quick_run / demo.STATE_FILE).read_text())
    ckpt = Path(state["stages"]["train"]["summary"]["checkpoint"])
    lineage = json.loads((ckpt / "checkpoint.json").read_text())["lineage"]
    assert lineage["owners"] == sorted(m.org for m in demo.MEMBERS)
    assert lineage["site"]["jurisdiction"] == "JP" and lineage["principal"] == demo.TRAINER
    report = (quick_run / "report.md").read_text(encoding="utf-8")
    assert "owners whose data is inside: **automaker, electronics, steelworks**" in report
    for png in ("training_curve.png", "success.png", "tracking.png", "audit.png"):
        assert f"]({png})" in report and (quick_run / png).read_bytes()[:8] == PNG
    serve = state["stages"]["serve"]["summary"]
    assert "skipped" in serve or serve["cycles"] > 0


def test_rerun_skips_completed_stages(quick_run, capsys):
    before = json.loads((quick_run / demo.STATE_FILE).read_text())
    assert cli.main(["demo", "--quick", "--out", str(quick_run)]) == 0
    out = capsys.readouterr().out
    assert out.count("done in an earlier run, skipped") == len(demo.STAGES) - 1  # the report is rewritten
    after = json.loads((quick_run / demo.STATE_FILE).read_text())
    assert after["stages"]["train"] == before["stages"]["train"]
