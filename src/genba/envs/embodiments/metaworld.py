"""Sawyer arm: all 50 Meta-World v3 (MT50) tasks, MT10 named as a subset.

Envs are built per task with fresh object and goal positions at every reset,
an observable goal with its real observation bounds, ``reset(seed=s)`` that
actually seeds, and the same clipping on ``reset`` and ``step``: each fixes a
trap of Meta-World 3.1.1 (which, and why: docs/machines.md#sawyer-arm-meta-world).
The 39-d observation is the current frame (hand xyz, gripper opening, two
objects' position and quaternion), the previous frame, and the goal xyz.

The pixels view (spec ``sawyer_px``) keeps the hand and gripper, hands the goal
over as a command only where the task gives it to the machine
(:data:`GOAL_COMMAND_TASKS`), and adds the ``corner2`` camera
(docs/machines.md#cameras).
"""

from __future__ import annotations

import dataclasses
import functools
import types
import warnings
from typing import Any

import gymnasium as gym
import numpy as np

from genba.data.spec import CameraSpec, EmbodimentSpec, SafetyLimits
from genba.envs.registry import DEFAULT_CAMERA_SIZE, Task, register

MAX_STEPS = 500  # Meta-World's horizon (max_path_length)
HOLD_STEPS = 10  # frames kept after first success so the policy learns to hold
CONTROL_PERIOD = 5 * 0.0025  # frame_skip * model timestep; checked against the env in tests

# Observation bounds that hold for every task (docs/machines.md#sawyer-arm-meta-world).
_HAND_LOW, _HAND_HIGH = (-0.525, 0.348, -0.0525), (0.525, 1.025, 0.7)  # SawyerXYZEnv._HAND_SPACE
_GOAL_LOW, _GOAL_HIGH = (-0.5, 0.4, -0.15), (0.51, 1.0, 0.5)  # union of the 50 tasks' goal_space
_MOCAP_LOW, _MOCAP_HIGH = (-0.5, 0.35, -0.15), (0.5, 1.0, 0.5)  # union of the tasks' hand_low/high

MT10 = ("reach-v3", "push-v3", "pick-place-v3", "door-open-v3", "drawer-open-v3", "drawer-close-v3",
        "button-press-topdown-v3", "peg-insert-side-v3", "window-open-v3", "window-close-v3")

