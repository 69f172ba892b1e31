"""`genba serve`: the policy server (FastAPI; HTTP JSON and websocket msgpack on one app).

Notable features:

* ``POST /v1/infer``: observation in, shielded action chunk out with per-call
  server timing; ``POST /v1/reset``; ``POST /v1/estop`` and ``/v1/estop/reset``;
  ``GET /v1/health``; ``GET /v1/metadata`` (specs, model and lineage hashes);
  ``/v1/ws``: the same operations as msgpack frames. OpenAPI at ``/openapi.json``.
* ``Authorization: Bearer <token>`` on every call but health (an HTTP bearer security
  scheme in the document): unknown or revoked token -> 401, an embodiment not granted to
  the token's organization -> 403.
* Malformed requests (wrong shapes, types, NaN/inf, unknown embodiment,
  oversized bodies) get a 4xx naming the field and never reach the model.
* Camera frames (``obs.images``, one per camera of the spec: base64 over HTTP, raw
  bytes over the websocket; :mod:`genba.serve.api`) are checked against the spec
  (names, shape, dtype, byte count) before the model: 422 naming the camera. The
  body limit defaults to 64 KiB plus the largest served embodiment's frames
  (:func:`genba.serve.api.body_limit`).
* A micro-batcher gathers requests for ``batch_window_s`` and makes one model
  call for all of them (one trunk pass, even across embodiments); in-flight
  requests are bounded (503 beyond).
* One policy state, one :class:`SafetyShield` and one e-stop latch per (organization,
  session), with per-organization quotas (:mod:`genba.serve.sessions`): a latched session
  is never evicted and only an authorized reset releases it. Every action leaves through
  the shield.
* The OpenAPI document is the contract (:mod:`genba.serve.api`): every status a route can
  answer is documented with its body model, every error body is ``{"detail": str}``.
"""

from __future__ import annotations

import asyncio
import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

import msgpack
import numpy as np
from fastapi import Body, FastAPI, Request, Security, WebSocket, WebSocketDisconnect
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import ValidationError

from genba.data.spec import EmbodimentSpec
from genba.serve.api import (
    EstopResponse,
    HealthResponse,
    InferRequest,
    InferResponse,
    MetadataResponse,
    Observation,
    ResetResponse,
    ServeError,
    SessionRequest,
    WsInferRequest,
    body_limit,
    errors,
    infer_examples,
)
from genba.serve.auth import Principal, TokenStore, bearer
from genba.serve.backends import Backend
from genba.serve.sessions import Session, SessionTable
from genba.serve.shield import SafetyShield, ShieldConfig

__all__ = ["InferRequest", "Observation", "PolicyServer", "ServeError", "ServerConfig", "Session", "SessionRequest",
           "build_app", "serve_websocket", "tls_options"]

API = "/v1"


@dataclass(frozen=True)
class ServerConfig:
    max_body_bytes: int | None = None  # None: 64 KiB plus the served specs' camera frames (api.body_limit)
    max_inflight: int = 256
    batch_window_s: float = 0.0015
    max_batch: int = 64
    max_sessions: int = 1024  # the whole table; latched sessions count and are never evicted
    sessions_per_org: int = 256  # default quota; an organization's own max_sessions overrides it
    shield: ShieldConfig = field(default_factory=ShieldConfig)


# ---- batching ----------------------------------------------------------------
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
                except TimeoutError:
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


