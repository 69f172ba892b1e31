"""Classical drive controllers: the scripted experts of the electric-drive tasks.

gym-electric-motor's own controller package is not on PyPI, so these are the
project's, in physical units (volts, amperes, rad/s); the experts in
:mod:`genba.envs.embodiments.drives` convert observations in and commands out.
Predictive (deadbeat-type) current control with gain fraction ``g``, a
symmetrical-optimum speed loop, and model feed-forward (resistive drop,
back-EMF, inertia and load torque) instead of integrators. Why static: an
imitator sees only observations, and an integrator is hidden state that no
observed channel explains. The laws, and the measurements against the earlier
PI experts: docs/machines.md#drive-experts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

CURRENT_GAIN = 0.5  # g: fraction of the one-period (deadbeat) correction applied per period


def predictive_gain(r: float, l: float, tau: float, g: float = CURRENT_GAIN) -> float:
    """Gain (V/A) on the current error that closes the fraction ``g`` of it in one period.

    Exact discretization of ``L di/dt = u - R i - e`` over ``tau``:
    ``i' = a i + (1 - a)(u - e) / R`` with ``a = exp(-R tau / L)``.
    """
    if not (0.0 < g <= 1.0):
        raise ValueError(f"current gain g={g}: must be in (0, 1]")
    return g * r / (1.0 - np.exp(-r * tau / l))


def speed_gain(j: float, k_t: float, t_eq: float, a: float = 4.0) -> float:
    """Proportional speed gain (A per rad/s) of the symmetrical optimum for ``k_t / (J s)`` behind a lag ``t_eq``.

    ``a`` trades speed for damping (2 is the textbook value, 4 gives more phase
    margin, which saturated current limits need).
    """
    return j / (a * t_eq * k_t)


def polynomial_load(a: float = 0.0, b: float = 0.0, c: float = 0.0) -> Callable[[float], float]:
    """GEM's ``PolynomialStaticLoad`` torque (N m) at speed ``omega``: ``sign(w) (c w^2 + a) + b w``.

    (GEM linearizes the Coulomb term ``a`` within a tiny band around standstill;
    the feed-forward ignores that band.)
    """
    return lambda omega: float(np.sign(omega) * (c * omega * omega + a) + b * omega)


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
    """Field-oriented predictive current control of a PMSM in the rotor (dq) frame."""

    def __init__(self, m: PmsmParams, g: float = CURRENT_GAIN):
        self.m = m
        self.k = np.array([predictive_gain(m.r_s, m.l_d, m.tau, g), predictive_gain(m.r_s, m.l_q, m.tau, g)])

    def __call__(self, i_ref: np.ndarray, i_dq: np.ndarray, omega_mech: float) -> np.ndarray:
        """dq voltage (V) driving ``i_dq`` (A) to ``i_ref`` (A) at mechanical speed ``omega_mech``."""
        m = self.m
        w = m.p * omega_mech
        # the motor's own terms: L_d di_d = u_d - R i_d + w L_q i_q;  L_q di_q = u_q - R i_q - w (L_d i_d + psi)
        ff = np.array([m.r_s * i_dq[0] - w * m.l_q * i_dq[1], m.r_s * i_dq[1] + w * (m.l_d * i_dq[0] + m.psi_p)])
        return limit_circle_d_first(ff + self.k * (np.asarray(i_ref, float) - i_dq), m.u_max)


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
    """Predictive armature current control with back-EMF (``psi_e * omega``) and ``R i`` feed-forward."""

    def __init__(self, m: DcParams, g: float = CURRENT_GAIN):
        self.m = m
        self.k = predictive_gain(m.r_a, m.l_a, m.tau, g)

    def __call__(self, i_ref: float, i: float, omega: float) -> float:
        m = self.m
        u = m.psi_e * omega + m.r_a * i + self.k * (i_ref - i)
        return float(np.clip(u, -m.u_max, m.u_max))


class SpeedController:
    """Cascaded outer loop: speed error -> torque-producing current reference.

    ``i_ref = (J d omega_ref/dt + T_load(omega)) / k_t + kp (omega_ref - omega)``,
    clipped to ``i_max``. The caller passes the reference's slope (differenced
    from consecutive observations, which a policy's history also holds).
    """

    def __init__(self, j: float, k_t: float, t_eq: float, i_max: float,
                 load_torque: Callable[[float], float] | None = None, a: float = 4.0):
        self.j, self.k_t, self.i_max = j, k_t, i_max
        self.kp = speed_gain(j, k_t, t_eq, a)
        self.load_torque = load_torque or (lambda omega: 0.0)

    def __call__(self, omega_ref: float, omega: float, d_omega_ref: float = 0.0) -> float:
        ff = (self.j * d_omega_ref + self.load_torque(omega)) / self.k_t
        return float(np.clip(ff + self.kp * (omega_ref - omega), -self.i_max, self.i_max))


def limit_circle_d_first(u: np.ndarray, radius: float) -> np.ndarray:
    """Saturate a dq voltage to the circle, serving the d axis first.

    Scaling the whole vector would starve the d axis during a large q step (the
    flux-producing current then drifts); the usual FOC priority gives d what it
    asks for and q what is left.
    """
    u_d = float(np.clip(u[0], -radius, radius))
    q_room = float(np.sqrt(max(radius * radius - u_d * u_d, 0.0)))
    return np.array([u_d, float(np.clip(u[1], -q_room, q_room))])


def load_torque(ps) -> Callable[[float], float]:
    """The static load torque of GEM physical system ``ps`` (zero for a speed-holding load)."""
    params = getattr(ps.mechanical_load, "load_parameter", None) or {}
    return polynomial_load(**{k: params.get(k, 0.0) for k in ("a", "b", "c")})
