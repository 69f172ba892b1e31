"""Electric-drive embodiments: env contract, seeding, success semantics, experts."""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pytest

from genba.data.spec import EmbodimentSpec
from genba.envs import drive_control as dc
from genba.envs import registry
from genba.envs.embodiments import drives as D

TASK_IDS = [t.id for t in D.DRIVE_TASKS]


def rollout(env, policy, seed, max_steps=None):
    """Run one episode; returns (observations, infos)."""
    obs, info = env.reset(seed=seed)
    if hasattr(policy, "reset"):
        policy.reset()
    observations, infos = [obs], [info]
    for _ in range(max_steps or env.task.max_steps):
        act = policy.act(obs) if hasattr(policy, "act") else policy(obs)
        obs, _, term, trunc, info = env.step(act)
        observations.append(obs)
        infos.append(info)
        if term or trunc:
            break
    return np.array(observations), infos


def zero(env):
    return lambda obs: np.zeros(env.action_space.shape, np.float32)


def expert(env):
    return registry._TASKS[env.task.id].make_expert(env)  # registered at import of drives


# ---- registry and specs ---------------------------------------------------------
def test_tasks_registered_with_shared_machine_specs():
    for tid in TASK_IDS:
        task = registry._TASKS[tid]
        assert "drives" in task.groups and task.instruction_ja and task.instruction_en
    assert {"drive/pmsm-current", "drive/pmsm-speed", "drive/dc-current"} <= set(TASK_IDS)
    pmsm, dcm = D.machine_spec("pmsm"), D.machine_spec("dc")
    assert registry._TASKS["drive/pmsm-speed"].spec is pmsm and registry._TASKS["drive/dc-current"].spec is dcm
    assert (pmsm.obs_dim, pmsm.action_dim) != (dcm.obs_dim, dcm.action_dim)
    for spec in (pmsm, dcm):
        assert EmbodimentSpec.from_json(spec.to_json()) == spec
        assert spec.control_period == pytest.approx(1e-4)
        assert "limit" in spec.description and len(spec.safety.max_rate) == spec.action_dim


@pytest.mark.parametrize("task_id", ["drive/pmsm-current", "drive/dc-current"])
def test_gymnasium_check_env(task_id):
    from gymnasium.utils.env_checker import check_env

    env = D.make_drive_env(task_id, seed=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any checker warning fails the test
        check_env(env, skip_render_check=True)
    obs, _ = env.reset(seed=0)
    assert obs.dtype == np.float32 and obs.shape == (env.embodiment.obs_dim,)


# ---- seeding ----------------------------------------------------------------------
def test_reset_with_seed_reproduces_episode():
    env = D.make_drive_env("drive/pmsm-current", seed=11)
    ex = expert(env)
    first, _ = rollout(env, ex, seed=None, max_steps=60)  # first reset takes the construction seed
    again, _ = rollout(env, ex, seed=11, max_steps=60)
    other, _ = rollout(env, ex, seed=12, max_steps=60)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    fresh, _ = rollout(D.make_drive_env("drive/pmsm-current", seed=0), ex, seed=11, max_steps=60)
    np.testing.assert_array_equal(first, fresh)


# ---- info semantics ------------------------------------------------------------------
def test_tracking_error_is_the_shown_reference_minus_next_state():
    env = D.make_drive_env("drive/dc-current", seed=0)
    obs, infos = rollout(env, expert(env), seed=5, max_steps=40)
    names = env.embodiment.obs_names
    ref, state = names.index("ref_i"), names.index("i")
    expected = np.abs(obs[:-1, ref] - obs[1:, state])
    got = np.array([i["tracking_error"] for i in infos[1:]])
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_success_only_at_end_and_under_threshold():
    env = D.make_drive_env("drive/dc-current", seed=0)
    _, infos = rollout(env, expert(env), seed=2)
    assert len(infos) == env.task.max_steps + 1
    assert not any(i["success"] for i in infos[:-1])
    last = infos[-1]
    assert last["success"] == (last["mean_tracking_error"] < env.task.threshold) and last["success"]
    strict = D.DriveEnv(dataclasses.replace(env.task, threshold=0.0), env.embodiment, seed=0)
    _, infos = rollout(strict, expert(strict), seed=2)
    assert not infos[-1]["success"] and not infos[-1]["limit_violation"]


def test_limit_violation_ends_episode_as_failure():
    env = D.make_drive_env("drive/dc-current", seed=0)
    _, infos = rollout(env, lambda obs: np.ones(1, np.float32), seed=1)
    last = infos[-1]
    assert last["limit_violation"] and not last["success"]
    assert len(infos) - 1 < env.task.max_steps
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.zeros(1, np.float32))


