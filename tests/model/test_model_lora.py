"""LoRA adapters: identity at start, merge/unmerge, only adapters train, plain state dict out."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from genba.model.config import get_preset
from genba.model.lora import LoRALinear, apply_lora, lora_parameters, merged_state_dict
from tests.fixtures import build_model, toy_batch, toy_specs


def _randomize_adapters(module: nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in lora_parameters(module):
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)


def test_lora_linear_starts_as_identity_and_merges_exactly():
    torch.manual_seed(0)
    base = nn.Linear(6, 5)
    ref_w, x = base.weight.detach().clone(), torch.randn(4, 6)
    want = base(x).detach()
    layer = LoRALinear(base, rank=2, alpha=4.0)
    torch.testing.assert_close(layer(x), want)  # B = 0: exactly the base layer
    _randomize_adapters(layer)
    adapted = layer(x).detach()
    assert not torch.allclose(adapted, want)
    torch.testing.assert_close(adapted, want + x @ (layer.lora_b @ layer.lora_a).T * 2.0)  # scale alpha/r = 2
    layer.merge()
    torch.testing.assert_close(layer(x), adapted, atol=1e-6, rtol=1e-5)
    delta = layer.weight.detach() - ref_w
    assert torch.linalg.matrix_rank(delta) <= 2
    layer.unmerge()
    torch.testing.assert_close(layer.weight.detach(), ref_w, atol=1e-6, rtol=0)
    torch.testing.assert_close(layer(x), adapted, atol=1e-6, rtol=1e-5)


def test_only_adapters_get_gradients():
    layer = LoRALinear(nn.Linear(4, 3), rank=2)
    _randomize_adapters(layer)
    layer(torch.randn(5, 4)).square().sum().backward()
    assert layer.weight.grad is None and layer.bias.grad is None
    assert layer.lora_a.grad is not None and layer.lora_b.grad is not None
    with pytest.raises(ValueError, match="rank"):
        LoRALinear(nn.Linear(4, 3), rank=0)


def test_apply_lora_on_trunk_keeps_outputs_and_merged_state_dict_loads_into_plain_model():
    cfg, specs = get_preset("debug"), toy_specs()
    model = build_model(cfg, specs).eval()
    batch = toy_batch(cfg, specs)
    before = model.sample_actions(batch)
    names = apply_lora(model.trunk, rank=2)
    assert names and all(n.split(".")[-1] in ("wq", "wkv", "wo", "w_gate", "w_up", "w_down") for n in names)
    after = model.sample_actions(batch)
    for n in specs:
        torch.testing.assert_close(after[n], before[n])  # identity at start
    _randomize_adapters(model.trunk)
    adapted = model.sample_actions(batch)
    assert not torch.allclose(adapted["arm"], before["arm"])
    sd = merged_state_dict(model)
    assert not any("lora_" in k for k in sd)
    plain = build_model(cfg, specs, seed=1).eval()
    plain.load_state_dict(sd, strict=True)
    out = plain.sample_actions(batch)
    for n in specs:
        torch.testing.assert_close(out[n], adapted[n], atol=1e-5, rtol=1e-4)


def test_apply_lora_refuses_when_nothing_matches():
    with pytest.raises(ValueError, match="no nn.Linear"):
        apply_lora(nn.Sequential(nn.ReLU()), rank=2)
