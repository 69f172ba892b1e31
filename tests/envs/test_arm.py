"""Kinova Jaco arm: spec, Gymnasium API, seeding, joint limits, expert and its safety envelope."""

from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "disable")

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from genba.data.spec import EmbodimentSpec
from genba.envs import registry
from genba.envs.embodiments import jaco

TASKS = ("arm/jaco-reach", "arm/jaco-push")


def rollout(task_id: str, seed: int):
    """Run the expert for a full episode; return stacked obs, actions and the last info."""
    task = registry.get_task(task_id)
    env = task.make_env(seed)
    expert = task.make_expert(env)
    obs, info = env.reset()
    expert.reset()
    observations, actions, infos = [obs], [], [info]
    truncated = False
    while not truncated:
        act = expert.act(obs)
        obs, _, terminated, truncated, info = env.step(act)
        assert not terminated
        observations.append(obs)
        actions.append(act)
        infos.append(info)
    return np.array(observations), np.array(actions), infos


# ---- spec ------------------------------------------------------------------
def test_tasks_registered_in_arms_group_with_one_spec():
    arms = registry.groups()["arms"]
    for tid in TASKS:
        assert tid in arms
        task = registry.get_task(tid)
        assert task.spec.name == "jaco" and task.spec is jaco.SPEC
        assert task.instruction("en") and task.instruction("ja")
        assert task.instruction("en") != task.instruction("ja")
    assert registry.specs()["jaco"] is jaco.SPEC


def test_spec_matches_model_and_env():
    spec = jaco.SPEC
    model = jaco.build_model()
    env = jaco.JacoEnv("push", seed=0)
    assert spec.action_dim == 6 == env.action_space.shape[0] == model.nu
    assert spec.obs_dim == env.observation_space.shape[0]
    np.testing.assert_allclose(env.action_space.low, spec.action_low, rtol=1e-6)
    np.testing.assert_allclose(env.observation_space.high, np.float32(spec.obs_high), rtol=1e-6)
    # position limits: the model's joint ranges, and the observation entries they name
    for axis, name in enumerate(jaco.JOINTS):
        lo, hi = model.joint(name).range
        idx = spec.safety.position_obs_index[axis]
        assert spec.obs_names[idx] == f"{name}.pos"
        assert spec.safety.position_low[axis] == pytest.approx(lo)
        assert spec.safety.position_high[axis] == pytest.approx(hi)
        assert (spec.obs_low[idx], spec.obs_high[idx]) == pytest.approx((lo, hi))
        assert spec.action_high[axis] == pytest.approx(model.actuator(name).ctrlrange[1])
    a, b = spec.safety.ee_obs_slice
    assert spec.obs_names[a:b] == ("ee.x", "ee.y", "ee.z")
    assert spec.control_period == pytest.approx(model.opt.timestep * jaco.SUBSTEPS)
    assert spec.fps == pytest.approx(20.0)
    assert EmbodimentSpec.from_json(spec.to_json()) == spec


def test_observation_ee_is_the_tool_tip_site():
    env = jaco.JacoEnv("reach", seed=3)
    obs, _ = env.reset()
    a, b = jaco.SPEC.safety.ee_obs_slice
    np.testing.assert_allclose(obs[a:b], env.data.site("ee").xpos, atol=1e-6)


@pytest.mark.parametrize("task", ["reach", "push"])
def test_relative_channels_are_differences_of_the_absolute_ones(task):
    spec = jaco.SPEC
    names = spec.obs_names
    env = jaco.JacoEnv(task, seed=5)
    obs, _ = env.reset()
    for _ in range(3):  # after motion too, not only at reset
        obs, *_ = env.step(env.action_space.high * 0.5)
    point = {p: obs[[names.index(f"{p}.{c}") for c in "xyz"]] for p in ("ee", "object", "goal")}
    for frm, to in (("ee", "goal"), ("ee", "object"), ("object", "goal")):
        idx = [names.index(f"{frm}_to_{to}.{c}") for c in "xyz"]
        np.testing.assert_allclose(obs[idx], point[to] - point[frm], atol=1e-6)
        assert all(spec.obs_units[i] == "m" for i in idx)
        # the spec's bounds hold for what the env reports
        assert np.all(obs[idx] >= np.array(spec.obs_low)[idx]) and np.all(obs[idx] <= np.array(spec.obs_high)[idx])
    np.testing.assert_allclose(point["goal"], env._goal, atol=1e-6)
    for sl, diff in ((jaco.EE_TO_GOAL_SLICE, "ee_to_goal"), (jaco.EE_TO_OBJ_SLICE, "ee_to_object"),
                     (jaco.OBJ_TO_GOAL_SLICE, "object_to_goal")):
        assert names[slice(*sl)] == tuple(f"{diff}.{c}" for c in "xyz")


# ---- Gymnasium API and seeding -----------------------------------------------
@pytest.mark.filterwarnings("ignore:.*Box observation space (minimum|maximum) value")
@pytest.mark.parametrize("task_id", TASKS)
def test_check_env(task_id):
    check_env(registry.make_env(task_id, 0), skip_render_check=True)


