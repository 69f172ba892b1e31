"""The safety shield: the last software layer between a model and an actuator.

Notable features (see ``docs/safety.md`` for the full argument):

* Works in command space. Each action axis is a chain ``u -> v -> w -> jerk``
  where ``v = (u_k - u_{k-1})/dt`` and ``w = (v_k - v_{k-1})/dt`` are the discrete
  derivatives of the emitted command. Every command satisfies exactly
  ``low <= u <= high``, ``|v| <= max_rate``, ``|w| <= max_accel`` and
  ``|(w_k - w_{k-1})/dt| <= max_jerk`` (up to float rounding, ~1e-12 relative).
* Feasibility by construction: the shield only ever emits a command from which a
  fixed, deterministic *brake law* (time-optimal-style jerk-limited ramp to zero
  rate) keeps every limit until rest. A candidate is accepted only after
  simulating that brake law from it; the brake law's own next step is always an
  accepted fallback, because the simulation from the next state is the same
  float computation, shifted by one step. So a jerk-limited ramp can never be
  trapped outside its bounds.
* Braking-distance-aware position limits: for axes whose command is a velocity
  of a position seen in the observation (``safety.position_obs_index``), the
  same simulation predicts the position (``p += gain * u * dt``) and rejects
  commands from which it could not stop inside ``position_low/high``; this is
  the discrete form of ``v_max = sqrt(2 * a * d)`` with ``a`` the deceleration the
  command chain can deliver (``max_rate``), including the jerk-limited lag.
* Rejects NaN/inf in model outputs and observations (controlled stop), blocks
  commands that would carry the end effector into a keep-out box, runs a
  watchdog (no fresh command or observation within ``deadline_s`` -> controlled
  stop), and latches an e-stop that only an authenticated reset clears.
* Stops are *controlled stops* (IEC 60204-1 category 1/2 style, see docs): the
  command ramps to the stop value (zero velocity / zero voltage) within the
  configured rate, acceleration and jerk, then holds there.
* Every intervention is counted per reason and kept in a bounded event log.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter, deque
from dataclasses import dataclass
from typing import Callable

import numpy as np

from genba.data.spec import EmbodimentSpec

log = logging.getLogger(__name__)

REASONS = ("nonfinite_action", "nonfinite_obs", "bad_shape", "action_clip", "derivative_limit",
           "bound_brake", "position_brake", "keepout", "watchdog", "estop")


@dataclass(frozen=True)
class ShieldConfig:
    """Tunables that are not part of the machine's spec.

    ``deadline_s``: watchdog deadline for a fresh command and observation.
    ``position_gain``: position units per second per command unit for axes with
    a braking position (1.0 = the command is that position's velocity).
    ``max_horizon``: longest brake simulation, in control periods; a state that
    cannot reach rest within it is treated as unsafe.
    """

    deadline_s: float = 0.1
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


class SafetyShield:
    """Per-session shield for one embodiment; ``step`` maps a model action to a safe command."""

    def __init__(self, spec: EmbodimentSpec, config: ShieldConfig = ShieldConfig(), *,
                 reset_verifier: Callable[[str], bool] | None = None) -> None:
        self.spec, self.cfg = spec, config
        self.dt = float(spec.control_period)
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
        self.clock = 0.0
        self._last_cmd = self._last_obs = None  # times of the last fresh command / observation
        self._starved = False
        self._blocking = False

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
        """One control period: ``action`` is the model's output (None = no fresh
        command), ``obs`` the fresh observation (None = none), ``now`` a monotonic
        time in seconds (None = advance an internal clock by one period)."""
        now = self.clock + self.dt if now is None else float(now)
        self.clock = now
        self._take_obs(obs, now)
        self._take_action(action, now)
        stop = self._latched or self._watchdog(now)
        target = self.stop_value if stop else self._keepout(self.target)
        j = self._choose_jerk(target)
        self._advance(j)
        self.k += 1
        return self.u.copy()

    def stop_step(self, now: float | None = None) -> np.ndarray:
        """A period with no fresh command or observation (the caller lost its feed)."""
        return self.step(None, None, now)

    def stats(self) -> dict:
        return {"steps": self.k, "latched": self._latched, "interventions": dict(self.counts)}

    # ---- inputs --------------------------------------------------------
    def _take_obs(self, obs, now: float) -> None:
        if obs is None:
            return
        o = np.asarray(obs, dtype=float).reshape(-1)
        if o.shape[0] != self.spec.obs_dim:
            self._event("bad_shape", f"observation has {o.shape[0]} entries, expected {self.spec.obs_dim}")
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
        a = np.asarray(action, dtype=float).reshape(-1)
        if a.shape[0] != self.spec.action_dim:
            self._event("bad_shape", f"action has {a.shape[0]} entries, expected {self.spec.action_dim}")
            self.target = self.stop_value.copy()
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


# ---- limits and the laws (scalar per axis: a brake simulation is a few dozen
# float operations per period, far cheaper in plain Python than in numpy) ------
@dataclass(frozen=True)
class Axis:
    """One action axis: bounds, derivative limits, period, stop value; ``to_stop``
    marks a velocity command of a braking position (its brake law returns it to
    the stop value, not just holds it)."""

    lo: float
    hi: float
    R: float
    A: float
    J: float
    dt: float
    stop: float
    to_stop: bool
    gain: float = 1.0


def build_derivative_limits(spec: EmbodimentSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """max_rate, max_accel, max_jerk per axis; an absent limit becomes one a single
    period can never exceed (so the law degenerates to plain clamping)."""
    dt, s = spec.control_period, spec.safety
    span = np.asarray(spec.action_high, float) - np.asarray(spec.action_low, float)
    R = np.asarray(s.max_rate, float) if s.max_rate else span / dt
    A = np.asarray(s.max_accel, float) if s.max_accel else 2 * R / dt
    J = np.asarray(s.max_jerk, float) if s.max_jerk else 2 * A / dt
    return R, A, J


def build_axes(spec: EmbodimentSpec, gain: float) -> list[Axis]:
    R, A, J = build_derivative_limits(spec)
    to_stop = spec.safety.position_obs_index or (-1,) * spec.action_dim
    return [Axis(lo, hi, float(r), float(a), float(j), spec.control_period, min(max(0.0, lo), hi), k >= 0, gain)
            for lo, hi, r, a, j, k in zip(spec.action_low, spec.action_high, R, A, J, to_stop)]


def advance(ax: Axis, u: float, v: float, w: float, j: float) -> tuple[float, float, float]:
    """The discrete chain: jerk -> accel -> rate -> command (the one update everyone uses)."""
    w = w + j * ax.dt
    v = v + w * ax.dt
    return u + v * ax.dt, v, w


def _s_inv(y: float) -> float:
    """Inverse of S(W) = W + (W-1) + ... (a max-jerk ramp of W to 0, normalized units), odd."""
    a = abs(y)
    n = max(math.ceil((-1.0 + math.sqrt(1.0 + 8.0 * a)) / 2.0 - 1e-12), 1)
    return math.copysign((a + n * (n - 1) / 2.0) / n, y)


def _ramp_to(ax: Axis, v: float, w: float, v_goal: float) -> float:
    """Jerk steering the rate ``v`` to ``v_goal`` along a discrete jerk-limited ramp."""
    sw = ax.J * ax.dt
    W, An = w / sw, ax.A / sw
    Wn = -_s_inv((v - v_goal) / (sw * ax.dt))  # next accel so a max-jerk ramp to 0 lands on v_goal
    Wn = min(max(Wn, W - 1.0, -An), W + 1.0, An)
    return min(max((Wn - W) * ax.J, -ax.J), ax.J)


def _v_stop(ax: Axis, d: float) -> float:
    """Largest rate from which an accel- and jerk-limited stop (from zero accel) covers ``d``."""
    A, J = ax.A, ax.J
    small = (d * d * J) ** (1.0 / 3.0)  # pure jerk phase: d = v * sqrt(v / J)
    if small <= A * A / J:
        return small
    return 0.5 * A * (-A / J + math.sqrt((A / J) ** 2 + 8.0 * d / A))  # with a constant-accel phase


def _deadbeat(ax: Axis, e: float, v: float, w: float) -> float | None:
    """First jerk of the 3-step landing on (goal, rate 0, accel 0), or None if it breaks a limit."""
    dt, lim = ax.dt, 1 + 1e-12
    v1 = e / dt
    w1 = (v1 - v) / dt
    w2 = -v1 / dt
    j1, j2, j3 = (w1 - w) / dt, (w2 - w1) / dt, -w2 / dt
    if (abs(v1) <= ax.R * lim and abs(w1) <= ax.A * lim and abs(w2) <= ax.A * lim
            and max(abs(j1), abs(j2), abs(j3)) <= ax.J * lim):
        return min(max(j1, -ax.J), ax.J)
    return None


def track_jerk(ax: Axis, u: float, v: float, w: float, target: float) -> float:
    """Tracking law: a rate wish from the remaining distance (the rate from which a
    jerk-limited stop covers half of it, so the discrete lag fits), then a
    jerk-limited ramp of the rate toward it; near the goal a 3-step deadbeat
    landing takes over when it respects every limit (exact rest, no limit cycle)."""
    e = target - u
    db = _deadbeat(ax, e, v, w)
    if db is not None:
        return db
    return _ramp_to(ax, v, w, math.copysign(min(ax.R, _v_stop(ax, 0.5 * abs(e))), e))


def brake_jerk(ax: Axis, u: float, v: float, w: float) -> float:
    """The brake law: braking-position axes return to the stop value; others bring their
    rate to zero as fast as the accel and jerk limits allow (hold the command)."""
    return track_jerk(ax, u, v, w, ax.stop) if ax.to_stop else _ramp_to(ax, v, w, 0.0)


def viable(ax: Axis, u: float, v: float, w: float, pos: tuple[float, float, float] | None,
           horizon: int) -> bool:
    """Is (u, v, w) within limits, and does the brake law from it keep ``u`` in [lo, hi],
    ``|v| <= R``, ``|w| <= A`` (and the predicted position, with the command applied
    from now on, inside its bounds) until rest within ``horizon`` periods?"""
    tol = 1e-9
    slack_u = tol * (ax.hi - ax.lo)
    lo, hi, R, A = ax.lo - slack_u, ax.hi + slack_u, ax.R * (1 + tol), ax.A * (1 + tol)
    if pos is not None:
        p, p_lo, p_hi = pos
        p_lo, p_hi = p_lo - tol, p_hi + tol
    for _ in range(horizon + 1):
        if not (lo <= u <= hi and abs(v) <= R and abs(w) <= A):
            return False
        if pos is not None:
            p = p + ax.gain * u * ax.dt
            if not p_lo <= p <= p_hi:
                return False
        if abs(v) <= tol * ax.R and abs(w) <= tol * ax.A and (not ax.to_stop or abs(u - ax.stop) <= slack_u):
            return True
        u, v, w = advance(ax, u, v, w, brake_jerk(ax, u, v, w))
    return False  # never reached rest: unsafe


def monotonic() -> float:
    return time.monotonic()


__all__ = ["SafetyShield", "ShieldConfig", "Event", "Axis", "REASONS", "viable", "advance", "brake_jerk",
           "track_jerk", "build_axes", "build_derivative_limits"]
