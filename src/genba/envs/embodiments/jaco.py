"""Kinova Jaco (6 axes) on a table: joint-velocity control, reach and push tasks.

The arm is the Jaco model inside the ``dm-control`` wheel (loads offline),
composed with MuJoCo's ``MjSpec`` and stepped directly, with a pusher tool for
a hand. Joint velocity commands at 20 Hz drive integrating position servos, so
the joint limits hold whatever the policy sends. The observation adds
ee->goal, ee->object and object->goal differences; the expert is
damped-least-squares IK from the observation alone, low-pass filtered within
the spec's safety limits. The choices and their reasons:
docs/machines.md#kinova-jaco.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import os
from typing import Any

import gymnasium as gym
import mujoco
import numpy as np

from genba.data.spec import CameraSpec, EmbodimentSpec, SafetyLimits
from genba.envs.registry import DEFAULT_CAMERA_SIZE, Task, register

# ---- the machine -----------------------------------------------------------
JOINTS = tuple(f"joint_{i}" for i in range(1, 7))
# Joints 2 and 3 have hard stops in the model; 1, 4, 5, 6 are continuous on
# the real arm. We give those a software range of one turn each way so every
# axis has a finite position limit for the shield (cable wind-up on a real cell).
_TURN = 2 * np.pi
MODEL_RANGE = {"joint_2": (0.820305, 5.462881), "joint_3": (0.331613, 5.951573)}
JOINT_LOW = np.array([MODEL_RANGE.get(j, (-_TURN, _TURN))[0] for j in JOINTS])
JOINT_HIGH = np.array([MODEL_RANGE.get(j, (-_TURN, _TURN))[1] for j in JOINTS])
MAX_VEL = np.deg2rad([36.0, 36.0, 36.0, 48.0, 48.0, 48.0])  # rad/s
MAX_TORQUE = np.array([30.5, 30.5, 30.5, 6.8, 6.8, 6.8])  # N m
ARMATURE = np.array([4.0, 4.0, 4.0, 2.0, 2.0, 2.0])  # from the model's joint classes
SERVO_KP = np.array([600.0, 600.0, 600.0, 150.0, 150.0, 150.0])  # N m / rad
SERVO_KV = 2.0 * np.sqrt(SERVO_KP * ARMATURE)  # critically damped on the armature

TIMESTEP = 0.005
SUBSTEPS = 10
CONTROL_PERIOD = TIMESTEP * SUBSTEPS  # 0.05 s, 20 Hz
# Tool pointing down above the table in front of the arm (found by DLS IK).
HOME_Q = np.array([0.137, 2.523, 4.810, 0.266, -0.998, 0.005])

TOOL_RADIUS = 0.02
TOOL_LENGTH = 0.16  # flange to tool tip; the ``ee`` site sits at the tip
BOX_HALF = 0.025
TABLE_KEEPOUT_TOP = 0.005  # the tool tip must stay above this height (m)

# Task geometry (m, in the arm base frame; the table surface is z = 0).
REACH_TARGET_LOW, REACH_TARGET_HIGH = np.array([0.30, -0.28, 0.12]), np.array([0.58, 0.28, 0.34])
REACH_TOL = 0.025
OBJECT_LOW, OBJECT_HIGH = np.array([0.35, -0.20]), np.array([0.55, 0.20])
GOAL_LOW, GOAL_HIGH = np.array([0.32, -0.28]), np.array([0.62, 0.28])
PUSH_DIST = (0.10, 0.25)
PUSH_TOL = 0.05
MAX_STEPS = {"reach": 100, "push": 200}

# The camera (docs/machines.md#cameras): fixed, in front of and above the workspace, looking at its
# centre, so the table, the box, the target marker and the tool are in every frame.
CAMERA_SOURCE = "front"
CAMERA_POS = (1.15, -0.55, 0.80)
CAMERA_LOOK_AT = (0.42, 0.0, 0.14)
CAMERA_FOVY = 45.0
GOAL_MARKER_RADIUS = 0.02  # visible at 64 x 64 (a few pixels across)
GOAL_RGBA, BOX_RGBA, TABLE_RGBA = (0.1, 0.9, 0.1, 1.0), (0.85, 0.2, 0.15, 1.0), (0.75, 0.7, 0.6, 1.0)

# Absolute positions, then the same positions as differences. The expert acts
# on differences (the DLS error is goal - ee; the push script on object - ee
# and goal - object), at centimetre scale against a half-metre workspace: given
# only absolute channels, a clone must rebuild each difference from two
# separately normalized inputs, and the small near-target corrections drown in
# that reconstruction error. The relative channels hand it the quantity itself.
_XYZ = ("x", "y", "z")
_POINTS = ("ee", "object", "goal")
_DIFFS = ("ee_to_goal", "ee_to_object", "object_to_goal")  # a_to_b = b - a
_OBS_NAMES = (
    [f"{j}.pos" for j in JOINTS] + [f"{j}.vel" for j in JOINTS]
    + [f"{p}.{c}" for p in _POINTS for c in _XYZ]
    + [f"{d}.{c}" for d in _DIFFS for c in _XYZ]
)
EE_SLICE = (12, 15)
OBJ_SLICE = (15, 18)
GOAL_SLICE = (18, 21)
EE_TO_GOAL_SLICE = (21, 24)
EE_TO_OBJ_SLICE = (24, 27)
OBJ_TO_GOAL_SLICE = (27, 30)


def _jaco_xml_path() -> str:
    import dm_control  # only for the location of its bundled model files

    path = os.path.join(os.path.dirname(dm_control.__file__), "third_party", "kinova", "jaco_arm.xml")
    if not os.path.exists(path):
        raise FileNotFoundError(f"Kinova Jaco model not found at {path}: is dm-control 1.0.28 installed?")
    return path


# ---- scene -----------------------------------------------------------------
def build_mjspec() -> mujoco.MjSpec:
    """Jaco arm + tool + table + box + goal marker, as one MjSpec."""
    s = mujoco.MjSpec.from_file(_jaco_xml_path())
    s.option.timestep = TIMESTEP
    s.option.integrator = mujoco.mjtIntegrator.mjINT_IMPLICITFAST
    for body in s.bodies:
        if body.name.startswith("b_"):
            body.gravcomp = 1.0  # the controller holds pose without a gravity model
    for name, lo, hi in zip(JOINTS, JOINT_LOW, JOINT_HIGH):
        joint = s.joint(name)
        joint.limited = mujoco.mjtLimited.mjLIMITED_TRUE
        joint.range = [lo, hi]
    _build_tool(s.body("b_6"))
    _build_table_and_props(s.worldbody)
    for i, name in enumerate(JOINTS):
        _add_intvelocity(s, name, i)
    return s


def _build_tool(flange: mujoco.MjsBody) -> None:
    # The flange's -z axis points away from the wrist; the tool extends along it.
    tool = flange.add_geom()
    tool.name = "tool"
    tool.type = mujoco.mjtGeom.mjGEOM_CAPSULE
    tool.fromto = [0, 0, -0.01, 0, 0, -(TOOL_LENGTH - TOOL_RADIUS)]
    tool.size = [TOOL_RADIUS, 0, 0]
    tool.mass = 0.3
    tool.contype, tool.conaffinity = 3, 3
    site = flange.add_site()
    site.name = "ee"
    site.pos = [0, 0, -TOOL_LENGTH]


def _build_table_and_props(world: mujoco.MjsBody) -> None:
    table = world.add_geom()
    table.name = "table"
    table.type = mujoco.mjtGeom.mjGEOM_PLANE
    table.size = [1.5, 1.5, 0.05]
    table.friction = [0.5, 0.005, 0.0001]
    table.contype, table.conaffinity = 1, 1
    box = world.add_body()
    box.name = "object"
    box.pos = [0.45, 0.0, BOX_HALF]
    box.add_freejoint().name = "object"
    g = box.add_geom()
    g.name = "object"
    g.type = mujoco.mjtGeom.mjGEOM_BOX
    g.size = [BOX_HALF] * 3
    g.mass = 0.2
    g.friction = [0.5, 0.005, 0.0001]
    g.contype, g.conaffinity = 3, 3
    g.rgba = BOX_RGBA
    table.rgba = TABLE_RGBA
    goal = world.add_body()  # mocap: its position lives in MjData, one model serves all envs
    goal.name = "goal"
    goal.mocap = True
    marker = goal.add_site()
    marker.name = "goal"
    marker.size = [GOAL_MARKER_RADIUS, 0, 0]  # a site: seen by the camera, felt by nothing
    marker.rgba = GOAL_RGBA
    marker.group = 0  # the arm model's default class puts sites in group 4, which MuJoCo does not draw
    _add_lights_and_camera(world)


def _add_lights_and_camera(world: mujoco.MjsBody) -> None:
    from genba.envs.render import add_lookat_camera

    light = world.add_light()
    light.pos, light.dir, light.diffuse = [0.4, 0.0, 2.0], [0.0, 0.0, -1.0], [0.8, 0.8, 0.8]
    add_lookat_camera(world, CAMERA_SOURCE, CAMERA_POS, CAMERA_LOOK_AT, CAMERA_FOVY)


def _add_intvelocity(s: mujoco.MjSpec, joint: str, i: int) -> None:
    # Same as MJCF <intvelocity>: activation = integral of ctrl, clamped to the
    # joint range; force = kp (act - q) - kv qdot, clipped to the torque limit.
    a = s.add_actuator()
    a.name = joint
    a.trntype = mujoco.mjtTrn.mjTRN_JOINT
    a.target = joint
    a.dyntype = mujoco.mjtDyn.mjDYN_INTEGRATOR
    a.gaintype = mujoco.mjtGain.mjGAIN_FIXED
    a.biastype = mujoco.mjtBias.mjBIAS_AFFINE
    a.gainprm[0] = SERVO_KP[i]
    a.biasprm[:3] = [0.0, -SERVO_KP[i], -SERVO_KV[i]]
    a.actlimited = mujoco.mjtLimited.mjLIMITED_TRUE
    a.actrange = [JOINT_LOW[i], JOINT_HIGH[i]]
    a.actearly = True
    a.ctrllimited = mujoco.mjtLimited.mjLIMITED_TRUE
    a.ctrlrange = [-MAX_VEL[i], MAX_VEL[i]]
    a.forcelimited = mujoco.mjtLimited.mjLIMITED_TRUE
    a.forcerange = [-MAX_TORQUE[i], MAX_TORQUE[i]]


@functools.lru_cache(maxsize=1)
def build_model() -> mujoco.MjModel:
    """The compiled scene, shared by every env of this process (read-only)."""
    return build_mjspec().compile()


# ---- spec ------------------------------------------------------------------
# Expert command filter: two first-order low-pass stages with this gain. With
# any input inside +-MAX_VEL, the n-th difference of the output is at most
# MAX_VEL * ||diff^n h||_1 (h the filter's impulse response): 0.5, 0.625 and
# 1.03125 for n = 1, 2, 3. The spec's rate/accel/jerk limits are these bounds.
FILTER_ALPHA = 0.5
_FILTER_L1 = (0.5, 0.625, 1.03125)


def build_spec() -> EmbodimentSpec:
    """The Jaco embodiment spec shared by every arm task."""
    reach = 1.5  # m: the arm with its tool reaches about 1.1 m from the base
    goal_low = np.minimum([*GOAL_LOW, BOX_HALF], REACH_TARGET_LOW)
    goal_high = np.maximum([*GOAL_HIGH, BOX_HALF], REACH_TARGET_HIGH)
    # Velocities and the box (which can be knocked anywhere) have no hard bound.
    # ee -> goal is bounded by both ends; anything involving the box is not.
    obs_low = [*JOINT_LOW, *[-np.inf] * 6, -reach, -reach, -reach, *[-np.inf] * 3, *goal_low,
               *(goal_low - reach), *[-np.inf] * 6]
    obs_high = [*JOINT_HIGH, *[np.inf] * 6, reach, reach, reach, *[np.inf] * 3, *goal_high,
                *(goal_high + reach), *[np.inf] * 6]
    dt = CONTROL_PERIOD
    rate = tuple(float(np.ceil(v * _FILTER_L1[0] / dt * 100) / 100) for v in MAX_VEL)
    accel = tuple(float(np.ceil(v * _FILTER_L1[1] / dt**2)) for v in MAX_VEL)
    jerk = tuple(float(np.ceil(v * _FILTER_L1[2] / dt**3)) for v in MAX_VEL)
    # The box and everything derived from it is simulator ground truth; the goal is the target the
    # task hands the arm (a command), and ee_to_goal the error to it, computable on the cell too.
    roles = tuple("sim" if "object" in n else "command" if "goal" in n else "sensor" for n in _OBS_NAMES)
    return EmbodimentSpec(
        name="jaco", obs_roles=roles,
        robot_type="kinova_jaco_6dof",
        obs_names=tuple(_OBS_NAMES),
        obs_units=tuple(["rad"] * 6 + ["rad/s"] * 6 + ["m"] * 18),
        obs_low=tuple(float(x) for x in obs_low),
        obs_high=tuple(float(x) for x in obs_high),
        action_names=tuple(f"{j}.vel_cmd" for j in JOINTS),
        action_units=("rad/s",) * 6,
        action_low=tuple(float(-v) for v in MAX_VEL),
        action_high=tuple(float(v) for v in MAX_VEL),
        control_period=CONTROL_PERIOD,
        action_meaning="joint velocity",
        description=("Kinova Jaco 6-axis arm with a capsule pusher tool on a table (z = 0 is the "
                     "surface, arm base at the origin). Actions are joint velocity commands, "
                     "integrated into clamped position targets and servoed at 200 Hz. For reach "
                     "the object is a distractor and goal is the target point. a_to_b.* = b - a "
                     "(the absolute positions again as differences)."),
        safety=SafetyLimits(
            max_rate=rate, max_accel=accel, max_jerk=jerk,
            position_obs_index=tuple(range(6)),
            position_low=tuple(float(x) for x in JOINT_LOW),
            position_high=tuple(float(x) for x in JOINT_HIGH),
            ee_obs_slice=EE_SLICE,
            keepout_boxes=(((-1.5, -1.5, -1.0), (1.5, 1.5, TABLE_KEEPOUT_TOP)),),
        ),
    )


SPEC = build_spec()

# ---- the pixels view -----------------------------------------------------------
PIXEL_NAME = "jaco_px"  # joints and tool tip (sensor), the target and the error to it (command)
_PIXEL_KEEP = (*range(0, 15), *range(GOAL_SLICE[0], GOAL_SLICE[1]), *range(EE_TO_GOAL_SLICE[0], EE_TO_GOAL_SLICE[1]))


@functools.lru_cache(maxsize=8)
def build_pixel_spec(camera_size: int = DEFAULT_CAMERA_SIZE) -> EmbodimentSpec:
    """``jaco_px``: joints, tool tip, target and tool->target; the ``front`` camera sees the box."""
    pick = lambda seq: tuple(seq[i] for i in _PIXEL_KEEP)  # noqa: E731
    return dataclasses.replace(
        SPEC, name=PIXEL_NAME, obs_mode="pixels",
        obs_names=pick(SPEC.obs_names), obs_units=pick(SPEC.obs_units), obs_low=pick(SPEC.obs_low),
        obs_high=pick(SPEC.obs_high), obs_roles=pick(SPEC.obs_roles),
        cameras=(CameraSpec(CAMERA_SOURCE, camera_size, camera_size, CAMERA_SOURCE),),
        description=("The 'jaco' arm seen through the fixed camera 'front' (table, red box, green target). "
                     "Observation: joint positions, velocities, tool tip (sensor), target and ee_to_goal = "
                     "target - tool tip (command); the box is only in the image."))


def make_pixel_env(task: str, seed: int, camera_size: int = DEFAULT_CAMERA_SIZE) -> Any:
    from genba.envs.render import CameraRenderer, PixelEnv

    env = JacoEnv(task, seed)
    # The renderer's fast settings go on a copy: build_model() is shared by the process's state envs.
    env.model = copy.copy(env.model)
    renderer = CameraRenderer(env.model, {CAMERA_SOURCE: CAMERA_SOURCE}, camera_size, camera_size)
    keep = np.asarray(_PIXEL_KEEP)
    return PixelEnv(env, build_pixel_spec(camera_size), renderer, env.data, lambda obs: obs[keep])


# ---- environment -------------------------------------------------------------
class JacoEnv(gym.Env):
    """Jaco reach or push; ``info["success"]`` on every step, truncation at max_steps."""

    metadata = {"render_modes": []}

    def __init__(self, task: str, seed: int | None = None, max_steps: int | None = None):
        if task not in MAX_STEPS:
            raise ValueError(f"Jaco task {task!r}: expected one of {sorted(MAX_STEPS)}")
        self.task = task
        self.max_steps = max_steps or MAX_STEPS[task]
        self.model = build_model()
        self.data = mujoco.MjData(self.model)
        self.observation_space = gym.spaces.Box(
            np.array(SPEC.obs_low, np.float32), np.array(SPEC.obs_high, np.float32), dtype=np.float32)
        self.action_space = gym.spaces.Box(
            np.array(SPEC.action_low, np.float32), np.array(SPEC.action_high, np.float32), dtype=np.float32)
        self._init_seed = seed
        self._ee = self.model.site("ee").id
        self._obj_qpos = self.model.joint("object").qposadr[0]
        self._goal = np.zeros(3)
        self._steps = 0

    # -- gym API --
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        if seed is None and self._np_random is None:
            seed = self._init_seed  # first reset of make_env(task, seed) is reproducible
        super().reset(seed=seed)
        m, d, rng = self.model, self.data, self.np_random
        mujoco.mj_resetData(m, d)
        q0 = HOME_Q + rng.uniform(-0.05, 0.05, size=6)
        d.qpos[:6] = q0
        d.act[:6] = q0  # servo targets start where the arm is
        obj_xy, self._goal = self._sample_layout(rng)
        d.qpos[self._obj_qpos:self._obj_qpos + 7] = [*obj_xy, BOX_HALF, 1, 0, 0, 0]
        d.mocap_pos[0] = self._goal
        mujoco.mj_forward(m, d)
        self._steps = 0
        return self._obs(), self._info()

    def step(self, action):
        a = np.asarray(action, dtype=np.float64).reshape(6)
        if not np.all(np.isfinite(a)):
            raise ValueError(f"Jaco action must be finite, got {a}")
        self.data.ctrl[:6] = np.clip(a, -MAX_VEL, MAX_VEL)
        mujoco.mj_step(self.model, self.data, nstep=SUBSTEPS)
        self._steps += 1
        info = self._info()
        reward = -float(info["distance"])
        return self._obs(), reward, False, self._steps >= self.max_steps, info

    # -- internals --
    def _sample_layout(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        obj = rng.uniform(OBJECT_LOW, OBJECT_HIGH)
        if self.task == "reach":
            return obj, rng.uniform(REACH_TARGET_LOW, REACH_TARGET_HIGH)
        while True:  # goal on the table at a pushing distance from the object
            goal = rng.uniform(GOAL_LOW, GOAL_HIGH)
            if PUSH_DIST[0] <= np.linalg.norm(goal - obj) <= PUSH_DIST[1]:
                return obj, np.array([*goal, BOX_HALF])

    def _obs(self) -> np.ndarray:
        d = self.data
        ee, obj, goal = d.site_xpos[self._ee], d.qpos[self._obj_qpos:self._obj_qpos + 3], self._goal
        return np.concatenate([d.qpos[:6], d.qvel[:6], ee, obj, goal, goal - ee, obj - ee, goal - obj]).astype(np.float32)

    def _info(self) -> dict[str, Any]:
        d = self.data
        if self.task == "reach":
            dist = np.linalg.norm(d.site_xpos[self._ee] - self._goal)
            ok = dist < REACH_TOL
        else:
            obj = d.qpos[self._obj_qpos:self._obj_qpos + 2]
            dist = np.linalg.norm(obj - self._goal[:2])
            ok = dist < PUSH_TOL
        return {"success": bool(ok), "distance": float(dist)}


# ---- expert ------------------------------------------------------------------
DOWN = np.array([0.0, 0.0, -1.0])
IK_DAMPING = 0.05  # lambda of damped least squares
IK_GAIN = 2.0  # 1/s: Cartesian error -> Cartesian velocity
ORIENT_GAIN = 1.5  # 1/s on the tool-axis misalignment
MAX_EE_SPEED = 0.2  # m/s
HOVER_Z = 0.09  # tool-tip height when travelling above the box
PUSH_Z = 0.02  # tool-tip height while pushing (box top is at 0.05)
LATERAL_BOOST = 1.5  # extra gain on the tool's sideways error while pushing
BEHIND = BOX_HALF + TOOL_RADIUS + 0.015  # standoff of the tool centre behind the box centre


# Largest float32 not above each limit: a float32 action must not exceed the spec's float64 limit.
_MAX_VEL_F32 = np.where(np.float32(MAX_VEL) > MAX_VEL, np.nextafter(np.float32(MAX_VEL), np.float32(0)),
                        np.float32(MAX_VEL)).astype(np.float64)


class JacoExpert:
    """Scripted DLS-IK controller; sees only the observation (plus its own phase)."""

    def __init__(self, task: str, model: mujoco.MjModel | None = None):
        if task not in MAX_STEPS:
            raise ValueError(f"Jaco expert task {task!r}: expected one of {sorted(MAX_STEPS)}")
        self.task = task
        self.model = model if model is not None else build_model()
        self.data = mujoco.MjData(self.model)  # kinematics scratchpad, never stepped
        self._ee = self.model.site("ee").id
        self.reset()

    def reset(self) -> None:
        self.phase = "approach"
        self._f1 = np.zeros(6)  # command filter states
        self._f2 = np.zeros(6)

    def act(self, obs: np.ndarray) -> np.ndarray:
        obs = np.asarray(obs, dtype=np.float64)
        q, ee = obs[:6], obs[slice(*EE_SLICE)]
        target = obs[slice(*GOAL_SLICE)] if self.task == "reach" else self._push_target(ee, obs)
        dq = self._dls(q, ee, target)
        return self._filter(dq).astype(np.float32)

    # -- push script: hover behind the box, lower, push along box->goal, re-approach on drift --
    def _push_target(self, ee: np.ndarray, obs: np.ndarray) -> np.ndarray:
        obj, goal = obs[slice(*OBJ_SLICE)][:2], obs[slice(*GOAL_SLICE)][:2]
        to_goal = goal - obj
        dist = np.linalg.norm(to_goal)
        u = to_goal / max(dist, 1e-6)
        behind = obj - u * BEHIND
        rel = ee[:2] - obj
        lateral = abs(rel[0] * u[1] - rel[1] * u[0])
        along = rel @ u  # negative when the tool is behind the box
        if self.phase == "push" and (lateral > 0.035 or along > -BOX_HALF):
            self.phase = "retreat"
        if self.phase == "retreat":
            if ee[2] > HOVER_Z - 0.02:
                self.phase = "approach"
            return np.array([*ee[:2], HOVER_Z])
        if self.phase == "approach":
            if np.linalg.norm(ee[:2] - behind) < 0.015:
                self.phase = "lower"
            return np.array([*behind, HOVER_Z])
        if self.phase == "lower":
            if ee[2] < PUSH_Z + 0.01:
                self.phase = "push"
            return np.array([*behind, PUSH_Z])
        if dist < 0.02:  # close enough: hold still so the box settles on the goal
            return np.array([*ee[:2], PUSH_Z])
        # Forward: lead the box a little. Sideways: boost the correction, since a
        # tool that lags off the box->goal line turns the box away from the goal.
        n = np.array([-u[1], u[0]])
        side = (behind - ee[:2]) @ n
        lead = min(dist, 0.05)
        return np.array([*(behind + u * lead + n * LATERAL_BOOST * side), PUSH_Z])

    def _dls(self, q: np.ndarray, ee: np.ndarray, target: np.ndarray) -> np.ndarray:
        m, d = self.model, self.data
        d.qpos[:6] = q
        mujoco.mj_kinematics(m, d)
        mujoco.mj_comPos(m, d)
        jp, jr = np.zeros((3, m.nv)), np.zeros((3, m.nv))
        mujoco.mj_jacSite(m, d, jp, jr, self._ee)
        v = IK_GAIN * (target - ee)
        speed = np.linalg.norm(v)
        if speed > MAX_EE_SPEED:
            v *= MAX_EE_SPEED / speed
        tool_axis = -d.site_xmat[self._ee].reshape(3, 3)[:, 2]
        w = ORIENT_GAIN * np.cross(tool_axis, DOWN)
        J = np.vstack([jp[:, :6], jr[:, :6]])  # (6, 6)
        err = np.concatenate([v, w])
        dq = J.T @ np.linalg.solve(J @ J.T + IK_DAMPING**2 * np.eye(6), err)
        # stay clear of the position limits: never drive further into a limit
        margin = 0.05
        dq[(q < JOINT_LOW + margin) & (dq < 0)] = 0.0
        dq[(q > JOINT_HIGH - margin) & (dq > 0)] = 0.0
        scale = np.max(np.abs(dq) / MAX_VEL)
        return dq / scale if scale > 1 else dq

    def _filter(self, dq: np.ndarray) -> np.ndarray:
        self._f1 += FILTER_ALPHA * (dq - self._f1)
        self._f2 += FILTER_ALPHA * (self._f1 - self._f2)
        return np.clip(self._f2, -_MAX_VEL_F32, _MAX_VEL_F32)


# ---- tasks -----------------------------------------------------------------
def _expert_for(task: str, env: gym.Env) -> JacoExpert:
    return JacoExpert(task, env.unwrapped.model)


# functools.partial of module-level callables, so tasks pickle into worker processes.
def _make_env(task: str):
    return functools.partial(JacoEnv, task)


def _make_expert(task: str):
    return functools.partial(_expert_for, task)


register(Task(
    id="arm/jaco-reach", spec=SPEC,
    instruction_en="Move the tool tip of the arm to the target point.",
    instruction_ja="アームのツール先端を目標点まで動かしてください。",
    max_steps=MAX_STEPS["reach"], make_env=_make_env("reach"), make_expert=_make_expert("reach"),
    groups=("arms",), pixel_spec=build_pixel_spec, make_pixel_env=functools.partial(make_pixel_env, "reach"),
))
register(Task(
    id="arm/jaco-push", spec=SPEC,
    instruction_en="Push the box across the table onto the goal marker.",
    instruction_ja="箱をテーブルの上で押して、目標マーカーの位置まで動かしてください。",
    max_steps=MAX_STEPS["push"], make_env=_make_env("push"), make_expert=_make_expert("push"),
    groups=("arms",), pixel_spec=build_pixel_spec, make_pixel_env=functools.partial(make_pixel_env, "push"),
))
