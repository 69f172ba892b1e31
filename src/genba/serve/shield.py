"""The safety shield: the last software layer between a model and an actuator.

Every emitted command keeps the spec's bounds and its rate, acceleration and
jerk limits (discrete derivatives of the command, exact to float rounding),
and only a command from which a fixed brake law keeps every limit until rest
is ever emitted, so the shield can never be trapped outside its bounds. On
top: braking-distance-aware position limits, keep-out boxes, NaN/malformed
input handling (a controlled stop, never an exception), a watchdog on the
shield's own monotonic clock (a caller's timestamp is data, checked),
``plan(chunk, obs)`` for chunks served ahead of time, and a latched e-stop
that only an authenticated reset clears. Every intervention is counted per
reason. The full argument (why it is feasible, the stop categories, the
clock): docs/safety.md.
"""


from __future__ import annotations

import logging
import math
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from genba.data.spec import EmbodimentSpec
from genba.serve.shield_law import Axis, advance, brake_jerk, build_axes, build_derivative_limits, track_jerk, viable

log = logging.getLogger(__name__)

REASONS = ("nonfinite_action", "nonfinite_obs", "malformed_action", "malformed_obs", "bad_shape", "bad_clock",
           "action_clip", "derivative_limit", "bound_brake", "position_brake", "keepout", "watchdog", "estop")

Clock = Callable[[], float]


@dataclass(frozen=True)
class ShieldConfig:
    """Tunables that are not part of the machine's spec.

    ``deadline_s``: watchdog deadline for a fresh command and observation, on the
    shield's own clock.
    ``clock_tolerance_s``: how far a caller's timestamp may disagree with the
    shield's clock (after calibrating the two clocks' offset on the first
    timestamp) before the step's inputs count as of unknown age; None = ``deadline_s``.
    ``position_gain``: position units per second per command unit for axes with
    a braking position (1.0 = the command is that position's velocity).
    ``max_horizon``: longest brake simulation, in control periods; a state that
    cannot reach rest within it is treated as unsafe.
    """

    deadline_s: float = 0.1
    clock_tolerance_s: float | None = None
    position_gain: float = 1.0
    max_horizon: int = 4000
    keepout_margin: float = 0.0
    keepout_hysteresis: float = 0.02
    bisect: int = 8
    event_log: int = 1000


@dataclass(frozen=True)
class Event:
    step: int
    reason: str
    detail: str


class ManualClock:
    """A clock that moves only when told (simulated time, tests): pass it as ``clock=``."""

    def __init__(self, t: float = 0.0) -> None:
        self.t = float(t)

    def __call__(self) -> float:
        return self.t

    def advance(self, dt: float) -> float:
        self.t += float(dt)
        return self.t


