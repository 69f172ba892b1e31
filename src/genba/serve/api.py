"""The policy server's HTTP contract: request and response bodies, the error body and which
error statuses each route documents. The OpenAPI document is built from these alone, and a
schemathesis test (tests/serve/test_server_openapi.py) checks the server against it.

Request bodies are strict (no extra fields, no coercion, no NaN/inf). Response bodies allow
extra fields where the server may add diagnostics (shield counters, timing) without a
schema change breaking clients. Every error, whatever its status, is ``{"detail": str}``.
"""

from __future__ import annotations

import math
from typing import Any, Literal

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


class Observation(_Strict):
    embodiment: str = Field(max_length=64, description="embodiment name, e.g. 'pmsm'")
    state: list[float] = Field(max_length=4096, description="observation vector (obs_dim,) in spec units")
    instruction: str = Field("", max_length=1024)


class InferRequest(_Strict):
    obs: Observation
    session: str = SESSION
    horizon: int | None = Field(None, ge=1, le=4096,
                                description="actions wanted, at most the model's chunk (GET /v1/metadata "
                                            "'chunk'); default: the whole chunk")


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
    phase): the state at the middle of each observation range (0 where a range is unbounded)."""
    out = {}
    for name, spec in sorted(specs.items()):
        state = [(lo + hi) / 2 if math.isfinite(lo) and math.isfinite(hi) else min(max(0.0, lo), hi)
                 for lo, hi in zip(spec.obs_low, spec.obs_high)]
        out[name] = {"summary": f"{name}: {spec.obs_dim} observations -> {spec.action_dim} actions per step",
                     "value": {"obs": {"embodiment": name, "state": state, "instruction": ""}, "session": "default"}}
    return out


# ---- error statuses per route ----------------------------------------------
_WHY = {
    400: "the body could not be parsed (not UTF-8 or not readable JSON)",
    401: "missing, unknown or revoked API token",
    403: "the organization is not granted this embodiment, or may not reset an e-stop",
    413: "request body larger than the server's max_body_bytes",
    422: "the body does not validate (the field is named), or horizon above the model's chunk",
    429: "the organization's session quota is used up by latched or busy sessions",
    503: "server busy (max_inflight requests in flight) or its session table full (max_sessions)",
}


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for these error statuses, each with the one error body."""
    return {s: {"model": ErrorBody, "description": _WHY[s]} for s in statuses}
