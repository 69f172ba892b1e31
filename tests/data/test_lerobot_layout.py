"""The LeRobot v3 layout, field by field against LeRobot 0.4.4's own output, and validation.

The fixture ``fixtures/lerobot-v3-sample`` was written by LeRobot 0.4.4
(``LeRobotDataset.create/add_frame/save_episode/finalize``, no videos): 20
episodes x 100 frames at 10 fps, 39-d state, 4-d action, one task, plus an
``observation.environment_state`` feature genba does not write. We write a
dataset of the same shape and compare every file, ignoring only that feature.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from data_synth import TASKS, coded_episodes, make_spec

from genba.data import layout as lerobot
from genba.data.dataset import open_dataset
from genba.data.layout import DatasetError, Episode, write_dataset

REF = Path(__file__).parent / "fixtures" / "lerobot-v3-sample"
SKIP = "observation.environment_state"  # in the reference only
DATA0 = "data/chunk-000/file-000.parquet"
EPS0 = "meta/episodes/chunk-000/file-000.parquet"


@pytest.fixture(scope="module")
def mirror(tmp_path_factory):
    """A genba dataset shaped like the reference sample."""
    spec = make_spec("sawyer", obs_names=[f"s{i}" for i in range(39)], act_names=["dx", "dy", "dz", "grip"],
                     period=0.1, robot_type="sawyer_synth")
    eps = [Episode(e.observation, e.action, 0, e.seed) for e in coded_episodes(spec, [100] * 20)]
    root = tmp_path_factory.mktemp("mirror") / "ds"
    write_dataset(root, eps, spec, [{"en": "reach the goal", "ja": "目標に到達する"}])
    return root


def _fields(path: Path, drop: str = SKIP) -> list[tuple[str, pa.DataType]]:
    return [(f.name, f.type) for f in pq.read_schema(path) if drop not in f.name]


def test_same_files_as_lerobot(mirror):
    ours = sorted(str(p.relative_to(mirror)) for p in mirror.rglob("*") if p.is_file())
    ref = sorted(str(p.relative_to(REF)) for p in REF.rglob("*") if p.is_file())
    assert ours == sorted(ref + ["meta/genba.json"])


def test_info_json_equals_reference(mirror):
    ours = json.loads((mirror / "meta/info.json").read_text())
    ref = json.loads((REF / "meta/info.json").read_text())
    del ref["features"][SKIP]
    assert list(ours) == list(ref)  # same keys, same order
    assert list(ours["features"]) == list(ref["features"])
    for name, ft in ref["features"].items():
        assert ours["features"][name] == ft, name
    assert ours == ref


@pytest.mark.parametrize("rel", [DATA0, EPS0, "meta/tasks.parquet"])
def test_parquet_columns_and_arrow_types(mirror, rel):
    assert _fields(mirror / rel) == _fields(REF / rel)


def test_data_parquet_metadata(mirror):
    ours, ref = pq.read_schema(mirror / DATA0).metadata, pq.read_schema(REF / DATA0).metadata
    assert set(ours) == set(ref) == {b"huggingface"}
    o, r = json.loads(ours[b"huggingface"]), json.loads(ref[b"huggingface"])
    assert set(o) == set(r)
    del r["info"]["features"][SKIP]
    assert o["info"] == r["info"]
    # one row group per episode, as LeRobot appends episode by episode
    assert pq.read_metadata(mirror / DATA0).num_row_groups == pq.read_metadata(REF / DATA0).num_row_groups


def test_tasks_parquet_keeps_string_as_pandas_index(mirror):
    ours, ref = pq.read_schema(mirror / "meta/tasks.parquet"), pq.read_schema(REF / "meta/tasks.parquet")
    assert pq.read_schema(mirror / EPS0).metadata == pq.read_schema(REF / EPS0).metadata  # none
    o, r = json.loads(ours.metadata[b"pandas"]), json.loads(ref.metadata[b"pandas"])
    assert set(o) == set(r)
    for key in ("index_columns", "column_indexes", "columns", "attributes"):
        assert o[key] == r[key], key
    tasks = "meta/tasks.parquet"
    assert pq.read_table(mirror / tasks).to_pydict() == pq.read_table(REF / tasks).to_pydict()


def test_episodes_parquet_values(mirror):
    ours, ref = pq.read_table(mirror / EPS0), pq.read_table(REF / EPS0)
    for col in ("episode_index", "tasks", "length", "data/chunk_index", "data/file_index",
                "dataset_from_index", "dataset_to_index", "meta/episodes/chunk_index", "meta/episodes/file_index"):
        assert ours.column(col).to_pylist() == ref.column(col).to_pylist(), col
    for feat in ("frame_index", "episode_index", "index", "task_index"):  # exact integer stats
        for key in ("min", "max", "mean", "count"):
            col = f"stats/{feat}/{key}"
            assert ours.column(col).to_pylist() == ref.column(col).to_pylist(), col
    np.testing.assert_allclose(np.array(ours.column("stats/timestamp/max").to_pylist()),
                               np.array(ref.column("stats/timestamp/max").to_pylist()), rtol=1e-6)


def test_stats_json_keys_and_types(mirror):
    ours = json.loads((mirror / "meta/stats.json").read_text())
    ref = json.loads((REF / "meta/stats.json").read_text())
    del ref[SKIP]
    assert set(ours) == set(ref)
    for feat, entry in ref.items():
        assert list(ours[feat]) == list(entry), feat  # same keys, same order
        for key, val in entry.items():
            assert len(ours[feat][key]) == len(val), (feat, key)
            assert {type(x) for x in ours[feat][key]} == {type(x) for x in val}, (feat, key)
    for feat in ("frame_index", "episode_index", "index", "task_index", "timestamp"):
        for key in ("min", "max", "mean", "count"):
            np.testing.assert_allclose(ours[feat][key], ref[feat][key], rtol=1e-6, err_msg=f"{feat}/{key}")


# ---- round trip and refusals -----------------------------------------------------------
def test_round_trip(toy_dataset):
    root, spec = toy_dataset
    ds = open_dataset(root)
    eps = coded_episodes(spec, [5, 7, 1, 10])
    assert (ds.num_frames, ds.num_episodes, ds.spec) == (23, 4, spec)
    np.testing.assert_array_equal(ds.observation, np.concatenate([e.observation for e in eps]))
    np.testing.assert_array_equal(ds.action, np.concatenate([e.action for e in eps]))
    assert ds.observation.dtype == ds.action.dtype == np.float32
    assert [(e.start, e.stop, e.task_index, e.seed) for e in ds.episodes] == [
        (0, 5, 0, 100), (5, 12, 1, 101), (12, 13, 0, 102), (13, 23, 1, 103)]
    assert [t["ja"] for t in ds.tasks] == [t["ja"] for t in TASKS]
    assert ds.extra == {"collection": {"attempted": 5, "kept": 4, "failed": 1}}
    assert ds.info["fps"] == 80 and ds.genba["control_period"] == spec.control_period
    np.testing.assert_allclose(ds.stats["action"]["mean"], ds.action.mean(0), rtol=1e-5)
    np.testing.assert_allclose(ds.stats["observation.state"]["q99"], np.quantile(ds.observation, 0.99, axis=0),
                               rtol=1e-5)
    np.testing.assert_allclose(ds.timestamp, ds.frame_index / 80, rtol=1e-6)


def test_read_table_hook_sees_every_parquet(toy_dataset):
    root, _ = toy_dataset
    seen = []

    def hook(path):
        seen.append(Path(path).relative_to(root).as_posix())
        return pq.read_table(path)

    open_dataset(root, read_table=hook)
    assert sorted(seen) == sorted([DATA0, EPS0, "meta/tasks.parquet"])


def test_split_into_files_and_chunks(tmp_path):
    spec = make_spec()
    eps = coded_episodes(spec, [50] * 7)
    root = write_dataset(tmp_path / "d", eps, spec, TASKS, chunks_size=2, data_files_size_in_mb=0.004)
    files = sorted(p.relative_to(root).as_posix() for p in (root / "data").rglob("*.parquet"))
    assert len(files) > 2 and any("chunk-001" in f for f in files)
    ds = open_dataset(root)
    np.testing.assert_array_equal(ds.observation, np.concatenate([e.observation for e in eps]))


def test_truncated_parquet_names_file(toy_dataset):
    root, _ = toy_dataset
    path = root / DATA0
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError, match=r"data/chunk-000/file-000\.parquet"):
        open_dataset(root)


def test_corrupted_episodes_parquet_names_file(toy_dataset):
    root, _ = toy_dataset
    path = root / EPS0
    data = bytearray(path.read_bytes())
    data[-8:-4] = b"\xff\xff\xff\x7f"  # footer length: garbage
    path.write_bytes(bytes(data))
    with pytest.raises(DatasetError, match=r"meta/episodes/chunk-000/file-000\.parquet"):
        open_dataset(root)


def test_column_type_mismatch_refused(toy_dataset):
    root, _ = toy_dataset
    path = root / DATA0
    t = pq.read_table(path)
    i = t.schema.get_field_index("action")
    t = t.set_column(i, "action", pa.array(t.column("action").to_pylist(), type=pa.list_(pa.float64(), 2)))
    pq.write_table(t, path)
    with pytest.raises(DatasetError, match=r"file-000\.parquet: feature 'action'"):
        open_dataset(root)


def test_info_shape_mismatch_refused(toy_dataset):
    root, _ = toy_dataset
    info = json.loads((root / "meta/info.json").read_text())
    info["features"]["observation.state"]["shape"] = [4]
    (root / "meta/info.json").write_text(json.dumps(info))
    with pytest.raises(DatasetError, match="observation.state"):
        open_dataset(root)


def test_missing_column_refused(toy_dataset):
    root, _ = toy_dataset
    path = root / DATA0
    pq.write_table(pq.read_table(path).drop_columns(["task_index"]), path)
    with pytest.raises(DatasetError, match=r"file-000\.parquet: feature 'task_index'"):
        open_dataset(root)


def test_episode_ranges_must_match_frames(toy_dataset):
    root, _ = toy_dataset
    path = root / EPS0
    t = pq.read_table(path)
    to = t.column("dataset_to_index").to_pylist()
    to[0] += 1
    t = t.set_column(t.schema.get_field_index("dataset_to_index"), "dataset_to_index", pa.array(to))
    pq.write_table(t, path)
    with pytest.raises(DatasetError, match="meta/episodes"):
        open_dataset(root)


def test_stray_data_file_refused(toy_dataset):
    root, _ = toy_dataset
    shutil.copy(root / DATA0, root / "data/chunk-000/file-001.parquet")
    with pytest.raises(DatasetError, match="file-001.parquet: data file not referenced"):
        open_dataset(root)


def test_incomplete_dataset_not_openable(toy_dataset):
    root, _ = toy_dataset
    (root / "meta/info.json").unlink()
    with pytest.raises(DatasetError, match=r"info\.json: missing; the dataset is incomplete"):
        open_dataset(root)


def test_interrupted_write_leaves_nothing(tmp_path, monkeypatch):
    spec = make_spec()

    def boom(*_a, **_k):
        raise KeyboardInterrupt  # as if Ctrl-C hit mid-write

    monkeypatch.setattr(lerobot, "_write_tasks", boom)
    with pytest.raises(KeyboardInterrupt):
        write_dataset(tmp_path / "d", coded_episodes(spec, [4, 4]), spec, TASKS)
    assert os.listdir(tmp_path) == []
    with pytest.raises(DatasetError, match="does not exist"):
        open_dataset(tmp_path / "d")


def test_existing_target_refused_unless_overwrite(toy_dataset):
    root, spec = toy_dataset
    eps = coded_episodes(spec, [3])
    with pytest.raises(FileExistsError, match="overwrite=True"):
        write_dataset(root, eps, spec, TASKS)
    write_dataset(root, eps, spec, TASKS, overwrite=True)
    assert open_dataset(root).num_frames == 3
    assert sorted(os.listdir(root.parent)) == ["toy"]  # no temp or old copies left


@pytest.mark.parametrize("bad, match", [
    (lambda s: Episode(np.zeros((4, 2)), np.zeros((4, 2)), 0), r"episode 0: observation shape \(4, 2\)"),
    (lambda s: Episode(np.zeros((4, 3)), np.zeros((3, 2)), 0), r"episode 0: action shape"),
    (lambda s: Episode(np.full((4, 3), np.nan), np.zeros((4, 2)), 0), "NaN"),
    (lambda s: Episode(np.zeros((4, 3)), np.zeros((4, 2)), 5), "task_index 5"),
])
def test_bad_episodes_refused(tmp_path, bad, match):
    spec = make_spec()
    with pytest.raises(DatasetError, match=match):
        write_dataset(tmp_path / "d", [bad(spec)], spec, TASKS)
    assert not (tmp_path / "d").exists()


def test_duplicate_task_strings_refused(tmp_path):
    spec = make_spec()
    with pytest.raises(DatasetError, match="unique task strings"):
        write_dataset(tmp_path / "d", coded_episodes(spec, [3]), spec, [TASKS[0], dict(TASKS[0], ja="別")])


def test_one_axis_action_round_trips(tmp_path):
    """A single-axis machine (a DC drive) stores its action as a scalar column, as LeRobot does."""
    spec = make_spec("dc1", obs_dim=3, act_dim=1)
    eps = coded_episodes(spec, [5, 7])
    root = write_dataset(tmp_path / "dc1", eps, spec, TASKS)
    info = json.loads((root / "meta/info.json").read_text())
    assert info["features"]["action"]["shape"] == [1]
    ds = open_dataset(root)
    assert ds.action.shape == (12, 1)
    np.testing.assert_array_equal(ds.action[:5, 0], eps[0].action[:, 0])