class SafetyShield:
    """Per-session shield for one embodiment; ``step`` maps a model action to a safe command.

    ``clock``: the shield's own monotonic time source in seconds (default
    ``time.monotonic``); the watchdog's deadlines are measured on it alone.
    """

    def __init__(self, spec: EmbodimentSpec, config: ShieldConfig = ShieldConfig(), *,
                 reset_verifier: Callable[[str], bool] | None = None, clock: Clock = time.monotonic) -> None:
        self.spec, self.cfg = spec, config
        self.dt = float(spec.control_period)
        self._clock = clock
        self._verify_reset = reset_verifier or (lambda credential: False)
        self.lo, self.hi = np.asarray(spec.action_low, float), np.asarray(spec.action_high, float)
        self.R, self.A, self.J = build_derivative_limits(spec)
        self.axes = build_axes(spec, config.position_gain)
        self.stop_value = np.clip(0.0, self.lo, self.hi)
        s = spec.safety
        self.pos_idx = np.asarray(s.position_obs_index or [-1] * spec.action_dim, int)
        self.has_pos = self.pos_idx >= 0
        self.p_lo = np.asarray(s.position_low, float) if s.position_obs_index else np.full(spec.action_dim, -np.inf)
        self.p_hi = np.asarray(s.position_high, float) if s.position_obs_index else np.full(spec.action_dim, np.inf)
        self.counts: Counter[str] = Counter()
        self.events: deque[Event] = deque(maxlen=config.event_log)
        self._latched = False
        self._own_last = -math.inf  # last reading of the shield's own clock
        self.reset()

    # ---- public API ----------------------------------------------------
    def reset(self) -> None:
        """Back to rest at the stop value (a new episode). Does not clear a latched e-stop."""
        n = self.spec.action_dim
        self.u, self.v, self.w = self.stop_value.copy(), np.zeros(n), np.zeros(n)
        self.p = np.where(self.has_pos, 0.0, np.nan)
        self._p_known = False
        self._ee: np.ndarray | None = None
        self._ee_vel = np.zeros(3)
        self.target = self.stop_value.copy()
        self.k = 0
        self._own_broken = False  # a clock that still fails fails again on this very reading
        self.t = self._now()  # shield time of the last period emitted (or of the reset)
        self._last_cmd = self._last_obs = None  # shield times of the last fresh command / observation
        self._starved = False
        self._blocking = False
        self._stamp_prev: float | None = None  # the caller's last finite timestamp
        self._stamp_offset: float | None = None  # shield clock minus caller clock, smallest seen
        self._plan_end: float | None = None  # shield time of the last period of the last plan()

    @property
    def latched(self) -> bool:
        return self._latched

    @property
    def at_rest(self) -> bool:
        """Command at the stop value with zero rate and acceleration."""
        tol = 1e-9
        return bool(np.all(np.abs(self.u - self.stop_value) <= tol * (self.hi - self.lo))
                    and np.all(np.abs(self.v) <= tol * self.R) and np.all(np.abs(self.w) <= tol * self.A))

    def estop(self, reason: str = "requested") -> None:
        """Latch the e-stop: from now on every command ramps to the stop value and holds."""
        if not self._latched:
            self._event("estop", f"latched: {reason}")
        self._latched = True

    def clear_estop(self, credential: str) -> bool:
        """Release the latch only if ``credential`` passes the authenticated reset check."""
        if not self._latched:
            return True
        if not (isinstance(credential, str) and self._verify_reset(credential)):
            self._event("estop", "reset refused: credential not authorized")
            return False
        self._latched = False
        self._event("estop", "released by authenticated reset")
        return True

    def step(self, action=None, obs=None, now: float | None = None) -> np.ndarray:
        """One control period, now on the shield's clock: ``action`` is the model's output
        (None = no fresh command), ``obs`` the fresh observation (None = none), ``now`` the
        caller's timestamp of them in seconds (optional; checked, never the watchdog's time)."""
        t = self._now()
        if now is not None and not self._stamp_ok(now, t):
            action = obs = None  # inputs of unknown age count as none: the watchdog decides
        return self._period(action, obs, t)

    def stop_step(self, now: float | None = None) -> np.ndarray:
        """A period with no fresh command or observation (the caller lost its feed)."""
        return self.step(None, None, now)

    def plan(self, actions, obs=None) -> np.ndarray:
        """Commands ``(len(actions), action_dim)`` for the next control periods, decided now:
        a chunk served ahead of time, every action derived from the one observation ``obs``.
        Period ``i`` is placed ``i * dt`` after the shield's clock reads now. If the previous
        plan ran out more than ``deadline_s`` ago, the stop the machine's own watchdog made
        meanwhile is replayed first, so the chunk starts from where the machine stands."""
        rows = _rows(actions)
        t0 = self._now()
        if self._plan_end is not None and t0 - self._plan_end > self.cfg.deadline_s:
            for k in range(self.cfg.max_horizon):
                if self.at_rest:
                    break
                self._period(None, None, self._plan_end + (k + 1) * self.dt)
            t0 = max(t0, self.t + self.dt)
        out = [self._period(a, obs if i == 0 else None, t0 + i * self.dt) for i, a in enumerate(rows)]
        self._plan_end = self.t
        return np.stack(out) if out else np.empty((0, self.spec.action_dim))

    def stats(self) -> dict:
        return {"steps": self.k, "latched": self._latched, "interventions": dict(self.counts)}

    # ---- time ------------------------------------------------------------
    def _now(self) -> float:
        """The shield's own clock; one that fails (non-finite, backwards) stops the machine until reset."""
        try:
            t = float(self._clock())
        except Exception:  # an injected clock must not turn into an exception out of step()
            t = math.nan
        if not math.isfinite(t) or t < self._own_last:
            if not self._own_broken:
                self._event("bad_clock", f"the shield's own clock read {t!r} after {self._own_last!r}; controlled stop")
            self._own_broken = True
            return self._own_last if math.isfinite(self._own_last) else 0.0
        self._own_last = t
        return t

    def _stamp_ok(self, now, t: float) -> bool:
        """Is the caller's timestamp ``now`` consistent with the shield's clock at ``t``?"""
        stamp = _as_time(now)
        if stamp is None:
            return self._clock_fault(f"caller timestamp {now!r:.40} is not a finite number")
        prev, self._stamp_prev = self._stamp_prev, stamp
        if prev is not None and stamp <= prev:
            how = "went backwards" if stamp < prev else "did not advance"
            return self._clock_fault(f"caller timestamp {how}: {stamp:.6f} s after {prev:.6f} s")
        if self._stamp_offset is None:
            self._stamp_offset = t - stamp
        lag = t - (stamp + self._stamp_offset)  # > 0: older than the calibration suggests
        tol = self.cfg.deadline_s if self.cfg.clock_tolerance_s is None else self.cfg.clock_tolerance_s
        if abs(lag) > tol:
            return self._clock_fault(f"caller timestamp is {-lag:+.3f} s off the shield's clock (tolerance {tol} s)")
        # the two clocks may have different origins; keep the smallest delay seen as their offset
        # (a caller clock running fast is absorbed; slow, frozen or jumping ones are refused)
        self._stamp_offset += min(lag, 0.0)
        return True

    def _clock_fault(self, detail: str) -> bool:
        self._event("bad_clock", detail + "; inputs treated as missing")
        return False

    # ---- one period --------------------------------------------------------
    def _period(self, action, obs, t: float) -> np.ndarray:
        """Emit the command of one control period placed at shield time ``t``."""
        self.t = t
        self._take_obs(obs, t)
        self._take_action(action, t)
        stop = self._latched or self._own_broken or self._watchdog(t)
        target = self.stop_value if stop else self._keepout(self.target)
        j = self._choose_jerk(target)
        self._advance(j)
        self.k += 1
        return self.u.copy()

    # ---- inputs --------------------------------------------------------
    def _take_obs(self, obs, now: float) -> None:
        if obs is None:
            return
        o, reason, detail = _vector(obs, self.spec.obs_dim)
        if o is None:
            self._event(reason + ("_obs" if reason == "malformed" else ""), f"observation {detail}; treated as missing")
            return
        if not np.all(np.isfinite(o)):
            self._event("nonfinite_obs", "observation holds NaN/inf; treated as missing")
            return
        self._last_obs = now
        if self.has_pos.any():
            self.p = np.where(self.has_pos, o[np.maximum(self.pos_idx, 0)], np.nan)
            self._p_known = True
        sl = self.spec.safety.ee_obs_slice
        if sl is not None:
            ee = o[sl[0]:sl[1]]
            if self._ee is not None:
                self._ee_vel = (ee - self._ee) / self.dt
            self._ee = ee.copy()

    def _take_action(self, action, now: float) -> None:
        if action is None:
            return
        a, reason, detail = _vector(action, self.spec.action_dim)
        if a is None:
            self._event(reason + ("_action" if reason == "malformed" else ""), f"action {detail}; controlled stop")
            self.target = self.stop_value.copy()
            self._last_cmd = now  # the model answered, and its answer is a stop: no watchdog to wait for
            return
        if not np.all(np.isfinite(a)):
            self._event("nonfinite_action", "model output holds NaN/inf; controlled stop")
            self.target = self.stop_value.copy()
            self._last_cmd = now
            return
        clipped = np.clip(a, self.lo, self.hi)
        if np.any(clipped != a):
            self._event("action_clip", f"axes {np.flatnonzero(clipped != a).tolist()} outside action limits")
        self.target = clipped
        self._last_cmd = now
        if np.any(np.abs(clipped - self.u) > self.R * self.dt * (1 + 1e-9)):
            self._event("derivative_limit", "requested jump exceeds rate/accel/jerk limits; ramped")

    def _watchdog(self, now: float) -> bool:
        times = (self._last_cmd, self._last_obs)
        stale = any(t is None or now - t > self.cfg.deadline_s for t in times)
        if stale and not self._starved and self._last_cmd is not None:
            self._event("watchdog", f"no fresh command/observation within {self.cfg.deadline_s}s; controlled stop")
        self._starved = stale and self._last_cmd is not None
        return stale

    def _keepout(self, target: np.ndarray) -> np.ndarray:
        boxes = self.spec.safety.keepout_boxes
        if not boxes or self._ee is None:
            return target
        # where the end effector would be after stopping: observed velocity times a stop horizon
        horizon = 2 * self.dt + float(np.max(self.R / self.A + self.A / self.J))
        ahead = [self._ee + self._ee_vel * horizon]
        if "end-effector" in self.spec.action_meaning and self.spec.action_dim >= 3:
            ahead.append(self._ee + self.cfg.position_gain * target[:3] * horizon)
        # hysteresis: once blocking, stay blocked until clear of a wider box (no creeping in)
        m = self.cfg.keepout_margin + (self.cfg.keepout_hysteresis if self._blocking else 0.0)
        for lo, hi in boxes:
            for pt in ahead:
                if np.all(pt > np.asarray(lo) - m) and np.all(pt < np.asarray(hi) + m):
                    if not self._blocking:
                        self._event("keepout", f"end effector heading into keep-out box {lo}..{hi}; stopping")
                    self._blocking = True
                    return self.stop_value
        self._blocking = False
        return target

    # ---- the jerk-limited law --------------------------------------------
    def _choose_jerk(self, target: np.ndarray) -> np.ndarray:
        """Per axis: the tracking law's jerk if its successor is viable, else the
        viable jerk closest to it on the segment from the brake law's jerk."""
        out = np.empty(self.spec.action_dim)
        for i, ax in enumerate(self.axes):
            x = (float(self.u[i]), float(self.v[i]), float(self.w[i]))
            pos = self._pos_bounds(i)
            j_des = track_jerk(ax, *x, float(target[i]))
            if viable(ax, *advance(ax, *x, j_des), pos, self.cfg.max_horizon):
                out[i] = j_des
                continue
            j_brk = brake_jerk(ax, *x)
            lo_f, hi_f = 0.0, 1.0  # fraction of the way from j_brk to j_des; 0 is always safe
            for _ in range(self.cfg.bisect):
                mid = 0.5 * (lo_f + hi_f)
                if viable(ax, *advance(ax, *x, j_brk + mid * (j_des - j_brk)), pos, self.cfg.max_horizon):
                    lo_f = mid
                else:
                    hi_f = mid
            out[i] = j_brk + lo_f * (j_des - j_brk)
            reason = "position_brake" if pos is not None else "bound_brake"
            self._event(reason, f"axis {i} ({self.spec.action_names[i]}): braking to stay inside limits")
        return out

    def _pos_bounds(self, i: int) -> tuple[float, float, float] | None:
        """(position, low, high) for a braking axis; already outside means: no further out."""
        if not (self.has_pos[i] and self._p_known):
            return None
        p = float(self.p[i])
        return p, min(float(self.p_lo[i]), p), max(float(self.p_hi[i]), p)

    def _advance(self, jerk: np.ndarray) -> None:
        for i, ax in enumerate(self.axes):
            u, v, w = advance(ax, float(self.u[i]), float(self.v[i]), float(self.w[i]), float(jerk[i]))
            # the clip removes float dust only: the law already keeps u inside
            self.u[i], self.v[i], self.w[i] = min(max(u, ax.lo), ax.hi), v, w
            if self.has_pos[i] and self._p_known:
                self.p[i] = self.p[i] + ax.gain * self.u[i] * ax.dt

    def _event(self, reason: str, detail: str) -> None:
        self.counts[reason] += 1
        self.events.append(Event(self.k, reason, detail))
        level = logging.WARNING if self.counts[reason] == 1 or reason == "estop" else logging.DEBUG
        log.log(level, "shield[%s] step %d %s: %s", self.spec.name, self.k, reason, detail)


