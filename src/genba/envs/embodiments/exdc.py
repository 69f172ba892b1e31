"""Externally excited DC motor (gym-electric-motor 3.0.3): a drive held out of pretraining.

Tasks: ``drive/exdc-current`` (Cont-CC-ExtExDc-v0: armature and field current
tracking) and ``drive/exdc-speed`` (Cont-SC-ExtExDc-v0: speed through the
armature current with the field held at its nominal current), in group
``exdc`` only, so the pretraining mixture never sees this machine (the
adaptation benchmark's new machine). Same env and observation layout as
:mod:`.drives` (:class:`DriveEnv`, :func:`obs_names`, :func:`build_spec`), with
two actions (armature and field voltage) and a second current. The slow field
circuit only gets ramped references. Why, with its time constants:
docs/machines.md#externally-excited-dc-motor.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from genba.data.spec import EmbodimentSpec, SafetyLimits
from genba.envs.drive_control import SpeedController, load_torque, predictive_gain
from genba.envs.drive_references import step_ramp_profile
from genba.envs.embodiments.drives import TAU, DriveEnv, DriveTask, Machine, _CascadeExpert, _ObsReader, build_spec
from genba.envs.registry import Task, register

I_E_NOMINAL = 97.0  # A: GEM's nominal field (and armature) current for this motor


# ---- machine -----------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _ExDcMachine(Machine):
    """The drives' :class:`Machine`, with the field voltage also left out of the observation."""

    @property
    def observed(self) -> tuple[str, ...]:
        return tuple(n for n in super().observed if n != "u_e")


# limits: GEM 3.0.3 defaults; DriveEnv checks them against the env on every construction
EXDC = _ExDcMachine("exdc", ("omega", "torque", "i_a", "i_e", "u_a", "u_e", "u_sup"),
                    (400.0, 38.0, 210.0, 210.0, 60.0, 60.0, 60.0), ("omega", "i_a", "i_e"), False,
                    ("u_a", "u_e"), 60.0)


# ---- expert ------------------------------------------------------------------
class ExDcCurrentController:
    """Predictive current control of both circuits (:mod:`genba.envs.drive_control`): armature with
    back-EMF and ``R_a i_a`` feed-forward, field with ``R_e i_e`` feed-forward.

    The armature sees ``L_a di_a/dt = u_a - R_a i_a - L_e' i_e omega``; the field
    ``L_e di_e/dt = u_e - R_e i_e`` (GEM's model: no coupling back into the field).
    """

    def __init__(self, r_a: float, l_a: float, r_e: float, l_e: float, l_e_prime: float, tau: float,
                 u_max: float):
        self.l_e_prime, self.u_max = l_e_prime, u_max
        self.r = np.array([r_a, r_e])
        self.k = np.array([predictive_gain(r_a, l_a, tau), predictive_gain(r_e, l_e, tau)])

    def __call__(self, i_ref: np.ndarray, i: np.ndarray, omega: float) -> np.ndarray:
        """(u_a, u_e) in volts driving ``i = (i_a, i_e)`` (A) to ``i_ref`` at speed ``omega`` (rad/s)."""
        i = np.asarray(i, float)
        ff = self.r * i + np.array([self.l_e_prime * i[1] * omega, 0.0])
        u = ff + self.k * (np.asarray(i_ref, float) - i)
        return np.clip(u, -self.u_max, self.u_max)  # each four-quadrant converter saturates on its own


class ExDcExpert(_CascadeExpert):
    """Predictive armature and field current control; in speed mode a cascaded speed loop sets i_a,
    i_e is held."""

    def __init__(self, env: DriveEnv, current_margin: float = 0.85, field_current: float = I_E_NOMINAL):
        env = env.unwrapped
        ps = env.gem.physical_system
        mp = ps.electrical_motor.motor_parameter
        self.read = _ObsReader(env)
        self.volts = env.task.machine.action_volts
        self.i_e_hold = field_current
        i_max = current_margin * self.read.limits["i_a"]
        self.current = ExDcCurrentController(mp["r_a"], mp["l_a"], mp["r_e"], mp["l_e"], mp["l_e_prime"], TAU,
                                             self.volts)
        # torque per armature ampere at the held field; closed current loop ~ lag of 2 tau
        self.speed = SpeedController(ps.mechanical_load.j_total, mp["l_e_prime"] * field_current, 2 * TAU, i_max,
                                     load_torque(ps))

    def act(self, obs: np.ndarray) -> np.ndarray:
        r = self.read
        omega = r.state(obs, "omega")
        i = np.array([r.state(obs, "i_a"), r.state(obs, "i_e")])
        if r.speed_mode(obs):
            i_ref = np.array([self._speed_demand(obs, omega), self.i_e_hold])
        else:
            i_ref = np.array([r.ref(obs, "i_a"), r.ref(obs, "i_e")])
        return (self.current(i_ref, i, omega) / self.volts).astype(np.float32)


