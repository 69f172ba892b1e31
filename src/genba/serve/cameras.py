"""Camera sources: where the OPC UA bridge's frames come from (issue 21, item 4).

OPC UA carries the machine's numbers; a cell's cameras are separate devices.
A :class:`CameraSource` is one method, ``read() -> {camera: (H, W, 3) uint8}``:
the newest frame of every camera of the embodiment's spec (``spec.cameras``:
names and sizes), RGB, top row first. The bridge's cycle calls it once per
cycle right after reading the observation nodes and posts the frames with the
observation to the prefetcher (``genba.serve.prefetch``), so the policy sees
both from one instant.

``read`` must answer at once: the cycle (10 ms by default) cannot wait for an
exposure. A source that blocks (a capture device that waits for its next frame,
a renderer that takes milliseconds) is wrapped in :class:`LatestFrames`, which
grabs in its own thread and hands out the newest frames; its ``age_s`` says how
old they are.

Implementations:

* :class:`RenderedCameras`: the simulator's renderer
  (:class:`genba.envs.render.CameraRenderer`) on a MuJoCo model's ``MjData``,
  the same cameras and settings as collection (``RenderedCameras.of_env`` takes
  them from a pixels-mode env, ``Task.view("pixels", size).make_env(seed)``).
* A real cell plugs in here: one ``cv2.VideoCapture`` per camera, each frame
  converted BGR -> RGB and resized to the spec's size with the same
  interpolation the training frames had, behind :class:`LatestFrames`
  (docs/safety.md#cameras-on-the-bridge has the sketch). Nothing else changes.

:func:`check_frames` is the check every source's output passes before it is
posted: exactly the spec's cameras, each (H, W, 3) uint8, else a ValueError
naming the camera.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from typing import Any, Protocol

import numpy as np

from genba.data.spec import EmbodimentSpec


class CameraSource(Protocol):
    """The newest frame of every camera, ``{camera: (H, W, 3) uint8}``; returns at once."""

    def read(self) -> dict[str, np.ndarray]: ...


def check_frames(spec: EmbodimentSpec, frames: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """``frames`` as exactly the spec's cameras, each a (H, W, 3) uint8 array, or ValueError naming the camera."""
    want = {c.name: c.shape for c in spec.cameras}
    extra = sorted(set(frames) - set(want))
    if extra:
        raise ValueError(f"camera source: embodiment {spec.name!r} has no camera {extra[0]!r}; "
                         f"its cameras: {sorted(want)}")
    out = {}
    for name, shape in want.items():
        if name not in frames:
            raise ValueError(f"camera source: no frame for camera {name!r} of embodiment {spec.name!r}")
        a = np.asarray(frames[name])
        if a.shape != shape or a.dtype != np.uint8:
            raise ValueError(f"camera source: camera {name!r} gave {a.shape} {a.dtype}, embodiment {spec.name!r} "
                             f"expects {shape} uint8")
        out[name] = a
    return out


class RenderedCameras:
    """The simulator's renderer as a camera source: ``renderer.render_all(data)`` of the live ``MjData``."""

    def __init__(self, renderer: Any, data: Any) -> None:
        self.renderer, self.data = renderer, data

    @classmethod
    def of_env(cls, env: Any) -> RenderedCameras:
        """The cameras of a pixels-mode env (``genba.envs.render.PixelEnv``), rendering its simulation."""
        return cls(env.renderer, env.data)

    def read(self) -> dict[str, np.ndarray]:
        return self.renderer.render_all(self.data)


class LatestFrames:
    """A blocking source read in its own thread; ``read`` returns the newest frames at once (it waits for
    the first only, up to ``first_timeout_s``). ``period_s`` paces the grabs (0: as fast as the source)."""

    def __init__(self, source: CameraSource, period_s: float = 0.0, first_timeout_s: float = 10.0) -> None:
        self.source, self.period_s, self.first_timeout_s = source, period_s, first_timeout_s
        self._cv = threading.Condition()
        self._frames: dict[str, np.ndarray] | None = None
        self._t = 0.0
        self._closed = False
        self.grabs, self.errors, self.last_error = 0, 0, None
        self._thread = threading.Thread(target=self._grab, name="genba-cameras", daemon=True)
        self._thread.start()

    def read(self) -> dict[str, np.ndarray]:
        with self._cv:
            if self._frames is None and not self._cv.wait_for(lambda: self._frames is not None,
                                                               self.first_timeout_s):
                raise TimeoutError(f"camera source: no frame within {self.first_timeout_s:g} s "
                                   f"(last error: {self.last_error})")
            return self._frames

    @property
    def age_s(self) -> float:
        """Seconds since the newest frames were grabbed."""
        return time.perf_counter() - self._t

    def close(self) -> None:
        with self._cv:
            self._closed = True
        self._thread.join(5)

    def _grab(self) -> None:
        while not self._closed:
            t0 = time.perf_counter()
            try:
                frames = self.source.read()
            except Exception as e:  # a camera that fails keeps its last frame; the age tells
                self.errors, self.last_error = self.errors + 1, f"{type(e).__name__}: {e}"
            else:
                with self._cv:
                    self._frames, self._t = frames, time.perf_counter()
                    self.grabs += 1
                    self._cv.notify_all()
            time.sleep(max(0.0, self.period_s - (time.perf_counter() - t0)) or 1e-4)
