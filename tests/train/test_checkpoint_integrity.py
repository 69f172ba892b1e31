"""Issue 19 item 4: checkpoints are checked by content, `latest` stays inside its run, falls back safely.

Fault injection on real (tiny) runs: flipped bytes, truncated files, a
``latest`` aimed at another run, an empty ``latest``, an empty newest step.
"""

from __future__ import annotations

import json
import os

import pytest
import torch

from genba.train import checkpoint as ckpt
from genba.train import trainer as T
from genba.train.checkpoint import CheckpointError, CheckpointWarning
from genba.train.config import get_train_preset

DEBUG = get_train_preset("debug").replace(steps=4, ckpt_every=2, keep_last=5)


@pytest.fixture(scope="module")
def runs(toy_data, tmp_path_factory):
    """Two finished runs, A (steps 2 and 4) and B (step 2), copied fresh for each test."""
    root = tmp_path_factory.mktemp("integrity")
    T.train(DEBUG, toy_data, root / "A", progress=False)
    T.train(DEBUG.replace(steps=2), toy_data, root / "B", progress=False)
    return root


@pytest.fixture
def fresh(runs, tmp_path):
    import shutil

    shutil.copytree(runs / "A", tmp_path / "A")
    shutil.copytree(runs / "B", tmp_path / "B")
    return tmp_path


