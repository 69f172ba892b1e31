"""The one training loop: its time-budget rule, and the numbers of its three callers pinned.

The figures below were measured on the code before the loops were merged into
``genba.train.loop.fit`` (the trainer's, finetune's and the baseline's own
loops, commit b64a27e); the merged loop reproduced them bit for bit. A change
that moves them changes what training computes. Regenerate (only on purpose)
by printing the same quantities as these tests compute.
"""

from __future__ import annotations

import json
import time

import pytest
import torch

from genba.train import trainer as T
from genba.train.baseline import BaselineConfig, TaskEntry, train_task
from genba.train.config import get_train_preset
from genba.train.finetune import FinetuneConfig, default_train_config, finetune
from genba.train.loop import Clock, Dist, LoopState, RunLength, stop_and_total
from genba.train.monitor import read_metrics

DEBUG = get_train_preset("debug").replace(steps=6, ckpt_every=3, keep_last=5)
TRAIN_LOSSES = [0.9137824, 1.0096904, 0.9028919, 1.1530868, 0.8827378, 0.9120303]
FINETUNE_LORA_LOSSES = [0.9038981, 1.0230662, 0.9529068]  # logged at steps 2, 4, 5
BASELINE_FINAL_LOSS = 0.7348442028983037  # 20 steps, smoothed


@pytest.fixture(scope="module")
def pretrained(toy_data, tmp_path_factory):
    return T.train(DEBUG, toy_data, tmp_path_factory.mktemp("pre"), progress=False)


def test_pretraining_losses_are_the_pre_refactor_figures(pretrained):
    got = [r["loss"] for r in read_metrics(pretrained.run_dir)]
    assert got == pytest.approx(TRAIN_LOSSES, rel=1e-5, abs=1e-6)


def test_finetune_losses_are_the_pre_refactor_figures(pretrained, toy_data, tmp_path):
    cfg = FinetuneConfig(mode="lora", scope="embodiment", tensorboard=False,
                         train=default_train_config().replace(steps=5, batch_size=8, log_every=2))
    res = finetune(pretrained.checkpoint, toy_data[1:], tmp_path / "ft", cfg, progress=False)
    assert [r["step"] for r in res.history] == [2, 4, 5]
    assert [r["loss"] for r in res.history] == pytest.approx(FINETUNE_LORA_LOSSES, rel=1e-5, abs=1e-6)


def test_finetune_time_budget_is_the_trainers_rule(pretrained, toy_data, tmp_path):
    """Fine-tuning used to stop on its own clock without a reserve; it now shares the trainer's rule."""
    tc = default_train_config().replace(steps=10**6, minutes=0.05, batch_size=8, log_every=5)
    cfg = FinetuneConfig(mode="frozen-trunk", scope="embodiment", tensorboard=False, train=tc)
    res = finetune(pretrained.checkpoint, toy_data[1:], tmp_path / "ft", cfg, progress=False)
    state = json.loads((res.checkpoint / "train_state" / "trainer.json").read_text())
    assert 5 < res.step < 10**6 and state["kind"] == "finetune"
    assert state["elapsed"] <= 3.0 - 0.05 * 3.0 + 0.5  # the reserve is kept for the final checkpoint
    assert state["total_steps"] < 10**6  # the cosine was fitted to the steps that fit


def test_baseline_loss_is_the_pre_refactor_figure():
    torch.manual_seed(0)
    entry = TaskEntry("toy/reach", "toyarm", (), "reach", "r", in_dim=4, out_dim=2, width=8)
    x, y, w = torch.randn(64, 4), torch.randn(64, 2), torch.ones(64, 2)
    cfg = BaselineConfig(tasks=("toy/reach",), target_params=100, max_steps=20, batch_size=16, minutes=1e6)
    _, figures = train_task(entry, (x, y, w), cfg, seconds=6e7, seed=3)  # the time share stays ~0: step-driven
    assert figures["steps"] == 20
    assert figures["final_loss"] == pytest.approx(BASELINE_FINAL_LOSS, rel=1e-5)


def _clock(seconds_ago: float, steps0: int = 0) -> Clock:
    now = time.perf_counter()
    return Clock(origin=now, before=0.0, steps0=steps0, session_t0=now - seconds_ago)


def test_budget_by_steps_never_stops_early():
    assert stop_and_total(RunLength(40), LoopState(step=3, total_steps=40), 1e9, _clock(1.0), Dist()) == (False, 40)


def test_time_budget_keeps_a_reserve_only_for_a_final_checkpoint():
    length = RunLength(1000, seconds=100.0)
    assert length.reserve(final_save=True) == 5.0 and length.reserve(final_save=False) == 0.0
    assert RunLength(1000, seconds=20.0).reserve(True) == pytest.approx(1.0)  # 5% of a short budget
    state = LoopState(step=2, total_steps=1000)  # too few steps to measure: the first estimate stands
    assert stop_and_total(length, state, 96.0, _clock(1.0), Dist(), reserve=5.0) == (True, 1000)
    assert stop_and_total(length, state, 96.0, _clock(1.0), Dist(), reserve=0.0) == (False, 1000)


def test_time_budget_stretches_the_total_over_the_measured_rate():
    length = RunLength(1000, seconds=100.0)
    state = LoopState(step=50, total_steps=1000)
    stop, total = stop_and_total(length, state, 40.0, _clock(10.0), Dist(), reserve=0.0)  # 5 steps/s, 60 s left
    assert not stop and 345 <= total <= 350
    _, capped = stop_and_total(RunLength(1000, seconds=100.0, max_steps=120), state, 40.0, _clock(10.0), Dist())
    assert capped == 120
    _, late = stop_and_total(length, state, 99.99, _clock(10.0), Dist())
    assert late == 51  # at least one more step until the clock says stop
