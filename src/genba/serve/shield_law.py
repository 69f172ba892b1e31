"""The shield's scalar laws, per action axis: the discrete command chain, the tracking
law, the brake law and the viability check (see ``docs/safety.md``, "Why it can never
be trapped"). Pure functions of an :class:`Axis` and its state ``(u, v, w)``; the
:class:`~genba.serve.shield.SafetyShield` runs them once per axis per period.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from genba.data.spec import EmbodimentSpec


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


__all__ = ["Axis", "advance", "brake_jerk", "build_axes", "build_derivative_limits", "track_jerk", "viable"]