# ---- experts ------------------------------------------------------------------------
@pytest.mark.parametrize("task_id", TASK_IDS)
def test_expert_beats_zero_action_by_a_wide_margin(task_id):
    env = D.make_drive_env(task_id, seed=0)
    ex = expert(env)
    for seed in (21,):
        _, e_inf = rollout(env, ex, seed)
        _, z_inf = rollout(env, zero(env), seed)
        e_err, z_err = e_inf[-1]["mean_tracking_error"], z_inf[-1]["mean_tracking_error"]
        assert e_inf[-1]["success"] and not z_inf[-1]["success"]
        assert e_err * 5 < z_err, (task_id, e_err, z_err)
        actions = [ex.act(o) for o in rollout(env, ex, seed, max_steps=5)[0]]
        assert all(env.action_space.contains(a) for a in actions)


# ---- controllers ------------------------------------------------------------------------
def test_predictive_gain_closes_the_chosen_fraction_in_one_period():
    r, l, tau = 0.5, 2e-3, 1e-4
    a = np.exp(-r * tau / l)
    for g in (0.5, 1.0):
        k = dc.predictive_gain(r, l, tau, g)
        i, i_ref = 10.0, 30.0
        u = r * i + k * (i_ref - i)  # no back-EMF
        i_next = a * i + (1 - a) * u / r  # the exact R-L step
        assert i_next - i == pytest.approx(g * (i_ref - i))
    assert dc.predictive_gain(r, l, tau, 0.5) == pytest.approx(l / (2 * tau), rel=0.02)  # ~ technical optimum
    with pytest.raises(ValueError, match="current gain"):
        dc.predictive_gain(r, l, tau, 1.5)


def test_speed_loop_feeds_load_and_inertia_forward_and_clips():
    load = dc.polynomial_load(a=0.01, b=0.01)
    assert load(100.0) == pytest.approx(1.01) and load(-100.0) == pytest.approx(-1.01)
    ctrl = dc.SpeedController(j=0.04, k_t=0.3, t_eq=2e-4, i_max=300.0, load_torque=load)
    # on the reference: only feed-forward (inertia torque of the slope plus the load)
    assert ctrl(100.0, 100.0, d_omega_ref=50.0) == pytest.approx((0.04 * 50.0 + 1.01) / 0.3)
    assert ctrl(100.0, 0.0) == pytest.approx(300.0)  # far off: the current limit


def test_experts_are_functions_of_the_observation():
    # imitation needs this: an expert that has run a whole episode acts like a fresh one on the same frames
    for task_id in ("drive/dc-speed", "drive/pmsm-current"):
        env = D.make_drive_env(task_id, seed=0)
        obs, _ = rollout(env, expert(env), seed=5, max_steps=200)
        used = expert(env)
        for o in obs:  # a whole episode's worth of history, never reset
            used.act(o)
        for k in (150, 151, 152):
            np.testing.assert_array_equal(expert(env).act(obs[k]), used.act(obs[k]))


def test_slope_channel_is_the_shown_references_change():
    env = D.make_drive_env("drive/dc-speed", seed=0)
    obs, _ = rollout(env, expert(env), seed=3, max_steps=300)
    names = env.embodiment.obs_names
    ref, dref = (np.array([o[names.index(n)] for o in obs]) for n in ("ref_omega", "dref_omega"))
    np.testing.assert_allclose(dref[1:], np.diff(ref), atol=1e-6)
    assert np.abs(dref).max() > 0  # the profile did ramp or step within 300 periods


