"""Offscreen MuJoCo rendering with the fast settings, one GL context per process.

MuJoCo's default visual settings cost a fixed ~140 ms per frame on Mesa's
software rasterizer (shadow maps and multisampling): ~7 step+render/s whatever
the size. With ``vis.quality.shadowsize = 0``, ``offsamples = 0`` and the
shadow, reflection and skybox flags off after each scene update, a Meta-World
frame costs a few ms (../shared/machine-notes.md; figures in docs/machines.md#cameras,
``benchmarks/render.py``).

The GL context is made here rather than through ``mujoco.Renderer``: that one
takes its backend from ``MUJOCO_GL`` when ``mujoco`` is first imported, and the
test suite and the state-mode workers run with ``MUJOCO_GL=disable``. EGL is the
default (Mesa's ``libEGL_mesa`` on a CPU-only machine, the driver's on a GPU);
``MUJOCO_GL=osmesa`` selects OSMesa instead.
"""

from __future__ import annotations

import atexit
import os
from typing import Any

import mujoco
import numpy as np

_CONTEXT: Any = None  # this process's GL context (one serves every model's MjrContext)


class RenderError(RuntimeError):
    """No GL context could be made, or a camera is missing."""


def _free_context() -> None:
    global _CONTEXT
    if _CONTEXT is not None:
        _CONTEXT.free()
        _CONTEXT = None


def gl_context() -> Any:
    """This process's offscreen GL context, made current (created on first use)."""
    global _CONTEXT
    if _CONTEXT is None:
        backend = "osmesa" if os.environ.get("MUJOCO_GL", "").lower() == "osmesa" else "egl"
        try:
            if backend == "osmesa":
                from mujoco.osmesa import GLContext
            else:
                from mujoco.egl import GLContext
            _CONTEXT = GLContext(64, 64)  # the offscreen framebuffer's size comes from the model, not this
            atexit.register(_free_context)  # while PyOpenGL still exists: its __del__ at teardown prints a traceback
        except Exception as e:  # ImportError, EGLError, AttributeError from PyOpenGL without a library
            raise RenderError(f"cannot make a {backend} GL context for rendering ({type(e).__name__}: {e}); "
                              "install the system libraries with `make render-deps` (libegl1, libgl1-mesa-dri)"
                              ) from None
    _CONTEXT.make_current()
    return _CONTEXT


def apply_fast_settings(model: mujoco.MjModel, height: int, width: int) -> None:
    """No shadow map, no multisampling, an offscreen buffer at least ``height`` x ``width``."""
    model.vis.quality.shadowsize = 0
    model.vis.quality.offsamples = 0
    model.vis.global_.offwidth = max(int(model.vis.global_.offwidth), width)
    model.vis.global_.offheight = max(int(model.vis.global_.offheight), height)