class PolicyServer:
    """Sessions, auth checks, batching and shielding; the FastAPI app calls into it."""

    def __init__(self, backend: Backend, tokens: TokenStore, config: ServerConfig = ServerConfig()) -> None:
        self.backend, self.tokens, self.cfg = backend, tokens, config
        self.max_body_bytes = config.max_body_bytes or body_limit(backend.specs)
        self.batcher = MicroBatcher(backend, config.batch_window_s, config.max_batch)
        self.sessions = SessionTable(backend.new_state, config.max_sessions, config.sessions_per_org)
        self.inflight = 0
        self.served = self.refused = 0

    def principal(self, authorization: str | None) -> Principal:
        p = self.tokens.authenticate(bearer(authorization))
        if p is None:
            raise ServeError(401, "missing, unknown or revoked API token (send 'Authorization: Bearer <token>')")
        return p

    def _hold(self, p: Principal, name: str, create: bool = True):
        """The (organization, session) entry, pinned for the request (see :class:`SessionTable`)."""
        return self.sessions.hold(p.org, name, quota=p.max_sessions, create=create)

    def check_obs(self, p: Principal, obs: Observation) -> tuple[EmbodimentSpec, dict | None]:
        """The observation's spec and its camera frames ``{camera: (H, W, 3) uint8}`` (None for a machine
        without cameras), or the ServeError naming the field or the camera."""
        spec = self.backend.specs.get(obs.embodiment)
        if spec is None:
            raise ServeError(422, f"obs.embodiment {obs.embodiment!r} is unknown; served: {sorted(self.backend.specs)}")
        if not p.allows(obs.embodiment):
            raise ServeError(403, f"organization {p.org!r} is not granted embodiment {obs.embodiment!r}")
        if len(obs.state) != spec.obs_dim:
            raise ServeError(422, f"obs.state has {len(obs.state)} entries, embodiment {obs.embodiment!r} "
                                  f"expects {spec.obs_dim} ({', '.join(spec.obs_names[:6])}...)")
        return spec, check_images(spec, obs.images)

    async def infer(self, p: Principal, req: InferRequest) -> dict:
        spec, images = self.check_obs(p, req.obs)
        if req.horizon is not None and req.horizon > self.backend.chunk:
            # a silent shorter chunk would leave the client planning on actions it never got
            raise ServeError(422, f"horizon {req.horizon} is above the model's action chunk of "
                                  f"{self.backend.chunk}; ask for at most {self.backend.chunk} (or omit horizon)")
        if self.inflight >= self.cfg.max_inflight:
            self.refused += 1
            raise ServeError(503, f"server busy: {self.inflight} requests in flight (limit {self.cfg.max_inflight})")
        self.inflight += 1
        try:
            t0 = time.perf_counter()
            obs = {"embodiment": spec.name, "state": list(req.obs.state), "instruction": req.obs.instruction}
            if images is not None:
                obs["images"] = images
            with self._hold(p, req.session) as s:
                async with s.lock:
                    return await self._infer_locked(s, req, spec, obs, t0)
        finally:
            self.inflight -= 1

    async def _infer_locked(self, s: Session, req: InferRequest, spec: EmbodimentSpec, obs: dict, t0: float) -> dict:
        if s.embodiment != spec.name:  # a new machine on this session: fresh state and shield
            self.backend.reset_state(s.state)
            s.embodiment = spec.name
            s.shield = self._build_shield(spec, s.shield)
        try:
            chunk, timing = await self.batcher.submit(s.state, obs)
        except ValueError as e:  # the policy refused the observation (checked again there)
            raise ServeError(422, str(e)) from None
        t1 = time.perf_counter()
        if s.latched:  # the session's latch is the truth; a shield built since it latched learns it here
            s.shield.estop(s.estop_reason)
        actions = self._shield_chunk(s, spec, np.asarray(chunk, dtype=float), obs["state"], req.horizon)
        if s.shield.latched and not s.latched:  # the shield latched itself: pin the session
            s.estop_reason = "latched by the shield"
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
        """A new episode on a session; an unknown session is left uncreated (nothing to reset)."""
        with self._hold(p, req.session, create=False) as s:
            if s is None:
                return {"session": req.session, "reset": True, "latched": False}
            async with s.lock:
                self.backend.reset_state(s.state)
                if s.shield is not None:
                    s.shield.reset()
            return {"session": req.session, "reset": True, "latched": s.latched}

    async def estop(self, p: Principal, req: SessionRequest) -> dict:
        """Latch at once (no waiting for a request in progress); a session not seen yet is created
        latched, so a machine that connects under that name later gets only the stop."""
        with self._hold(p, req.session) as s:
            s.latch(f"{p.org}: {req.reason}")
            return {"session": req.session, "latched": True}

    async def estop_reset(self, p: Principal, req: SessionRequest, token: str | None) -> dict:
        """Release a latch: only an organization with ``can_reset_estop``, latched or not (403)."""
        if not p.can_reset_estop:
            raise ServeError(403, f"organization {p.org!r} may not reset an e-stop (it lacks can_reset_estop)")
        with self._hold(p, req.session, create=False) as s:
            if s is None:
                return {"session": req.session, "latched": False}
            if s.shield is not None and not s.shield.clear_estop(token or ""):
                raise ServeError(403, f"organization {p.org!r} may not reset an e-stop (the shield refused it)")
            s.estop_reason = None
            return {"session": req.session, "latched": False}

    def metadata(self, p: Principal) -> dict:
        meta = dict(self.backend.metadata())
        meta["specs"] = {n: s.to_dict() for n, s in self.backend.specs.items()}
        meta["granted"] = sorted(n for n in self.backend.specs if p.allows(n))
        meta["chunk"] = self.backend.chunk
        return meta

    def health(self) -> dict:
        return {"status": "ok", "inflight": self.inflight, "sessions": len(self.sessions),
                "latched_sessions": self.sessions.latched(), "served": self.served,
                "batches": self.batcher.batches, "batched_items": self.batcher.items}


