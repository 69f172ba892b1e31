"""The shield's own clock and malformed inputs (issue 19, item 2).

The watchdog measures its deadline on the shield's clock (injected here as a
:class:`ManualClock` that the test moves one control period per step); the
caller's timestamps are data. Each attack below held the last command for good
(NaN, frozen clock) or for 5 s (a backwards step) when the caller's timestamp
was the watchdog's time, and a non-numeric action raised out of ``step()``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from genba.serve.shield import ManualClock, SafetyShield, ShieldConfig
from tests.serve.conftest import toy_spec
from tests.serve.test_shield import check_limits

SPEC = toy_spec()
DT = SPEC.control_period
DEADLINE = 0.05
MOVE = [0.3, -0.3, 0.8]  # grip (axis 2) has no braking position: it holds 0.8 until told otherwise
OBS = [0.0] * 5
CALLER_ORIGIN = 1234.5  # the caller's clock has another origin than the shield's: only its rate matters


def moving_shield(periods: int = 60) -> tuple[SafetyShield, ManualClock, float]:
    """A shield fed ``periods`` fresh commands on a consistent caller clock; returns it, its clock
    and the caller's last timestamp. Its commands so far are in ``sh.history``."""
    clock = ManualClock(100.0)
    sh = SafetyShield(SPEC, ShieldConfig(deadline_s=DEADLINE), clock=clock)
    sh.history = []
    for _ in range(periods):
        stamp = CALLER_ORIGIN + clock.advance(DT)
        sh.history.append(sh.step(MOVE, OBS, now=stamp))
    assert sh.history[-1][2] > 0.75 and sh.counts["bad_clock"] == 0 and sh.counts["watchdog"] == 0
    return sh, clock, stamp


def run_until_stopped(sh: SafetyShield, clock: ManualClock, feed, seconds: float = 2.0) -> tuple[float, np.ndarray]:
    """Step ``seconds`` of shield time with ``feed(k) -> (action, obs, now)``; returns the shield
    time from the last fresh input to the watchdog firing, and every command since the start."""
    t_fresh, out, fired = clock(), [], None
    for k in range(round(seconds / DT)):
        clock.advance(DT)
        out.append(sh.step(*feed(k)))
        if fired is None and sh.counts["watchdog"]:
            fired = clock() - t_fresh
    assert fired is not None, f"the watchdog never fired in {seconds} s; last command {out[-1]}"
    return fired, np.array(sh.history + out)


def assert_controlled_stop(sh: SafetyShield, fired: float, cmds: np.ndarray) -> None:
    assert fired <= DEADLINE + DT + 1e-9, f"stopped {fired:.3f} s after the last fresh input, deadline {DEADLINE}"
    assert np.allclose(cmds[-1], sh.stop_value) and sh.at_rest
    check_limits(cmds, sh.stop_value)  # a controlled stop: every limit kept on the way down


@pytest.mark.parametrize("fed", [False, True], ids=["silence", "fresh-actions"])
def test_nan_timestamp_cannot_switch_the_watchdog_off(fed):
    """Before: one NaN ``now`` made every later deadline comparison False; the PMSM held 0.8 through 2 s of silence."""
    sh, clock, _ = moving_shield()
    nan = float("nan")
    fired, cmds = run_until_stopped(sh, clock, lambda k: (MOVE, OBS, nan) if fed else (None, None, nan))
    assert_controlled_stop(sh, fired, cmds)
    assert sh.counts["bad_clock"] == len(cmds) - len(sh.history)  # every NaN stamp counted


@pytest.mark.parametrize("fed", [False, True], ids=["silence", "fresh-actions"])
def test_backwards_clock_step_stops_within_the_deadline(fed):
    """Before: a 5 s backward step held the last command for 5.05 s against a 0.05 s deadline."""
    sh, clock, stamp = moving_shield()
    back = stamp - 5.0
    fired, cmds = run_until_stopped(sh, clock, lambda k: (MOVE if fed else None, OBS if fed else None,
                                                          back + (k + 1) * DT))
    assert_controlled_stop(sh, fired, cmds)
    assert sh.counts["bad_clock"] >= 1
    assert any("backwards" in e.detail for e in sh.events)


