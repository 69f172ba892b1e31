import dataclasses
import time

import pytest

from genba.model.config import PRESETS, ModelConfig, PresetError, get_preset, preset_name_of
from genba.model.counts import build_meta, nominal_specs, parameter_counts


def test_registry_has_the_contract_presets():
    assert {"debug", "tiny", "small", "base", "moe-small", "1t"} <= set(PRESETS)
    for name, cfg in PRESETS.items():
        assert preset_name_of(cfg) == name
        assert ModelConfig.from_dict(cfg.to_dict()) == cfg


def test_unknown_preset_suggests_close_names():
    with pytest.raises(PresetError, match="did you mean 'small'"):
        get_preset("smal")
    with pytest.raises(PresetError, match="known presets"):
        get_preset("zzzzzzzz")


@pytest.mark.parametrize("field,value", [("head", "diffusion"), ("d_model", 30), ("n_kv_heads", 4),
                                         ("chunk", 0), ("router", "argmax")])
def test_bad_config_names_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        dataclasses.replace(get_preset("debug"), **{field: value})


def test_moe_layers_selectable():
    cfg = dataclasses.replace(get_preset("debug"), n_layers=6, n_experts=4, expert_hidden=8,
                              first_dense_layers=2, moe_every=2)
    assert cfg.moe_layers == (2, 4)
    assert get_preset("small").moe_layers == ()


@pytest.mark.parametrize("preset,lo,hi", [("debug", 1e3, 1e5), ("tiny", 0.7e6, 1.5e6), ("small", 2e6, 6e6),
                                          ("base", 25e6, 50e6), ("moe-small", 1e6, 10e6)])
def test_preset_sizes(preset, lo, hi):
    total = parameter_counts(build_meta(preset, nominal_specs()))["total"]["total"]
    assert lo <= total <= hi


def test_1t_on_meta_counts_within_5_percent():
    t0 = time.perf_counter()
    model = build_meta("1t", nominal_specs())
    counts = parameter_counts(model)
    assert time.perf_counter() - t0 < 20
    assert all(p.is_meta for p in model.parameters())
    assert 0.95e12 <= counts["total"]["total"] <= 1.05e12
    # Kimi-K2-like: ~32B active; experts dominate the total, not the active count
    assert 25e9 <= counts["total"]["active"] <= 40e9
    assert counts["routed_experts"]["total"] > 0.95 * counts["total"]["total"]
    cfg = get_preset("1t")
    assert counts["routed_experts"]["active"] * cfg.n_experts == counts["routed_experts"]["total"] * cfg.top_k
    assert sum(r["total"] for k, r in counts.items() if k != "total") == sum(p.numel() for p in model.parameters())


def test_model_info_cli(capsys):
    from genba.cli import main

    assert main(["model", "info", "moe-small"]) == 0
    out = capsys.readouterr().out
    assert "routed_experts" in out and "stems_heads" in out
    assert main(["model", "info", "smal"]) == 2
    assert "did you mean" in capsys.readouterr().err
