"""Issue 19 item 9: LeRobot v3 datasets from outside become trainable with a spec file.

Two sources: ``fixtures/lerobot-v3-sample``, written by LeRobot 0.4.4 itself
(20 episodes x 100 frames at 10 fps, 39-d state, 4-d action, an extra
``observation.environment_state``), and a genba dataset whose
``meta/genba.json`` is gone, as after LeRobot's ``lerobot-edit-dataset``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from data_synth import TASKS, make_spec
from test_values import edit_json, set_cell

from genba.cli import main
from genba.data.dataset import open_dataset
from genba.data.layout import ACTION, STATE, DatasetError, Episode, write_dataset
from genba.data.lerobot_import import DRAFT_KEY, draft_spec, import_lerobot, load_spec_file
from genba.data.spec import EmbodimentSpec, SpecError

REF = Path(__file__).parent / "fixtures" / "lerobot-v3-sample"


@pytest.fixture
def plain(tmp_path):
    """A copy of the dataset LeRobot 0.4.4 wrote (no meta/genba.json)."""
    return Path(shutil.copytree(REF, tmp_path / "plain"))


def _reviewed(draft: dict, **changes) -> EmbodimentSpec:
    d = {k: v for k, v in draft.items() if k != DRAFT_KEY}
    d.update(changes)
    return EmbodimentSpec.from_dict(d)


def _write(path: Path, doc) -> Path:
    path.write_text(json.dumps(doc))
    return path


def test_plain_lerobot_dataset_is_refused_with_the_way_in(plain):
    with pytest.raises(DatasetError, match=r"genba\.json: missing; .*genba data import-lerobot DIR --spec"):
        open_dataset(plain)


# ---- draft-spec ----------------------------------------------------------------------------
def test_draft_spec_reads_names_rate_and_limits(plain, tmp_path, capsys):
    assert main(["data", "draft-spec", str(plain), "--out", str(tmp_path / "spec.json")]) == 0
    draft = json.loads((tmp_path / "spec.json").read_text())
    assert "DRAFT" in draft[DRAFT_KEY] and "observation.environment_state" in draft[DRAFT_KEY]
    assert draft["name"] == "sawyer_synth" and draft["control_period"] == pytest.approx(0.1)
    assert draft["obs_names"] == [f"s{i}" for i in range(39)] and draft["action_names"] == ["dx", "dy", "dz", "grip"]
    stats = json.loads((plain / "meta/stats.json").read_text())
    lo, hi = np.array(stats[ACTION]["min"]), np.array(stats[ACTION]["max"])
    np.testing.assert_allclose(draft["action_low"], lo - 0.1 * (hi - lo))
    np.testing.assert_allclose(draft["action_high"], hi + 0.1 * (hi - lo))
    assert set(draft["obs_units"]) == {"unknown"} and draft["action_meaning"] == "unknown"
    # the importer refuses the draft as it is: someone has to read it first
    rc = main(["data", "import-lerobot", str(plain), "--spec", str(tmp_path / "spec.json"),
               "--out", str(tmp_path / "o")])
    assert rc == 2 and "is still a draft" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_draft_spec_without_names_or_with_a_constant_feature(plain):
    def drop(d):
        d["features"][STATE]["names"] = None
    edit_json(plain / "meta/info.json", drop)
    edit_json(plain / "meta/stats.json", lambda d: d[ACTION].update(min=[0.0, 0, 0, 2.0], max=[0.0, 0, 0, 2.0]))
    draft = draft_spec(plain, name="arm", margin=0.5)
    assert draft["name"] == "arm" and draft["obs_names"][:2] == ["state_0", "state_1"]
    assert draft["action_low"] == [-1.0, -1.0, -1.0, 1.0] and draft["action_high"] == [1.0, 1.0, 1.0, 3.0]


# ---- import-lerobot ------------------------------------------------------------------------
def test_import_to_a_new_directory(plain, tmp_path, capsys):
    spec = _reviewed(draft_spec(plain), action_meaning="end-effector delta")
    spec_file = _write(tmp_path / "spec.json", spec.to_dict())
    out = tmp_path / "trainable"
    assert main(["data", "import-lerobot", str(plain), "--spec", str(spec_file), "--out", str(out)]) == 0
    assert "20 episodes, 2000 frames" in capsys.readouterr().out
    assert not (plain / "meta/genba.json").exists()  # the source stays as LeRobot wrote it
    ds = open_dataset(out)
    assert (ds.spec, ds.num_episodes, ds.num_frames) == (spec, 20, 2000)
    assert ds.tasks[0]["en"] == ds.tasks[0]["ja"] == "reach the goal"  # no --tasks: the English string stands in
    assert ds.genba["import"]["untranslated_tasks"] == ["reach the goal"]
    assert sorted(p.name for p in out.parent.iterdir()) == sorted(["plain", "spec.json", "trainable"])  # no temp left


def test_import_in_place_with_japanese_tasks(plain, tmp_path):
    spec = _reviewed(draft_spec(plain))
    ja = _write(tmp_path / "ja.json", {"reach the goal": "目標に到達する"})
    res = import_lerobot(plain, spec, tasks=ja)
    assert res.root == plain and res.untranslated == ()
    assert open_dataset(plain).instruction(0, "ja") == "目標に到達する"
    with pytest.raises(DatasetError, match="already a genba dataset"):
        import_lerobot(plain, spec)


def test_a_tasks_file_naming_an_unknown_task_is_refused(plain, tmp_path):
    ja = _write(tmp_path / "ja.json", [{"en": "reach the gaol", "ja": "目標"}])
    with pytest.raises(DatasetError, match=r"'reach the gaol' is not a task of the dataset"):
        import_lerobot(plain, _reviewed(draft_spec(plain)), tasks=ja)


@pytest.mark.parametrize("change, match", [
    (lambda d: d.update(obs_names=d["obs_names"][:-1], obs_units=d["obs_units"][:-1], obs_low=d["obs_low"][:-1],
                        obs_high=d["obs_high"][:-1]), r"'observation\.state' is float32\[39\] .*needs float32\[38\]"),
    (lambda d: d.update(action_names=["dx", "dy", "dz", "gripper"]),
     r"action\[3\] is named 'grip' but the spec 'sawyer_synth' calls it 'gripper'"),
    (lambda d: d.update(control_period=0.0125), r"info\.json: fps 10 .*control_period 0\.0125 s \(80 Hz\)"),
    (lambda d: d.update(action_low=[x / 1000 for x in d["action_low"]],  # limits in the wrong unit
                        action_high=[x / 1000 for x in d["action_high"]]),
     r"episode \d+, frame \d+: action\[\d\] \('(dx|dy|dz|grip)'\) is .*outside the plausible range"),
])
def test_the_spec_is_checked_against_the_dataset(plain, tmp_path, change, match):
    d = {k: v for k, v in draft_spec(plain).items() if k != DRAFT_KEY}
    change(d)
    with pytest.raises(DatasetError, match=match):
        import_lerobot(plain, EmbodimentSpec.from_dict(d), out=tmp_path / "o")
    assert not (tmp_path / "o").exists() and not (plain / "meta/genba.json").exists()


def test_a_float64_action_is_refused_naming_the_dtype(plain, tmp_path):
    edit_json(plain / "meta/info.json", lambda d: d["features"][ACTION].update(dtype="float64"))
    with pytest.raises(DatasetError, match=r"'action' is float64\[4\] but the spec .* needs float32\[4\]"):
        import_lerobot(plain, _reviewed(draft_spec(plain)), out=tmp_path / "o")


def test_a_nan_in_the_source_is_refused_at_import(plain, tmp_path):
    spec = _reviewed(draft_spec(plain))
    set_cell(plain, "observation.environment_state", 150, 7, np.nan)  # a feature outside the spec, too
    with pytest.raises(DatasetError, match=r"episode 1, frame 50: observation\.environment_state\[7\] \('e7'\) is NaN"):
        import_lerobot(plain, spec, out=tmp_path / "o")


def test_a_camera_feature_is_listed_but_not_loaded(plain, tmp_path):
    cam = {"dtype": "video", "shape": [64, 64, 3], "names": ["height", "width", "channels"]}
    edit_json(plain / "meta/info.json", lambda d: d["features"].update({"observation.images.top": cam}))
    draft = draft_spec(plain)
    assert draft["cameras"] == [{"name": "top", "height": 64, "width": 64, "source": "top"}]
    res = import_lerobot(plain, _reviewed(draft, cameras=()), out=tmp_path / "o")  # state-only: camera left out
    assert open_dataset(res.root).observation.shape == (2000, 39)
    with pytest.raises(DatasetError, match="has cameras but no 'video_path'"):  # this fixture has no videos
        import_lerobot(plain, _reviewed(draft), out=tmp_path / "o2")


def test_spec_file_errors_name_the_file(tmp_path):
    with pytest.raises(SpecError, match=r"nope\.json: cannot read JSON"):
        load_spec_file(tmp_path / "nope.json")
    with pytest.raises(SpecError, match=r"bad\.json: .*unknown keys"):
        load_spec_file(_write(tmp_path / "bad.json", {"name": "x", "colour": "red"}))
    spec = make_spec()
    assert load_spec_file(_write(tmp_path / "genba.json", {"spec": spec.to_dict(), "tasks": []})) == spec


# ---- end to end: a LeRobot-edited genba dataset and a LeRobot one, imported, train -------------
def test_edited_genba_dataset_and_lerobot_dataset_import_and_train(plain, tmp_path, capsys):
    spec = make_spec("toyarm", obs_dim=5, act_dim=3, period=0.0125)
    rng = np.random.default_rng(0)
    eps = [Episode(rng.normal(size=(30, 5)), np.tanh(rng.normal(size=(30, 3))), e % 2) for e in range(4)]
    edited = write_dataset(tmp_path / "edited", eps, spec, TASKS)
    kept = json.loads((edited / "meta/genba.json").read_text())
    (edited / "meta/genba.json").unlink()  # what lerobot-edit-dataset leaves behind
    _write(tmp_path / "kept-genba.json", kept)
    run = ["train", "--preset", "debug", "--steps", "2", "--no-progress", "--lang", "mix"]
    assert main(run + ["--data", str(edited), "--out", str(tmp_path / "run0")]) == 2
    assert "import-lerobot" in capsys.readouterr().err

    spec_file = tmp_path / "kept-genba.json"  # the old genba.json serves as spec file and as Japanese tasks
    assert main(["data", "import-lerobot", str(edited), "--spec", str(spec_file), "--tasks", str(spec_file),
                 "--in-place"]) == 0
    assert open_dataset(edited).tasks == kept["tasks"]
    lerobot_spec = _write(tmp_path / "sawyer.json", _reviewed(draft_spec(plain)).to_dict())
    assert main(["data", "import-lerobot", str(plain), "--spec", str(lerobot_spec), "--out", str(tmp_path / "s")]) == 0
    assert main(run + ["--data", f"{edited},{tmp_path / 's'}", "--out", str(tmp_path / "run")]) == 0
    assert "trained 2 steps" in capsys.readouterr().out
    assert (tmp_path / "run" / "checkpoints").is_dir()
