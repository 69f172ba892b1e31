"""A small client for the genba policy server: HTTP (httpx) or websocket (msgpack).

Depends on numpy, httpx, websockets and msgpack only: no torch, nothing of
genba that imports it, so it installs on a machine-side PC.
"""

from __future__ import annotations

import base64
import json
import ssl
from typing import Any, Mapping, Sequence

import httpx
import msgpack
import numpy as np
from websockets.sync.client import connect as ws_connect


class ServerError(RuntimeError):
    """The server refused a call; ``status`` is the HTTP-like code (401, 403, 422, ...)."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"{status}: {detail}")
        self.status, self.detail = status, detail


def _ssl_context(ca: str | None, cert: str | None, key: str | None) -> ssl.SSLContext | None:
    if ca is None and cert is None:
        return None
    ctx = ssl.create_default_context(cafile=ca)
    if cert is not None:
        ctx.load_cert_chain(cert, key)
    return ctx


class PolicyClient:
    """Calls ``/v1/*`` on a genba server. ``transport="http"`` or ``"ws"`` (one persistent socket).

    ``url`` like ``http://127.0.0.1:8000`` (or ``https://`` with ``ca``, and
    ``cert``/``key`` for mutual TLS).
    """

    def __init__(self, url: str, token: str, *, transport: str = "http", session: str = "default",
                 timeout: float = 10.0, ca: str | None = None, cert: str | None = None, key: str | None = None) -> None:
        if transport not in ("http", "ws"):
            raise ValueError(f"transport {transport!r}: expected 'http' or 'ws'")
        self.url, self.session, self.transport, self.timeout = url.rstrip("/"), session, transport, timeout
        self._headers = {"Authorization": f"Bearer {token}"}
        self._ssl = _ssl_context(ca, cert, key)
        self._http = httpx.Client(base_url=self.url, headers=self._headers, timeout=timeout,
                                  verify=self._ssl if self._ssl is not None else True)
        self._ws = None

    # ---- operations ------------------------------------------------------
    def infer(self, embodiment: str, state: Sequence[float], instruction: str = "", *,
              images: Mapping[str, np.ndarray] | None = None, horizon: int | None = None) -> dict:
        """The server's answer; ``answer["actions"]`` is a float32 array (horizon, action_dim).

        ``images``: this step's frame of every camera of the embodiment (``metadata()["specs"][name]
        ["cameras"]``), ``{camera: (H, W, 3) uint8 array}``; sent as base64 over HTTP and as raw bytes
        over the websocket, with shape and dtype as given (the server refuses a mismatch, naming the
        camera)."""
        obs: dict[str, Any] = {"embodiment": embodiment, "state": [float(x) for x in np.asarray(state).reshape(-1)],
                               "instruction": instruction}
        if images is not None:
            obs["images"] = {name: self._frame(img) for name, img in images.items()}
        body = {"obs": obs, "session": self.session}
        if horizon is not None:
            body["horizon"] = int(horizon)
        out = self._call("infer", body)
        out["actions"] = np.asarray(out["actions"], dtype=np.float32)
        return out

    def _frame(self, image: np.ndarray) -> dict:
        a = np.ascontiguousarray(image)
        raw = a.tobytes()
        return {"shape": list(a.shape), "dtype": str(a.dtype),
                "data": raw if self.transport == "ws" else base64.b64encode(raw).decode("ascii")}

    def reset(self) -> dict:
        return self._call("reset", {"session": self.session})

    def estop(self, reason: str = "requested") -> dict:
        return self._call("estop", {"session": self.session, "reason": reason})

    def estop_reset(self) -> dict:
        return self._call("estop_reset", {"session": self.session})

    def metadata(self) -> dict:
        return self._call("metadata", None)

    def health(self) -> dict:
        return self._call("health", None)

    def close(self) -> None:
        if self._ws is not None:
            self._ws.close()
            self._ws = None
        self._http.close()

    def __enter__(self) -> "PolicyClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- transports ------------------------------------------------------
    _PATHS = {"infer": ("POST", "/v1/infer"), "reset": ("POST", "/v1/reset"), "estop": ("POST", "/v1/estop"),
              "estop_reset": ("POST", "/v1/estop/reset"), "metadata": ("GET", "/v1/metadata"),
              "health": ("GET", "/v1/health")}

    def _call(self, op: str, body: dict | None) -> dict:
        return self._call_ws(op, body) if self.transport == "ws" else self._call_http(op, body)

    def _call_http(self, op: str, body: dict | None) -> dict:
        method, path = self._PATHS[op]
        # json.dumps writes NaN/Infinity: the server, not the client, is where bad inputs are refused
        content = json.dumps(body).encode() if body is not None else None
        r = self._http.request(method, path, content=content,
                               headers={"content-type": "application/json"} if content is not None else None)
        if r.status_code >= 400:
            try:
                detail = r.json().get("detail", r.text)
            except ValueError:
                detail = r.text
            raise ServerError(r.status_code, str(detail))
        return r.json()

    def _call_ws(self, op: str, body: dict | None) -> dict:
        if self._ws is None:
            ws_url = "ws" + self.url[len("http"):] + "/v1/ws"
            try:
                self._ws = ws_connect(ws_url, additional_headers=self._headers, ssl=self._ssl,
                                      open_timeout=self.timeout, max_size=2 ** 22)
            except Exception as e:  # the handshake is refused with a close code for bad tokens
                raise ServerError(401, f"websocket connection refused: {e}") from None
        self._ws.send(msgpack.packb({"op": op, **(body or {})}, use_bin_type=True))
        try:
            reply: Any = msgpack.unpackb(self._ws.recv(timeout=self.timeout), raw=False)
        except Exception as e:
            self._ws = None
            raise ServerError(401 if "4401" in str(e) else 502, f"websocket closed: {e}") from None
        if not reply.get("ok"):
            raise ServerError(int(reply.get("status", 500)), str(reply.get("detail")))
        reply.pop("ok")
        return reply