@pytest.mark.parametrize("fed", [False, True], ids=["silence", "fresh-actions"])
def test_frozen_clock_stops_within_the_deadline(fed):
    """Before: a caller clock stuck at one value kept ``now - last`` at 0: the command was held for good."""
    sh, clock, stamp = moving_shield()
    fired, cmds = run_until_stopped(sh, clock, lambda k: (MOVE if fed else None, OBS if fed else None, stamp))
    assert_controlled_stop(sh, fired, cmds)
    assert any("did not advance" in e.detail for e in sh.events)


def test_caller_clock_far_ahead_of_the_shield_is_refused():
    """A forward jump (timestamps from the future) is as untrustworthy as a backward one."""
    sh, clock, stamp = moving_shield()
    fired, cmds = run_until_stopped(sh, clock, lambda k: (MOVE, OBS, stamp + 5.0 + (k + 1) * DT))
    assert_controlled_stop(sh, fired, cmds)
    assert any("off the shield's clock" in e.detail for e in sh.events)


def test_consistent_caller_clock_with_jitter_is_accepted():
    """A caller on another clock origin, with delivery jitter well inside the tolerance, is never refused,
    and a feed that stops still stops within the deadline on the shield's clock."""
    clock = ManualClock(7.0)
    sh = SafetyShield(SPEC, ShieldConfig(deadline_s=DEADLINE), clock=clock)
    rng = np.random.default_rng(0)
    sh.history = []
    for _ in range(300):
        clock.advance(DT)
        sh.history.append(sh.step(MOVE, OBS, now=-50.0 + clock() - rng.uniform(0.0, 0.008)))  # sampled <= 8 ms ago
    assert sh.counts["bad_clock"] == 0 and sh.counts["watchdog"] == 0
    fired, cmds = run_until_stopped(sh, clock, lambda k: (None, None, None))
    assert_controlled_stop(sh, fired, cmds)


def test_the_shields_own_clock_failing_is_a_controlled_stop():
    """An injected clock that goes backwards or NaN cannot time a deadline: the shield stops until reset."""
    clock = ManualClock(10.0)
    sh = SafetyShield(SPEC, ShieldConfig(deadline_s=DEADLINE), clock=clock)
    cmds = []
    for _ in range(60):
        clock.advance(DT)
        cmds.append(sh.step(MOVE, OBS))
    clock.t = math.nan
    cmds = np.array(cmds + [sh.step(MOVE, OBS) for _ in range(200)])
    assert sh.counts["bad_clock"] == 1 and np.allclose(cmds[-1], sh.stop_value) and sh.at_rest
    check_limits(cmds, sh.stop_value)


MALFORMED = [["a", "b", "c"], [None, 1.0, 2.0], {"vx": 1.0}, "abc", b"\x00\x01", [[1.0, 2.0], [3.0]], object(),
             [True, False, True], np.array(["1", "2", "3"]), np.array([1 + 2j, 0, 0]), [1.0, 2.0], [0.1] * 4,
             np.float64(0.5), [[[0.1, 0.2, 0.3]]] * 2]


@pytest.mark.parametrize("bad", MALFORMED, ids=lambda b: type(b).__name__ + ":" + repr(b)[:16])
def test_malformed_action_is_a_counted_controlled_stop(bad):
    """Before: ``["a", "b", "c"]``, a dict, a string, ragged lists raised ValueError/TypeError out of step()."""
    clock = ManualClock()
    sh = SafetyShield(SPEC, ShieldConfig(deadline_s=DEADLINE), clock=clock)
    cmds = []
    for _ in range(60):
        clock.advance(DT)
        cmds.append(sh.step(MOVE, OBS))
    for _ in range(100):  # fresh, but garbage: the shield stops at once (no deadline to wait for)
        clock.advance(DT)
        cmds.append(sh.step(bad, OBS))
    refused = sh.counts["malformed_action"] + sh.counts["bad_shape"]
    assert refused == 100 and sh.counts["watchdog"] == 0
    assert np.allclose(cmds[-1], sh.stop_value) and sh.at_rest
    check_limits(np.array(cmds), sh.stop_value)
    clock.advance(DT)
    assert sh.step(MOVE, OBS)[2] > sh.stop_value[2]  # a good command afterwards is followed again


