"""Issue 19 item 5 (training half): the first non-finite loss or gradient stops training, no NaN checkpoint.

The data layer refuses non-finite values at open; these tests inject them past
it (in the batch, or in the gradient norm) to check the loops' own guard.
"""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file

from genba.cli import main as cli_main
from genba.finite import NonFiniteError, check_step
from genba.train import checkpoint as ckpt
from genba.train import loop
from genba.train import trainer as T
from genba.train.config import get_train_preset

DEBUG = get_train_preset("debug").replace(steps=6, ckpt_every=2, keep_last=5)


def _poison_from(step: int, monkeypatch, value=float("nan")):
    """make_batch puts ``value`` into one action of every batch from global step ``step`` (1-based) on."""
    real, calls = T.make_batch, {"n": 0}

    def poisoned(data, idx, device):
        calls["n"] += 1
        batch = real(data, idx, device)
        if calls["n"] >= step:
            emb = next(iter(batch))
            batch[emb]["action"][0, 0, 0] = value
        return batch

    monkeypatch.setattr(T, "make_batch", poisoned)


def _all_finite(step_dir):
    return all(torch.isfinite(t).all() for t in load_file(str(step_dir / "model.safetensors")).values())


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_loss_stops_at_that_step_and_saves_nothing_from_it(toy_data, tmp_path, monkeypatch, value):
    _poison_from(3, monkeypatch, value)
    with pytest.raises(NonFiniteError, match=r"stopped at step 3: the loss is (nan|inf)") as err:
        T.train(DEBUG, toy_data, tmp_path, progress=False)
    assert err.value.step == 3 and err.value.what == "loss"
    steps = sorted(p.name for p in (tmp_path / ckpt.CKPT_DIR).glob("step-*"))
    assert steps == ["step-000002"]  # the good checkpoint before it, nothing after
    assert _all_finite(tmp_path / ckpt.CKPT_DIR / "step-000002")


def test_non_finite_gradient_is_named(toy_data, tmp_path, monkeypatch):
    real = loop._clip
    monkeypatch.setattr(loop, "_clip", lambda *a, **k: float("inf") if real(*a, **k) >= 0 else 0.0)
    with pytest.raises(NonFiniteError, match="stopped at step 1: the gradient norm is inf"):
        T.train(DEBUG, toy_data, tmp_path, progress=False)
    assert not list((tmp_path / ckpt.CKPT_DIR).glob("step-*"))


def test_cli_exits_non_zero_with_one_line(toy_data, tmp_path, monkeypatch, capsys):
    _poison_from(2, monkeypatch)
    rc = cli_main(["train", "--preset", "debug", "--steps", "4", "--no-progress", "--out", str(tmp_path / "run"),
                   "--data", ",".join(map(str, toy_data))])
    err = capsys.readouterr().err
    assert rc == 2 and "stopped at step 2: the loss is nan" in err and "Traceback" not in err


def test_guard_passes_finite_values_and_names_parts():
    check_step(1, torch.tensor(0.5), 1.0)
    with pytest.raises(NonFiniteError, match=r"loss is nan \(loss/arm=nan\)"):
        check_step(4, float("nan"), 1.0, parts={"loss/arm": math.nan, "loss/drive": 0.1})


def test_finetune_stops_on_non_finite_loss(toy_data, tmp_path, monkeypatch):
    from genba.train.finetune import FinetuneConfig, default_train_config, finetune

    parent = T.train(DEBUG.replace(steps=2, ckpt_every=0), toy_data[:1], tmp_path / "pre", progress=False)
    _poison_from(2, monkeypatch)
    cfg = FinetuneConfig(mode="frozen-trunk", scope="embodiment", tensorboard=False,
                         train=default_train_config().replace(steps=4, batch_size=8, log_every=1))
    with pytest.raises(NonFiniteError, match="finetune stopped at step 2: the loss is nan"):
        finetune(parent.checkpoint, toy_data[:1], tmp_path / "ft", cfg, progress=False)
    assert not (tmp_path / "ft" / ckpt.CKPT_DIR).is_dir() or not list((tmp_path / "ft" / ckpt.CKPT_DIR).glob("step-*"))


def test_baseline_mlp_stops_on_non_finite_loss():
    from genba.train.baseline import BaselineConfig, TaskEntry, train_task

    entry = TaskEntry("toy/reach", "toyarm", (), "reach", "到達", in_dim=4, out_dim=2, width=8)
    x, y, w = torch.randn(16, 4), torch.randn(16, 2), torch.ones(16, 2)
    y[3, 1] = float("nan")
    cfg = BaselineConfig(tasks=("toy/reach",), target_params=100, max_steps=50, batch_size=16)
    with pytest.raises(NonFiniteError, match=r"baseline task .toy/reach. stopped at step 1: the loss is nan"):
        train_task(entry, (x, y, w), cfg, seconds=30.0, seed=0)
