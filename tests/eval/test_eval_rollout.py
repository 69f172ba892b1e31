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
