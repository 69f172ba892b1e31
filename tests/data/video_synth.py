"""Synthetic camera frames with structure (moving shapes on a gradient) and camera specs for tests."""

from __future__ import annotations

import dataclasses

import numpy as np
from data_synth import coded_episodes, make_spec

from genba.data.layout import Episode
from genba.data.spec import CameraSpec, EmbodimentSpec


def moving_shapes(t: int, h: int = 64, w: int = 64, phase: float = 0.0) -> np.ndarray:
    """(t, h, w, 3) uint8: a smooth background, a red disc on a circle, a blue bar sliding right."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    out = np.empty((t, h, w, 3), np.uint8)
    for k in range(t):
        img = np.stack([80 + 60 * xx / w, 90 + 50 * yy / h, np.full_like(xx, 110)], axis=-1)
        cx, cy = w / 2 + 0.3 * w * np.cos(k / 10 + phase), h / 2 + 0.3 * h * np.sin(k / 13 + phase)
        a = np.clip(0.1 * w - np.hypot(xx - cx, yy - cy), 0, 1)[..., None]
        img = img * (1 - a) + a * np.array([220, 60, 50], np.float32)
        bx = (k * 0.7 + 10 * phase) % (0.8 * w)
        bar = (np.abs(xx - bx - 4) < 4) & (np.abs(yy - 0.2 * h) < 3)
        img[bar] = (40, 160, 220)
        out[k] = img.astype(np.uint8)
    return out


def camera_spec(name: str = "cam", cameras=(("corner2", 64, 64),), obs_dim: int = 3, act_dim: int = 2,
                period: float = 0.0125, **kw) -> EmbodimentSpec:
    base = make_spec(name, obs_dim=obs_dim, act_dim=act_dim, period=period, **kw)
    return dataclasses.replace(base, cameras=tuple(CameraSpec(n, h, w, n) for n, h, w in cameras))


def camera_episodes(spec: EmbodimentSpec, lengths, n_tasks: int = 2) -> list[Episode]:
    """:func:`coded_episodes` plus moving-shape frames per camera (a different phase per episode)."""
    eps = coded_episodes(spec, lengths, n_tasks)
    return [dataclasses.replace(e, images={c.name: moving_shapes(len(e.observation), c.height, c.width, phase=i + j)
                                           for j, c in enumerate(spec.cameras)})
            for i, e in enumerate(eps)]
