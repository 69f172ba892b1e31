"""Reference profiles for the drive tasks: a GEM reference generator that plays a precomputed profile,
and the seeded step/ramp profiles the tasks draw.

GEM's own references are Wiener processes drawn inside the env; a task needs
its reference known in advance (the observation shows the next step's, and
``reset(seed=s)`` must reproduce an episode exactly), so every drive task draws
its profile from the env's seeded ``np_random`` and plays it through
:func:`ProfileReferenceGenerator`.
"""

from __future__ import annotations

import functools

import gymnasium as gym
import numpy as np


@functools.cache
def _profile_generator_class() -> type:
    """:class:`ProfileReferenceGenerator`'s class, built on first use (it subclasses GEM's)."""
    from gym_electric_motor.core import ReferenceGenerator

    class _ProfileReferenceGenerator(ReferenceGenerator):
        """Plays a precomputed profile ``(T + 2, n_refs)`` of normalized references.

        Row ``k`` is the reference scored after step ``k``; the observation after
        step ``k`` shows row ``k + 1``. Set the profile before each ``env.reset``.
        """

        def __init__(self, reference_states: tuple[str, ...], bound: float = 1.0):
            super().__init__()
            self._reference_names = list(reference_states)
            self.reference_space = gym.spaces.Box(-bound, bound, shape=(len(reference_states),), dtype=np.float64)
            self._profile = np.zeros((2, len(reference_states)))
            self._k = 0

        def set_modules(self, physical_system):
            super().set_modules(physical_system)
            names = physical_system.state_names
            self._idx = [names.index(n) for n in self._reference_names]
            self._referenced_states = np.isin(np.arange(len(names)), self._idx)

        def set_profile(self, profile: np.ndarray) -> None:
            self._profile = np.asarray(profile, dtype=float)

        def _row(self, k: int) -> np.ndarray:
            return self._profile[min(k, len(self._profile) - 1)]

        def _full(self, k: int) -> np.ndarray:
            ref = np.zeros(len(self._referenced_states))
            ref[self._idx] = self._row(k)
            return ref

        def get_reference(self, state, *_, **__):
            self._k += 1  # GEM calls this exactly once per step, before the observation
            return self._full(self._k)

        def get_reference_observation(self, state, *_, **__):
            return self._row(self._k + 1).copy()

        def reset(self, initial_state=None, initial_reference=None):
            self._k = 0
            return self._full(0), self._row(1).copy(), None

    return _ProfileReferenceGenerator


def ProfileReferenceGenerator(reference_states: tuple[str, ...], bound: float = 1.0):  # noqa: N802 (a class)
    """A GEM reference generator playing a precomputed profile (see ``_profile_generator_class``)."""
    return _profile_generator_class()(reference_states, bound)


def step_ramp_profile(rng: np.random.Generator, n: int, lo: float, hi: float, *, hold=(40, 120),
                      ramp=(10, 60), p_step=0.5, max_jump=np.inf, max_slope=np.inf) -> np.ndarray:
    """A 1-d reference of ``n`` samples: holds joined by steps and ramps, starting at 0.

    A step towards a target farther than ``max_jump`` stops at 50-100% of
    ``max_jump``; ramps last at least ``|change| / max_slope`` samples, so the
    reference stays reachable for the drive.
    """
    out = [0.0] * int(rng.integers(5, 30))
    cur = 0.0
    while len(out) < n:
        target = float(rng.uniform(lo, hi))
        if rng.random() < p_step:
            if abs(target - cur) > max_jump:
                target = cur + float(np.sign(target - cur) * max_jump * rng.uniform(0.5, 1.0))
            seg = []
        else:
            length = max(int(rng.integers(*ramp)), int(np.ceil(abs(target - cur) / max_slope)))
            seg = list(np.linspace(cur, target, length + 1)[1:])
        seg += [target] * int(rng.integers(*hold))
        out += seg
        cur = target
    return np.asarray(out[:n])
