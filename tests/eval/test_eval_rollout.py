"""Closed-loop harness: the batched policy, stop rules, reports, the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

from genba.cli import main
from genba.envs.registry import get_task
from genba.envs.seeds import is_train_seed
from genba.eval.rollout import EvalConfig, evaluate, load_batched_policy, plan_jobs, resolve_execution
from genba.model.policy import load_policy

TASKS = ("metaworld/reach-v3", "drive/pmsm-current")  # the debug_checkpoint's embodiments (conftest)


@pytest.mark.parametrize("execute", ["ensemble", "replan"])
def test_batched_policy_equals_separate_policies(debug_checkpoint, execute):
    cfg = EvalConfig(checkpoint=str(debug_checkpoint), tasks=TASKS, execute=execute)
    batched = load_batched_policy(str(debug_checkpoint), cfg.execute, cfg.replan_every)
    singles = [load_policy(debug_checkpoint, execute=execute) for _ in range(3)]
    spec = get_task("drive/pmsm-current").spec
    text = get_task("drive/pmsm-current").instruction("ja")
    batched.reset(3, spec.name, text)
    rng = np.random.default_rng(0)
    for _ in range(7):  # longer than the debug chunk: ensembles and replans happen
        obs = rng.normal(size=(3, spec.obs_dim)).astype(np.float32)
        got = batched.act(obs)
        want = np.stack([p.infer({"embodiment": spec.name, "state": o, "instruction": text})
                         for p, o in zip(singles, obs)])
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_batched_history_keeps_a_copy_of_each_frame(debug_checkpoint):
    """run_lockstep writes every step's observations into one reused buffer: the history must not alias it."""
    batched = load_batched_policy(str(debug_checkpoint), "ensemble", None)
    single = load_policy(debug_checkpoint, execute="ensemble")
    task = get_task("drive/pmsm-current")
    batched.reset(1, task.spec.name, task.instruction("en"))
    buf = np.zeros((1, task.spec.obs_dim), np.float32)
    rng = np.random.default_rng(1)
    for _ in range(4):
        buf[0] = rng.normal(size=task.spec.obs_dim)
        got = batched.act(buf)[0]
        obs = {"embodiment": task.spec.name, "state": buf[0].copy(), "instruction": task.instruction("en")}
        want = single.infer(obs)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_jobs_use_evaluation_seeds_only():
    jobs = plan_jobs(EvalConfig(checkpoint="expert", tasks=TASKS, episodes=7, lockstep=3))
    assert [len(eps) for _, _, eps in jobs] == [3, 3, 1, 3, 3, 1]
    seeds = [s for _, _, eps in jobs for _, s in eps]
    assert len(set(seeds)) == len(seeds) and not any(is_train_seed(s) for s in seeds)


def test_evaluates_a_checkpoint_and_writes_the_report(debug_checkpoint, tmp_path):
    cfg = EvalConfig(checkpoint=str(debug_checkpoint), tasks=TASKS, episodes=2, workers=1, lockstep=2, max_steps=12)
    res = evaluate(cfg, tmp_path, progress=False)
    assert set(res["tasks"]) == set(TASKS) and res["overall"]["episodes"] == 4
    for ep in res["episodes"]:
        assert 1 <= ep["length"] <= 12 and not is_train_seed(ep["seed"])
    assert res["tasks"]["drive/pmsm-current"]["mean_tracking_error"] > 0
    assert res["tasks"]["metaworld/reach-v3"]["mean_tracking_error"] is None
    assert set(res["embodiments"]) == {"sawyer", "pmsm"}
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk["mean_task_success"] == res["mean_task_success"]
    md = (tmp_path / "results.md").read_text()
    assert "drive/pmsm-current" in md and "95% CI" in md
    assert (tmp_path / "success.png").stat().st_size > 0
    assert (tmp_path / "tracking-drive_pmsm-current.png").stat().st_size > 0


def test_metaworld_episodes_end_at_first_success():
    cfg = EvalConfig(checkpoint="expert", tasks=("metaworld/reach-v3",), episodes=2, workers=1, lockstep=2)
    res = evaluate(cfg, None, progress=False)
    lengths = [e["length"] for e in res["episodes"]]
    assert res["tasks"]["metaworld/reach-v3"]["success_rate"] == 1.0
    assert max(lengths) < get_task("metaworld/reach-v3").max_steps


