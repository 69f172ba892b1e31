"""The policy server's HTTP contract: request bodies and the refusal they may meet.

Request bodies are strict (no extra fields, no coercion, no NaN/inf).
"""

from __future__ import annotations

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