@pytest.mark.parametrize("task_id", TASKS)
def test_reset_is_reproducible_and_seed_dependent(task_id):
    env = registry.make_env(task_id, 11)
    first, _ = env.reset()
    again, _ = registry.make_env(task_id, 11).reset()
    np.testing.assert_array_equal(first, again)  # make_env(seed) alone fixes the first reset
    a, _ = env.reset(seed=5)
    b, _ = env.reset(seed=5)
    np.testing.assert_array_equal(a, b)
    c, _ = env.reset(seed=6)
    assert not np.array_equal(a, c)
    assert a.dtype == np.float32 and a.shape == (jaco.SPEC.obs_dim,)


def test_steps_are_deterministic_and_truncate_at_max_steps():
    runs = []
    for _ in range(2):
        env = jaco.JacoEnv("reach", seed=2)
        obs, _ = env.reset()
        rng = np.random.default_rng(0)
        trace = []
        for t in range(env.max_steps):
            obs, _, _, trunc, info = env.step(env.action_space.low + rng.random(6) * 2 * env.action_space.high)
            assert isinstance(info["success"], bool)
            assert trunc == (t == env.max_steps - 1)
            trace.append(obs)
        runs.append(np.array(trace))
    np.testing.assert_array_equal(runs[0], runs[1])


# ---- joint limits ----------------------------------------------------------------
@pytest.mark.parametrize("toward", ["low", "high"])
def test_joint_limits_hold_under_full_speed_commands(toward):
    env = jaco.JacoEnv("reach", seed=0)
    env.reset()
    lo, hi = jaco.JOINT_LOW, jaco.JOINT_HIGH
    start = lo + 0.1 if toward == "low" else hi - 0.1
    env.data.qpos[:6] = start
    env.data.act[:6] = start
    sign = -1.0 if toward == "low" else 1.0
    qs = []
    for _ in range(20):  # 1 s at full speed: far enough to hit every limit
        obs, *_ = env.step(sign * jaco.MAX_VEL)
        qs.append(obs[:6])
    qs = np.array(qs)
    assert np.all(qs >= lo - 0.01) and np.all(qs <= hi + 0.01)
    # the integrated servo targets ran into the limits and stopped there (the arm
    # itself may stop earlier, against the table)
    np.testing.assert_allclose(env.data.act[:6], lo if toward == "low" else hi)


def test_out_of_range_and_bad_actions():
    env = jaco.JacoEnv("reach", seed=0)
    env.reset()
    env.step(np.full(6, 100.0, np.float32))  # clipped to the velocity limits, not an error
    assert np.all(np.abs(env.data.ctrl) <= jaco.MAX_VEL + 1e-9)
    with pytest.raises(ValueError, match="finite"):
        env.step(np.full(6, np.nan))
    with pytest.raises(ValueError, match="task"):
        jaco.JacoEnv("stack")


# ---- expert ---------------------------------------------------------------------
@pytest.mark.parametrize("task_id,seeds", [("arm/jaco-reach", (0, 1, 2)), ("arm/jaco-push", (0, 1, 2, 3))])
def test_expert_succeeds_and_respects_the_safety_spec(task_id, seeds):
    spec = jaco.SPEC
    s = spec.safety
    dt = spec.control_period
    for seed in seeds:
        obs, act, infos = rollout(task_id, seed)
        assert infos[-1]["success"], f"{task_id} seed {seed}: final distance {infos[-1]['distance']:.3f}"
        assert np.all(act >= np.array(spec.action_low)) and np.all(act <= np.array(spec.action_high))
        # rate / accel / jerk of the command, with the zero command before the first step
        hist = np.vstack([np.zeros((3, 6)), act]).astype(np.float64)
        for n, limit in ((1, s.max_rate), (2, s.max_accel), (3, s.max_jerk)):
            assert np.all(np.abs(np.diff(hist, n, axis=0)) / dt**n <= np.array(limit) + 1e-6), f"order {n}"
        q = obs[:, list(s.position_obs_index)]
        assert np.all(q >= np.array(s.position_low) - 1e-3) and np.all(q <= np.array(s.position_high) + 1e-3)
        a, b = s.ee_obs_slice
        for lo, hi in s.keepout_boxes:
            inside = np.all((obs[:, a:b] > np.array(lo)) & (obs[:, a:b] < np.array(hi)), axis=1)
            assert not inside.any(), f"{task_id} seed {seed}: tool tip entered a keep-out box"


def test_expert_acts_from_the_observation_only():
    env = jaco.JacoEnv("push", seed=4)
    obs, _ = env.reset()
    with_env = jaco.JacoExpert("push", env.model)
    standalone = jaco.JacoExpert("push")  # no access to the env's state at all
    for _ in range(30):
        a1, a2 = with_env.act(obs), standalone.act(obs)
        np.testing.assert_array_equal(a1, a2)
        obs, *_ = env.step(a1)
    assert np.abs(a1).max() > 0.01  # it is actually moving


def test_tasks_pickle_for_worker_processes():
    import pickle

    task = pickle.loads(pickle.dumps(registry.get_task("arm/jaco-push")))
    env = task.make_env(7)
    np.testing.assert_array_equal(env.reset()[0], registry.make_env("arm/jaco-push", 7).reset()[0])
    assert isinstance(task.make_expert(env), jaco.JacoExpert)
