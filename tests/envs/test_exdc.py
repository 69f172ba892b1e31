"""Externally excited DC motor: a held-out drive with its own spec, env contract and PI expert."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from genba.data.spec import EmbodimentSpec
from genba.envs import registry
from genba.envs.embodiments import drives as D
from genba.envs.embodiments import exdc as X

TASK_IDS = [t.id for t in X.EXDC_TASKS]


def rollout(env, policy, seed, max_steps=None):
    """Run one episode; returns (observations, actions, infos)."""
    obs, info = env.reset(seed=seed)
    if hasattr(policy, "reset"):
        policy.reset()
    observations, actions, infos = [obs], [], [info]
    for _ in range(max_steps or env.task.max_steps):
        act = policy.act(obs) if hasattr(policy, "act") else policy(obs)
        obs, _, term, trunc, info = env.step(act)
        observations.append(obs)
        actions.append(act)
        infos.append(info)
        if term or trunc:
            break
    return np.array(observations), np.array(actions), infos


def expert(env):
    return registry._TASKS[env.task.id].make_expert(env)


# ---- registry and spec ------------------------------------------------------------
def test_registered_in_its_own_group_and_held_out_of_the_pretraining_mixture():
    groups = registry.groups()
    assert groups["exdc"] == TASK_IDS and set(TASK_IDS) <= set(groups["all"])
    pretraining = {t.id for t in registry.resolve("mt10,drives,arms")}
    assert not pretraining & set(TASK_IDS)
    assert not any(t.embodiment == "exdc" for t in registry.resolve("drives"))
    for tid in TASK_IDS:
        task = registry._TASKS[tid]
        assert task.spec is X.exdc_spec() and task.groups == ("exdc",)
        assert task.instruction_en and task.instruction_ja and task.instruction_en != task.instruction_ja


def test_spec_is_consistent_and_differs_from_the_dc_motor():
    spec, dc = X.exdc_spec(), D.machine_spec("dc")
    assert EmbodimentSpec.from_json(spec.to_json()) == spec
    assert spec.action_names == ("u_a", "u_e") and dc.action_dim == 1
    assert spec.obs_dim != dc.obs_dim and spec.name != dc.name
    assert spec.control_period == pytest.approx(1e-4)
    for name in ("i_a", "i_e", "ref_i_a", "ref_i_e", "err_i_a", "err_i_e", "speed_mode"):
        assert name in spec.obs_names
    assert not {"u_a", "u_e"} & set(spec.obs_names)  # applied voltages stay out (copycat policies)
    for limits in (spec.safety.max_rate, spec.safety.max_accel, spec.safety.max_jerk):
        assert len(limits) == spec.action_dim and min(limits) > 0
    assert len(spec.obs_units) == len(spec.obs_low) == len(spec.obs_high) == spec.obs_dim
    assert "210 A" in spec.description


def test_spec_limits_match_gem():
    for task in X.EXDC_TASKS:
        names, limits, low, tau = D.gem_limits(task)
        assert names == task.machine.state_names and tau == pytest.approx(D.TAU)
        np.testing.assert_allclose(limits, task.machine.limits, rtol=1e-9)


# ---- env ------------------------------------------------------------------------------
def test_gymnasium_check_env_and_shapes():
    from gymnasium.utils.env_checker import check_env

    env = X.make_exdc_env("drive/exdc-current", seed=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any checker warning fails the test
        check_env(env, skip_render_check=True)
    spec = env.embodiment
    obs, _ = env.reset(seed=0)
    assert obs.dtype == np.float32 and obs.shape == (spec.obs_dim,)
    obs, reward, term, trunc, info = env.step(np.zeros(2, np.float32))
    assert obs.shape == (spec.obs_dim,) and env.observation_space.contains(obs)
    assert reward == -info["tracking_error"] and not (term or trunc)
    with pytest.raises(ValueError, match="u_a, u_e"):
        env.step(np.zeros(1, np.float32))  # the DC motor's one-voltage action is refused


def test_speed_task_starts_with_the_field_on():
    env = X.make_exdc_env("drive/exdc-speed", seed=0)
    obs, _ = env.reset(seed=4)
    names = env.embodiment.obs_names
    assert obs[names.index("speed_mode")] == 1.0
    assert obs[names.index("i_e")] * 210.0 == pytest.approx(X.I_E_NOMINAL, rel=1e-4)
    # the held field current is the reference of the field channel (its error ~0 at the start)
    assert obs[names.index("ref_i_e")] * 210.0 == pytest.approx(X.I_E_NOMINAL, rel=1e-6)
    assert obs[names.index("err_i_e")] == pytest.approx(obs[names.index("ref_i_e")] - obs[names.index("i_e")])
    assert obs[names.index("ref_i_a")] == 0.0 and obs[names.index("err_i_a")] == 0.0


# ---- expert -----------------------------------------------------------------------------
def test_current_expert_tracks_both_currents_and_zero_action_does_not():
    env = X.make_exdc_env("drive/exdc-current", seed=0)
    ex = expert(env)
    obs, acts, infos = rollout(env, ex, seed=2)
    _, _, zero = rollout(env, lambda o: np.zeros(2, np.float32), seed=2)
    last = infos[-1]
    assert last["success"] and not last["limit_violation"] and len(infos) == env.task.max_steps + 1
    assert last["mean_tracking_error"] * 10 < zero[-1]["mean_tracking_error"] and not zero[-1]["success"]
    names = env.embodiment.obs_names
    for q in ("i_a", "i_e"):  # each current on its own reference, not just their mean
        err = np.abs(obs[:-1, names.index(f"ref_{q}")] - obs[1:, names.index(q)])
        assert err.mean() < env.task.threshold, q
    assert np.ptp(obs[:, names.index("ref_i_e")]) > 0.02  # the field reference really moves
    assert all(env.action_space.contains(a) for a in acts)


def test_speed_expert_succeeds_holding_the_field():
    env = X.make_exdc_env("drive/exdc-speed", seed=0)
    obs, acts, infos = rollout(env, expert(env), seed=7)
    assert infos[-1]["success"] and infos[-1]["mean_tracking_error"] < env.task.threshold
    i_e = obs[:, env.embodiment.obs_names.index("i_e")] * 210.0
    assert np.abs(i_e - X.I_E_NOMINAL).max() < 0.05  # A: the field loop starts settled, no sag
    assert np.ptp(acts[:, 1]) < 1e-3 and np.ptp(acts[:, 0]) > 0.05


def test_armature_loop_feeds_back_emf_forward():
    c = X.ExDcCurrentController(r_a=0.016, l_a=1.9e-5, r_e=0.16, l_e=5.4e-3, l_e_prime=1.7e-3, tau=1e-4,
                                u_max=60.0)
    u = c(np.array([50.0, 100.0]), np.array([50.0, 100.0]), omega=100.0)  # on reference: only feed-forward
    assert u == pytest.approx([1.7e-3 * 100.0 * 100.0 + 0.016 * 50.0, 0.16 * 100.0])
    u = c(np.array([50.0, 500.0]), np.array([50.0, 100.0]), omega=0.0)
    assert u[1] == pytest.approx(60.0)  # each converter saturates on its own