@pytest.mark.parametrize("bad", [["x"] * 5, {"x": 0.0}, "state", [[0.0] * 5, [0.0]], [None] * 5, object()],
                         ids=lambda b: type(b).__name__ + ":" + repr(b)[:16])
def test_malformed_observation_is_treated_as_missing(bad):
    sh, clock, _ = moving_shield()
    fired, cmds = run_until_stopped(sh, clock, lambda k: (MOVE, bad, None))
    assert_controlled_stop(sh, fired, cmds)
    assert sh.counts["malformed_obs"] + sh.counts["bad_shape"] == len(cmds) - len(sh.history)


@pytest.mark.parametrize("now", ["12.5", [1.0], np.array([2.0]), True, object(), math.inf, -math.inf, 1e400])
def test_malformed_timestamp_is_counted_never_raised(now):
    sh, clock, _ = moving_shield()
    clock.advance(DT)
    sh.step(MOVE, OBS, now=now)
    assert sh.counts["bad_clock"] == 1 and sh.events[-1].reason == "bad_clock"


anything = st.one_of(st.none(), st.booleans(), st.floats(), st.text(max_size=4), st.binary(max_size=4),
                     st.lists(st.one_of(st.floats(), st.none(), st.text(max_size=2), st.integers(-10**30, 10**30)),
                              max_size=6),
                     st.dictionaries(st.text(max_size=2), st.floats(), max_size=2))


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(anything, anything, anything), min_size=1, max_size=40))
def test_no_input_ever_raises_or_breaks_a_limit(steps):
    clock = ManualClock()
    sh = SafetyShield(SPEC, ShieldConfig(deadline_s=DEADLINE), clock=clock)
    out = []
    for action, obs, now in steps:
        clock.advance(DT)
        out.append(sh.step(action, obs, now=now))
    out.append(sh.plan([s[0] for s in steps], steps[0][1])[-1])
    check_limits(np.array(out), sh.stop_value)


# ---- plan(): a chunk shielded ahead of time, on the shield's clock ---------------
def test_plan_places_a_chunk_on_the_shields_clock_and_replays_a_lapse():
    clock = ManualClock()
    sh = SafetyShield(SPEC, ShieldConfig(deadline_s=6 * DT), clock=clock)  # the server's chunk + 2 periods
    chunk = np.tile(MOVE, (4, 1))
    prev = None
    for _ in range(20):  # back-to-back chunks: one continuous ramp toward the target
        out = sh.plan(chunk, OBS)
        if prev is not None:
            assert np.all(np.abs(out[0] - prev[-1]) <= np.array(SPEC.safety.max_rate) * DT * (1 + 1e-9))
        prev = out
        clock.advance(4 * DT)
    assert out[-1][2] > 0.75 and sh.counts["watchdog"] == 0
    clock.advance(1.0)  # the client went away for a second: the machine's watchdog stopped it
    out = sh.plan(chunk, OBS)
    assert sh.counts["watchdog"] == 1
    assert abs(out[0][2] - sh.stop_value[2]) <= SPEC.safety.max_rate[2] * DT * (1 + 1e-9)  # starts from rest


def test_plan_with_a_malformed_chunk_stops():
    clock = ManualClock()
    sh = SafetyShield(SPEC, ShieldConfig(deadline_s=6 * DT), clock=clock)
    for _ in range(10):
        sh.plan(np.tile(MOVE, (4, 1)), OBS)
        clock.advance(4 * DT)
    out = [sh.plan(bad, OBS) for bad in ([[math.nan] * 3] * 4, [["a"] * 3] * 4, "abcd", None, 3.0)
           for _ in range(10)]
    assert np.allclose(out[-1][-1], sh.stop_value)
    assert sh.counts["nonfinite_action"] == 40 and sh.counts["malformed_action"] >= 40