# Env name -> (English, Japanese). Written by hand, one line each.
INSTRUCTIONS: dict[str, tuple[str, str]] = {
    "assembly-v3": ("Pick up the round nut and fit it onto the peg.", "丸ナットをつかんでペグにはめてください。"),
    "basketball-v3": ("Pick up the ball and drop it into the basket.", "ボールをつかんでバスケットに入れてください。"),
    "bin-picking-v3": ("Move the object from one bin into the other bin.", "物体を片方の箱からもう一方の箱へ移してください。"),
    "box-close-v3": ("Pick up the lid and put it on the box.", "ふたをつかんで箱にかぶせてください。"),
    "button-press-topdown-v3": ("Press the button down from above.", "ボタンを上から押してください。"),
    "button-press-topdown-wall-v3": ("Press the button down from above, reaching past the wall.",
                                     "壁の向こうのボタンを上から押してください。"),
    "button-press-v3": ("Press the button from the front.", "ボタンを正面から押してください。"),
    "button-press-wall-v3": ("Press the button from the front, reaching around the wall.",
                             "壁をよけてボタンを正面から押してください。"),
    "coffee-button-v3": ("Press the button on the coffee machine.", "コーヒーマシンのボタンを押してください。"),
    "coffee-pull-v3": ("Pull the mug out from under the coffee machine.", "コーヒーマシンの下からマグカップを引き出してください。"),
    "coffee-push-v3": ("Push the mug under the coffee machine.", "マグカップをコーヒーマシンの下まで押してください。"),
    "dial-turn-v3": ("Turn the dial.", "ダイヤルを回してください。"),
    "disassemble-v3": ("Lift the round nut off the peg.", "丸ナットをペグから抜き取ってください。"),
    "door-close-v3": ("Push the door closed.", "ドアを押して閉めてください。"),
    "door-lock-v3": ("Turn the knob to lock the door.", "つまみを回してドアに鍵をかけてください。"),
    "door-open-v3": ("Pull the door open by its handle.", "取っ手を引いてドアを開けてください。"),
    "door-unlock-v3": ("Turn the knob to unlock the door.", "つまみを回してドアの鍵を開けてください。"),
    "hand-insert-v3": ("Put the gripper into the hole in the table.", "グリッパーをテーブルの穴に入れてください。"),
    "drawer-close-v3": ("Push the drawer closed.", "引き出しを押して閉めてください。"),
    "drawer-open-v3": ("Pull the drawer open.", "引き出しを引いて開けてください。"),
    "faucet-open-v3": ("Turn the faucet handle to open it.", "蛇口のハンドルを回して開けてください。"),
    "faucet-close-v3": ("Turn the faucet handle to close it.", "蛇口のハンドルを回して閉めてください。"),
    "hammer-v3": ("Pick up the hammer and drive the nail in.", "ハンマーを持って釘を打ち込んでください。"),
    "handle-press-side-v3": ("Press the handle down from the side.", "ハンドルを横から押し下げてください。"),
    "handle-press-v3": ("Press the handle down.", "ハンドルを押し下げてください。"),
    "handle-pull-side-v3": ("Pull the handle up from the side.", "ハンドルを横から引き上げてください。"),
    "handle-pull-v3": ("Pull the handle up.", "ハンドルを引き上げてください。"),
    "lever-pull-v3": ("Pull the lever up.", "レバーを引き上げてください。"),
    "pick-place-wall-v3": ("Pick up the puck and place it at the goal behind the wall.",
                           "パックを持ち上げて、壁の向こうの目標位置に置いてください。"),
    "pick-out-of-hole-v3": ("Pick the peg out of the hole and lift it to the goal.",
                            "穴からペグを抜き出して目標位置まで持ち上げてください。"),
    "pick-place-v3": ("Pick up the puck and place it at the goal position.", "パックを持ち上げて目標位置に置いてください。"),
    "plate-slide-v3": ("Slide the plate into the cabinet.", "皿を滑らせて棚に入れてください。"),
    "plate-slide-side-v3": ("Slide the plate sideways into the cabinet.", "皿を横から滑らせて棚に入れてください。"),
    "plate-slide-back-v3": ("Slide the plate back out of the cabinet.", "棚から皿を滑らせて引き出してください。"),
    "plate-slide-back-side-v3": ("Slide the plate sideways out of the cabinet.", "棚から皿を横に滑らせて引き出してください。"),
    "peg-insert-side-v3": ("Insert the peg into the hole from the side.", "ペグを横から穴に差し込んでください。"),
    "peg-unplug-side-v3": ("Pull the peg sideways out of the hole.", "ペグを横に引き抜いてください。"),
    "soccer-v3": ("Push the ball into the goal.", "ボールを押してゴールに入れてください。"),
    "stick-push-v3": ("Grasp the stick and push the bottle to the goal with it.",
                      "棒をつかみ、その棒でボトルを目標位置まで押してください。"),
    "stick-pull-v3": ("Grasp the stick and pull the bottle to the goal with it.",
                      "棒をつかみ、その棒でボトルを目標位置まで引き寄せてください。"),
    "push-v3": ("Push the puck to the goal position.", "パックを目標位置まで押してください。"),
    "push-wall-v3": ("Push the puck around the wall to the goal position.", "壁を回り込んでパックを目標位置まで押してください。"),
    "push-back-v3": ("Pull the puck back to the goal position.", "パックを手前の目標位置まで引き戻してください。"),
    "reach-v3": ("Move the gripper to the goal position.", "グリッパーを目標位置まで動かしてください。"),
    "reach-wall-v3": ("Move the gripper over the wall to the goal position.", "壁を越えてグリッパーを目標位置まで動かしてください。"),
    "shelf-place-v3": ("Pick up the puck and place it on the shelf.", "パックを持ち上げて棚の上に置いてください。"),
    "sweep-into-v3": ("Sweep the puck into the hole.", "パックを掃くように動かして穴に入れてください。"),
    "sweep-v3": ("Sweep the puck off the edge of the table.", "パックを掃くように動かしてテーブルの端から落としてください。"),
    "window-open-v3": ("Slide the window open.", "窓をスライドさせて開けてください。"),
    "window-close-v3": ("Slide the window closed.", "窓をスライドさせて閉めてください。"),
}


