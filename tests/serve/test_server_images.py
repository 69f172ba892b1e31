"""Serving with cameras (issue 21, item 4): frames over HTTP (base64) and the websocket (raw bytes),
checked against the spec before the model (422 naming the camera), a body limit that fits them, and the
torch-free client sending numpy frames over both transports."""

from __future__ import annotations

import base64
import dataclasses

import msgpack
import numpy as np
import pytest
from fastapi.testclient import TestClient

from genba.client import PolicyClient, ServerError
from genba.data.spec import CameraSpec
from genba.serve.api import body_limit, encode_frame
from genba.serve.server import PolicyServer, ServerConfig, build_app
from tests.serve.conftest import FakePolicy, fake_backend, loopback_server, toy_spec

STATE = [0.0, 0.0, 0.0, 0.5, 0.1]


def cam_spec(size: int = 64):
    return dataclasses.replace(toy_spec("toycam"), cameras=(CameraSpec("corner2", size, size, "corner2"),),
                               obs_mode="pixels")


class Seen:
    """The observations the fake policy received."""

    obs: list = []


def _script(obs):
    Seen.obs.append(obs)
    return np.zeros((4, 3), np.float32)


@pytest.fixture
def setup(tokens):
    tokens.add_org("cell", ["toycam", "toy"])
    specs = {"toy": toy_spec(), "toycam": cam_spec()}
    server = PolicyServer(fake_backend(script=_script, specs=specs), tokens, ServerConfig(batch_window_s=0.0))
    Seen.obs = []
    with TestClient(build_app(server)) as client:
        yield client, server, {"Authorization": f"Bearer {tokens.issue('cell', 'test')}"}


