"""The shield's guarantees: limits on every command and derivative, feasibility, watchdog, e-stop."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from genba.serve.shield import ManualClock, SafetyShield, ShieldConfig
from tests.serve.conftest import toy_spec

SPEC = toy_spec()
DT = SPEC.control_period
LO, HI = np.array(SPEC.action_low), np.array(SPEC.action_high)
R, A, J = (np.array(x) for x in (SPEC.safety.max_rate, SPEC.safety.max_accel, SPEC.safety.max_jerk))


def check_limits(cmds: np.ndarray, start: np.ndarray) -> None:
    """Every command inside [low, high]; every discrete derivative inside its limit."""
    u = np.vstack([start, start, start, cmds])  # the shield starts at rest at `start`
    assert np.all(u >= LO - 1e-12) and np.all(u <= HI + 1e-12)
    d1 = np.diff(u, axis=0) / DT
    d2 = np.diff(d1, axis=0) / DT
    d3 = np.diff(d2, axis=0) / DT
    eps = 1e-9
    assert np.all(np.abs(d1) <= R * (1 + eps) + 1e-9), np.abs(d1).max(0)
    assert np.all(np.abs(d2) <= A * (1 + eps) + 1e-7), np.abs(d2).max(0)
    assert np.all(np.abs(d3) <= J * (1 + eps) + 1e-4), np.abs(d3).max(0)


wild = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([1e300, -1e300, 1.0, -1.0, 0.0]))
actions = st.lists(st.lists(wild, min_size=3, max_size=3), min_size=1, max_size=60)
obs_value = st.one_of(st.floats(-2, 2), st.just(float("nan")), st.just(float("inf")))
observations = st.lists(st.one_of(st.none(), st.lists(obs_value, min_size=5, max_size=5)), min_size=1, max_size=60)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(actions, observations, st.lists(st.booleans(), min_size=1, max_size=60))
def test_commands_never_exceed_limits(acts, obss, flips):
    sh = SafetyShield(SPEC, ShieldConfig(deadline_s=0.05))
    out = []
    for k, a in enumerate(acts):
        a = np.asarray(a)
        if flips[k % len(flips)]:
            a = -a  # sign flips between consecutive outputs
        out.append(sh.step(a, obss[k % len(obss)]))
    check_limits(np.array(out), sh.stop_value)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["step", "estop", "bad_reset", "reset_episode"]),
                          st.lists(st.floats(-5, 5), min_size=3, max_size=3)), min_size=1, max_size=40))
def test_latched_estop_never_releases_without_authenticated_reset(ops):
    sh = SafetyShield(SPEC, reset_verifier=lambda c: c == "good")
    latched = False
    for op, a in ops:
        if op == "estop":
            sh.estop("test")
            latched = True
        elif op == "bad_reset":
            assert sh.clear_estop("wrong") is (not latched)
        elif op == "reset_episode":
            sh.reset()
        else:
            sh.step(a, [0.0] * 5)
        assert sh.latched == latched
    if latched:
        for _ in range(100):  # a latched shield ramps to the stop value and holds there
            u = sh.step([1.0, 1.0, 1.0], [0.0] * 5)
        assert np.allclose(u, sh.stop_value) and sh.at_rest
        assert sh.clear_estop("good") and not sh.latched


def run_plant(sh, target, steps, p0=None):
    """Integrate the position axes (x += u dt) as the plant the shield predicts."""
    p = np.zeros(5) if p0 is None else np.array(p0, float)
    out = []
    for _ in range(steps):
        u = sh.step(target, p)
        p[:2] = p[:2] + u[:2] * DT
        out.append(u)
    return np.array(out), p


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_drive_hard_into_position_limit_stops_inside(sign):
    sh = SafetyShield(SPEC)
    cmds, p = run_plant(sh, [sign * 1e9, -sign * 1.0, 1.0], 300)
    check_limits(cmds, sh.stop_value)
    traj = np.cumsum(cmds[:, :2] * DT, axis=0)
    assert np.all(traj >= -0.5 - 1e-9) and np.all(traj <= 0.5 + 1e-9)
    assert abs(p[0]) > 0.49  # it gets close: braking is not overly timid
    assert sh.counts["position_brake"] > 0 and sh.counts["action_clip"] > 0


def test_drive_hard_into_command_bounds_and_rates():
    sh = SafetyShield(toy_spec(position_obs_index=(), position_low=(), position_high=()))
    seq = [[1e6, -1e6, 1e6]] * 60 + [[-1e6, 1e6, -1e6]] * 100 + [[1, -1, 1], [-1, 1, -0.5]] * 40
    out = np.array([sh.step(a, [0.0] * 5) for a in seq])
    check_limits(out, sh.stop_value)
    assert abs(out[59, 0] - 1.0) < 0.01 and abs(out[119, 0] + 1.0) < 0.01  # it reaches the bounds
    assert out[:, 2].max() > 0.99 and out[:, 2].min() < -0.49


def test_nan_and_inf_become_controlled_stop():
    sh = SafetyShield(SPEC)
    moving = [sh.step([0.8, 0.0, 0.9], [0.0] * 5) for _ in range(50)]
    stopping = [sh.step([np.nan, np.inf, 0.0], [0.0] * 5) for _ in range(100)]
    assert sh.counts["nonfinite_action"] == 100
    assert np.allclose(stopping[-1], sh.stop_value) and sh.at_rest
    check_limits(np.array(moving + stopping), sh.stop_value)


def test_watchdog_stops_when_feed_stops():
    # the deadline runs on the shield's own clock (here one the test moves a period per step), not on `now`
    clock = ManualClock()
    sh = SafetyShield(SPEC, ShieldConfig(deadline_s=0.05), clock=clock)
    for _ in range(40):
        u = sh.step([0.3, -0.3, 0.8], [0.0] * 5, now=clock.advance(DT))
    assert u[2] > 0.5
    held = []
    for _ in range(200):  # no fresh command or observation any more
        held.append(sh.stop_step(now=clock.advance(DT)))
    held = np.array(held)
    assert sh.counts["watchdog"] == 1
    assert np.all(held[:4, 2] >= u[2])  # within the deadline the last command stands (still rising to 0.8)
    assert np.allclose(held[-1], sh.stop_value) and sh.at_rest  # then a controlled stop, and hold
    assert np.allclose(held[-50:], sh.stop_value, atol=1e-9)


def test_keepout_box_blocks_motion_into_it():
    spec = toy_spec(ee_obs_slice=(0, 3), keepout_boxes=(((0.2, -1.0, -1.0), (0.4, 1.0, 1.0)),),
                    position_obs_index=(), position_low=(), position_high=())
    sh = SafetyShield(spec)
    p = np.zeros(5)
    for _ in range(400):
        u = sh.step([0.5, 0.0, 0.0], p)
        p[0] += u[0] * DT
        assert p[0] < 0.2
    assert sh.counts["keepout"] > 0
