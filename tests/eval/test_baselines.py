"""The per-task MLP baseline: sizing, a few training steps, save/load, the policy, eval on a baseline dir."""

from __future__ import annotations

import json

import numpy as np
import pytest

from genba.data.layout import Episode, write_dataset
from genba.envs.registry import get_task
from genba.envs.seeds import eval_seed
from genba.eval.baselines import load_baseline_policy
from genba.eval.rollout import EvalConfig, run_job
from genba.model.baseline import BaselineError, TaskMLP, check_baseline_tasks, is_baseline, load_baseline
from genba.train.baseline import BaselineConfig, match_widths, mlp_params, train_baseline

TASKS = ("drive/dc-current", "drive/dc-speed")


@pytest.fixture(scope="module")
def dc_dataset(tmp_path_factory):
    """Two dc tasks, random frames inside the spec's limits (only shapes and plumbing matter here)."""
    spec = get_task(TASKS[0]).spec
    rng = np.random.default_rng(0)
    lo, hi = np.asarray(spec.action_low), np.asarray(spec.action_high)
    eps = [Episode(rng.normal(size=(24, spec.obs_dim)).astype(np.float32),
                   rng.uniform(lo, hi, size=(24, spec.action_dim)).astype(np.float32), task_index=k % 2, seed=k)
           for k in range(4)]
    return write_dataset(tmp_path_factory.mktemp("data") / "dc", eps, spec, [get_task(t) for t in TASKS])


@pytest.fixture(scope="module")
def baseline_dir(dc_dataset, tmp_path_factory):
    cfg = BaselineConfig(tasks=TASKS, target_params=60_000, minutes=0.2, history=2, chunk=4, max_steps=3,
                         batch_size=16)
    out = tmp_path_factory.mktemp("baseline")
    train_baseline(cfg, [str(dc_dataset)], out, progress=False, spec_of=lambda t: get_task(t).spec)
    return out


@pytest.mark.parametrize("depth", [1, 3])
def test_param_formula_is_exact_and_widths_match_the_target(depth):
    assert mlp_params(78, 32, 50, depth) == sum(p.numel() for p in TaskMLP(78, 32, 50, depth).parameters())
    dims = [(78, 32)] * 10 + [(40, 16), (40, 16), (16, 8), (16, 8), (42, 48), (42, 48)]
    for target in (200_000, 2_501_864):
        widths = match_widths(dims, target, depth)
        total = sum(mlp_params(i, o, w, depth) for (i, o), w in zip(dims, widths))
        assert abs(total - target) / target < 0.02 and max(widths) - min(widths) <= 1


def test_trains_saves_and_loads(baseline_dir):
    assert is_baseline(baseline_dir)
    manifest = json.loads((baseline_dir / "baseline.json").read_text())
    assert manifest["kind"] == "per-task-mlp" and [t["id"] for t in manifest["tasks"]] == list(TASKS)
    assert abs(manifest["total_params"] - 60_000) / 60_000 < 0.02
    assert all(t["steps"] == 3 and t["params"] > 0 for t in manifest["tasks"])
    mlps, loaded = load_baseline(baseline_dir)
    assert sum(p.numel() for m in mlps.values() for p in m.parameters()) == manifest["total_params"]
    assert set(loaded["stats"]) == {"dc"}
    check_baseline_tasks(baseline_dir, TASKS)
    with pytest.raises(BaselineError, match="reach-v3"):
        check_baseline_tasks(baseline_dir, ("metaworld/reach-v3",))


def test_policy_picks_the_task_by_instruction(baseline_dir):
    policy = load_baseline_policy(baseline_dir)
    task = get_task(TASKS[1])
    spec = task.spec
    outs = []
    for text in (task.instruction("en"), task.instruction("ja"), task.id):
        policy.reset(3, spec.name, text)
        assert policy.task == TASKS[1]
        obs = np.random.default_rng(1).normal(size=(3, spec.obs_dim)).astype(np.float32)
        outs.append(np.stack([policy.act(obs) for _ in range(6)]))  # past the chunk: ensembling
        assert outs[-1].shape == (6, 3, spec.action_dim) and np.isfinite(outs[-1]).all()
    np.testing.assert_allclose(outs[0], outs[1])  # en and ja drive the same MLP
    policy.reset(1, spec.name, get_task(TASKS[0]).instruction("en"))
    assert policy.task == TASKS[0]
    with pytest.raises(BaselineError, match="names no task"):
        policy.reset(1, spec.name, "Pick up the puck.")


def test_eval_runs_a_baseline_directory(baseline_dir):
    cfg = EvalConfig(checkpoint=str(baseline_dir), tasks=(TASKS[0],), episodes=1, workers=1, max_steps=5)
    [result] = run_job((cfg, TASKS[0], [(0, eval_seed(TASKS[0], 0, 0))]))
    # an untrained MLP may end the episode early on a limit violation: only the plumbing is checked
    assert result.task == TASKS[0] and 1 <= result.length <= 5 and result.tracking_error is not None


def test_refuses_tasks_missing_from_the_data(dc_dataset, tmp_path):
    cfg = BaselineConfig(tasks=("drive/dc-current", "drive/pmsm-current"), target_params=10_000, max_steps=1)
    with pytest.raises(BaselineError, match="pmsm-current"):
        train_baseline(cfg, [str(dc_dataset)], tmp_path, progress=False)


def test_truncated_weights_fail_clearly(baseline_dir, tmp_path):
    broken = tmp_path / "b"
    broken.mkdir()
    (broken / "baseline.json").write_text((baseline_dir / "baseline.json").read_text())
    (broken / "model.safetensors").write_bytes((baseline_dir / "model.safetensors").read_bytes()[:100])
    with pytest.raises(BaselineError, match="model.safetensors"):
        load_baseline(broken)