# ---- tasks -------------------------------------------------------------------
def _current_profile(rng: np.random.Generator, n: int) -> np.ndarray:
    # armature as the DC motor's current task; the field starts de-energized and
    # only ramps, within its reachable slope (docs/machines.md#externally-excited-dc-motor)
    field = step_ramp_profile(rng, n, 0.05, 0.6, max_slope=0.0025, p_step=0.0)
    return np.stack([step_ramp_profile(rng, n, -0.6, 0.6), field], axis=1)


def _speed_profile(rng: np.random.Generator, n: int) -> np.ndarray:
    # the DC motor's speed profile: same torque constant, near-equal inertia (2.6e-3 kg m^2)
    return step_ramp_profile(rng, n, -0.15, 0.15, max_slope=2e-4, max_jump=0.01, hold=(60, 200), ramp=(20, 80),
                             p_step=0.4)[:, None]


_FIELD_ON = (("motor", {"motor_initializer": {"states": {"i_a": 0.0, "i_e": I_E_NOMINAL}}}),)

# Success thresholds on the episode's mean normalized tracking error, as for the other drives: ~2.5x the
# expert's worst of 50 seeded episodes, >= 7x under the zero action's best
# (docs/machines.md#success-thresholds-and-safety-limits).
EXDC_TASKS = (
    DriveTask("drive/exdc-current", EXDC, "Cont-CC-ExtExDc-v0", (), ("i_a", "i_e"), _current_profile, 300,
              0.015,
              "Make the separately excited DC motor's armature and field currents follow their references.",
              "他励直流モータの電機子電流と界磁電流を指令値に追従させてください。"),
    DriveTask("drive/exdc-speed", EXDC, "Cont-SC-ExtExDc-v0", _FIELD_ON, ("omega",), _speed_profile, 800,
              0.001,
              "Make the separately excited DC motor's speed follow its reference, holding the field current.",
              "界磁電流を一定に保ち、他励直流モータの回転速度を指令値に追従させてください。",
              held=(("i_e", I_E_NOMINAL),)),
)

# Safety limits on the command (normalized units per s, s^2, s^3 per action axis): the expert's largest
# first/second/third differences over 50 seeded episodes of both tasks, times 1.25, as for the other drives
# (the measured values: docs/machines.md#success-thresholds-and-safety-limits).
SAFETY = SafetyLimits(max_rate=(4.93e3, 2.96e3), max_accel=(8.19e7, 2.96e7), max_jerk=(1.3e12, 4.43e11))
DESCRIPTION = ("Externally (separately) excited DC motor (gym-electric-motor 3.0.3 defaults: R_a=16 mOhm, "
               "L_a=19 uH, R_e=160 mOhm, L_e=5.4 mH, L_e'=1.7 mH) on two continuous four-quadrant converters "
               "(armature, field), 60 V supply, 10 kHz. Current limits: |i_a|, |i_e| <= 210 A (GEM "
               "LimitConstraint; exceeding one ends the episode). Current task: shaft held at 100 rad/s, field "
               "starts de-energized. Speed task: free shaft, field held at 97 A.")


@functools.cache
def exdc_spec() -> EmbodimentSpec:
    """The spec shared by both tasks (no GEM import: limits from :data:`EXDC`)."""
    spec = build_spec(EXDC_TASKS[0], SAFETY, DESCRIPTION)
    return dataclasses.replace(spec, action_meaning="armature and field voltage (normalized)")


def make_exdc_env(task_id: str, seed: int | None = None) -> DriveEnv:
    task = next(t for t in EXDC_TASKS if t.id == task_id)
    return DriveEnv(task, exdc_spec(), seed)


def _register_all() -> None:
    for t in EXDC_TASKS:
        register(Task(id=t.id, spec=exdc_spec(), instruction_en=t.instruction_en, instruction_ja=t.instruction_ja,
                      max_steps=t.max_steps, make_env=functools.partial(make_exdc_env, t.id),
                      make_expert=ExDcExpert, groups=("exdc",)))


_register_all()
