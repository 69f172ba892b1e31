"""The bridge takes frames from a camera source (issue 21, item 4): the interface on a fake source, the
frames posted with their cycle's observation to the prefetcher and the policy, failures counted and never
planned from, and the simulator's renderer behind the same interface."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time

import numpy as np
import pytest

from genba.data.spec import CameraSpec
from genba.serve.bridge import BridgeConfig, run_cycles
from genba.serve.cameras import LatestFrames, RenderedCameras, check_frames
from genba.serve.prefetch import ChunkPrefetcher, PolicySource, plan_chunk
from genba.serve.shield import ShieldConfig

from .conftest import toy_spec

SPEC = dataclasses.replace(toy_spec("toycam"), cameras=(CameraSpec("corner2", 8, 8, "corner2"),), obs_mode="pixels")


class FakeCamera:
    """A camera source whose frame carries a counter (every pixel = reads mod 256); ``bad`` from a read on."""

    def __init__(self, bad_from: int | None = None) -> None:
        self.reads, self.bad_from = 0, bad_from

    def read(self):
        self.reads += 1
        if self.bad_from is not None and self.reads >= self.bad_from:
            return {"corner2": np.zeros((4, 4, 3), np.uint8)}  # a wrong size
        return {"corner2": np.full((8, 8, 3), self.reads % 256, np.uint8)}


class RecordingPolicy:
    """Policy's observe / infer_chunk; records every observation."""

    def __init__(self) -> None:
        self.seen: list[dict] = []

    def observe(self, obs):
        self.seen.append(obs)

    def infer_chunk(self, obs):
        self.seen.append(obs)
        return np.tile([0.1, 0.0, 0.0], (4, 1))


def run(camera, cycles: int = 12):
    k = {"n": 0}

    async def read():
        s = np.zeros(SPEC.obs_dim)
        s[4] = k["n"] / 1000  # the cycle, as in test_bridge_prefetch
        k["n"] += 1
        return s, 0.0

    async def write(u):
        pass

    policy = RecordingPolicy()
    cfg = BridgeConfig(period_s=0.01, shield=ShieldConfig(deadline_s=0.05))
    with ChunkPrefetcher(PolicySource(policy, SPEC.name, "open")) as pre:
        rep = asyncio.run(run_cycles(SPEC, pre, cfg, read, write, cycles=cycles, cameras=camera))
    return rep, policy


def test_frames_reach_the_policy_with_their_cycles_observation():
    rep, policy = run(FakeCamera())
    assert rep.camera_errors == 0 and policy.seen
    for obs in policy.seen:
        cycle = int(round(obs["state"][4] * 1000))
        img = obs["images"]["corner2"]
        assert img.shape == (8, 8, 3) and img.dtype == np.uint8
        assert np.all(img == cycle + 1)  # the frame read in the same cycle as the state
    cycles = [int(round(o["state"][4] * 1000)) for o in policy.seen]
    assert cycles == sorted(cycles) and len(set(cycles)) == len(cycles)  # each cycle's observation once


def test_bad_frames_are_counted_and_never_planned_from():
    rep, policy = run(FakeCamera(bad_from=6), cycles=20)
    assert rep.camera_errors == 15 and "corner2" in rep.camera_error and "(4, 4, 3)" in rep.camera_error
    assert all(int(round(o["state"][4] * 1000)) < 5 for o in policy.seen)
    assert rep.summary()["camera_errors"] == 15
    assert rep.missed_deadlines > 0  # the last chunk aged out: the shield's no-command steps


def test_a_camera_machine_needs_a_source_and_a_camera_less_one_takes_none():
    with pytest.raises(ValueError, match="corner2"):
        run(None)
    async def read():
        return np.zeros(5), 0.0

    async def write(u):
        pass
    with ChunkPrefetcher(PolicySource(RecordingPolicy(), "toy", "")) as pre, pytest.raises(ValueError, match="no cameras"):
        asyncio.run(run_cycles(toy_spec(), pre, BridgeConfig(), read, write, cycles=1, cameras=FakeCamera()))


@pytest.mark.parametrize("frames, words", [
    ({}, ["no frame", "corner2"]),
    ({"corner2": np.zeros((8, 8, 3), np.float32)}, ["corner2", "float32"]),
    ({"corner2": np.zeros((8, 8, 3), np.uint8), "wrist": np.zeros((8, 8, 3), np.uint8)}, ["wrist"]),
])
def test_check_frames_names_the_camera(frames, words):
    with pytest.raises(ValueError) as e:
        check_frames(SPEC, frames)
    assert all(w in str(e.value) for w in words)


def test_latest_frames_answers_at_once_with_the_newest_frames():
    class Slow(FakeCamera):
        def read(self):
            time.sleep(0.02)  # an exposure
            return super().read()

    cams = LatestFrames(Slow())
    try:
        first = cams.read()["corner2"][0, 0, 0]
        t0 = time.perf_counter()
        for _ in range(50):
            cams.read()
        assert time.perf_counter() - t0 < 0.02  # 50 reads within one exposure: never waits on the device
        time.sleep(0.1)
        assert cams.read()["corner2"][0, 0, 0] > first and cams.age_s < 0.1
    finally:
        cams.close()
    assert not any(t.name == "genba-cameras" and t.is_alive() for t in threading.enumerate())


def test_plan_chunk_puts_each_frame_in_its_observation():
    policy = RecordingPolicy()
    frames = [{"corner2": np.full((8, 8, 3), i, np.uint8)} for i in range(3)]
    plan_chunk(policy, SPEC.name, "open", [np.full(5, i / 10) for i in range(3)], frames)
    assert [int(o["images"]["corner2"][0, 0, 0]) for o in policy.seen] == [0, 1, 2]
    plan_chunk(policy, "toy", "", [np.zeros(5)])
    assert "images" not in policy.seen[-1]


def test_the_simulators_renderer_is_a_camera_source():
    from genba.envs.registry import get_task

    task = get_task("arm/jaco-reach").view("pixels", 16)
    env = task.make_env(7)
    env.reset(seed=7)
    try:
        frames = check_frames(task.spec, RenderedCameras.of_env(env).read())
        assert frames["front"].shape == (16, 16, 3) and frames["front"].std() > 0
        _, _, _, _, info = env.step(np.zeros(task.spec.action_dim, np.float32))
        assert np.array_equal(RenderedCameras.of_env(env).read()["front"], info["images"]["front"])
    finally:
        env.close()


def test_bridge_drives_a_pixels_policy_from_a_fake_camera(tmp_path):
    """The real Policy behind the prefetcher: each cycle's frame into its history, chunks played."""
    from genba.model.policy import load_policy
    from tests.eval.conftest import make_pixel_checkpoint

    policy = load_policy(make_pixel_checkpoint(tmp_path / "ckpt"), device="cpu")
    spec = policy.specs["jaco_px"]

    class Camera:
        def read(self):
            return {"front": np.full((16, 16, 3), 90, np.uint8)}

    async def read():
        return np.zeros(spec.obs_dim), 0.0

    async def write(u):
        pass

    cfg = BridgeConfig(period_s=0.01, shield=ShieldConfig(deadline_s=0.5))
    with ChunkPrefetcher(PolicySource(policy, spec.name, "reach the target")) as pre:
        rep = asyncio.run(run_cycles(spec, pre, cfg, read, write, cycles=30, cameras=Camera()))
    assert rep.camera_errors == 0 and pre.errors == 0, pre.last_error
    assert rep.missed_deadlines < rep.cycles and pre.requests > 0