def frame(seed: int = 0, shape=(64, 64, 3)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def obs(images) -> dict:
    return {"embodiment": "toycam", "state": STATE, "instruction": "open", "images": images}


def test_http_frames_reach_the_policy_as_uint8_arrays(setup):
    client, server, auth = setup
    img = frame()
    r = client.post("/v1/infer", json={"obs": obs({"corner2": encode_frame(img)})}, headers=auth)
    assert r.status_code == 200, r.text
    got = Seen.obs[-1]["images"]["corner2"]
    assert got.dtype == np.uint8 and got.shape == (64, 64, 3) and np.array_equal(got, img)
    r = client.post("/v1/infer", json={"obs": {"embodiment": "toy", "state": STATE}}, headers=auth)
    assert r.status_code == 200 and "images" not in Seen.obs[-1]  # a camera-less machine: as before


def test_websocket_frames_are_raw_bytes(setup):
    client, _, auth = setup
    img = frame(1)
    msg = {"op": "infer", "obs": obs({"corner2": {"shape": [64, 64, 3], "dtype": "uint8", "data": img.tobytes()}})}
    with client.websocket_connect("/v1/ws", headers=auth) as ws:
        ws.send_bytes(msgpack.packb(msg, use_bin_type=True))
        reply = msgpack.unpackb(ws.receive_bytes())
        assert reply["ok"], reply
        assert np.array_equal(Seen.obs[-1]["images"]["corner2"], img)
        bad = {**msg, "obs": obs({"corner2": {"shape": [32, 32, 3], "dtype": "uint8", "data": img.tobytes()}})}
        ws.send_bytes(msgpack.packb(bad, use_bin_type=True))
        reply = msgpack.unpackb(ws.receive_bytes())
        assert reply["status"] == 422 and "corner2" in reply["detail"]


@pytest.mark.parametrize("images, words", [
    (None, ["lacks camera 'corner2'"]),
    ({}, ["lacks camera 'corner2'"]),
    ({"corner2": encode_frame(frame(shape=(32, 32, 3)))}, ["corner2", "[32, 32, 3]", "[64, 64, 3]"]),
    ({"corner2": {**encode_frame(frame()), "dtype": "float32"}}, ["corner2", "dtype", "uint8"]),
    ({"corner2": {**encode_frame(frame()), "data": base64.b64encode(b"abc").decode()}}, ["corner2", "3 bytes"]),
    ({"corner2": {**encode_frame(frame()), "data": "not base64!"}}, ["corner2", "data"]),
    ({"corner2": encode_frame(frame()), "wrist": encode_frame(frame())}, ["no camera 'wrist'", "corner2"]),
])
def test_frames_that_disagree_with_the_spec_get_422_naming_the_camera(setup, images, words):
    client, _, auth = setup
    FakePolicy.calls = 0
    r = client.post("/v1/infer", json={"obs": obs(images)}, headers=auth)
    assert r.status_code == 422, r.text
    assert all(w in r.json()["detail"] for w in words), r.json()["detail"]
    assert FakePolicy.calls == 0 and not Seen.obs  # refused before the model


def test_images_for_a_camera_less_machine_are_refused(setup):
    client, _, auth = setup
    body = {"obs": {"embodiment": "toy", "state": STATE, "images": {"corner2": encode_frame(frame())}}}
    r = client.post("/v1/infer", json=body, headers=auth)
    assert r.status_code == 422 and "no cameras" in r.json()["detail"]


def test_body_limit_fits_a_64px_frame_per_camera_and_no_more(setup):
    client, server, auth = setup
    assert server.max_body_bytes == body_limit(server.backend.specs) == 64 * 1024 + 4 * 64 * 64 + 256
    two = {"toycam": dataclasses.replace(cam_spec(), cameras=(CameraSpec("a", 64, 64, "a"),
                                                              CameraSpec("b", 64, 64, "b")))}
    assert body_limit(two) == 64 * 1024 + 2 * (4 * 64 * 64 + 256)
    assert body_limit({"toy": toy_spec()}) == 64 * 1024  # camera-less servers keep the former limit
    r = client.post("/v1/infer", json={"obs": obs({"corner2": encode_frame(frame(shape=(160, 160, 3)))})},
                    headers=auth)
    assert r.status_code == 413


def test_openapi_documents_the_frame(setup):
    client, _, _ = setup
    doc = client.get("/openapi.json").json()
    frame_schema = doc["components"]["schemas"]["Frame"]
    assert set(frame_schema["properties"]) == {"shape", "dtype", "data"}
    assert "base64" in frame_schema["properties"]["data"]["description"]
    examples = doc["paths"]["/v1/infer"]["post"]["requestBody"]["content"]["application/json"]["examples"]
    shown = examples["toycam"]["value"]["obs"]["images"]["corner2"]
    assert shown["shape"] == [64, 64, 3] and len(base64.b64decode(shown["data"])) == 64 * 64 * 3


@pytest.mark.parametrize("transport", ["http", "ws"])
def test_the_client_sends_numpy_frames(tokens, transport):
    tokens.add_org("cell", ["toycam"])
    server = PolicyServer(fake_backend(script=_script, specs={"toycam": cam_spec()}), tokens)
    Seen.obs = []
    img = frame(2)
    with loopback_server(build_app(server)) as port, \
            PolicyClient(f"http://127.0.0.1:{port}", tokens.issue("cell", "c"), transport=transport) as c:
        out = c.infer("toycam", STATE, "open", images={"corner2": img})
        assert out["actions"].shape == (4, 3)
        assert np.array_equal(Seen.obs[-1]["images"]["corner2"], img)
        with pytest.raises(ServerError) as e:
            c.infer("toycam", STATE, "open", images={"corner2": img.astype(np.float32)})
        assert e.value.status == 422 and "corner2" in e.value.detail


def test_a_pixels_checkpoint_serves_an_image_request(tokens, tmp_path):
    """The real model path: GenbaBackend, the runtime's image history, the shield; a bad frame is a 422."""
    from genba.serve.backends import load_backend
    from tests.eval.conftest import make_pixel_checkpoint

    backend = load_backend(str(make_pixel_checkpoint(tmp_path / "ckpt")), device="cpu")
    tokens.add_org("cell", ["jaco_px", "pmsm"])
    server = PolicyServer(backend, tokens)
    spec = backend.specs["jaco_px"]
    auth = {"Authorization": f"Bearer {tokens.issue('cell', 'c')}"}
    body = {"obs": {"embodiment": "jaco_px", "state": [0.0] * spec.obs_dim, "instruction": "reach the target",
                    "images": {"front": encode_frame(frame(3, (16, 16, 3)))}}}
    with TestClient(build_app(server)) as client:
        for _ in range(2):
            r = client.post("/v1/infer", json=body, headers=auth)
            assert r.status_code == 200, r.text
            assert np.asarray(r.json()["actions"]).shape == (backend.chunk, spec.action_dim)
        body["obs"]["images"] = {"front": encode_frame(frame(3, (64, 64, 3)))}
        r = client.post("/v1/infer", json=body, headers=auth)
        assert r.status_code == 422 and "front" in r.json()["detail"]