# ---- the spec ----------------------------------------------------------------
def _frame_features(prefix: str) -> list[tuple[str, str, float, float]]:
    """(name, unit, low, high) for one 18-entry frame of the observation."""
    inf = float("inf")
    feats = [(f"{prefix}hand_{a}", "m", lo, hi) for a, lo, hi in zip("xyz", _HAND_LOW, _HAND_HIGH)]
    feats.append((f"{prefix}gripper_open", "1", 0.0, 1.0))  # finger distance / 0.1 m, clipped to [0, 1]
    for obj in ("obj1", "obj2"):
        feats += [(f"{prefix}{obj}_{a}", "m", -inf, inf) for a in "xyz"]
        feats += [(f"{prefix}{obj}_q{i}", "1", -1.0, 1.0) for i in range(4)]
    return feats


def build_spec() -> EmbodimentSpec:
    """The one ``sawyer`` spec shared by all 50 tasks."""
    feats = _frame_features("") + _frame_features("prev_")
    feats += [(f"goal_{a}", "m", lo, hi) for a, lo, hi in zip("xyz", _GOAL_LOW, _GOAL_HIGH)]
    names, units, low, high = zip(*feats)
    # Objects are simulator ground truth; so is the goal here, since most tasks derive it from an
    # object's pose (GOAL_COMMAND_TASKS lists those that hand it over: the pixels view keeps it there).
    roles = tuple("sensor" if n.removeprefix("prev_").startswith(("hand_", "gripper")) else "sim" for n in names)
    return EmbodimentSpec(
        name="sawyer", obs_roles=roles,
        robot_type="sawyer",
        obs_names=names, obs_units=units, obs_low=low, obs_high=high,
        action_names=("dx", "dy", "dz", "grip"),
        action_units=("1", "1", "1", "1"),  # normalized; xyz step = action * 1 cm per control period
        action_low=(-1.0,) * 4, action_high=(1.0,) * 4,
        control_period=CONTROL_PERIOD,
        action_meaning="end-effector delta",
        description=(
            "Rethink Sawyer in Meta-World v3 (mocap-driven end effector, parallel gripper). Observation: "
            "current frame (hand xyz, gripper opening 0..1, obj1 and obj2 position and quaternion; obj2 and "
            "unused entries are zero), previous frame (prev_*), goal xyz. Quaternion order is the simulator's "
            "per task (w,x,y,z for body quaternions, x,y,z,w where the task derives it with scipy). "
            "Action: xyz hand displacement of action*1 cm per step, grip torque (+1 closes)."),
        safety=SafetyLimits(
            # A full reversal of a normalized command within 2 steps for xyz, within 1 for the gripper
            # (the scripted experts open and close it bang-bang).
            max_rate=(80.0, 80.0, 80.0, 160.0),
            max_accel=(6400.0, 6400.0, 6400.0, 12800.0),
            position_obs_index=(0, 1, 2, -1),
            position_low=_MOCAP_LOW + (0.0,), position_high=_MOCAP_HIGH + (1.0,),
            ee_obs_slice=(0, 3),
        ),
    )


SPEC = build_spec()


# ---- the pixels view -----------------------------------------------------------
PIXEL_NAME = "sawyer_px"
# LeRobot's Meta-World env moves corner2 here (its comment cites arXiv 2206.14244) and flips both image
# axes (the camera is mounted upside down); we do the same, so our frames match LeRobot's datasets. Its
# fovy (60) is kept: at 45 the objects double in size but a lifted hand leaves the top of the frame.
CORNER2_POS = (0.75, 0.075, 0.7)
CAMERAS = {"corner2": "corner2"}
CAMERA_FLIP = {"corner2": (0, 1)}
# Tasks whose goal is a free target position drawn apart from the objects' poses: the task hands it to
# the machine, like a drive's reference, so the pixels view keeps it as a command. Everywhere else the
# goal is derived from an object or fixture pose (door-open: handle + offset, drawer: drawer + offset,
# button: the button's hole, peg-insert: the box's hole, window: the window's pose): giving it would leak
# that pose, so the entries hold the centre of the goal range with goal_given = 0, and the camera shows
# the object the goal follows from.
GOAL_COMMAND_TASKS = frozenset({"reach-v3", "push-v3", "pick-place-v3", "push-back-v3", "reach-wall-v3",
                                "push-wall-v3", "pick-place-wall-v3"})
_GOAL_MID = tuple((lo + hi) / 2 for lo, hi in zip(_GOAL_LOW, _GOAL_HIGH))


