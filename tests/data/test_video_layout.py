"""Cameras as LeRobot v3 video: the layout against LeRobot 0.4.4's own output, and the round trip.

The fixture ``fixtures/lerobot-v3-video-sample`` (info.json, stats.json and the
two parquet files; not the MP4) was written by LeRobot 0.4.4 with
``use_videos=True``: 2 episodes x 40 frames at 80 fps, 4-d state, 4-d action,
one 64x64 camera ``corner2``. We write a dataset of the same shape and compare
key by key and column by column. Only values genba chooses differently are
allowed to differ: ``video.codec``/``video.pix_fmt`` (H.264 yuv444p, see
:mod:`genba.data.video`), ``robot_type`` and the stats' values.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from video_synth import camera_episodes, camera_spec, moving_shapes

from genba.data.dataset import open_dataset
from genba.data.layout import DatasetError, write_dataset
from genba.data.video import LEROBOT_AV1, decode_frames, encode_frames, psnr

REF = Path(__file__).parent / "fixtures" / "lerobot-v3-video-sample"
CAM = "observation.images.corner2"
EPS0 = "meta/episodes/chunk-000/file-000.parquet"
DATA0 = "data/chunk-000/file-000.parquet"
MP4 = f"videos/{CAM}/chunk-000/file-000.mp4"
TASK = [{"en": "Move the gripper to the goal position.", "ja": "グリッパを目標位置へ動かす"}]


@pytest.fixture(scope="module")
def mirror(tmp_path_factory):
    """A genba camera dataset shaped like the reference sample."""
    spec = camera_spec("sawyer", obs_dim=4, act_dim=4, robot_type="sawyer",
                       obs_names=["hand_x", "hand_y", "hand_z", "gripper"], act_names=["dx", "dy", "dz", "grip"])
    eps = camera_episodes(spec, [40, 40], n_tasks=1)
    root = tmp_path_factory.mktemp("mirror") / "ds"
    write_dataset(root, eps, spec, TASK)
    return root, eps


def test_same_files_as_lerobot(mirror):
    root, _ = mirror
    ours = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    assert ours == sorted(["meta/info.json", "meta/stats.json", "meta/tasks.parquet", EPS0, DATA0, MP4,
                           "meta/genba.json"])


def test_info_json_equals_reference(mirror):
    ours = json.loads((mirror[0] / "meta/info.json").read_text())
    ref = json.loads((REF / "meta/info.json").read_text())
    assert list(ours) == list(ref) and list(ours["features"]) == list(ref["features"])
    ref_info, our_info = ref["features"][CAM].pop("info"), ours["features"][CAM].pop("info")
    assert list(our_info) == list(ref_info)
    assert {k: v for k, v in our_info.items() if k not in ("video.codec", "video.pix_fmt")} == {
        k: v for k, v in ref_info.items() if k not in ("video.codec", "video.pix_fmt")}
    assert (our_info["video.codec"], our_info["video.pix_fmt"]) == ("h264", "yuv444p")
    assert ours == ref


@pytest.mark.parametrize("rel", [DATA0, EPS0])
def test_parquet_columns_and_arrow_types(mirror, rel):
    ours, ref = pq.read_schema(mirror[0] / rel), pq.read_schema(REF / rel)
    assert [(f.name, f.type) for f in ours] == [(f.name, f.type) for f in ref]
    if rel == DATA0:  # the `datasets` feature metadata leaves the video out, as LeRobot's does
        o, r = (json.loads(s.metadata[b"huggingface"])["info"] for s in (ours, ref))
        assert o == r


def test_episode_video_columns_equal_reference(mirror):
    ours, ref = pq.read_table(mirror[0] / EPS0), pq.read_table(REF / EPS0)
    for c in ("chunk_index", "file_index", "from_timestamp", "to_timestamp"):
        col = f"videos/{CAM}/{c}"
        assert ours.column(col).to_pylist() == ref.column(col).to_pylist(), col
    assert ours.column(f"stats/{CAM}/count").to_pylist() == ref.column(f"stats/{CAM}/count").to_pylist()


def test_image_stats_like_lerobot(mirror):
    root, eps = mirror
    ours = json.loads((root / "meta/stats.json").read_text())
    ref = json.loads((REF / "meta/stats.json").read_text())
    assert set(ours) == set(ref)
    assert list(ours[CAM]) == list(ref[CAM])
    for key, val in ref[CAM].items():
        assert np.shape(ours[CAM][key]) == np.shape(val), key  # (3, 1, 1); count (1,)
    frames = np.concatenate([e.images["corner2"] for e in eps]).astype(np.float64) / 255
    np.testing.assert_allclose(np.ravel(ours[CAM]["mean"]), frames.mean(axis=(0, 1, 2)), rtol=1e-9)
    table = pq.read_table(root / EPS0)
    for i, e in enumerate(eps):  # per episode exact; the global quantiles are LeRobot's count-weighted mean
        x = e.images["corner2"].astype(np.float64) / 255
        for key, q in (("q01", 0.01), ("q50", 0.5), ("q99", 0.99)):
            got = np.ravel(table.column(f"stats/{CAM}/{key}").to_pylist()[i])
            np.testing.assert_allclose(got, np.quantile(x, q, axis=(0, 1, 2)), atol=1e-9, err_msg=key)
    assert all(0.0 <= v <= 1.0 for k in ("min", "max", "q01", "q99") for v in np.ravel(ours[CAM][k]))


def test_round_trip_frames_and_psnr(mirror):
    root, eps = mirror
    ds = open_dataset(root, cache_dir=None)
    want = np.concatenate([e.images["corner2"] for e in eps])
    got = ds.images["corner2"].take(np.arange(ds.num_frames))
    assert got.shape == want.shape == (80, 64, 64, 3) and got.dtype == np.uint8
    assert psnr(got, want) >= 35.0  # the codec choice's reason (genba.data.video)
    assert ds.videos == [root / MP4]


def test_lerobot_default_codec_is_readable_too(tmp_path):
    spec = camera_spec()
    write_dataset(tmp_path / "av1", camera_episodes(spec, [6, 4]), spec, [("a", "あ"), ("b", "い")],
                  video=LEROBOT_AV1)
    info = json.loads((tmp_path / "av1/meta/info.json").read_text())
    assert info["features"][CAM]["info"]["video.codec"] == "av1"
    assert open_dataset(tmp_path / "av1", cache_dir=None).images["corner2"].take(np.arange(10)).shape[0] == 10


def test_episodes_split_over_video_files(tmp_path):
    spec = camera_spec(cameras=(("corner2", 32, 32), ("wrist", 16, 24)))
    eps = camera_episodes(spec, [30, 20, 25, 10])
    write_dataset(tmp_path / "ds", eps, spec, [("a", "あ"), ("b", "い")], video_files_size_in_mb=1e-4)
    table = pq.read_table(tmp_path / "ds" / EPS0)
    assert table.column(f"videos/{CAM}/file_index").to_pylist() == [0, 1, 2, 3]
    assert table.column(f"videos/{CAM}/from_timestamp").to_pylist() == [0.0] * 4
    ds = open_dataset(tmp_path / "ds", cache_dir=None)
    assert len(ds.videos) == 8
    for cam in ("corner2", "wrist"):
        want = np.concatenate([e.images[cam] for e in eps])
        rows = np.array([[0, 29], [30, 49], [50, 84]])  # across files in one gather
        assert ds.images[cam].take(rows).shape == (3, 2, *spec.camera(cam).shape)
        assert psnr(ds.images[cam].take(rows), want[rows]) > 30
        assert psnr(ds.images[cam][:], want) > 30


def test_writer_refuses_bad_images(tmp_path):
    import dataclasses

    spec = camera_spec()
    ep = camera_episodes(spec, [5])[0]
    cases = [({}, "no images of camera 'corner2'"),
             ({"corner2": ep.images["corner2"][:4]}, r"expected uint8\[5, 64, 64, 3\]"),
             ({"corner2": ep.images["corner2"].astype(np.float32)}, "float32"),
             ({**ep.images, "side": ep.images["corner2"]}, "cameras \\['side'\\]")]
    for images, match in cases:
        with pytest.raises(DatasetError, match=match):
            write_dataset(tmp_path / "x", [dataclasses.replace(ep, images=images)], spec, [("a", "あ")])


def test_codec_round_trip_in_memory():
    frames = moving_shapes(12, 48, 40)
    data = encode_frames(frames, fps=10)
    got = decode_frames(data, "mem.mp4")
    assert got.shape == frames.shape and psnr(got, frames) >= 35.0