def _flip(path, n=16, at=None):
    data = bytearray(path.read_bytes())
    at = len(data) // 2 if at is None else at
    for i in range(at, at + n):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncate(path):
    path.write_bytes(path.read_bytes()[: max(1, path.stat().st_size // 2)])


def _model(toy_data):
    data = T.build_datasets(DEBUG, toy_data)
    model = T.build_model(T.get_preset("debug"), data.specs, torch.device("cpu"), seed=1)
    return model, T.build_optimizer(model, DEBUG)


def _shard(step_dir):
    return next((step_dir / ckpt.TRAIN_STATE).glob("*.distcp"))


def test_the_manifest_records_a_digest_of_every_file(fresh):
    step = fresh / "A" / ckpt.CKPT_DIR / "step-000004"
    files = json.loads((step / ckpt.TRAIN_STATE / ckpt.TRAINER_JSON).read_text())["files"]
    on_disk = {str(p.relative_to(step)) for p in step.rglob("*") if p.is_file()}
    assert set(files) == on_disk - {f"{ckpt.TRAIN_STATE}/{ckpt.TRAINER_JSON}"}
    assert all(len(f["sha256"]) == 64 and f["bytes"] > 0 for f in files.values())


@pytest.mark.parametrize("target", ["shard", "model.safetensors", "checkpoint.json", "rank"])
def test_flipped_bytes_in_any_file_refuse_the_resume_naming_it(fresh, toy_data, target):
    step = fresh / "A" / ckpt.CKPT_DIR / "step-000004"
    path = {"shard": _shard(step), "rank": step / ckpt.TRAIN_STATE / "rank-00000.pt"}.get(target, step / target)
    _flip(path)
    with pytest.raises(CheckpointError, match=rf"{path.name}.*SHA-256"):
        T.train(DEBUG.replace(steps=6), toy_data, fresh / "A", resume=True, progress=False)
    assert not (fresh / "A" / ckpt.CKPT_DIR / "step-000006").exists()


@pytest.mark.parametrize("target", ["shard", ".metadata", "rank"])
def test_truncated_files_give_a_clear_error_naming_the_file(fresh, toy_data, target):
    step = fresh / "A" / ckpt.CKPT_DIR / "step-000004"
    path = {"shard": _shard(step), "rank": step / ckpt.TRAIN_STATE / "rank-00000.pt"}.get(
        target, step / ckpt.TRAIN_STATE / target)
    _truncate(path)
    model, optim = _model(toy_data)
    with pytest.raises(CheckpointError, match=rf"{path.name}.*(truncated|bytes)"):
        ckpt.load_checkpoint(step, model, optim)


@pytest.mark.parametrize("target", ["shard", ".metadata", "rank"])
def test_without_recorded_digests_torch_errors_still_name_the_checkpoint(fresh, toy_data, target):
    """An older checkpoint (no file table): torch's CheckpointException is a BaseException, caught explicitly."""
    step = fresh / "A" / ckpt.CKPT_DIR / "step-000004"
    state_file = step / ckpt.TRAIN_STATE / ckpt.TRAINER_JSON
    state = json.loads(state_file.read_text())
    state_file.write_text(json.dumps({k: v for k, v in state.items() if k not in ("files", "digest")}))
    path = {"shard": _shard(step), "rank": step / ckpt.TRAIN_STATE / "rank-00000.pt"}.get(
        target, step / ckpt.TRAIN_STATE / target)
    _truncate(path)
    model, optim = _model(toy_data)
    with pytest.raises(CheckpointError, match=str(step)):
        ckpt.load_checkpoint(step, model, optim)


def test_an_edited_trainer_state_is_refused(fresh, toy_data):
    step = fresh / "A" / ckpt.CKPT_DIR / "step-000004"
    path = step / ckpt.TRAIN_STATE / ckpt.TRAINER_JSON
    path.write_text(path.read_text().replace('"step": 4', '"step": 40'))
    with pytest.raises(CheckpointError, match="trainer.json.*digest"):
        ckpt.load_checkpoint(step, *_model(toy_data))


@pytest.mark.parametrize("pointer", ["absolute", "relative"])
def test_latest_never_leaves_its_run(fresh, pointer):
    other = fresh / "A" / ckpt.CKPT_DIR / "step-000004"
    text = str(other) if pointer == "absolute" else "../../A/checkpoints/step-000004"
    (fresh / "B" / ckpt.CKPT_DIR / ckpt.LATEST).write_text(text + "\n")
    with pytest.warns(CheckpointWarning, match="not a step directory of this run.*step-000002"):
        found = ckpt.latest_checkpoint(fresh / "B")
    assert found == fresh / "B" / ckpt.CKPT_DIR / "step-000002"
    with pytest.warns(CheckpointWarning):
        assert ckpt.resolve_checkpoint(fresh / "B") == found  # what eval and finetune use


def test_a_run_saved_with_the_old_manifest_name_still_resolves_and_resumes(fresh, toy_data):
    step = fresh / "A" / ckpt.CKPT_DIR / "step-000004"
    (step / "checkpoint.json").rename(step / "genba.json")  # a run saved before issue 18's rename
    path = step / ckpt.TRAIN_STATE / ckpt.TRAINER_JSON
    state = json.loads(path.read_text())
    state["files"]["genba.json"] = state["files"].pop("checkpoint.json")
    state["digest"] = ckpt._state_digest(state)
    path.write_text(json.dumps(state))
    assert ckpt.incomplete(step) is None
    assert ckpt.resolve_checkpoint(fresh / "A") == step
    assert T.train(DEBUG.replace(steps=6), toy_data, fresh / "A", resume=True, progress=False).step == 6


def test_a_symlinked_step_to_another_run_is_refused(fresh):
    root = fresh / "B" / ckpt.CKPT_DIR
    os.symlink(fresh / "A" / ckpt.CKPT_DIR / "step-000004", root / "step-000009")
    (root / ckpt.LATEST).write_text("step-000009\n")
    with pytest.warns(CheckpointWarning, match="outside"):
        assert ckpt.latest_checkpoint(fresh / "B") == root / "step-000002"


def test_empty_latest_falls_back_to_the_newest_complete_step(fresh, toy_data):
    root = fresh / "A" / ckpt.CKPT_DIR
    (root / ckpt.LATEST).write_text("")
    with pytest.warns(CheckpointWarning, match="empty.*step-000004"):
        assert ckpt.latest_checkpoint(fresh / "A") == root / "step-000004"
    with pytest.warns(CheckpointWarning):
        res = T.train(DEBUG.replace(steps=6), toy_data, fresh / "A", resume=True, progress=False)
    assert res.step == 6


@pytest.mark.parametrize("named", [True, False])
def test_an_empty_newest_step_dir_is_skipped(fresh, named):
    root = fresh / "A" / ckpt.CKPT_DIR
    (root / "step-000006").mkdir()
    if named:
        (root / ckpt.LATEST).write_text("step-000006\n")
    else:
        (root / ckpt.LATEST).unlink()
    with pytest.warns(CheckpointWarning, match="step-000006.*incomplete.*step-000004"):
        assert ckpt.latest_checkpoint(fresh / "A") == root / "step-000004"