def test_speed_task_shows_the_held_d_current_reference_but_scores_speed_only():
    # field-oriented speed control holds i_d = 0: its reference and error are in the slots the current
    # task uses (so the d-axis feedback a policy learns there applies), and only the speed is scored
    env = D.make_drive_env("drive/pmsm-speed", seed=0)
    obs, infos = rollout(env, lambda o: np.array([-0.05, 0.05], np.float32), seed=2, max_steps=40)
    names = env.embodiment.obs_names
    i_sd, ref, err = (obs[:, names.index(n)] for n in ("i_sd", "ref_i_sd", "err_i_sd"))
    assert np.all(ref == 0.0) and np.abs(i_sd).max() > 0.01  # a wrong d voltage drives i_d off zero ...
    np.testing.assert_allclose(err, -i_sd, atol=1e-7)  # ... and the error channel shows it
    w, ref_w = obs[:, names.index("omega")], obs[:, names.index("ref_omega")]
    np.testing.assert_allclose([i["tracking_error"] for i in infos[1:]], np.abs(ref_w[:-1] - w[1:]), atol=1e-6)
    for name in ("ref_i_sq", "err_i_sq"):  # the q current is the speed loop's to choose: not shown
        assert np.all(obs[:, names.index(name)] == 0.0)


def test_dq_controller_holds_voltage_circle_with_d_priority():
    m = dc.PmsmParams(r_s=0.02, l_d=4e-4, l_q=1e-3, psi_p=0.07, p=3, j_total=0.04, tau=1e-4, u_max=150.0,
                      i_max=300.0)
    ctrl = dc.DqCurrentController(m)
    u = ctrl(np.array([-50.0, 300.0]), np.zeros(2), omega_mech=100.0)
    assert np.hypot(*u) <= 150.0 + 1e-9
    assert u[0] == pytest.approx(-50.0 * dc.predictive_gain(m.r_s, m.l_d, m.tau))  # d gets its full demand first


def test_bad_action_is_refused_with_its_names():
    env = D.make_drive_env("drive/pmsm-current", seed=0)
    env.reset(seed=0)
    with pytest.raises(ValueError, match="u_sd, u_sq"):
        env.step(np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="finite"):
        env.step(np.array([np.nan, 0.0], np.float32))


# ---- observation layout and import cost ---------------------------------------------
@pytest.mark.parametrize("task", D.DRIVE_TASKS, ids=lambda t: t.id)
def test_machine_table_matches_gem(task):
    names, limits, low, tau = D.gem_limits(task)
    assert names == task.machine.state_names
    np.testing.assert_allclose(limits, task.machine.limits, rtol=1e-12)
    assert tau == pytest.approx(D.TAU)
    spec = D.machine_spec(task.machine.name)
    for name, lo in zip(names, low):
        if name in spec.obs_names and name != "torque" and not name.startswith("i"):
            assert spec.obs_low[spec.obs_names.index(name)] == lo, name


@pytest.mark.parametrize("task_id", ["drive/pmsm-current", "drive/dc-speed"])
def test_observation_hides_applied_voltage_but_keeps_states(task_id):
    # the previous command must not be visible (copycat policies), the measured states must
    env = D.make_drive_env(task_id, seed=0)
    names = env.embodiment.obs_names
    assert not {"u", "u_a", "u_b", "u_c", "u_sd", "u_sq"} & set(names)
    obs, _ = env.reset(seed=4)
    ex = expert(env)
    for _ in range(20):
        obs, *_ = env.step(ex.act(obs))
    m = env.task.machine
    for n in m.observed:
        j = m.state_names.index(n)
        assert obs[names.index(n)] == pytest.approx(np.clip(env._state[j], -4, 4), abs=1e-6), n


def test_registry_load_does_not_import_gym_electric_motor():
    import subprocess
    import sys

    code = ("import sys, genba.envs.embodiments.drives as D; D.machine_spec('pmsm'); "
            "sys.exit(int('gym_electric_motor' in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0
