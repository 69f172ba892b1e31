"""The trunk's inference fast path computes what the module path computes, and is never stale."""

import dataclasses

import numpy as np
import pytest
import torch

from genba.data.transforms import Normalize, TokenizeInstruction, Unnormalize
from genba.model import trunk as trunk_mod
from genba.model.config import get_preset
from genba.model.lora import apply_lora
from genba.model.policy import Policy
from tests.fixtures import build_model, toy_specs, toy_stats

TOL = {"rtol": 1e-5, "atol": 1e-5}  # float rounding only (other matmul kernels, complex rotary)


def randomized(model, seed=1):
    """Non-trivial weights everywhere (init gives near-identity blocks that hide mistakes)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1 + (1.0 if p.ndim == 1 else 0.0))
    return model.eval()


def both_paths(trunk, x, **kw):
    """(module path under no_grad, fast path under inference_mode) outputs; asserts the fast one ran."""
    with torch.no_grad():
        slow = trunk(x, **kw)
    with torch.inference_mode():
        fast = trunk(x, **kw)
    return slow, fast


def fast_layers(trunk):
    entry = trunk_mod._FAST_CACHE.get(trunk)
    return None if entry is None else entry[3]


@pytest.mark.parametrize("preset", ["debug", "tiny", "moe-small"])
def test_fast_path_matches_module_path(preset):
    cfg = get_preset(preset)
    model = randomized(build_model(cfg, toy_specs()))
    x = torch.randn(3, cfg.tokens_per_step, cfg.d_model, generator=torch.Generator().manual_seed(0))
    (slow, slow_aux), (fast, fast_aux) = both_paths(model.trunk, x)
    assert fast_layers(model.trunk) is not None  # the fast path did run
    torch.testing.assert_close(fast, slow, **TOL)
    torch.testing.assert_close(fast_aux, slow_aux, **TOL)
    R = cfg.n_readout
    (slow_r, _), (fast_r, _) = both_paths(model.trunk, x, keep_last=R)
    assert fast_r.shape == (3, R, cfg.d_model)
    torch.testing.assert_close(slow_r, slow[:, -R:], rtol=0, atol=0)
    torch.testing.assert_close(fast_r, slow[:, -R:], **TOL)


def test_fast_path_follows_weight_changes():
    cfg = get_preset("debug")
    model = randomized(build_model(cfg, toy_specs()))
    x = torch.randn(2, cfg.tokens_per_step, cfg.d_model)
    _, (before, _) = both_paths(model.trunk, x)
    with torch.no_grad():  # e.g. an optimizer step or load_state_dict
        model.trunk.layers[0].attn.wq.weight.mul_(-2.0)
        model.trunk.layers[1].ffn.w_down.weight.add_(0.5)
    (slow, _), (fast, _) = both_paths(model.trunk, x)
    assert not torch.allclose(fast, before)
    torch.testing.assert_close(fast, slow, **TOL)


def test_active_lora_takes_the_module_path_and_merged_lora_the_fast_one():
    cfg = get_preset("debug")
    model = randomized(build_model(cfg, toy_specs()))
    x = torch.randn(2, cfg.tokens_per_step, cfg.d_model)
    both_paths(model.trunk, x)  # warm the cache before the structure changes
    apply_lora(model.trunk, rank=2)
    with torch.no_grad():
        for layer in model.trunk.modules():
            if hasattr(layer, "lora_b"):
                layer.lora_b.normal_()  # a trained adapter: the output must change
    (slow, _), (fast, _) = both_paths(model.trunk, x)
    assert fast_layers(model.trunk) is None
    torch.testing.assert_close(fast, slow, rtol=0, atol=0)
    for layer in model.trunk.modules():
        if hasattr(layer, "merge"):
            layer.merge()
    _, (merged, _) = both_paths(model.trunk, x)
    assert fast_layers(model.trunk) is not None
    torch.testing.assert_close(merged, slow, **TOL)


def test_training_and_autograd_never_take_the_fast_path():
    cfg = get_preset("debug")
    model = randomized(build_model(cfg, toy_specs())).train()
    x = torch.randn(2, cfg.tokens_per_step, cfg.d_model, requires_grad=True)
    y, _ = model.trunk(x)
    y.sum().backward()  # would fail on inference tensors
    assert x.grad is not None and model.trunk.layers[0].attn.wq.weight.grad is not None
    with torch.inference_mode():
        model.trunk(x.detach())
    assert trunk_mod._FAST_CACHE.get(model.trunk) is None


def test_keep_last_out_of_range_is_refused():
    cfg = get_preset("debug")
    model = build_model(cfg, toy_specs()).eval()
    with pytest.raises(ValueError, match="keep_last 0"):
        model.trunk(torch.zeros(1, cfg.tokens_per_step, cfg.d_model), keep_last=0)


@pytest.mark.parametrize("head", ["l1", "flow"])
def test_policy_chunk_equals_transforms_and_module_path(head):
    """Policy.infer_chunk (precomputed normalization, fast trunk) == the shared transforms around the
    plain module forward, step by step over a history that fills up."""
    cfg = dataclasses.replace(get_preset("debug"), head=head)
    specs, stats = toy_specs(), toy_stats(toy_specs())
    model = randomized(build_model(cfg, specs))
    policy = Policy(model, stats, device="cpu", seed=3)
    norm, unnorm = Normalize(stats), Unnormalize(stats)
    tok = TokenizeInstruction(cfg.max_lang_len)({"instruction": "pick up the block"})
    gen = torch.Generator().manual_seed(3)
    rng = np.random.default_rng(0)
    frames = []
    for _ in range(cfg.history + 2):
        state = rng.normal(1.0, 2.0, 7).astype(np.float32)
        got = policy.infer_chunk({"embodiment": "arm", "state": state, "instruction": "pick up the block"})
        frames = (frames + [state])[-cfg.history:]
        pad = cfg.history - len(frames)
        hist = norm({"embodiment": "arm", "observation.state": np.stack([frames[0]] * pad + frames)})
        batch = {"arm": {"observation.state": torch.as_tensor(hist["observation.state"])[None],
                         "observation.state_is_pad": (torch.arange(cfg.history) < pad)[None],
                         "lang_tokens": torch.as_tensor(tok["lang_tokens"])[None],
                         "lang_mask": torch.as_tensor(tok["lang_mask"])[None]}}
        with torch.no_grad():
            out = model.sample_actions(batch, generator=gen)["arm"][0].numpy()
        want = unnorm({"embodiment": "arm", "action": out})["action"]
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