def add_lookat_camera(body: mujoco.MjsBody, name: str, pos, look_at, fovy: float) -> mujoco.MjsCamera:
    """A fixed camera on an ``MjSpec`` body at ``pos`` looking at ``look_at``, image upright (world z up)."""
    fwd = np.subtract(look_at, pos, dtype=float)
    fwd /= np.linalg.norm(fwd)
    right = np.cross(fwd, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    cam = body.add_camera()
    cam.name, cam.pos, cam.fovy = name, list(pos), fovy
    cam.alt.type = mujoco.mjtOrientation.mjORIENTATION_XYAXES
    cam.alt.xyaxes = [*right, *np.cross(right, fwd)]  # x right, y up; a MuJoCo camera looks along -z
    return cam


class CameraRenderer:
    """Renders named cameras of one model at one size, as (H, W, 3) uint8 images, top row first.

    ``model`` is modified (fast settings) before its GL resources are made, so
    pass a model that only this env uses or one whose every user wants them.
    ``flip`` maps a camera name to the numpy axes to flip after reading (a
    camera mounted upside down, as Meta-World's ``corner2``).
    """

    def __init__(self, model: mujoco.MjModel, cameras: dict[str, str], height: int, width: int,
                 flip: dict[str, tuple[int, ...]] | None = None) -> None:
        gl_context()
        apply_fast_settings(model, height, width)
        self.model, self.height, self.width = model, height, width
        self._cams = {}
        for name, source in cameras.items():
            cam_id = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, source)
            if cam_id < 0:
                raise RenderError(f"camera {name!r}: the model has no camera {source!r}")
            cam = mujoco.MjvCamera()
            cam.type, cam.fixedcamid = mujoco.mjtCamera.mjCAMERA_FIXED, cam_id
            self._cams[name] = cam
        self._flip = dict(flip or {})
        self._opt = mujoco.MjvOption()
        self._scene = mujoco.MjvScene(model, maxgeom=2000)
        self._ctx = mujoco.MjrContext(model, mujoco.mjtFontScale.mjFONTSCALE_100)
        mujoco.mjr_setBuffer(mujoco.mjtFramebuffer.mjFB_OFFSCREEN, self._ctx)
        self._rect = mujoco.MjrRect(0, 0, width, height)
        self._buf = np.empty((height, width, 3), np.uint8)

    def render(self, data: mujoco.MjData, camera: str) -> np.ndarray:
        """The camera's view of ``data`` now: a fresh (H, W, 3) uint8 array."""
        gl_context()
        mujoco.mjv_updateScene(self.model, data, self._opt, None, self._cams[camera],
                               mujoco.mjtCatBit.mjCAT_ALL, self._scene)
        for flag in (mujoco.mjtRndFlag.mjRND_SHADOW, mujoco.mjtRndFlag.mjRND_REFLECTION,
                     mujoco.mjtRndFlag.mjRND_SKYBOX):
            self._scene.flags[flag] = 0
        mujoco.mjr_setBuffer(mujoco.mjtFramebuffer.mjFB_OFFSCREEN, self._ctx)
        mujoco.mjr_render(self._rect, self._scene, self._ctx)
        mujoco.mjr_readPixels(self._buf, None, self._rect, self._ctx)
        img = self._buf[::-1]  # OpenGL reads bottom row first
        axes = self._flip.get(camera)
        if axes:
            img = np.flip(img, axes)
        return np.ascontiguousarray(img)

    def render_all(self, data: mujoco.MjData) -> dict[str, np.ndarray]:
        return {name: self.render(data, name) for name in self._cams}

    def close(self) -> None:
        """Free the GL resources now (at interpreter exit PyOpenGL may already be gone)."""
        if self._ctx is not None:
            gl_context()
            self._ctx.free()
            self._ctx = None


class PixelEnv:
    """A state-mode env seen through cameras: the pixels-mode view of one task.

    ``reset``/``step`` return ``project(state_obs)`` (the pixels-mode vector of
    ``spec``) and put the cameras' images in ``info["images"]``; ``state_obs``
    keeps the full state-mode observation for a scripted expert. Gymnasium's
    API otherwise (``observation_space`` is the vector's; the images are in
    ``info`` so that code stacking observations into arrays works unchanged).
    """

    def __init__(self, state_env: Any, spec: Any, renderer: CameraRenderer, data: Any,
                 project: Any) -> None:
        import gymnasium as gym

        self.state_env, self.spec, self.renderer, self.data, self.project = state_env, spec, renderer, data, project
        self.observation_space = gym.spaces.Box(np.array(spec.obs_low, np.float32), np.array(spec.obs_high, np.float32),
                                                dtype=np.float32)
        self.action_space = state_env.action_space
        self.state_obs: np.ndarray | None = None

    @property
    def unwrapped(self) -> Any:
        return self.state_env.unwrapped

    def _view(self, obs: np.ndarray, info: dict) -> tuple[np.ndarray, dict]:
        self.state_obs = obs
        info = dict(info, images=self.renderer.render_all(self.data))
        return np.asarray(self.project(obs), np.float32), info

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        obs, info = self.state_env.reset(seed=seed, options=options)
        return self._view(obs, info)

    def step(self, action):
        obs, reward, terminated, truncated, info = self.state_env.step(action)
        obs, info = self._view(obs, info)
        return obs, reward, terminated, truncated, info

    def close(self) -> None:
        self.renderer.close()
        self.state_env.close()