@functools.lru_cache(maxsize=8)
def build_pixel_spec(camera_size: int = DEFAULT_CAMERA_SIZE) -> EmbodimentSpec:
    """``sawyer_px``: hand xyz and gripper (sensor), goal xyz and goal_given (command), the corner2 camera."""
    names = ("hand_x", "hand_y", "hand_z", "gripper_open", "goal_x", "goal_y", "goal_z", "goal_given")
    return dataclasses.replace(
        SPEC, name=PIXEL_NAME, obs_mode="pixels",
        obs_names=names, obs_units=("m", "m", "m", "1", "m", "m", "m", "1"),
        obs_low=(*_HAND_LOW, 0.0, *_GOAL_LOW, 0.0), obs_high=(*_HAND_HIGH, 1.0, *_GOAL_HIGH, 1.0),
        obs_roles=("sensor",) * 4 + ("command",) * 4,
        cameras=tuple(CameraSpec(n, camera_size, camera_size, src) for n, src in CAMERAS.items()),
        description=(
            "Rethink Sawyer in Meta-World v3, seen through a camera. Observation: hand xyz and gripper "
            "opening 0..1 (sensor); goal xyz and goal_given (command: the goal where the task hands it to "
            "the machine, else the centre of the goal range with goal_given 0); corner2 camera (LeRobot's "
            "pose). Action as in the 'sawyer' spec."))


def make_pixel_env(env_name: str, seed: int, camera_size: int = DEFAULT_CAMERA_SIZE) -> Any:
    from genba.envs.render import CameraRenderer, PixelEnv

    env = SawyerEnv(env_name, seed)
    model = env.sim.model
    model.cam_pos[model.camera("corner2").id] = CORNER2_POS
    renderer = CameraRenderer(model, CAMERAS, camera_size, camera_size, flip=CAMERA_FLIP)
    given = env_name in GOAL_COMMAND_TASKS

    def project(obs: np.ndarray) -> np.ndarray:
        goal = obs[36:39] if given else _GOAL_MID
        return np.concatenate([obs[:4], goal, [1.0 if given else 0.0]])

    return PixelEnv(env, build_pixel_spec(camera_size), renderer, env.sim.data, project)


# ---- the Gymnasium env -------------------------------------------------------
def build_sim(env_name: str) -> Any:
    """One Meta-World env, randomized per reset, goal observable, task 'set'."""
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS  # lazy: importing metaworld costs ~0.7 s

    if env_name not in ALL_V3_ENVIRONMENTS:
        raise KeyError(f"Meta-World has no environment {env_name!r}")
    sim = ALL_V3_ENVIRONMENTS[env_name]()
    sim._partially_observable = False
    sim._freeze_rand_vec = False
    sim.seeded_rand_vec = True  # draw reset vectors from sim.np_random, which sim.seed() sets
    sim._set_task_called = True  # we randomize per reset instead of using set_task's fixed goals
    sim.__dict__.pop("sawyer_observation_space", None)  # recompute with the real goal bounds
    sim.max_path_length = MAX_STEPS
    # Meta-World walks MuJoCo's contact list in Python twice per step to compute
    # the grasp reward (about half the step time in pick-place/push); this does
    # the same sums on the contact arrays. tests/envs check it agrees.
    sim.touching_object = types.MethodType(touching_object_fast, sim)
    return sim


def touching_object_fast(sim: Any, object_geom_id: int) -> bool:
    """``SawyerXYZEnv.touching_object`` on arrays: both pads press on the object."""
    con = sim.data.contact
    if len(con) == 0:
        return False
    g1, g2 = np.asarray(con.geom1), np.asarray(con.geom2)
    force = sim.data.efc_force[np.asarray(con.efc_address)]  # efc_address -1 reads the last entry, as upstream
    on_obj = (g1 == object_geom_id) | (g2 == object_geom_id)
    pads = (sim.data.geom("leftpad_geom").id, sim.data.geom("rightpad_geom").id)
    return all(0 < force[on_obj & ((g1 == pad) | (g2 == pad))].sum() for pad in pads)


# Model fields Meta-World's reset_model writes (body, site and geom placement).
_MOVABLE_MODEL_FIELDS = ("body_pos", "body_quat", "site_pos", "site_quat", "geom_pos", "geom_quat")


