"""Classical drive controllers: the scripted experts of the electric-drive tasks.

gym-electric-motor's own controller package is not on PyPI, so these are the
project's. Everything works in physical units (volts, amperes, rad/s); the
experts in :mod:`genba.envs.embodiments.drives` convert observations in and
commands out.

Notable features
- Gains come from the machine parameters, not from trial on seeds: current
  loops use the technical optimum (pole-zero cancellation of the R-L pole,
  ``kp = L / (2 T_sigma)``, ``ki = R / (2 T_sigma)``) with the sampling period
  as the small time constant ``T_sigma``; the speed loop uses the symmetrical
  optimum on the closed current loop (``T_eq = 2 T_sigma``).
- Decoupling: the dq cross-coupling ``omega_el * L * i`` and the back-EMF
  ``omega_el * psi`` are fed forward, so each PI only sees an R-L plant.
- Anti-windup by clamping: a channel stops integrating while saturation cuts
  its command, so it never winds up against the inverter voltage limit
  (dq: a circle) or the current limit (speed loop).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PIGains:
    """Proportional and integral gain of one PI channel (``u = kp e + ki * integral(e)``)."""

    kp: float
    ki: float


def technical_optimum(r: float, l: float, t_sigma: float) -> PIGains:
    """PI gains cancelling the pole of an R-L plant ``1 / (R + s L)``.

    The open loop becomes ``1 / (2 T_sigma s (1 + T_sigma s))``: damping 1/sqrt(2),
    closed loop ~ first order lag of ``2 T_sigma``.
    """
    return PIGains(kp=l / (2.0 * t_sigma), ki=r / (2.0 * t_sigma))


def symmetrical_optimum(j: float, k_t: float, t_eq: float, a: float = 4.0) -> PIGains:
    """PI gains for an integrating plant ``k_t / (J s)`` behind a lag ``T_eq``.

    ``a`` trades speed for damping (2 is the textbook value, 4 gives more phase
    margin, which saturated current limits need).
    """
    kp = j / (a * t_eq * k_t)
    return PIGains(kp=kp, ki=kp / (a * a * t_eq))


class PI:
    """Vector PI with clamping anti-windup (conditional integration).

    The caller saturates the output itself (limits may couple the channels, as a
    voltage circle does) and reports back the saturated value via ``commit``.
    A channel stops integrating while its command is cut by the saturation and
    its error would push further into it. (Back-calculation was tried first: on
    a 50%-of-limit current step it loads the integrator with the proportional
    excess, which then takes ~L/R = 70 ms to bleed off.)
    """

    def __init__(self, gains: PIGains | list[PIGains], tau: float):
        gains = gains if isinstance(gains, list) else [gains]
        self.kp = np.array([g.kp for g in gains])
        self.ki = np.array([g.ki for g in gains])
        self.tau = tau
        self.integral = np.zeros(len(gains))
        self._e = np.zeros(len(gains))
        self._raw = np.zeros(len(gains))

    def reset(self) -> None:
        self.integral[:] = 0.0

    def output(self, error: np.ndarray, feedforward: np.ndarray) -> np.ndarray:
        """Unsaturated command ``ff + kp e + ki I``; call :meth:`commit` after saturating it."""
        self._e = np.asarray(error, dtype=float)
        self._raw = feedforward + self.kp * self._e + self.ki * self.integral
        return self._raw

    def commit(self, saturated: np.ndarray) -> None:
        """Integrate the error, except where that would wind up against the saturation."""
        excess = self._raw - saturated
        winding = (np.abs(excess) > 1e-12) & (excess * self._e > 0)
        self.integral += self.tau * np.where(winding, 0.0, self._e)


@dataclass(frozen=True)
class PmsmParams:
    """PMSM parameters in SI units, as gym-electric-motor names them."""

    r_s: float
    l_d: float
    l_q: float
    psi_p: float
    p: int
    j_total: float
    tau: float
    u_max: float  # largest dq voltage amplitude the inverter can apply linearly (V)
    i_max: float  # current limit (A), amplitude of the dq vector

    @property
    def k_t(self) -> float:
        """Torque per q-current at i_d = 0 (N m / A)."""
        return 1.5 * self.p * self.psi_p


class DqCurrentController:
    """Field-oriented PI current control of a PMSM in the rotor (dq) frame."""

    def __init__(self, m: PmsmParams, voltage_margin: float = 1.0):
        self.m = m
        self.u_lim = voltage_margin * m.u_max
        self.pi = PI([technical_optimum(m.r_s, m.l_d, m.tau), technical_optimum(m.r_s, m.l_q, m.tau)], m.tau)

    def reset(self) -> None:
        self.pi.reset()

    def __call__(self, i_ref: np.ndarray, i_dq: np.ndarray, omega_mech: float) -> np.ndarray:
        """dq voltage (V) driving ``i_dq`` (A) to ``i_ref`` (A) at mechanical speed ``omega_mech``."""
        m = self.m
        w = m.p * omega_mech
        # cancel the motor's own coupling terms: L_d di_d = u_d - R i_d + w L_q i_q, etc.
        ff = np.array([-w * m.l_q * i_dq[1], w * (m.l_d * i_dq[0] + m.psi_p)])
        u = self.pi.output(i_ref - i_dq, ff)
        u_sat = _limit_circle_d_first(u, self.u_lim)
        self.pi.commit(u_sat)
        return u_sat


class SpeedController:
    """Cascaded outer loop: speed PI -> torque-producing current reference.

    Uses the reference slope the caller passes as acceleration feed-forward
    (``J * d omega_ref / dt / k_t``), which a policy can also compute from the
    references in its observation history.
    """

    def __init__(self, j: float, k_t: float, t_eq: float, tau: float, i_max: float, a: float = 4.0):
        self.j, self.k_t, self.i_max = j, k_t, i_max
        self.pi = PI(symmetrical_optimum(j, k_t, t_eq, a), tau)

    def reset(self) -> None:
        self.pi.reset()

    def __call__(self, omega_ref: float, omega: float, d_omega_ref: float = 0.0) -> float:
        ff = np.array([self.j * d_omega_ref / self.k_t])
        i = self.pi.output(np.array([omega_ref - omega]), ff)
        i_sat = np.clip(i, -self.i_max, self.i_max)
        self.pi.commit(i_sat)
        return float(i_sat[0])


@dataclass(frozen=True)
class DcParams:
    """Permanently excited DC machine parameters in SI units."""

    r_a: float
    l_a: float
    psi_e: float
    j_total: float
    tau: float
    u_max: float  # armature voltage limit (V), symmetric (four-quadrant converter)
    i_max: float  # armature current limit (A)


class DcCurrentController:
    """PI armature current control with back-EMF feed-forward (``psi_e * omega``)."""

    def __init__(self, m: DcParams):
        self.m = m
        self.pi = PI(technical_optimum(m.r_a, m.l_a, m.tau), m.tau)

    def reset(self) -> None:
        self.pi.reset()

    def __call__(self, i_ref: float, i: float, omega: float) -> float:
        u = self.pi.output(np.array([i_ref - i]), np.array([self.m.psi_e * omega]))
        u_sat = np.clip(u, -self.m.u_max, self.m.u_max)
        self.pi.commit(u_sat)
        return float(u_sat[0])


def _limit_circle_d_first(u: np.ndarray, radius: float) -> np.ndarray:
    """Saturate a dq voltage to the circle, serving the d axis first.

    Scaling the whole vector would starve the d axis during a large q step (the
    flux-producing current then drifts); the usual FOC priority gives d what it
    asks for and q what is left.
    """
    u_d = float(np.clip(u[0], -radius, radius))
    q_room = float(np.sqrt(max(radius * radius - u_d * u_d, 0.0)))
    return np.array([u_d, float(np.clip(u[1], -q_room, q_room))])
