"""Training from camera frames (issue 21): the debug-pixels preset on a tiny generated camera dataset
mixed with a camera-less drive; transforms identical in training and serving; camera errors named."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from genba.data.layout import Episode, write_dataset
from genba.data.spec import CameraSpec
from genba.data.transforms import NormalizeImages, RandomShift
from genba.data.windows import collate
from genba.model.config import get_preset
from genba.model.generalist import build_model
from genba.model.policy import load_policy
from genba.train import trainer as T
from genba.train.config import get_train_preset
from tests.train.conftest import TASKS, toy_episodes, toy_spec

SIZE = 24  # small frames keep the tests fast; the encoder is size-agnostic
CFG = get_train_preset("debug-pixels").replace(steps=4, ckpt_every=2, keep_last=3, batch_size=8)


def cam_spec():
    return dataclasses.replace(toy_spec("toycam", 4, 2, 0.0125), cameras=(CameraSpec("front", SIZE, SIZE, "front"),),
                               obs_mode="pixels")


def cam_episodes(spec, n: int, length: int, seed: int) -> list[Episode]:
    """Frames that carry the task: a bright square whose position moves with the first action."""
    rng = np.random.default_rng(seed)
    out = []
    for ep in toy_episodes(spec, n, length, seed):
        frames = rng.integers(0, 60, (length, SIZE, SIZE, 3), dtype=np.uint8)
        for t, a in enumerate(ep.action):
            x = int((a[0] + 1) / 2 * (SIZE - 5))
            frames[t, 8:13, x:x + 5] = (230, 200, 40)
        out.append(dataclasses.replace(ep, images={"front": frames}))
    return out


@pytest.fixture(scope="module")
def pixel_data(tmp_path_factory, toy_data):
    spec = cam_spec()
    root = tmp_path_factory.mktemp("pixels") / "toycam"
    return [write_dataset(root, cam_episodes(spec, 4, 20, 3), spec, TASKS), toy_data[1]]  # + the drive


def _obs(spec, rng, images=True):
    obs = {"embodiment": spec.name, "state": rng.normal(size=spec.obs_dim).astype(np.float32),
           "instruction": "reach the goal"}
    if images and spec.cameras:
        obs["images"] = {c.name: rng.integers(0, 255, c.shape, dtype=np.uint8) for c in spec.cameras}
    return obs


def test_trains_saves_resumes_and_a_policy_answers_with_an_image(pixel_data, tmp_path):
    half = T.train(CFG, pixel_data, tmp_path, stop_at=2, progress=False)
    assert half.step == 2
    done = T.train(CFG, pixel_data, tmp_path, resume=True, progress=False)
    assert done.step == 4 and np.isfinite(done.loss)
    assert {"loss/toycam", "loss/toydrive"} <= set(done.history[-1])
    policy = load_policy(done.checkpoint, device="cpu")
    assert policy.model.image is not None and "observation.images.front" in policy.runtime.normalize.stats["toycam"]
    rng = np.random.default_rng(0)
    cam, drive = policy.specs["toycam"], policy.specs["toydrive"]
    for _ in range(3):  # a history of frames, then the chunk
        a = policy.infer(_obs(cam, rng))
        assert a.shape == (2,) and a.dtype == np.float32 and np.all(np.isfinite(a))
    assert policy.infer_chunk(_obs(cam, rng)).shape == (CFG_CHUNK(), 2)
    other = policy.fork()
    assert other.infer(_obs(drive, rng)).shape == (2,)  # the camera-less machine, same checkpoint


def CFG_CHUNK() -> int:
    return get_preset("debug-pixels").chunk


def test_the_image_changes_the_action(pixel_data, tmp_path):
    res = T.train(CFG.replace(steps=2), pixel_data, tmp_path, progress=False)
    policy = load_policy(res.checkpoint, device="cpu")
    rng = np.random.default_rng(1)
    obs = _obs(policy.specs["toycam"], rng)
    a = policy.infer_chunk(obs)
    policy.reset()
    b = policy.infer_chunk({**obs, "images": {"front": 255 - obs["images"]["front"]}})
    assert not np.allclose(a, b)


def test_training_and_serving_transforms_are_identical_without_augmentation(pixel_data):
    data = T.build_datasets(CFG.replace(image_shift=0), pixel_data)
    assert data.augment is None
    sample = data.mixed[5]
    train, serve = data.train_transform(dict(sample)), data.transform(dict(sample))
    for cam in serve["images"]:
        torch.testing.assert_close(train["images"][cam], serve["images"][cam], rtol=0, atol=0)
    # the runtime's image normalization is the same transform on the same stats
    frame = sample["images"]["front"][-1].numpy()  # (h, w, 3) uint8
    rt = NormalizeImages(data.stats)({"embodiment": "toycam", "images": {"front": torch.from_numpy(frame)[None]}})
    torch.testing.assert_close(rt["images"]["front"][0], serve["images"]["front"][-1], rtol=0, atol=0)
    # and the fast batch path computes the per-sample chain
    idx = np.array([3, 60, 5, 100, 41])
    fast, slow = T.make_batch(data, idx, torch.device("cpu")), collate([data.transform(data.mixed[int(i)]) for i in idx])
    for emb in fast:
        for key, value in fast[emb].items():
            if key == "images":
                for cam in value:
                    torch.testing.assert_close(value[cam], slow[emb]["images"][cam], msg=f"{emb}/{cam}")
            else:
                torch.testing.assert_close(value, slow[emb][key], msg=f"{emb}/{key}")


def test_augmentation_shifts_each_sample_and_keeps_its_history_aligned():
    base = torch.arange(8 * 8 * 3, dtype=torch.float32).view(1, 1, 8, 8, 3)
    x = (base + 1000 * torch.arange(3).view(1, 3, 1, 1, 1)).repeat(4, 1, 1, 1, 1)  # (B, H, h, w, 3)
    torch.manual_seed(0)
    out = RandomShift(2).shift(x)
    assert out.shape == x.shape
    assert torch.equal(RandomShift(0)({"images": {"c": x}})["images"]["c"], x)
    assert torch.equal(out[:, 1] - out[:, 0], torch.full_like(out[:, 0], 1000))  # one shift per sample's history
    assert len({tuple(out[b, 0].flatten().tolist()) for b in range(4)}) > 1  # samples shift independently
    edge = RandomShift(8).shift(x)  # beyond the frame: the edge repeats (DrQ's replicate padding)
    assert set(edge[:, 0].flatten().tolist()) <= set(x[0, 0].flatten().tolist())


def test_camera_errors_name_the_camera(pixel_data, tmp_path):
    res = T.train(CFG.replace(steps=1), pixel_data, tmp_path, progress=False)
    policy = load_policy(res.checkpoint, device="cpu")
    spec, rng = policy.specs["toycam"], np.random.default_rng(2)
    good = _obs(spec, rng)
    bad = {"missing": {**good, "images": {}},
           "shape": {**good, "images": {"front": np.zeros((SIZE, SIZE + 1, 3), np.uint8)}},
           "dtype": {**good, "images": {"front": np.zeros((SIZE, SIZE, 3), np.float32)}},
           "unknown": {**good, "images": {"front": good["images"]["front"], "wrist": good["images"]["front"]}}}
    for _why, obs in bad.items():
        with pytest.raises(ValueError, match="front|wrist"):
            policy.infer(obs)
    with pytest.raises(ValueError, match="images"):
        policy.infer(_obs(spec, rng, images=False))


def test_state_only_models_build_no_image_stem_and_mixed_batches_run(pixel_data):
    specs = {"toydrive": toy_spec("toydrive", 4, 2, 0.001)}
    plain = build_model(get_preset("debug-pixels"), specs, "cpu", seed=0)
    assert plain.image is None and not any("image" in k or "camera" in k for k in plain.state_dict())
    data = T.build_datasets(CFG, pixel_data)
    model = build_model(get_preset("debug-pixels"), data.specs, "cpu", seed=0)
    batch = T.make_batch(data, np.arange(0, 160, 10), torch.device("cpu"))
    assert set(batch) == {"toycam", "toydrive"} and "images" in batch["toycam"]
    loss, metrics = model.loss(batch)
    loss.backward()
    assert model.image.convs[0].weight.grad.abs().sum() > 0
    assert np.isfinite(metrics["loss/toydrive"])