def _as_time(x) -> float | None:
    """A caller's timestamp as a finite float, or None (bools, strings, arrays, NaN/inf are not times)."""
    if isinstance(x, (bool, np.bool_)) or not isinstance(x, (int, float, np.integer, np.floating)):
        return None
    t = float(x)
    return t if math.isfinite(t) else None


def _vector(x, n: int) -> tuple[np.ndarray | None, str, str]:
    """``x`` as a float vector of ``n`` entries, or (None, reason, what is wrong).

    Only numeric arrays qualify: strings, objects, None entries, bools and ragged
    nesting are ``malformed``, a wrong length is ``bad_shape``."""
    try:
        a = np.asarray(x)
    except Exception as e:  # ragged lists, a raising __array__: a model's output must never raise here
        return None, "malformed", f"is not an array ({type(e).__name__})"
    if a.dtype.kind not in "iuf":
        return None, "malformed", f"of type {type(x).__name__} (dtype {a.dtype}) is not numeric"
    a = a.astype(float).reshape(-1)
    if a.shape[0] != n:
        return None, "bad_shape", f"has {a.shape[0]} entries, expected {n}"
    return a, "", ""


def _rows(actions) -> list:
    """The per-period actions of a chunk; anything that is not a sequence is one malformed action."""
    if isinstance(actions, (str, bytes, dict)) or not hasattr(actions, "__len__"):
        return [actions]
    try:
        return list(actions)
    except Exception:  # an object claiming a length it cannot deliver
        return [actions]


__all__ = ["SafetyShield", "ShieldConfig", "ManualClock", "Clock", "Event", "Axis", "REASONS", "viable", "advance",
           "brake_jerk", "track_jerk", "build_axes", "build_derivative_limits"]
