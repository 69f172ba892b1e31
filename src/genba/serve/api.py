"""The policy server's HTTP contract: request and response bodies, the error body and which
error statuses each route documents. The OpenAPI document is built from these alone, and a
schemathesis test (tests/serve/test_server_openapi.py) checks the server against it.

Camera frames: an embodiment with cameras (its spec's ``cameras``, e.g. ``sawyer_px``'s
``corner2`` at 64x64) takes one frame per camera and step in ``obs.images``: over HTTP
``{"shape": [H, W, 3], "dtype": "uint8", "data": base64 of the H*W*3 raw bytes}`` (row-major,
RGB, top row first), over the websocket the same map with ``data`` as raw msgpack bytes. The
server checks every frame against the spec (camera names, shape, dtype, byte count) before
the model and answers 422 naming the camera.

Request bodies are strict (no extra fields, no coercion, no NaN/inf). Response bodies allow
extra fields where the server may add diagnostics (shield counters, timing) without a
schema change breaking clients. Every error, whatever its status, is ``{"detail": str}``.
"""

from __future__ import annotations

import base64
import binascii
import math
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

SESSION = Field("default", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$",
                description="one machine's command stream (its shield, e-stop latch and policy state)")


class ServeError(Exception):
    """A refusal with its HTTP status; the message names the input or the limit."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


# ---- requests ----------------------------------------------------------------
class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


MAX_SIDE = 4096  # the largest camera side a spec may have (genba.data.spec)
MAX_CAMERAS = 8
CameraName = Annotated[str, Field(min_length=1, max_length=64)]


class _Frame(_Strict):
    shape: list[Annotated[int, Field(ge=1, le=MAX_SIDE)]] = Field(
        min_length=3, max_length=3, description="[height, width, 3]: the camera's size in the spec")
    dtype: Literal["uint8"] = Field("uint8", description="element type of data (uint8 only)")

    def array(self, camera: str) -> np.ndarray:
        """The frame as its own (H, W, 3) uint8 array (writable: torch takes it without a copy or a warning);
        ServeError 422 naming the camera if its bytes do not fill the shape."""
        raw = self.raw(camera)
        need = int(np.prod(self.shape))
        if len(raw) != need:
            raise ServeError(422, f"obs.images[{camera!r}]: {len(raw)} bytes of data, shape {self.shape} uint8 "
                                  f"needs {need}")
        return np.frombuffer(bytearray(raw), np.uint8).reshape(self.shape)


class Frame(_Frame):
    """One camera frame in a JSON body: the raw bytes in base64."""

    data: str = Field(max_length=4 * MAX_SIDE * MAX_SIDE, pattern=r"^[A-Za-z0-9+/]*={0,2}$",
                      description="base64 (RFC 4648, with padding) of the H*W*3 uint8 bytes, row-major, RGB, "
                                  "top row first")

    def raw(self, camera: str) -> bytes:
        try:
            return base64.b64decode(self.data, validate=True)
        except (binascii.Error, ValueError) as e:
            raise ServeError(422, f"obs.images[{camera!r}].data is not valid base64: {e}") from None


class RawFrame(_Frame):
    """One camera frame in a websocket (msgpack) frame: the raw bytes as msgpack bin."""

    data: bytes = Field(max_length=3 * MAX_SIDE * MAX_SIDE, description="the H*W*3 uint8 bytes, row-major, RGB")

    def raw(self, camera: str) -> bytes:
        return self.data


class Observation(_Strict):
    embodiment: str = Field(max_length=64, description="embodiment name, e.g. 'pmsm'")
    state: list[float] = Field(max_length=4096, description="observation vector (obs_dim,) in spec units")
    instruction: str = Field("", max_length=1024)
    images: dict[CameraName, Frame] | None = Field(
        None, max_length=MAX_CAMERAS,
        description="one frame per camera of the embodiment's spec (GET /v1/metadata: specs[name].cameras), "
                    "by camera name; omit for an embodiment without cameras")


class WsObservation(Observation):
    images: dict[CameraName, RawFrame] | None = Field(None, max_length=MAX_CAMERAS)


class InferRequest(_Strict):
    obs: Observation
    session: str = SESSION
    horizon: int | None = Field(None, ge=1, le=4096,
                                description="actions wanted, at most the model's chunk (GET /v1/metadata "
                                            "'chunk'); default: the whole chunk")


class WsInferRequest(InferRequest):
    """``InferRequest`` as a websocket frame: camera data as raw bytes, not base64."""

    obs: WsObservation


class SessionRequest(_Strict):
    session: str = SESSION
    reason: str = Field("requested", max_length=256)


# ---- responses ---------------------------------------------------------------
class ErrorBody(BaseModel):
    detail: str = Field(description="what was refused and why, naming the field or the limit")


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class ShieldStats(_Open):
    steps: int = Field(description="shield steps on this session")
    latched: bool = Field(description="e-stop latched: every action ramps to the stop value and holds")
    interventions: dict[str, int] = Field(description="times each limit changed a command")


class Timing(_Open):
    queue_ms: float
    model_ms: float
    batch_size: int
    shield_ms: float
    server_ms: float


class InferResponse(BaseModel):
    session: str
    embodiment: str
    actions: list[list[float]] = Field(description="shielded commands (horizon, action_dim) in spec units")
    shield: ShieldStats
    timing: Timing


class ResetResponse(BaseModel):
    session: str
    reset: bool
    latched: bool


class EstopResponse(BaseModel):
    session: str
    latched: bool


class HealthResponse(BaseModel):
    status: Literal["ok"]
    inflight: int
    sessions: int
    latched_sessions: int
    served: int
    batches: int
    batched_items: int


class MetadataResponse(_Open):
    specs: dict[str, dict[str, Any]] = Field(description="embodiment specs served, by name")
    granted: list[str] = Field(description="embodiments this token's organization may use")
    chunk: int = Field(description="actions per model call: the largest horizon")


def infer_examples(specs) -> dict[str, dict[str, Any]]:
    """One valid infer request per served embodiment, for the document (and its fuzzers' explicit
    phase): the state at the middle of each observation range (0 where a range is unbounded), a
    mid-grey frame per camera."""
    out = {}
    for name, spec in sorted(specs.items()):
        state = [(lo + hi) / 2 if math.isfinite(lo) and math.isfinite(hi) else min(max(0.0, lo), hi)
                 for lo, hi in zip(spec.obs_low, spec.obs_high)]
        obs: dict[str, Any] = {"embodiment": name, "state": state, "instruction": ""}
        if spec.cameras:
            obs["images"] = {c.name: encode_frame(np.full(c.shape, 128, np.uint8)) for c in spec.cameras}
        out[name] = {"summary": f"{name}: {spec.obs_dim} observations"
                                f"{''.join(f' + {c.name} {c.height}x{c.width}' for c in spec.cameras)}"
                                f" -> {spec.action_dim} actions per step",
                     "value": {"obs": obs, "session": "default"}}
    return out


def encode_frame(image: np.ndarray) -> dict[str, Any]:
    """An (H, W, 3) uint8 array as the JSON body's frame (what ``genba_client`` sends)."""
    a = np.ascontiguousarray(image)
    return {"shape": list(a.shape), "dtype": str(a.dtype), "data": base64.b64encode(a.tobytes()).decode("ascii")}