def check_images(spec: EmbodimentSpec, images: dict | None) -> dict[str, np.ndarray] | None:
    """The request's frames as ``{camera: (H, W, 3) uint8}`` arrays, exactly the spec's cameras, or a
    422 naming the camera (missing, unknown, wrong shape or byte count); None for a camera-less machine."""
    expected = {c.name: c for c in spec.cameras}
    if not expected:
        if images:
            raise ServeError(422, f"obs.images: embodiment {spec.name!r} has no cameras, got {sorted(images)}; "
                                  "send no images")
        return None
    images = images or {}
    for name in images:
        if name not in expected:
            raise ServeError(422, f"obs.images[{name!r}]: embodiment {spec.name!r} has no camera {name!r}; "
                                  f"its cameras: {sorted(expected)}")
    out = {}
    for name, cam in expected.items():
        if name not in images:
            raise ServeError(422, f"obs.images lacks camera {name!r} of embodiment {spec.name!r} "
                                  f"(one {list(cam.shape)} uint8 frame per step)")
        frame = images[name]
        if tuple(frame.shape) != cam.shape:
            raise ServeError(422, f"obs.images[{name!r}] has shape {frame.shape}, embodiment {spec.name!r} expects "
                                  f"{list(cam.shape)} (its camera {name!r})")
        out[name] = frame.array(name)
    return out


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
    """The FastAPI app around a :class:`PolicyServer`; its document lists every status each route answers."""
    app = FastAPI(title="genba policy server", version="1",
                  description="Shielded action chunks for authorized machines. Bearer token on every call but "
                              "health. Every error body is {\"detail\": str}, naming the field or the limit.")
    app.state.server = server
    # declared for the document (a bearer security scheme); the token is checked by the server itself
    scheme = HTTPBearer(auto_error=False, scheme_name="bearer", bearerFormat="gbt_<id>_<secret>",
                        description="a per-organization API token (`genba tokens issue ORG`)")

    @app.exception_handler(ServeError)
    async def _serve_error(_: Request, e: ServeError):
        return JSONResponse({"detail": e.message}, status_code=e.status)

    @app.exception_handler(RequestValidationError)
    async def _bad_request(_: Request, e: RequestValidationError):
        return JSONResponse({"detail": _validation_message(e)}, status_code=422)

    def principal(request: Request, _: HTTPAuthorizationCredentials | None = Security(scheme)) -> Principal:
        return server.principal(request.headers.get("authorization"))

    @app.get(f"{API}/health", response_model=HealthResponse, responses=errors(413))
    async def health() -> dict:
        return server.health()

    @app.get(f"{API}/metadata", response_model=MetadataResponse, responses=errors(401, 413))
    async def metadata(p: Principal = Security(principal)) -> dict:
        return server.metadata(p)

    @app.post(f"{API}/infer", response_model=InferResponse, responses=errors(400, 401, 403, 413, 422, 429, 503))
    async def infer(req: InferRequest = Body(openapi_examples=infer_examples(server.backend.specs)),
                    p: Principal = Security(principal)) -> dict:
        """Observation in, shielded action chunk (horizon, action_dim) out, with server timing in ms."""
        return await server.infer(p, req)

    @app.post(f"{API}/reset", response_model=ResetResponse, responses=errors(400, 401, 413, 422))
    async def reset(req: SessionRequest, p: Principal = Security(principal)) -> dict:
        """A new episode on the session: policy state and shield back to rest; a latch stays."""
        return await server.reset(p, req)

    @app.post(f"{API}/estop", response_model=EstopResponse, responses=errors(400, 401, 413, 422, 429, 503))
    async def estop(req: SessionRequest, p: Principal = Security(principal)) -> dict:
        """Latch the session's e-stop: every action ramps to the stop value and holds until an authorized reset."""
        return await server.estop(p, req)

    @app.post(f"{API}/estop/reset", response_model=EstopResponse, responses=errors(400, 401, 403, 413, 422))
    async def estop_reset(req: SessionRequest, request: Request, p: Principal = Security(principal)) -> dict:
        """Release the latch; only organizations with can_reset_estop (403 for others, latched or not)."""
        return await server.estop_reset(p, req, bearer(request.headers.get("authorization")))

    @app.websocket(f"{API}/ws")
    async def ws(websocket: WebSocket) -> None:
        await serve_websocket(server, websocket)

    app.add_middleware(BodyLimit, limit=server.max_body_bytes)
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
        if len(frame) > server.max_body_bytes:
            raise ServeError(413, f"frame larger than {server.max_body_bytes} bytes")
        try:
            msg = msgpack.unpackb(frame, raw=False, strict_map_key=True)
        except Exception as e:
            raise ServeError(400, f"frame is not valid msgpack: {e}") from None
        if not isinstance(msg, dict) or not isinstance(msg.get("op"), str):
            raise ServeError(400, "frame must be a map with a string 'op'")
        op, body = msg.pop("op"), msg
        try:
            if op == "infer":
                out = await server.infer(p, WsInferRequest.model_validate(body))
            elif op == "reset":
                out = await server.reset(p, SessionRequest.model_validate(body))
            elif op == "estop":
                out = await server.estop(p, SessionRequest.model_validate(body))
            elif op == "estop_reset":
                out = await server.estop_reset(p, SessionRequest.model_validate(body), token)
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
