"""Reading cameras for training: open-time refusals, the frame cache, the bytes hook, windows and collate."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from data_synth import TASKS, coded_episodes, make_spec
from video_synth import camera_episodes, camera_spec, moving_shapes

from genba.data.dataset import open_dataset
from genba.data.frame_cache import CACHE_ENV
from genba.data.layout import DatasetError, write_dataset
from genba.data.video import encode_frames, psnr
from genba.data.windows import MixedDataset, WindowDataset, collate

CAM = "observation.images.corner2"
MP4 = f"videos/{CAM}/chunk-000/file-000.mp4"
EPS0 = "meta/episodes/chunk-000/file-000.parquet"
LENGTHS = [6, 9, 4]


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    spec = camera_spec()
    eps = camera_episodes(spec, LENGTHS)
    root = write_dataset(tmp_path_factory.mktemp("cam") / "ds", eps, spec, TASKS)
    return root, spec, eps


@pytest.fixture
def cam_ds(source, tmp_path):
    """A fresh copy to break."""
    root, spec, eps = source
    dst = tmp_path / "ds"
    shutil.copytree(root, dst, ignore=shutil.ignore_patterns(".cache"))
    return dst, spec, eps


# ---- bad input, refused at open time -------------------------------------------------
def test_frame_count_disagrees_with_parquet(cam_ds):
    root, spec, _ = cam_ds
    (root / MP4).write_bytes(encode_frames(moving_shapes(sum(LENGTHS) - 2), fps=80))
    with pytest.raises(DatasetError, match=rf"{MP4}: holds 17 frames but the episodes parquet puts 19 rows"):
        open_dataset(root, cache_dir=None)


def test_missing_video(cam_ds):
    root, _, _ = cam_ds
    (root / MP4).unlink()
    with pytest.raises(DatasetError, match=rf"{MP4}: video file is missing \(the episodes parquet puts episodes 0..2"):
        open_dataset(root, cache_dir=None)


@pytest.mark.parametrize("keep", [0.5, 0.97, 0.0])
def test_truncated_video(cam_ds, keep):
    root, _, _ = cam_ds
    data = (root / MP4).read_bytes()
    (root / MP4).write_bytes(data[:int(len(data) * keep)])
    with pytest.raises(DatasetError, match=rf"{MP4}: (unreadable video|video file is empty|holds \d+ frames)"):
        open_dataset(root, cache_dir=None)


def test_resolution_differs_from_spec(cam_ds):
    root, _, _ = cam_ds
    (root / MP4).write_bytes(encode_frames(moving_shapes(sum(LENGTHS), 32, 48), fps=80))
    with pytest.raises(DatasetError, match=rf"{MP4}: frames are 32x48, but the spec says camera 'corner2' is 64x64"):
        open_dataset(root, cache_dir=None)


def test_info_shape_differs_from_spec(cam_ds):
    root, _, _ = cam_ds
    info = json.loads((root / "meta/info.json").read_text())
    info["features"][CAM]["shape"] = [96, 96, 3]
    (root / "meta/info.json").write_text(json.dumps(info))
    with pytest.raises(DatasetError, match=r"info.json: feature 'observation.images.corner2' has shape \[96, 96, 3\]"):
        open_dataset(root, cache_dir=None)


def test_camera_in_spec_absent_from_files(cam_ds):
    root, _, _ = cam_ds
    genba = json.loads((root / "meta/genba.json").read_text())
    genba["spec"]["cameras"].append({"name": "wrist", "height": 64, "width": 64, "source": "gripper"})
    (root / "meta/genba.json").write_text(json.dumps(genba))
    with pytest.raises(DatasetError, match=r"info.json: the spec 'cam' names camera 'wrist' but there is no video "
                                           r"feature 'observation.images.wrist'"):
        open_dataset(root, cache_dir=None)


def test_episode_video_columns_missing(cam_ds):
    root, _, _ = cam_ds
    t = pq.read_table(root / EPS0)
    pq.write_table(t.drop_columns([f"videos/{CAM}/from_timestamp"]), root / EPS0)
    with pytest.raises(DatasetError, match=rf"{EPS0}: lacks column 'videos/{CAM}/from_timestamp'"):
        open_dataset(root, cache_dir=None)


def test_episode_timestamps_outside_file(cam_ds):
    root, _, _ = cam_ds
    t = pq.read_table(root / EPS0)
    col = f"videos/{CAM}/to_timestamp"
    i = t.column_names.index(col)
    pq.write_table(t.set_column(i, col, [[x + 0.5 for x in t.column(col).to_pylist()]]), root / EPS0)
    with pytest.raises(DatasetError, match=rf"{MP4}: episode 0 spans 0..0.575 s of it"):
        open_dataset(root, cache_dir=None)


# ---- the cache and the hook -----------------------------------------------------------
def test_frame_cache_is_reused_and_never_stale(cam_ds):
    root, _, eps = cam_ds
    first = open_dataset(root)
    entries = sorted((root / ".cache/frames").glob("*.u8"))
    assert len(entries) == 1 and entries[0].stat().st_size == sum(LENGTHS) * 64 * 64 * 3
    assert isinstance(first.images["corner2"].parts[0], np.memmap)
    again = open_dataset(root)  # from the cache: same frames
    np.testing.assert_array_equal(again.images["corner2"][:], first.images["corner2"][:])
    new = moving_shapes(sum(LENGTHS), phase=2.5)
    (root / MP4).write_bytes(encode_frames(new, fps=80))  # same size and count, other pictures
    changed = open_dataset(root)
    assert len(list((root / ".cache/frames").glob("*.u8"))) == 2
    assert psnr(changed.images["corner2"][:], new) >= 35.0


def test_cache_dir_env_and_memory_mode(cam_ds, tmp_path, monkeypatch):
    root, _, _ = cam_ds
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "shared"))
    open_dataset(root)
    assert len(list((tmp_path / "shared/frames").glob("*.u8"))) == 1 and not (root / ".cache").exists()
    ds = open_dataset(root, cache_dir=None)
    assert not isinstance(ds.images["corner2"].parts[0], np.memmap)
    assert len(list((tmp_path / "shared/frames").glob("*.u8"))) == 1


def test_read_bytes_hook_sees_every_video(cam_ds):
    root, _, eps = cam_ds
    held = {root / MP4: (root / MP4).read_bytes()}
    (root / MP4).write_bytes(b"ciphertext, not an mp4")  # the hook supplies the plaintext, as the governed opener
    seen = []

    def read_bytes(path: Path) -> bytes:
        seen.append(path)
        return held[path]

    ds = open_dataset(root, read_bytes=read_bytes, cache_dir=None)
    assert seen == [root / MP4]
    want = np.concatenate([e.images["corner2"] for e in eps])
    assert psnr(ds.images["corner2"][:], want) >= 35.0

    def refuse(path: Path) -> bytes:
        raise PermissionError(f"{path}: no grant")

    with pytest.raises(PermissionError, match="no grant"):
        open_dataset(root, read_bytes=refuse, cache_dir=None)


# ---- windows and batches ----------------------------------------------------------------
def test_windows_carry_image_history(source):
    root, _, eps = source
    ds = open_dataset(root, cache_dir=None)
    frames = ds.images["corner2"][:]
    w = WindowDataset(ds, history=3, chunk=2)
    s = w[7]  # episode 1 (rows 6..14), frame 1: rows 6, 6 (pad), 7
    assert s["images"]["corner2"].shape == (3, 64, 64, 3) and s["images"]["corner2"].dtype == torch.uint8
    assert s["observation.state_is_pad"].tolist() == [True, False, False]
    np.testing.assert_array_equal(s["images"]["corner2"].numpy(), frames[[6, 6, 7]])
    b = w.gather([0, 7, 18])
    assert b["images"]["corner2"].shape == (3, 3, 64, 64, 3)
    np.testing.assert_array_equal(b["images"]["corner2"][1].numpy(), frames[[6, 6, 7]])


def test_collate_mixes_camera_and_cameraless(source, tmp_path):
    root, _, _ = source
    plain_spec = make_spec("drive")
    plain = write_dataset(tmp_path / "plain", coded_episodes(plain_spec, [5, 5]), plain_spec, TASKS)
    cam = WindowDataset(open_dataset(root, cache_dir=None), history=2)
    drive = WindowDataset(open_dataset(plain), history=2)
    assert "images" not in drive[0]
    mixed = MixedDataset([cam, drive])
    batch = collate([mixed[i] for i in (0, len(cam), 3, len(cam) + 4, 5)])
    assert set(batch) == {"cam", "drive"}
    assert batch["cam"]["images"]["corner2"].shape == (3, 2, 64, 64, 3)
    assert "images" not in batch["drive"] and batch["drive"]["observation.state"].shape == (2, 2, 3)
