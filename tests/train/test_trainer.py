"""The trainer on tiny synthetic datasets: trains, checkpoints atomically, resumes exactly."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from genba.data.dataset import open_dataset
from genba.data.stats import aggregate_stats, compute_stats
from genba.data.windows import collate
from genba.model.bundle import load_model
from genba.model.policy import load_policy
from genba.train import checkpoint as ckpt
from genba.train import trainer as T
from genba.train.config import TrainConfigError, get_train_preset
from genba.train.monitor import read_metrics

DEBUG = get_train_preset("debug").replace(steps=6, ckpt_every=3, keep_last=5)


def _losses(run_dir):
    return [(r["step"], r["loss"]) for r in read_metrics(run_dir)]


@pytest.fixture(scope="module")
def straight(toy_data, tmp_path_factory):
    """The reference: DEBUG trained in one go."""
    run = tmp_path_factory.mktemp("straight")
    return T.train(DEBUG, toy_data, run, progress=False)


def test_fast_batch_equals_the_per_sample_chain(toy_data):
    data = T.build_datasets(DEBUG, toy_data)
    idx = np.array([3, 200, 5, 190, 41, 7])  # both embodiments, interleaved
    fast = T.make_batch(data, idx, torch.device("cpu"))
    slow = collate([data.transform(data.mixed[int(i)]) for i in idx])
    assert list(fast) == list(slow)
    for emb in fast:
        for key, value in fast[emb].items():
            torch.testing.assert_close(value, slow[emb][key], msg=f"{emb}/{key}")


def test_trains_logs_and_writes_a_loadable_checkpoint(straight, toy_data):
    assert straight.step == DEBUG.steps
    recs = read_metrics(straight.run_dir)
    assert [r["step"] for r in recs] == list(range(1, DEBUG.steps + 1))
    for r in recs:
        assert np.isfinite(r["loss"]) and r["samples_per_s"] > 0 and r["grad_norm"] > 0
        assert {"loss/toyarm", "loss/toydrive", "lr"} <= set(r)
    assert (straight.run_dir / "tb").is_dir()
    latest = ckpt.latest_checkpoint(straight.run_dir)
    assert latest == straight.checkpoint and latest.name == "step-000006"
    model, manifest = load_model(latest, preset="debug")
    assert set(model.specs) == {"toyarm", "toydrive"}
    assert manifest["lineage"]["datasets"][0]["root"] == str(toy_data[0])
    policy = load_policy(latest)
    ds = open_dataset(toy_data[1])
    act = policy.infer({"embodiment": "toydrive", "state": ds.observation[0], "instruction": "reach the goal"})
    assert act.shape == (2,) and np.all(np.isfinite(act))


def test_training_reduces_the_loss(toy_data, tmp_path):
    cfg = DEBUG.replace(steps=40, lr=3e-3, batch_size=16, log_every=10, ckpt_every=0)
    res = T.train(cfg, toy_data, tmp_path, progress=False)
    first, last = res.history[0]["loss"], res.history[-1]["loss"]
    assert last < 0.85 * first, (first, last)


def test_resume_continues_exactly(straight, toy_data, tmp_path):
    half = T.train(DEBUG, toy_data, tmp_path, stop_at=3, progress=False)
    assert half.step == 3 and ckpt.latest_checkpoint(tmp_path).name == "step-000003"
    done = T.train(DEBUG, toy_data, tmp_path, resume=True, progress=False)
    assert done.step == DEBUG.steps
    ref, got = _losses(straight.run_dir), _losses(tmp_path)
    assert [s for s, _ in got] == [s for s, _ in ref]
    np.testing.assert_allclose([l for _, l in got], [l for _, l in ref], rtol=1e-5, atol=1e-6)
    a = load_model(straight.checkpoint)[0].state_dict()
    b = load_model(done.checkpoint)[0].state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)


def test_a_kill_during_save_leaves_latest_intact(toy_data, tmp_path, monkeypatch):
    T.train(DEBUG, toy_data, tmp_path, stop_at=3, progress=False)

    def dies(*a, **k):  # the process "dies" half way through writing step 6
        raise KeyboardInterrupt

    monkeypatch.setattr(T, "save_bundle", dies)
    with pytest.raises(KeyboardInterrupt):
        T.train(DEBUG, toy_data, tmp_path, resume=True, progress=False)
    root = tmp_path / ckpt.CKPT_DIR
    assert (root / "step-000006.tmp").is_dir()  # the torn write is there ...
    assert ckpt.latest_checkpoint(tmp_path).name == "step-000003"  # ... but latest names a complete one
    load_model(ckpt.latest_checkpoint(tmp_path))
    monkeypatch.undo()
    T.train(DEBUG, toy_data, tmp_path, resume=True, progress=False)
    assert not list(root.glob("*.tmp"))
    assert ckpt.latest_checkpoint(tmp_path).name == "step-000006"


def test_keeps_only_the_last_k(toy_data, tmp_path):
    T.train(DEBUG.replace(steps=6, ckpt_every=1, keep_last=2), toy_data, tmp_path, progress=False)
    kept = sorted(p.name for p in (tmp_path / ckpt.CKPT_DIR).glob("step-*"))
    assert kept == ["step-000005", "step-000006"]
    assert (tmp_path / ckpt.CKPT_DIR / ckpt.LATEST).read_text().strip() == "step-000006"


def test_time_budget_stops_and_fits_the_schedule(toy_data, tmp_path):
    res = T.train(DEBUG.replace(steps=10**6, minutes=0.05, log_every=5, ckpt_every=0), toy_data, tmp_path,
                  progress=False)
    state = json.loads((res.checkpoint / "train_state" / "trainer.json").read_text())
    assert 5 < res.step < 10**6 and state["elapsed"] <= 3.5
    assert state["total_steps"] < 10**6  # the cosine was fitted to the steps that fit


def test_resume_refuses_another_model(toy_data, tmp_path):
    T.train(DEBUG.replace(steps=1), toy_data, tmp_path, progress=False)
    with pytest.raises(TrainConfigError, match="model preset"):
        T.train(DEBUG.replace(model="tiny"), toy_data, tmp_path, resume=True, progress=False)


def test_bad_inputs_fail_clearly(toy_data, tmp_path):
    with pytest.raises(TrainConfigError, match="weights"):
        T.build_datasets(DEBUG, toy_data, weights=[1.0])
    with pytest.raises(TrainConfigError, match="no datasets"):
        T.build_datasets(DEBUG, [])
    with pytest.raises(TrainConfigError, match="torchrun"):
        T.train(DEBUG.replace(dist="fsdp"), toy_data, tmp_path, progress=False)


def test_stats_pool_moments_exactly_and_a_lone_dataset_keeps_its_own():
    rng = np.random.default_rng(0)
    a, b = rng.normal(1, 2, size=(50, 3)), rng.normal(-1, 0.5, size=(150, 3))
    merged = aggregate_stats([compute_stats({"x": a}), compute_stats({"x": b})])["x"]
    whole = compute_stats({"x": np.concatenate([a, b])})["x"]
    for key in ("mean", "std", "min", "max", "count"):
        np.testing.assert_allclose(merged[key], whole[key], rtol=1e-9, err_msg=key)
    lone = compute_stats({"x": a})  # one dataset trains on its stats bit for bit (no re-derived std)
    assert all(np.array_equal(aggregate_stats([lone])["x"][k], v) for k, v in lone["x"].items())