def body_limit(specs, base: int = 64 * 1024) -> int:
    """The default request size limit for these served specs: ``base`` (64 KiB: a state vector of 4,096
    numbers in JSON) plus the base64 frames of the embodiment with the most camera bytes (16 KiB per
    64x64 camera) and 256 bytes of keys per frame; the raw websocket frames are 3/4 of that."""
    per_spec = [sum(4 * c.height * c.width + 256  # base64 of H*W*3 bytes: 4 * H * W characters
                     for c in spec.cameras) for spec in specs.values()]
    return base + max(per_spec, default=0)


# ---- error statuses per route ----------------------------------------------
_WHY = {
    400: "the body could not be parsed (not UTF-8 or not readable JSON)",
    401: "missing, unknown or revoked API token",
    403: "the organization is not granted this embodiment, or may not reset an e-stop",
    413: "request body larger than the server's max_body_bytes (default: 64 KiB plus the base64 frames of "
         "the served embodiment with the most camera bytes)",
    422: "the body does not validate (the field is named), horizon above the model's chunk, or a camera "
         "frame that disagrees with the spec (missing or unknown camera, shape, dtype, byte count; the "
         "camera is named)",
    429: "the organization's session quota is used up by latched or busy sessions",
    503: "server busy (max_inflight requests in flight) or its session table full (max_sessions)",
}


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for these error statuses, each with the one error body."""
    return {s: {"model": ErrorBody, "description": _WHY[s]} for s in statuses}