class SawyerEnv(gym.Env):
    """One Meta-World task as a Gymnasium env with float32 observations of ``SPEC``."""

    metadata = {"render_modes": []}

    def __init__(self, env_name: str, seed: int, max_steps: int = MAX_STEPS) -> None:
        self.env_name = env_name
        self.max_steps = max_steps
        self.sim = build_sim(env_name)
        self.sim.max_path_length = max_steps
        self.sim.seed(int(seed))
        self._clip = self.sim.sawyer_observation_space  # per-task bounds, inside SPEC's
        self._model_as_built = {name: getattr(self.sim.model, name).copy() for name in _MOVABLE_MODEL_FIELDS}
        self.observation_space = gym.spaces.Box(np.array(SPEC.obs_low, np.float32),
                                                np.array(SPEC.obs_high, np.float32), dtype=np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, shape=(SPEC.action_dim,), dtype=np.float32)
        self._t = 0

    def _obs(self, raw: np.ndarray) -> np.ndarray:
        return np.clip(raw, self._clip.low, self._clip.high).astype(np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if seed is not None:
            self.sim.seed(int(seed))
        raw = self._sim_reset()
        self._t = 0
        return self._obs(raw), {"success": False}

    def _sim_reset(self) -> np.ndarray:
        """``SawyerXYZEnv.reset`` without its wasted half.

        Upstream runs ``reset_model`` (50 hand-settling steps) itself and then
        again inside ``MujocoEnv.reset`` after ``mj_resetData`` wipes the first
        run; a reset cost ~34 env steps. Calling ``MujocoEnv.reset`` alone
        gives the same state distribution at half the cost, provided the model
        is first put back as built: ``reset_model`` moves bodies and sites in
        the *model*, and the hand settles before it does, so without the
        restore the previous episode's layout leaks into the next (tests check
        that a seed gives the same episode whatever ran before). The
        observation ``reset_model`` returns predates its own moves (upstream
        hides that behind its first run): ``mj_forward`` and a fresh
        observation fix it. The frame stack is then seeded with the current
        frame, as upstream does.
        """
        import mujoco
        from gymnasium.envs.mujoco import MujocoEnv

        sim = self.sim
        sim.curr_path_length = 0
        for name, value in self._model_as_built.items():
            getattr(sim.model, name)[:] = value
        MujocoEnv.reset(sim)
        mujoco.mj_forward(sim.model, sim.data)
        raw = np.asarray(sim._get_obs(), dtype=np.float64)
        sim._prev_obs = raw[:18].copy()
        raw[18:36] = sim._prev_obs
        return raw

    def step(self, action):
        a = np.asarray(action, dtype=np.float64).reshape(-1)
        if a.shape != (SPEC.action_dim,):
            raise ValueError(f"{self.env_name}: action must have shape ({SPEC.action_dim},), got {a.shape}")
        raw, reward, _, _, info = self.sim.step(np.clip(a, -1.0, 1.0))
        self._t += 1
        info = dict(info, success=bool(info["success"]))
        return self._obs(raw), float(reward), False, self._t >= self.max_steps, info

    def close(self) -> None:
        self.sim.close()


# ---- the expert --------------------------------------------------------------
class MetaWorldExpert:
    """Meta-World's scripted policy for one task (stateless), as an ``Expert``."""

    def __init__(self, env_name: str) -> None:
        from metaworld.policies import ENV_POLICY_MAP

        self._policy = ENV_POLICY_MAP[env_name]()

    def reset(self) -> None:
        pass

    def act(self, obs: np.ndarray) -> np.ndarray:
        # The policies warn "Constant(s) may be too high" on most steps; the env clips anyway.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"Constant\(s\) may be too high")
            a = self._policy.get_action(np.asarray(obs, dtype=np.float64))
        return np.clip(a, -1.0, 1.0).astype(np.float32)


def make_env(env_name: str, seed: int) -> SawyerEnv:
    return SawyerEnv(env_name, seed)


def make_expert(env_name: str, env: gym.Env) -> MetaWorldExpert:
    return MetaWorldExpert(env_name)


def _register_all() -> None:
    for name, (en, ja) in INSTRUCTIONS.items():
        register(Task(
            id=f"metaworld/{name}", spec=SPEC, instruction_en=en, instruction_ja=ja, max_steps=MAX_STEPS,
            make_env=functools.partial(make_env, name), make_expert=functools.partial(make_expert, name),
            groups=("mt50", "mt10") if name in MT10 else ("mt50",), stop_after_success=HOLD_STEPS,
            pixel_spec=build_pixel_spec, make_pixel_env=functools.partial(make_pixel_env, name),
        ))


_register_all()
