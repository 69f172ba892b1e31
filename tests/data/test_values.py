"""Issue 19 item 5: values, rates and specs a dataset may not get past `open_dataset` with.

Each fault is injected the way it reached training (an edited parquet cell, an
edited ``info.json``), on the plain path and on the governed (encrypted) one.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from data_synth import TASKS, coded_episodes, make_spec

from genba.data.dataset import open_dataset
from genba.data.layout import ACTION, STATE, DatasetError, write_dataset
from genba.data.spec import diff_specs, fps_mismatch, plausible_bounds

DATA0 = "data/chunk-000/file-000.parquet"


def set_cell(root: Path, feature: str, row: int, col: int, value: float, rel: str = DATA0) -> None:
    """Write ``value`` into ``feature[col]`` of frame ``row`` of a data file (as an outside edit would)."""
    path = root / rel
    t = pq.read_table(path)
    typ = t.schema.field(feature).type
    x = np.array(t.column(feature).combine_chunks().flatten().to_numpy(), np.float32).reshape(t.num_rows, -1)
    x[row, col] = value
    flat = pa.array(x.reshape(-1), type=pa.float32())
    arr = pa.FixedSizeListArray.from_arrays(flat, x.shape[1]) if pa.types.is_fixed_size_list(typ) else flat
    pq.write_table(t.set_column(t.schema.get_field_index(feature), feature, arr), path)


def edit_json(path: Path, fn) -> None:
    d = json.loads(path.read_text())
    fn(d)
    path.write_text(json.dumps(d))


# ---- non-finite and absurd values ---------------------------------------------------------
@pytest.mark.parametrize("feature, col, value, what", [
    (STATE, 1, np.nan, "NaN"),
    (ACTION, 1, np.nan, "NaN"),
    (ACTION, 0, np.inf, "inf"),
    (ACTION, 1, -np.inf, "-inf"),
    (ACTION, 1, 1e30, "1e+30"),
])
def test_a_bad_value_is_refused_naming_file_episode_and_column(toy_dataset, feature, col, value, what):
    root, spec = toy_dataset
    set_cell(root, feature, 9, col, value)  # frame 9 = episode 1 (lengths 5, 7, 1, 10), its frame 4
    names = spec.obs_names if feature == STATE else spec.action_names
    with pytest.raises(DatasetError) as e:
        open_dataset(root)
    msg = str(e.value)
    assert DATA0 in msg and "episode 1" in msg and "frame 4" in msg
    assert f"{feature}[{col}] ({names[col]!r})" in msg and what in msg


def test_magnitude_bound_follows_the_spec_limits(toy_dataset):
    """Outside the limits by less than the margin is data (a fault, an overshoot); beyond it, refused."""
    root, spec = toy_dataset  # action limits [-1, 1]: plausible up to 10 spans beyond, i.e. [-21, 21]
    lo, hi = plausible_bounds(spec.action_low, spec.action_high)
    np.testing.assert_allclose([lo[1], hi[1]], [-21.0, 21.0])
    set_cell(root, ACTION, 3, 1, 20.0)
    open_dataset(root)
    set_cell(root, ACTION, 3, 1, 22.0)
    with pytest.raises(DatasetError, match=r"is 22, outside the plausible range \[-21, 21\]"):
        open_dataset(root)


def test_an_unbounded_observation_gets_an_absolute_bound():
    lo, hi = plausible_bounds((-np.inf, 0.0), (np.inf, np.inf))
    assert list(lo) == [-1e6, -1e6] and list(hi) == [1e6, 1e6]


def test_genba_train_stops_with_the_error_instead_of_training_to_nan(toy_dataset, tmp_path, capsys):
    from genba.cli import main

    root, _ = toy_dataset
    set_cell(root, ACTION, 20, 1, np.nan)  # episode 3, frame 7
    rc = main(["train", "--preset", "debug", "--steps", "2", "--no-progress", "--data", str(root),
               "--out", str(tmp_path / "run")])
    assert rc == 2
    assert "episode 3, frame 7: action[1] ('a1') is NaN" in capsys.readouterr().err
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_nan_in_an_extra_float_feature_is_refused(toy_dataset):
    root, _ = toy_dataset
    t = pq.read_table(root / DATA0)
    ts = t.column("timestamp").to_numpy().copy()
    ts[2] = np.nan
    pq.write_table(t.set_column(t.schema.get_field_index("timestamp"), "timestamp", pa.array(ts)), root / DATA0)
    with pytest.raises(DatasetError, match=r"episode 0, frame 2: timestamp is NaN"):
        open_dataset(root)


def test_the_check_costs_little(tmp_path):
    """Open-time value checks are vectorized: 200k frames open in well under a second more."""
    import time

    spec = make_spec(obs_dim=8, act_dim=4)
    rng = np.random.default_rng(0)
    from genba.data.layout import Episode

    eps = [Episode(rng.uniform(-1, 1, (2000, 8)), rng.uniform(-1, 1, (2000, 4)), 0) for _ in range(100)]
    root = write_dataset(tmp_path / "big", eps, spec, TASKS)
    t0 = time.perf_counter()
    open_dataset(root)
    assert time.perf_counter() - t0 < 5.0


# ---- fps against the control period ----------------------------------------------------------
def test_info_fps_edited_is_refused_naming_both(toy_dataset):
    root, _ = toy_dataset  # control period 0.0125 s = 80 Hz
    edit_json(root / "meta/info.json", lambda d: d.update(fps=10))
    with pytest.raises(DatasetError, match=r"info\.json: fps 10 .*control_period 0\.0125 s \(80 Hz\)"):
        open_dataset(root)


def test_spec_control_period_disagreeing_with_fps_is_refused(toy_dataset):
    root, _ = toy_dataset
    edit_json(root / "meta/genba.json", lambda d: d["spec"].update(control_period=0.01))
    with pytest.raises(DatasetError, match=r"fps 80 .*control_period 0\.01 s \(100 Hz\)"):
        open_dataset(root)


@pytest.mark.parametrize("fps, period, ok", [
    (80, 0.0125, True), (10000, 1e-4, True), (333, 1 / 333.333, True),  # LeRobot's fps is an int
    (2, 0.4, True), (30, 0.0333, True), (3000, 0.000333, True), (1, 10.0, True),  # 0.1 Hz: LeRobot's floor
    (10, 0.0125, False), (79, 0.0125, False), (100, 0.0125, False), (30, 0.03, False),
])
def test_fps_tolerance(fps, period, ok):
    assert (fps_mismatch(fps, period) is None) == ok


# ---- spec conflicts name the field ----------------------------------------------------------
def test_diff_specs_names_fields_and_both_values():
    a = make_spec()
    b = dataclasses.replace(a, action_high=(a.action_high[0], 2.0), control_period=0.01)
    d = diff_specs(a, b)
    assert d == ["action_high[1]: 1.0 vs 2.0", "control_period: 0.0125 vs 0.01"]
    assert diff_specs(a, a) == []
    c = dataclasses.replace(a, safety=dataclasses.replace(a.safety, max_rate=(1.0, 2.0)))
    assert diff_specs(a, c) == ["safety.max_rate: () vs (1.0, 2.0)"]


def test_trainer_refusal_names_the_differing_field(tmp_path):
    from genba.train.config import TrainConfigError, get_train_preset
    from genba.train.trainer import build_datasets

    a = make_spec()
    b = dataclasses.replace(a, action_low=(a.action_low[0], -3.0))
    d1 = write_dataset(tmp_path / "d1", coded_episodes(a, [4, 4]), a, TASKS)
    d2 = write_dataset(tmp_path / "d2", coded_episodes(b, [4, 4]), b, TASKS)
    with pytest.raises(TrainConfigError, match=r"action_low\[1\]: -1\.0 vs -3\.0") as e:
        build_datasets(get_train_preset("debug"), [d1, d2])
    assert str(d1) in str(e.value) and str(d2) in str(e.value)


def test_finetune_refusals_name_the_differing_field(tmp_path):
    from genba.train.finetune_data import FinetuneError, open_data, plan_embodiments

    a = make_spec()
    b = dataclasses.replace(a, obs_units=("m", "rad", "m"))
    d1 = write_dataset(tmp_path / "d1", coded_episodes(a, [4]), a, TASKS)
    d2 = write_dataset(tmp_path / "d2", coded_episodes(b, [4]), b, TASKS)
    ds = open_data([d1, d2])
    with pytest.raises(FinetuneError, match=r"obs_units\[1\]: 'm' vs 'rad'"):
        plan_embodiments({}, ds, [])
    with pytest.raises(FinetuneError, match=r"obs_units\[1\]: 'm' vs 'rad'"):
        plan_embodiments({"toy": a}, ds[1:], [])


# ---- the governed (encrypted) path -------------------------------------------------------------
def test_governed_open_refuses_a_nan_naming_the_file(tmp_path, monkeypatch):
    sys.path.insert(0, str(Path(__file__).parent))
    from genba.cli import main
    from genba.govern.access import GovernedAccess

    monkeypatch.setenv("GENBA_HOME", str(tmp_path / "home"))
    assert main(["consortium", "init", "--name", "demo", "--member", "acme:Acme Robotics:JP",
                 "--site", "tokyo-1:JP:Sakura DC"]) == 0
    spec = make_spec()
    plain = write_dataset(tmp_path / "plain", coded_episodes(spec, [5, 7, 1, 10]), spec, TASKS)
    set_cell(plain, ACTION, 14, 0, np.nan)  # episode 3, frame 1, before encryption
    assert main(["data", "ingest", str(plain), str(tmp_path / "enc"), "--owner", "acme", "--dataset-id", "acme-toy",
                 "--classification", "confidential", "--purpose", "pretraining"]) == 0
    assert main(["site", "claim", "--site", "tokyo-1", "--out", str(tmp_path / "claim.json")]) == 0
    access = GovernedAccess(None, "acme/ann", tmp_path / "claim.json", "pretraining", "run-1")
    try:
        with pytest.raises(DatasetError, match=r"enc/data/chunk-000/file-000\.parquet: episode 3, frame 1: "
                                               r"action\[0\] \('a0'\) is NaN"):
            access.open(tmp_path / "enc")
    finally:
        access.close()
