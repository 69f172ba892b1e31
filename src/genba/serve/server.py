"""`genba serve`: the policy server (FastAPI; HTTP JSON and websocket msgpack on one app).

Notable features:

* ``POST /v1/infer``: observation in, shielded action chunk out with per-call
  server timing; ``POST /v1/reset``; ``POST /v1/estop`` and ``/v1/estop/reset``;
  ``GET /v1/health``; ``GET /v1/metadata`` (specs, model and lineage hashes);
  ``/v1/ws``: the same operations as msgpack frames. OpenAPI at ``/openapi.json``.
* ``Authorization: Bearer <token>`` on every call but health: unknown or revoked
  token -> 401, an embodiment not granted to the token's organization -> 403.
* Malformed requests (wrong shapes, types, NaN/inf, unknown embodiment,
  oversized bodies) get a 4xx naming the field and never reach the model.
* A micro-batcher gathers requests for ``batch_window_s`` and makes one model
  call for all of them (one trunk pass, even across embodiments); in-flight
  requests are bounded (503 beyond).
* One policy state and one :class:`SafetyShield` per (organization, session):
  every action leaves through the shield.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

import msgpack
import numpy as np
from fastapi import Depends, FastAPI, Request, WebSocket, WebSocketDisconnect
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from genba.data.spec import EmbodimentSpec
from genba.serve.auth import Principal, TokenStore, bearer
from genba.serve.backends import Backend
from genba.serve.shield import SafetyShield, ShieldConfig

API = "/v1"


@dataclass(frozen=True)
class ServerConfig:
    max_body_bytes: int = 64 * 1024
    max_inflight: int = 256
    batch_window_s: float = 0.0015
    max_batch: int = 64
    max_sessions: int = 1024
    shield: ShieldConfig = field(default_factory=ShieldConfig)


# ---- request bodies (also the OpenAPI schema) --------------------------------
class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class Observation(_Strict):
    embodiment: str = Field(max_length=64, description="embodiment name, e.g. 'pmsm'")
    state: list[float] = Field(max_length=4096, description="observation vector (obs_dim,) in spec units")
    instruction: str = Field("", max_length=1024)


class InferRequest(_Strict):
    obs: Observation
    session: str = Field("default", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")
    horizon: int | None = Field(None, ge=1, le=4096, description="actions wanted (default: the model's chunk)")


class SessionRequest(_Strict):
    session: str = Field("default", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")
    reason: str = Field("requested", max_length=256)


# ---- sessions and batching ---------------------------------------------------
@dataclass
class Session:
    state: Any
    embodiment: str | None = None
    shield: SafetyShield | None = None
    last_end: float | None = None  # time the last returned chunk runs out
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class MicroBatcher:
    """Collects requests for up to ``window`` seconds, then one ``infer_batch`` call in a worker thread."""

    def __init__(self, backend: Backend, window: float, max_batch: int) -> None:
        self.backend, self.window, self.max_batch = backend, window, max_batch
        self.queue: asyncio.Queue | None = None
        self._loop = self._task = None
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="genba-model")
        self.batches = self.items = 0

    async def submit(self, state: Any, obs: dict) -> tuple[np.ndarray, dict]:
        loop = asyncio.get_running_loop()
        if self.queue is None or self._loop is not loop:  # first call, or the app moved to a new loop
            self.queue, self._loop = asyncio.Queue(), loop
            self._task = loop.create_task(self._run(self.queue))
        fut = loop.create_future()
        await self.queue.put((state, obs, fut, time.perf_counter()))
        return await fut

    async def _run(self, queue: asyncio.Queue) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await queue.get()]
            end = loop.time() + self.window
            while len(batch) < self.max_batch and (left := end - loop.time()) > 0:
                try:
                    batch.append(await asyncio.wait_for(queue.get(), left))
                except asyncio.TimeoutError:
                    break
            t0 = time.perf_counter()
            try:
                outs = await loop.run_in_executor(self.executor, self.backend.infer_batch,
                                                  [(s, o) for s, o, _, _ in batch])
                errs = [None] * len(batch)
            except Exception as e:  # never lose a request: report the failure to each caller
                outs, errs = [None] * len(batch), [e] * len(batch)
            model_ms = (time.perf_counter() - t0) * 1e3
            self.batches, self.items = self.batches + 1, self.items + len(batch)
            for (_, _, fut, t_in), out, err in zip(batch, outs, errs):
                if fut.done():
                    continue
                err = out if isinstance(out, BaseException) else err  # that item alone failed
                if err is not None:
                    fut.set_exception(err)
                else:
                    fut.set_result((out, {"queue_ms": (t0 - t_in) * 1e3, "model_ms": model_ms,
                                          "batch_size": len(batch)}))


class ServeError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


class PolicyServer:
    """Sessions, auth checks, batching and shielding; the FastAPI app calls into it."""

    def __init__(self, backend: Backend, tokens: TokenStore, config: ServerConfig = ServerConfig()) -> None:
        self.backend, self.tokens, self.cfg = backend, tokens, config
        self.batcher = MicroBatcher(backend, config.batch_window_s, config.max_batch)
        self.sessions: OrderedDict[tuple[str, str], Session] = OrderedDict()
        self.inflight = 0
        self.served = self.refused = 0

    def principal(self, authorization: str | None) -> Principal:
        p = self.tokens.authenticate(bearer(authorization))
        if p is None:
            raise ServeError(401, "missing, unknown or revoked API token (send 'Authorization: Bearer <token>')")
        return p

    def _session(self, p: Principal, name: str) -> Session:
        key = (p.org, name)
        s = self.sessions.get(key)
        if s is None:
            s = self.sessions[key] = Session(self.backend.new_state())
            while len(self.sessions) > self.cfg.max_sessions:
                self.sessions.popitem(last=False)
        self.sessions.move_to_end(key)
        return s

    def check_obs(self, p: Principal, obs: Observation) -> EmbodimentSpec:
        spec = self.backend.specs.get(obs.embodiment)
        if spec is None:
            raise ServeError(422, f"obs.embodiment {obs.embodiment!r} is unknown; served: {sorted(self.backend.specs)}")
        if not p.allows(obs.embodiment):
            raise ServeError(403, f"organization {p.org!r} is not granted embodiment {obs.embodiment!r}")
        if len(obs.state) != spec.obs_dim:
            raise ServeError(422, f"obs.state has {len(obs.state)} entries, embodiment {obs.embodiment!r} "
                                  f"expects {spec.obs_dim} ({', '.join(spec.obs_names[:6])}...)")
        return spec

    async def infer(self, p: Principal, req: InferRequest) -> dict:
        spec = self.check_obs(p, req.obs)
        if self.inflight >= self.cfg.max_inflight:
            self.refused += 1
            raise ServeError(503, f"server busy: {self.inflight} requests in flight (limit {self.cfg.max_inflight})")
        self.inflight += 1
        try:
            return await self._infer(p, req, spec)
        finally:
            self.inflight -= 1

    async def _infer(self, p: Principal, req: InferRequest, spec: EmbodimentSpec) -> dict:
        t0 = time.perf_counter()
        s = self._session(p, req.session)
        async with s.lock:
            if s.embodiment != spec.name:  # a new machine on this session: fresh state and shield
                self.backend.reset_state(s.state)
                s.embodiment, s.last_end = spec.name, None
                s.shield = self._build_shield(spec, s.shield)
            obs = req.obs.model_dump()
            try:
                chunk, timing = await self.batcher.submit(s.state, obs)
            except ValueError as e:  # the policy refused the observation (checked again there)
                raise ServeError(422, str(e)) from None
            t1 = time.perf_counter()
            actions = self._shield_chunk(s, spec, np.asarray(chunk, dtype=float), obs["state"], req.horizon)
            self.served += 1
            timing.update(shield_ms=(time.perf_counter() - t1) * 1e3, server_ms=(time.perf_counter() - t0) * 1e3)
            return {"session": req.session, "embodiment": spec.name, "actions": actions.tolist(),
                    "shield": s.shield.stats(), "timing": timing}

    def _build_shield(self, spec: EmbodimentSpec, old: SafetyShield | None) -> SafetyShield:
        # a chunk is planned from one observation: its last action must still be "fresh"
        deadline = max(self.cfg.shield.deadline_s, (self.backend.chunk + 2) * spec.control_period)
        sh = SafetyShield(spec, replace(self.cfg.shield, deadline_s=deadline), reset_verifier=self.tokens.can_reset)
        if old is not None and old.latched:
            sh.estop("carried over from the session's previous embodiment")
        return sh

    def _shield_chunk(self, s: Session, spec: EmbodimentSpec, chunk: np.ndarray, state, horizon) -> np.ndarray:
        # the chunk is planned on the shield's own clock (period i at its "now" + i*dt); a stream that
        # lapsed is replayed there as the stop the machine-side watchdog made (SafetyShield.plan)
        n = min(horizon or len(chunk), len(chunk))
        return s.shield.plan(chunk[:n], state)

    async def reset(self, p: Principal, req: SessionRequest) -> dict:
        s = self._session(p, req.session)
        async with s.lock:
            self.backend.reset_state(s.state)
            if s.shield is not None:
                s.shield.reset()
            s.last_end = None
        return {"session": req.session, "reset": True, "latched": bool(s.shield and s.shield.latched)}

    async def estop(self, p: Principal, req: SessionRequest, token: str | None, release: bool) -> dict:
        s = self._session(p, req.session)
        if s.shield is None:
            raise ServeError(409, f"session {req.session!r} has no machine yet (no infer call)")
        if release:
            if not s.shield.clear_estop(token or ""):
                raise ServeError(403, f"organization {p.org!r} may not reset an e-stop")
        else:
            s.shield.estop(f"{p.org}: {req.reason}")
        return {"session": req.session, "latched": s.shield.latched}

    def metadata(self, p: Principal) -> dict:
        meta = dict(self.backend.metadata())
        meta["specs"] = {n: s.to_dict() for n, s in self.backend.specs.items()}
        meta["granted"] = sorted(n for n in self.backend.specs if p.allows(n))
        meta["chunk"] = self.backend.chunk
        return meta

    def health(self) -> dict:
        return {"status": "ok", "inflight": self.inflight, "sessions": len(self.sessions), "served": self.served,
                "batches": self.batcher.batches, "batched_items": self.batcher.items}


# ---- the ASGI app ------------------------------------------------------------
class BodyLimit:
    """Refuse request bodies above ``limit`` bytes with 413 before anything parses them."""

    def __init__(self, app, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            return await _too_large(send, self.limit)
        body, more, messages = b"", True, []
        while more:
            msg = await receive()
            messages.append(msg)
            if msg["type"] != "http.request":
                break
            body += msg.get("body", b"")
            more = msg.get("more_body", False)
            if len(body) > self.limit:
                return await _too_large(send, self.limit)

        async def replay():
            return messages.pop(0) if messages else await receive()

        return await self.app(scope, replay, send)


async def _too_large(send, limit: int) -> None:
    body = json.dumps({"detail": f"request body larger than {limit} bytes"}).encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def _validation_message(e: ValidationError | RequestValidationError) -> str:
    parts = []
    for err in e.errors()[:5]:
        loc = ".".join(str(x) for x in err.get("loc", ()) if x != "body")
        parts.append(f"{loc or 'body'}: {err.get('msg')}")
    return "; ".join(parts)


def build_app(server: PolicyServer) -> FastAPI:
    """The FastAPI app around a :class:`PolicyServer`."""
    app = FastAPI(title="genba policy server", version="1",
                  description="Shielded action chunks for authorized machines. Bearer token on every call but health.")
    app.state.server = server

    @app.exception_handler(ServeError)
    async def _serve_error(_: Request, e: ServeError):
        return JSONResponse({"detail": e.message}, status_code=e.status)

    @app.exception_handler(RequestValidationError)
    async def _bad_request(_: Request, e: RequestValidationError):
        return JSONResponse({"detail": _validation_message(e)}, status_code=422)

    def principal(request: Request) -> Principal:
        return server.principal(request.headers.get("authorization"))

    @app.get(f"{API}/health")
    async def health() -> dict:
        return server.health()

    @app.get(f"{API}/metadata")
    async def metadata(p: Principal = Depends(principal)) -> dict:
        return server.metadata(p)

    @app.post(f"{API}/infer")
    async def infer(req: InferRequest, p: Principal = Depends(principal)) -> dict:
        """Observation in, shielded action chunk (horizon, action_dim) out, with server timing in ms."""
        return await server.infer(p, req)

    @app.post(f"{API}/reset")
    async def reset(req: SessionRequest, p: Principal = Depends(principal)) -> dict:
        return await server.reset(p, req)

    @app.post(f"{API}/estop")
    async def estop(req: SessionRequest, p: Principal = Depends(principal)) -> dict:
        return await server.estop(p, req, None, release=False)

    @app.post(f"{API}/estop/reset")
    async def estop_reset(req: SessionRequest, request: Request, p: Principal = Depends(principal)) -> dict:
        return await server.estop(p, req, bearer(request.headers.get("authorization")), release=True)

    @app.websocket(f"{API}/ws")
    async def ws(websocket: WebSocket) -> None:
        await serve_websocket(server, websocket)

    app.add_middleware(BodyLimit, limit=server.cfg.max_body_bytes)
    return app


async def serve_websocket(server: PolicyServer, websocket: WebSocket) -> None:
    """msgpack frames ``{"op": "infer"|"reset"|"estop"|"estop_reset"|"metadata"|"health", ...}``;
    each answer is ``{"ok": true, ...}`` or ``{"ok": false, "status": 4xx, "detail": ...}``."""
    token = bearer(websocket.headers.get("authorization"))
    p = server.tokens.authenticate(token)
    if p is None:
        await websocket.close(code=4401, reason="missing, unknown or revoked API token")
        return
    await websocket.accept()
    try:
        while True:
            frame = await websocket.receive_bytes()
            await websocket.send_bytes(msgpack.packb(await _ws_op(server, p, token, frame), use_bin_type=True))
    except WebSocketDisconnect:
        return


async def _ws_op(server: PolicyServer, p: Principal, token: str | None, frame: bytes) -> dict:
    try:
        if len(frame) > server.cfg.max_body_bytes:
            raise ServeError(413, f"frame larger than {server.cfg.max_body_bytes} bytes")
        try:
            msg = msgpack.unpackb(frame, raw=False, strict_map_key=True)
        except Exception as e:
            raise ServeError(400, f"frame is not valid msgpack: {e}") from None
        if not isinstance(msg, dict) or not isinstance(msg.get("op"), str):
            raise ServeError(400, "frame must be a map with a string 'op'")
        op, body = msg.pop("op"), msg
        try:
            if op == "infer":
                out = await server.infer(p, InferRequest.model_validate(body))
            elif op == "reset":
                out = await server.reset(p, SessionRequest.model_validate(body))
            elif op in ("estop", "estop_reset"):
                out = await server.estop(p, SessionRequest.model_validate(body), token, release=op == "estop_reset")
            elif op == "metadata":
                out = server.metadata(p)
            elif op == "health":
                out = server.health()
            else:
                raise ServeError(400, f"unknown op {op!r}; expected infer, reset, estop, estop_reset, metadata, health")
        except ValidationError as e:
            raise ServeError(422, _validation_message(e)) from None
        return {"ok": True, **out}
    except ServeError as e:
        return {"ok": False, "status": e.status, "detail": e.message}


def tls_options(certfile: str, keyfile: str, client_ca: str | None = None) -> dict:
    """uvicorn keyword arguments for TLS with the server's certificate and key; with
    ``client_ca``, mutual TLS: a client must present a certificate signed by that CA."""
    import ssl

    opts = {"ssl_certfile": str(certfile), "ssl_keyfile": str(keyfile)}
    if client_ca is not None:
        opts.update(ssl_ca_certs=str(client_ca), ssl_cert_reqs=ssl.CERT_REQUIRED)
    return opts
