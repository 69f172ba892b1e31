"""Electric drives (gym-electric-motor 3.0.3): PMSM and DC machine, current and speed control.

Tasks: ``drive/pmsm-current`` (Cont-CC-PMSM-v0), ``drive/pmsm-speed``
(Cont-SC-PMSM-v0), ``drive/dc-current`` (Cont-CC-PermExDc-v0) and
``drive/dc-speed`` (Cont-SC-PermExDc-v0), all in group ``drives``.

One spec per machine (``pmsm``, ``dc``), shared by its current and speed tasks.
The observation is GEM's normalized state without the applied voltages (a
cloned policy would copy them instead of learning the feedback), plus per
controllable quantity a reference, a control-error and a reference-slope
channel, and a ``speed_mode`` flag; PMSM actions are rotor-dq stator voltages.
References are seeded step/ramp profiles; ``info["success"]`` comes on the
last step (mean tracking error under the task threshold, no limit tripped).
Why each channel exists, and the measurements behind it:
docs/machines.md#electric-drives.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import gymnasium as gym
import numpy as np

from genba.data.spec import EmbodimentSpec, SafetyLimits
from genba.envs.drive_control import (
    DcCurrentController,
    DcParams,
    DqCurrentController,
    PmsmParams,
    SpeedController,
    load_torque,
)
from genba.envs.drive_references import ProfileReferenceGenerator, step_ramp_profile
from genba.envs.registry import Task, register

TAU = 1e-4  # GEM's control period for every continuous env used here (10 kHz)
CURRENT_OBS_BOUND = 4.0  # |normalized current/torque| reachable on the step that trips a limit
ERR_OBS_BOUND = 1.0 + CURRENT_OBS_BOUND  # |reference - state|
DREF_OBS_BOUND = 2.0  # |change of a reference in one period| (references stay within [-1, 1])
_T32 = np.array([[1.0, 0.0], [-0.5, 0.5 * np.sqrt(3.0)], [-0.5, -0.5 * np.sqrt(3.0)]])


# ---- machines --------------------------------------------------------------
@dataclass(frozen=True)
class Machine:
    """What the two tasks of one machine share: spec layout and converter mapping."""

    name: str
    state_names: tuple[str, ...]  # GEM's state names, in GEM's order
    limits: tuple[float, ...]  # GEM's limits of those states (normalization: 1 = limit)
    ref_slots: tuple[str, ...]  # GEM state names that can be referenced
    angle: bool  # append cos/sin of the electrical angle (PMSM)
    action_names: tuple[str, ...]
    action_volts: float  # volts per unit action

    @property
    def observed(self) -> tuple[str, ...]:
        """The observed GEM states: all but the applied voltages (docs/machines.md#why-no-applied-voltages)."""
        applied = ("u", "u_a", "u_b", "u_c", "u_sd", "u_sq")
        return tuple(n for n in self.state_names if n not in applied)

    @property
    def observed_idx(self) -> list[int]:
        return [self.state_names.index(n) for n in self.observed]


# limits: GEM 3.0.3 defaults (PMSM with our 300 V supply); DriveEnv and the tests check them
PMSM = Machine("pmsm", ("omega", "torque", "i_a", "i_b", "i_c", "i_sd", "i_sq", "u_a", "u_b", "u_c",
                        "u_sd", "u_sq", "epsilon", "u_sup"),
               (418.87902047863906, 160.6123626293421) + (400.0,) * 5 + (150.0,) * 5 + (np.pi, 300.0),
               ("omega", "i_sd", "i_sq"), True, ("u_sd", "u_sq"), 150.0)
DC = Machine("dc", ("omega", "torque", "i", "u", "u_sup"), (400.0, 38.0, 210.0, 60.0, 60.0), ("omega", "i"), False,
             ("u",), 60.0)


def obs_names(m: Machine) -> tuple[str, ...]:
    angle = ("cos_epsilon", "sin_epsilon") if m.angle else ()
    return (m.observed + angle + tuple(f"ref_{s}" for s in m.ref_slots) + tuple(f"err_{s}" for s in m.ref_slots)
            + tuple(f"dref_{s}" for s in m.ref_slots) + ("speed_mode",))


@dataclass(frozen=True)
class DriveTask:
    """One drive task: a GEM env id, its referenced states, profile and horizon."""

    id: str
    machine: Machine
    gem_id: str
    gem_kwargs: tuple[tuple[str, object], ...]
    ref_states: tuple[str, ...]
    profile: Callable[[np.random.Generator, int], np.ndarray]  # -> (n, len(ref_states))
    max_steps: int
    threshold: float  # mean normalized tracking error for success
    instruction_en: str
    instruction_ja: str
    held: tuple[tuple[str, float], ...] = ()  # inner references the task holds (state name, SI value)

    @property
    def speed_mode(self) -> bool:
        return self.ref_states == ("omega",)


def build_gem(task: DriveTask, generator):
    """The unwrapped GEM env of ``task`` with our reference generator and no dashboard."""
    import gym_electric_motor as gem  # ~6 s: only when an env is built, never at registry load

    env = gem.make(task.gem_id, visualization=(), reference_generator=generator, **dict(task.gem_kwargs))
    return env.unwrapped


# ---- the env -----------------------------------------------------------------
class DriveEnv(gym.Env):
    """Fixed-length, seeded drive task around a GEM env (see module docstring)."""

    metadata = {"render_modes": []}

    def __init__(self, task: DriveTask, spec: EmbodimentSpec, seed: int | None = None):
        # ``spec`` is gymnasium's EnvSpec slot; the embodiment spec lives in ``embodiment``
        self.task, self.embodiment = task, spec
        self._gen = ProfileReferenceGenerator(task.ref_states)
        self.gem = build_gem(task, self._gen)
        ps = self.gem.physical_system
        if tuple(ps.state_names) != task.machine.state_names:
            raise RuntimeError(f"{task.gem_id}: GEM state names changed: {ps.state_names}")
        self.limits = np.asarray(ps.limits, dtype=float)
        if not np.allclose(self.limits, task.machine.limits, rtol=1e-9):
            raise RuntimeError(f"{task.gem_id}: GEM limits {ps.limits} differ from the spec's {task.machine.limits}")
        self._ref_idx = [ps.state_names.index(s) for s in task.ref_states]
        self._pole_pairs = ps.electrical_motor.motor_parameter.get("p", 1)
        self.observation_space = gym.spaces.Box(np.array(spec.obs_low, np.float32),
                                                np.array(spec.obs_high, np.float32), dtype=np.float32)
        self.action_space = gym.spaces.Box(np.array(spec.action_low, np.float32),
                                           np.array(spec.action_high, np.float32), dtype=np.float32)
        self._seed, self._first_reset = seed, True
        self._state = np.zeros(len(self.limits))
        self._profile = np.zeros((task.max_steps + 2, len(task.ref_states)))
        self._k, self._err_sum, self._done = 0, 0.0, True

    # -- gymnasium API --
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        if seed is None and self._first_reset:
            seed = self._seed  # make_env(task, seed): the first reset reproduces from it
        self._first_reset = False
        super().reset(seed=seed)
        self._profile = self.task.profile(self.np_random, self.task.max_steps + 2)
        self._gen.set_profile(self._profile)
        (state, ref), _ = self.gem.reset(seed=int(self.np_random.integers(2**31)))
        self._state, self._ref = np.asarray(state, float), np.asarray(ref, float)
        self._k, self._err_sum, self._done = 0, 0.0, False
        return self._obs(), {"success": False, "tracking_error": 0.0, "limit_violation": False}

    def step(self, action):
        if self._done:
            raise RuntimeError("DriveEnv.step called after the episode ended; call reset()")
        a = np.asarray(action, dtype=float)
        if a.shape != self.action_space.shape or not np.all(np.isfinite(a)):
            raise ValueError(f"{self.task.id}: action must be {self.action_space.shape[0]} finite numbers "
                             f"({', '.join(self.embodiment.action_names)}), got {action!r}")
        a = np.clip(a, -1.0, 1.0)  # like the converter: duty cycles saturate at the DC link
        (state, ref), _, violated, _, _ = self.gem.step(self._to_converter(a))
        self._state, self._ref = np.asarray(state, float), np.asarray(ref, float)
        self._k += 1
        err = float(np.mean(np.abs(self._profile[self._k] - self._state[self._ref_idx])))
        self._err_sum += err
        truncated = (self._k >= self.task.max_steps) and not violated
        mean_err = self._err_sum / self._k
        info = {"tracking_error": err, "limit_violation": bool(violated),
                "success": bool(truncated and mean_err < self.task.threshold)}
        if violated or truncated:
            info["mean_tracking_error"] = mean_err
            self._done = True
        return self._obs(), -err, bool(violated), bool(truncated), info

    def close(self):
        self.gem.close()

    # -- helpers --
    def _obs(self) -> np.ndarray:
        m, s = self.task.machine, self._state
        parts = [s[m.observed_idx]]
        if m.angle:
            eps = s[m.state_names.index("epsilon")] * np.pi
            parts.append([np.cos(eps), np.sin(eps)])
        refs, errs, drefs = (np.zeros(len(m.ref_slots)) for _ in range(3))
        slope = self._profile[self._k + 1] - self._profile[self._k]  # the shown reference's change this period
        for j, (name, value) in enumerate(zip(self.task.ref_states, self._ref)):
            k = m.ref_slots.index(name)
            refs[k] = value
            errs[k] = value - s[m.state_names.index(name)]  # the control error the expert's P term acts on
            drefs[k] = slope[j]
        for name, value in self.task.held:  # a held inner reference: shown and its error, never scored
            k, i = m.ref_slots.index(name), m.state_names.index(name)
            refs[k] = value / self.limits[i]
            errs[k] = refs[k] - s[i]
        parts += [refs, errs, drefs, [1.0 if self.task.speed_mode else 0.0]]
        obs = np.concatenate(parts).astype(np.float32)
        # only the step that trips a current limit can leave the bounds; GEM ends the episode there
        return np.clip(obs, self.observation_space.low, self.observation_space.high)

    def _to_converter(self, a: np.ndarray) -> np.ndarray:
        """Normalized action -> the GEM converter's action (B6 duty cycles for the PMSM)."""
        if not self.task.machine.angle:
            return a
        names = self.task.machine.state_names
        eps = self._state[names.index("epsilon")] * np.pi
        omega_el = self._pole_pairs * self._state[names.index("omega")] * self.limits[names.index("omega")]
        theta = eps + 0.5 * omega_el * TAU  # the abc command is held while the rotor turns
        c, s = np.cos(theta), np.sin(theta)
        u_ab = np.array([c * a[0] - s * a[1], s * a[0] + c * a[1]])
        u_abc = _T32 @ u_ab
        u_abc -= 0.5 * (u_abc.max() + u_abc.min())  # zero sequence: linear range up to 2/sqrt(3)
        return np.clip(u_abc, -1.0, 1.0)


# ---- experts ---------------------------------------------------------------
class _ObsReader:
    """Physical quantities from a drive observation (normalized value x GEM limit)."""

    def __init__(self, env: DriveEnv):
        names = env.embodiment.obs_names
        m = env.task.machine
        self.limits = dict(zip(m.state_names, env.limits))
        self.idx = {n: i for i, n in enumerate(names)}

    def state(self, obs: np.ndarray, name: str) -> float:
        return float(obs[self.idx[name]]) * self.limits[name]

    def ref(self, obs: np.ndarray, name: str) -> float:
        return float(obs[self.idx[f"ref_{name}"]]) * self.limits[name]

    def slope(self, obs: np.ndarray, name: str) -> float:
        """The shown reference's change over the last period, physical units per period."""
        return float(obs[self.idx[f"dref_{name}"]]) * self.limits[name]

    def speed_mode(self, obs: np.ndarray) -> bool:
        return bool(obs[self.idx["speed_mode"]] > 0.5)


class _CascadeExpert:
    """What the drive experts share: the speed loop's current demand, with feed-forward of the
    reference's slope read from the ``dref_omega`` channel (so the expert keeps no memory at all:
    see :mod:`genba.envs.drive_control`)."""

    def reset(self) -> None:
        """Nothing to forget: every command is a function of the current observation."""

    def _speed_demand(self, obs: np.ndarray, omega: float) -> float:
        dw = self.read.slope(obs, "omega") / TAU
        return self.speed(self.read.ref(obs, "omega"), omega, dw)


class PmsmExpert(_CascadeExpert):
    """Field-oriented control: dq predictive current loops, cascaded speed loop (i_d = 0) in speed mode."""

    def __init__(self, env: DriveEnv, current_margin: float = 0.85):
        env = env.unwrapped
        ps = env.gem.physical_system
        mp = ps.electrical_motor.motor_parameter
        self.read = _ObsReader(env)
        self.volts = env.task.machine.action_volts
        i_max = current_margin * self.read.limits["i_sd"]
        self.m = PmsmParams(r_s=mp["r_s"], l_d=mp["l_d"], l_q=mp["l_q"], psi_p=mp["psi_p"], p=mp["p"],
                            j_total=ps.mechanical_load.j_total, tau=TAU, u_max=self.volts, i_max=i_max)
        self.current = DqCurrentController(self.m)
        # closed current loop (half the deadbeat correction per period) ~ lag of 2 tau
        self.speed = SpeedController(self.m.j_total, self.m.k_t, 2 * TAU, i_max, load_torque(ps))

    def act(self, obs: np.ndarray) -> np.ndarray:
        r = self.read
        omega = r.state(obs, "omega")
        i_dq = np.array([r.state(obs, "i_sd"), r.state(obs, "i_sq")])
        if r.speed_mode(obs):
            i_ref = np.array([0.0, self._speed_demand(obs, omega)])
        else:
            i_ref = np.array([r.ref(obs, "i_sd"), r.ref(obs, "i_sq")])
        u = self.current(i_ref, i_dq, omega)
        return (u / self.volts).astype(np.float32)


class DcExpert(_CascadeExpert):
    """Predictive armature current control with back-EMF feed-forward; cascaded speed loop in speed mode."""

    def __init__(self, env: DriveEnv, current_margin: float = 0.85):
        env = env.unwrapped
        ps = env.gem.physical_system
        mp = ps.electrical_motor.motor_parameter
        self.read = _ObsReader(env)
        self.volts = env.task.machine.action_volts
        i_max = current_margin * self.read.limits["i"]
        self.m = DcParams(r_a=mp["r_a"], l_a=mp["l_a"], psi_e=mp["psi_e"], j_total=ps.mechanical_load.j_total,
                          tau=TAU, u_max=self.volts, i_max=i_max)
        self.current = DcCurrentController(self.m)
        self.speed = SpeedController(self.m.j_total, self.m.psi_e, 2 * TAU, i_max, load_torque(ps))

    def act(self, obs: np.ndarray) -> np.ndarray:
        r = self.read
        omega, i = r.state(obs, "omega"), r.state(obs, "i")
        if r.speed_mode(obs):
            i_ref = self._speed_demand(obs, omega)
        else:
            i_ref = r.ref(obs, "i")
        return np.array([self.current(i_ref, i, omega) / self.volts], dtype=np.float32)


# ---- specs -------------------------------------------------------------------
def _units(m: Machine, limits: dict[str, float]) -> tuple[str, ...]:
    base = {"omega": "rad/s", "torque": "N*m", "epsilon": "rad", "u_sup": "V"}

    def unit(name: str) -> str:
        u = base.get(name) or ("A" if name.startswith("i") else "V")
        return f"normalized (1 = {limits[name]:.6g} {u})"

    out = [unit(n) for n in m.observed]
    if m.angle:
        out += ["1", "1"]
    out += [unit(s) for s in m.ref_slots] * 2 + [f"{unit(s)} per period" for s in m.ref_slots]
    out += ["flag (1 = speed control)"]
    return tuple(out)


def _obs_bounds(m: Machine) -> tuple[tuple[float, ...], tuple[float, ...]]:
    # GEM's state space is [-1, 1] per state, [0, 1] for the supply voltage
    lo = [0.0 if n == "u_sup" else -1.0 for n in m.observed]
    hi = [1.0] * len(m.observed)
    for j, n in enumerate(m.observed):
        if n == "torque" or n.startswith("i"):
            lo[j], hi[j] = -CURRENT_OBS_BOUND, CURRENT_OBS_BOUND
    extra = (2 if m.angle else 0) + len(m.ref_slots)
    err = [ERR_OBS_BOUND] * len(m.ref_slots) + [DREF_OBS_BOUND] * len(m.ref_slots)
    return (tuple(lo + [-1.0] * extra + [-e for e in err] + [0.0]), tuple(hi + [1.0] * extra + err + [1.0]))


def gem_limits(task: DriveTask) -> tuple[tuple[str, ...], tuple[float, ...], tuple[float, ...], float]:
    """GEM's (state names, limits, state-space low, tau) of ``task``'s env, from a probe env."""
    ps = build_gem(task, ProfileReferenceGenerator(task.ref_states)).physical_system
    return (tuple(ps.state_names), tuple(map(float, ps.limits)), tuple(map(float, ps.state_space.low)),
            float(ps.tau))


def build_spec(task: DriveTask, safety: SafetyLimits, description: str) -> EmbodimentSpec:
    """The embodiment spec of ``task``'s machine (no GEM import: limits from :class:`Machine`)."""
    m = task.machine
    limits = dict(zip(m.state_names, m.limits))
    lo, hi = _obs_bounds(m)
    n_act = len(m.action_names)
    return EmbodimentSpec(
        name=m.name, robot_type=f"gem-{m.name}", obs_names=obs_names(m), obs_units=_units(m, limits),
        obs_low=lo, obs_high=hi, action_names=m.action_names,
        action_units=(f"normalized (1 = {m.action_volts:g} V)",) * n_act,
        action_low=(-1.0,) * n_act, action_high=(1.0,) * n_act, control_period=TAU,
        action_meaning=("stator voltage in the rotor dq frame (normalized); the env modulates it into "
                        "phase voltages" if m.angle else "armature voltage (normalized)"),
        description=description, safety=safety)


# ---- tasks -------------------------------------------------------------------
def _pmsm_current_profile(rng: np.random.Generator, n: int) -> np.ndarray:
    # |(i_sd, i_sq)| <= 0.71 of the 400 A limit; negative i_sd as in field weakening. The
    # inverter slews i_sq by at most ~0.027 per step at 100 rad/s ((150 V - EMF) tau / L_q / 400 A):
    # steps up to 0.3, ramps at <= 0.02 per step, so references are reachable.
    kw = dict(max_jump=0.3, max_slope=0.02)
    return np.stack([step_ramp_profile(rng, n, -0.45, 0.0, **kw), step_ramp_profile(rng, n, -0.55, 0.55, **kw)],
                    axis=1)


def _dc_current_profile(rng: np.random.Generator, n: int) -> np.ndarray:
    return step_ramp_profile(rng, n, -0.6, 0.6)[:, None]


# Speed references stay reachable with 85% of the current limit: the steepest
# ramp is ~65-70% of the acceleration that current gives (PMSM ~6.2e-4, DC
# ~2.9e-4 normalized speed per step), steps are small.
_SPEED_SEGMENTS = dict(hold=(60, 200), ramp=(20, 80), p_step=0.4)


def _pmsm_speed_profile(rng: np.random.Generator, n: int) -> np.ndarray:
    return step_ramp_profile(rng, n, -0.3, 0.3, max_slope=4e-4, max_jump=0.015, **_SPEED_SEGMENTS)[:, None]


def _dc_speed_profile(rng: np.random.Generator, n: int) -> np.ndarray:
    return step_ramp_profile(rng, n, -0.15, 0.15, max_slope=2e-4, max_jump=0.01, **_SPEED_SEGMENTS)[:, None]


_PMSM_SUPPLY = (("supply", {"u_nominal": 300.0}),)  # both PMSM tasks: 300 V DC link

# Success thresholds on the episode's mean normalized tracking error: ~2-3x the expert's worst of 50
# seeded episodes, >= 2.4x under the zero action's best (docs/machines.md#success-thresholds-and-safety-limits).

DRIVE_TASKS = (
    DriveTask("drive/pmsm-current", PMSM, "Cont-CC-PMSM-v0", _PMSM_SUPPLY, ("i_sd", "i_sq"),
              _pmsm_current_profile, 300, 0.015,
              "Make the PMSM's d- and q-axis stator currents follow their references.",
              "PMSMのd軸・q軸の固定子電流を指令値に追従させてください。"),
    DriveTask("drive/pmsm-speed", PMSM, "Cont-SC-PMSM-v0", _PMSM_SUPPLY, ("omega",),
              _pmsm_speed_profile, 800, 0.005,
              "Make the PMSM's rotor speed follow its reference.",
              "PMSMの回転速度を指令値に追従させてください。", held=(("i_sd", 0.0),)),
    DriveTask("drive/dc-current", DC, "Cont-CC-PermExDc-v0", (), ("i",),
              _dc_current_profile, 300, 0.02,
              "Make the DC motor's armature current follow its reference.",
              "直流モータの電機子電流を指令値に追従させてください。"),
    DriveTask("drive/dc-speed", DC, "Cont-SC-PermExDc-v0", (), ("omega",),
              _dc_speed_profile, 800, 0.002,
              "Make the DC motor's speed follow its reference.",
              "直流モータの回転速度を指令値に追従させてください。"),
)

# Safety limits on the command, per action axis, in normalized units per second (and per s^2, s^3): the
# expert's largest first/second/third differences over 50 seeded episodes of each task of the machine,
# times 1.25 (the measured values: docs/machines.md#success-thresholds-and-safety-limits).
_SAFETY = {
    "pmsm": SafetyLimits(max_rate=(1.76e4, 2.5e4), max_accel=(2.64e8, 2.5e8), max_jerk=(4.4e12, 5.0e12)),
    "dc": SafetyLimits(max_rate=(4.94e3,), max_accel=(7.01e7,), max_jerk=(1.2e12,)),
}
_DESCRIPTION = {
    "pmsm": ("Permanent magnet synchronous motor (gym-electric-motor 3.0.3 defaults: p=3, R_s=18 mOhm, "
             "L_d=0.37 mH, L_q=1.2 mH, psi_p=66 mVs) on a continuous B6 bridge, 300 V DC link, 10 kHz. "
             "Current limit: |(i_sd, i_sq)| <= 400 A (GEM SquaredConstraint; exceeding it ends the episode). "
             "Current task: shaft held at 100 rad/s. Speed task: free shaft with friction."),
    "dc": ("Permanently excited DC motor (gym-electric-motor 3.0.3 defaults: R_a=16 mOhm, L_a=19 uH, "
           "psi_e=0.165 Vs) on a continuous four-quadrant converter, 60 V supply, 10 kHz. "
           "Current limit: |i| <= 210 A (GEM LimitConstraint; exceeding it ends the episode). "
           "Current task: shaft held at 100 rad/s. Speed task: free shaft."),
}
_EXPERTS = {"pmsm": PmsmExpert, "dc": DcExpert}


@functools.cache
def machine_spec(name: str) -> EmbodimentSpec:
    """The shared spec of machine ``name`` (built from its current-control task's env)."""
    task = next(t for t in DRIVE_TASKS if t.machine.name == name)
    return build_spec(task, _SAFETY[name], _DESCRIPTION[name])


def drive_task(task_id: str) -> DriveTask:
    return next(t for t in DRIVE_TASKS if t.id == task_id)


def make_drive_env(task_id: str, seed: int | None = None) -> DriveEnv:
    t = drive_task(task_id)
    return DriveEnv(t, machine_spec(t.machine.name), seed)


def _register_all() -> None:
    for t in DRIVE_TASKS:
        register(Task(id=t.id, spec=machine_spec(t.machine.name), instruction_en=t.instruction_en,
                      instruction_ja=t.instruction_ja, max_steps=t.max_steps,
                      make_env=functools.partial(make_drive_env, t.id),
                      make_expert=_EXPERTS[t.machine.name], groups=("drives",)))


_register_all()
