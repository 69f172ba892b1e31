"""The Sawyer / Meta-World embodiment: spec, Gymnasium conformance, seeding, expert."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from genba.envs import registry
from genba.envs.embodiments import metaworld as mw

TASK = "metaworld/pick-place-v3"


@pytest.fixture(scope="module")
def env():
    e = registry.make_env(TASK, 0)
    yield e
    e.close()


@pytest.fixture(scope="module")
def expert(env):
    return registry.get_task(TASK).make_expert(env)


def _rollout(env, expert, seed: int, n: int) -> np.ndarray:
    obs, _ = env.reset(seed=seed)
    frames = [obs]
    for _ in range(n):
        obs, *_ = env.step(expert.act(obs))
        frames.append(obs)
    return np.stack(frames)


def test_check_env_passes():
    e = registry.make_env("metaworld/reach-v3", 1)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*infinity.*")  # object positions are unbounded, honestly
        check_env(e, skip_render_check=True)


def test_spec_layout():
    spec = mw.SPEC
    assert spec.name == "sawyer" and spec.action_meaning == "end-effector delta"
    assert spec.obs_dim == 39 and spec.action_dim == 4
    assert spec.obs_names[:4] == ("hand_x", "hand_y", "hand_z", "gripper_open")
    assert spec.obs_names[18:22] == ("prev_hand_x", "prev_hand_y", "prev_hand_z", "prev_gripper_open")
    assert spec.obs_names[-3:] == ("goal_x", "goal_y", "goal_z")
    assert spec.safety.ee_obs_slice == (0, 3)
    assert spec.action_low == (-1.0,) * 4 and spec.action_high == (1.0,) * 4
    # the current and previous frames share bounds and units
    assert spec.obs_low[:18] == spec.obs_low[18:36] and spec.obs_units[:18] == spec.obs_units[18:36]


@pytest.mark.parametrize("name", ["hand-insert-v3", "sweep-v3", "door-open-v3"])  # extremes of the goal union
def test_spec_bounds_and_period_match_the_simulator(name):
    sim = mw.build_sim(name)
    assert sim.frame_skip * sim.model.opt.timestep == pytest.approx(mw.SPEC.control_period)
    assert np.all(sim._HAND_SPACE.low == mw.SPEC.obs_low[:3]) and np.all(sim._HAND_SPACE.high == mw.SPEC.obs_high[:3])
    box = sim.sawyer_observation_space  # recomputed: real goal bounds, not zeros
    assert np.all(box.low[-3:] >= mw.SPEC.obs_low[-3:]) and np.all(box.high[-3:] <= mw.SPEC.obs_high[-3:])
    assert np.any(box.high[-3:] != 0.0)
    assert np.all(sim.mocap_low >= mw.SPEC.safety.position_low[:3])
    assert np.all(sim.mocap_high <= mw.SPEC.safety.position_high[:3])
    sim.close()


def test_reset_seed_reproduces_whatever_ran_before(env, expert):
    a = _rollout(env, expert, seed=5, n=15)
    rng = np.random.default_rng(0)
    env.reset(seed=123)
    for _ in range(40):
        env.step(rng.uniform(-1, 1, 4).astype(np.float32))
    b = _rollout(env, expert, seed=5, n=15)
    np.testing.assert_array_equal(a, b)
    c = _rollout(env, expert, seed=6, n=0)
    assert not np.allclose(a[0], c[0])  # object and goal are randomized per seed


def test_make_env_seed_sets_the_first_reset():
    first = [registry.make_env("metaworld/reach-v3", 11).reset()[0] for _ in range(2)]
    np.testing.assert_array_equal(first[0], first[1])
    other = registry.make_env("metaworld/reach-v3", 12).reset()[0]
    assert not np.allclose(first[0][-3:], other[-3:])


def test_goal_observable_and_first_frame_current(env):
    obs, info = env.reset(seed=3)
    assert obs.dtype == np.float32 and obs.shape == (39,)
    np.testing.assert_allclose(obs[-3:], env.sim._target_pos, atol=1e-6)
    np.testing.assert_array_equal(obs[:18], obs[18:36])  # frame stack starts with the current frame
    np.testing.assert_allclose(obs[4:7], env.sim._get_pos_objects()[:3], atol=1e-6)
    assert info["success"] is False


def test_expert_succeeds_and_observations_stay_in_bounds(env, expert):
    obs, _ = env.reset(seed=21)
    box = env.observation_space
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(300):
            obs, reward, terminated, truncated, info = env.step(expert.act(obs))
            assert box.contains(obs) and isinstance(info["success"], bool) and not terminated
            if info["success"]:
                break
    assert info["success"]
    assert not [w for w in caught if "Constant(s) may be too high" in str(w.message)]


def test_truncates_at_max_steps():
    e = mw.SawyerEnv("reach-v3", seed=0, max_steps=4)
    e.reset(seed=0)
    flags = [e.step(np.zeros(4, np.float32))[3] for _ in range(4)]
    assert flags == [False, False, False, True]
    with pytest.raises(ValueError, match="shape"):
        e.step(np.zeros(3, np.float32))


def test_fast_contact_check_matches_upstream(env, expert):
    sim = env.sim
    upstream = type(sim).touching_object
    obj = sim._get_id_main_object()
    obs, _ = env.reset(seed=21)
    seen = set()
    for _ in range(120):
        obs, *_ = env.step(expert.act(obs))
        fast = sim.touching_object(obj)
        assert fast == upstream(sim, obj)
        seen.add(fast)
    assert seen == {False, True}  # the episode exercised both answers


def test_instructions_for_all_fifty_tasks():
    tasks = registry.resolve("mt50")
    assert len({t.instruction_en for t in tasks}) == 50
    japanese = re.compile(r"[\u3040-\u30ff\u4e00-\u9fff]")
    for t in tasks:
        assert t.instruction_en.endswith(".") and t.instruction_ja.endswith("。")
        assert japanese.search(t.instruction_ja), t.id
        assert t.max_steps == 500 and t.stop_after_success == mw.HOLD_STEPS