def test_cli_runs_experts_in_worker_processes(tmp_path, capsys):
    rc = main(["eval", "expert", "--tasks", "drive/pmsm-current", "--episodes", "2", "--workers", "2",
               "--lockstep", "1", "--max-steps", "40", "--out", str(tmp_path), "--no-progress"])
    assert rc == 0
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["overall"]["episodes"] == 2 and res["config"]["workers"] == 2
    assert "mean task success" in capsys.readouterr().out


def test_cli_refuses_tasks_the_checkpoint_cannot_drive(debug_checkpoint, tmp_path, capsys):
    rc = main(["eval", str(debug_checkpoint), "--tasks", "arm/jaco-reach", "--episodes", "1", "--out", str(tmp_path)])
    assert rc == 2
    assert "jaco" in capsys.readouterr().err


def test_cli_names_an_unknown_task(tmp_path, capsys):
    assert main(["eval", "expert", "--tasks", "metaworld/reech-v3", "--out", str(tmp_path)]) == 2
    assert "reach-v3" in capsys.readouterr().err


def test_auto_execution_replans_fast_machines_every_step_and_ensembles_the_rest():
    auto = EvalConfig(checkpoint="expert", tasks=TASKS)
    assert auto.execute == "auto"
    assert resolve_execution(auto, get_task("drive/pmsm-current").spec) == ("replan", 1)  # 10 kHz
    assert resolve_execution(auto, get_task("metaworld/reach-v3").spec) == ("ensemble", None)  # 80 Hz
    fixed = EvalConfig(checkpoint="expert", tasks=TASKS, execute="replan", replan_every=3)
    assert resolve_execution(fixed, get_task("drive/pmsm-current").spec) == ("replan", 3)
    with pytest.raises(ValueError, match="execute 'sometimes'"):
        EvalConfig(checkpoint="expert", tasks=TASKS, execute="sometimes")


def test_instructions_cycle_over_episodes(tmp_path):
    """--instructions: episode k speaks phrasing k mod n on the seeds it has without; results say which."""
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"drive/pmsm-current": {"en": ["Track the currents.", "Follow the dq refs."]}}))
    cfg = EvalConfig(checkpoint="expert", tasks=("drive/pmsm-current",), episodes=5, lockstep=2,
                     instructions=str(path), max_steps=3, workers=1)
    jobs = plan_jobs(cfg)
    plain = plan_jobs(EvalConfig(checkpoint="expert", tasks=cfg.tasks, episodes=5, lockstep=2))
    by_k = {k: job[3] for job in jobs for k, _ in job[2]}
    assert by_k == {0: "Track the currents.", 1: "Follow the dq refs.", 2: "Track the currents.",
                    3: "Follow the dq refs.", 4: "Track the currents."}
    assert sorted(s for j in jobs for _, s in j[2]) == sorted(s for j in plain for _, s in j[2])
    res = evaluate(cfg, tmp_path / "out", progress=False)
    assert {e["instruction"] for e in res["episodes"]} == {"Track the currents.", "Follow the dq refs."}
    per = res["phrasings"]["drive/pmsm-current"]
    assert per["Track the currents."]["episodes"] == 3 and per["Follow the dq refs."]["episodes"] == 2
    assert "Per phrasing" in (tmp_path / "out" / "results.md").read_text(encoding="utf-8")


def test_heldout_set_by_name_and_bad_files(tmp_path):
    jobs = plan_jobs(EvalConfig(checkpoint="expert", tasks=("metaworld/reach-v3",), episodes=4, lang="ja",
                                instructions="heldout"))
    from genba.envs.phrasings import load

    assert {j[3] for j in jobs} == set(load("heldout")["metaworld/reach-v3"]["ja"])
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"metaworld/reach-v3": {"en": []}}))
    with pytest.raises(ValueError, match="'metaworld/reach-v3' 'en': expected a non-empty list"):
        plan_jobs(EvalConfig(checkpoint="expert", tasks=("metaworld/reach-v3",), instructions=str(bad)))
    bad.write_text(json.dumps({"metaworld/push-v3": {"en": ["Push it."]}}))
    with pytest.raises(ValueError, match="no phrasings for task 'metaworld/reach-v3'"):
        plan_jobs(EvalConfig(checkpoint="expert", tasks=("metaworld/reach-v3",), instructions=str(bad)))
    # the CLI: exit 2 before any episode
    assert main(["eval", "expert", "--tasks", "reach-v3", "--instructions", str(tmp_path / "nope.json"),
                 "--out", str(tmp_path / "o"), "--no-progress"]) == 2
