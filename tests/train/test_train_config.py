"""Train presets, validation and the learning-rate schedule."""

from __future__ import annotations

import pytest

from genba.model.config import PRESETS
from genba.train.config import TRAIN_PRESETS, TrainConfig, TrainConfigError, get_train_preset
from genba.train.trainer import lr_at


def test_every_preset_names_a_model_preset():
    for name, cfg in TRAIN_PRESETS.items():
        assert cfg.name == name
        assert cfg.model in PRESETS, name


def test_small_20min_is_a_time_budget_variant_of_small():
    small, timed = get_train_preset("small"), get_train_preset("small-20min")
    assert timed.minutes == 20.0 and small.minutes is None
    assert timed.replace(name="small", minutes=None, precision=small.precision) == small


def test_unknown_preset_suggests_close_names():
    with pytest.raises(TrainConfigError, match="small"):
        get_train_preset("smal")


def test_model_preset_trains_with_the_small_recipe():
    cfg = get_train_preset("moe-small")
    assert cfg.model == "moe-small" and cfg.lr == get_train_preset("small").lr


@pytest.mark.parametrize("field,value", [("steps", 0), ("lr", -1.0), ("precision", "fp8"), ("dist", "tp"),
                                         ("lang", "de"), ("minutes", 0.0), ("betas", (0.9, 1.5))])
def test_bad_values_name_the_field(field, value):
    with pytest.raises(TrainConfigError, match=field):
        get_train_preset("debug").replace(**{field: value})


def test_round_trip_through_dict():
    cfg = get_train_preset("small-20min")
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(TrainConfigError, match="unknown keys"):
        TrainConfig.from_dict({**cfg.to_dict(), "bogus": 1})


def test_lr_warms_up_then_decays_to_the_floor():
    cfg = TrainConfig(name="t", steps=1000, lr=1e-3, warmup_steps=100, min_lr_ratio=0.1)
    lrs = [lr_at(s, cfg, 1000) for s in range(1000)]
    assert lrs[0] == pytest.approx(1e-5) and lrs[99] == pytest.approx(1e-3)
    assert all(a <= b for a, b in zip(lrs[:100], lrs[1:100]))  # warmup rises
    assert all(a >= b for a, b in zip(lrs[100:], lrs[101:]))  # cosine falls
    assert lr_at(1000, cfg, 1000) == pytest.approx(1e-4)
