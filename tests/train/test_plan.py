"""The capacity planner against the model code and against what PyTorch really allocates.

Parameter counts must equal a materialized model's exactly; memory predictions
for weights + gradients + AdamW state and for saved activations must be within
10% of the measured bytes (single process, fp32, CPU) for `small` and `moe-small`.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from genba.model.config import get_preset
from genba.model.counts import nominal_specs, parameter_counts
from genba.train import plan as P
from genba.train import trainer as T
from genba.train.clusters import get_cluster
from genba.train.config import get_train_preset


def synthetic_batch(cfg, specs, B: int, seed: int = 0) -> dict:
    """A batch for every embodiment with full-length, all-distinct instructions: the planner assumes
    L = max_lang_len and one encoder row per sample (the worst case; training encodes repeats once)."""
    g = torch.Generator().manual_seed(seed)
    return {n: {"observation.state": torch.randn(B, cfg.history, s.obs_dim, generator=g),
                "observation.state_is_pad": torch.zeros(B, cfg.history, dtype=torch.bool),
                "lang_tokens": torch.randint(1, 257, (B, cfg.max_lang_len), generator=g),
                "lang_mask": torch.ones(B, cfg.max_lang_len, dtype=torch.bool),
                "action": torch.randn(B, cfg.chunk, s.action_dim, generator=g),
                "action_is_pad": torch.zeros(B, cfg.chunk, dtype=torch.bool)} for n, s in specs.items()}


def measured(preset: str, B: int = 8):
    """Real fp32 model, one AdamW step: (facts, states bytes, activation bytes, tokens)."""
    cfg, specs = get_preset(preset), nominal_specs()
    model = T.build_model(cfg, specs, torch.device("cpu"), seed=0)
    optim = T.build_optimizer(model, get_train_preset(preset))
    batch = synthetic_batch(cfg, specs, B)
    act, (loss, _) = P.measure_activations(model, lambda: model.loss(batch))
    loss.backward()
    optim.step()
    return P.facts_of(model, preset), P.measure_states(model, optim), act, B * len(specs) * cfg.tokens_per_step


@pytest.mark.parametrize("preset", ["small", "moe-small"])
def test_parameter_count_equals_the_built_model(preset):
    facts = P.describe(preset)
    cfg, specs = get_preset(preset), nominal_specs()
    model = T.build_model(cfg, specs, torch.device("cpu"), seed=0)
    assert facts.total == sum(p.numel() for p in model.parameters())
    assert facts.counts == parameter_counts(model)
    assert facts.n_tensors == len(list(model.parameters()))


@pytest.mark.parametrize("preset", ["small", "moe-small"])
def test_memory_prediction_matches_pytorch_allocations(preset):
    facts, states, act, tokens = measured(preset)
    cfg = facts.cfg
    mem = P.memory(facts, P.Layout(), precision="fp32", micro_tokens=tokens, seq_len=cfg.tokens_per_step)
    for key, pred in (("weights", mem.weights), ("grads", mem.grads), ("optimizer", mem.optimizer)):
        assert pred == pytest.approx(states[key], rel=0.10), key
    assert mem.activations == pytest.approx(act, rel=0.10)
    # checkpointing must predict less than storing every block's activations
    assert mem.activations_ac < mem.activations


def test_1t_preset_size_and_search():
    facts = P.describe("1t")
    assert 0.95e12 <= facts.total <= 1.05e12
    assert facts.active < 0.05 * facts.total  # a sparse model
    b = P.Budget(get_cluster("h200x8"), nodes=128, seq_len=facts.cfg.tokens_per_step)
    plans = P.search(facts, b)
    best = plans[0]
    assert best.fits and best.layout.world == 1024
    assert best.per_gpu <= b.cluster.usable_bytes
    # FSDP + EP shard the ~16 TB of fp32 states: per GPU, states are ~16 B * params / world or more
    assert best.mem.states >= 16 * facts.total / 1024 * 0.99
    # one node cannot hold the states of a trillion parameters
    small = P.Budget(get_cluster("h200x8"), nodes=1, seq_len=facts.cfg.tokens_per_step)
    assert not any(p.fits for p in P.search(facts, small))
    # a longer run at the same rate takes proportionally longer
    twice = P.plan_layout(facts, best.layout, dataclasses.replace(b, tokens=2 * b.tokens))
    assert twice.days == pytest.approx(2 * best.days)


def test_flops_per_token_is_six_n_active_plus_attention():
    facts = P.describe("moe-small")
    cfg = facts.cfg
    f = P.flops_per_token(facts, seq_len=cfg.tokens_per_step)
    assert f["attention"] == 12 * cfg.n_layers * cfg.d_model * cfg.tokens_per_step
    trunk_active = facts.active - sum(facts.counts[c]["active"]
                                      for c in ("language_encoder", "embeddings", "stems_heads"))
    assert f["dense"] == 6 * trunk_active


def test_layout_errors_name_the_problem():
    facts = P.describe("moe-small")
    with pytest.raises(ValueError, match="tp=3"):
        P.check_layout(facts, P.Layout(dp=1, tp=3), None)
    with pytest.raises(ValueError, match="ep=3"):
        P.check_layout(facts, P.Layout(dp=6, ep=3), None)
    with pytest.raises(ValueError, match="pp must be 1"):
        P.check_layout(facts, P.Layout(pp=2), None)
    with pytest.raises(ValueError, match="--layout part"):
        P.parse_layout("dp=4,xx=2")
    assert P.parse_layout("dp=16,tp=8,ep=64,ac") == P.Layout(dp=16, tp=8, ep=64, ac=True)


def test_serving_needs_more_gpus_in_bf16_than_fp8():
    facts = P.describe("1t")
    c = get_cluster("h200x8")
    bf16, fp8 = P.serving(facts, c, "bf16", 17), P.serving(facts, c, "fp8", 17)
    assert bf16.gpus > fp8.gpus >= 8
    assert fp8.weight_bytes / fp8.gpus <= c.usable_bytes
    assert bf16.per_step_s >= bf16.per_token_s > 0


def test_plan_cli(capsys):
    from genba.cli import main

    assert main(["plan", "moe-small", "--cluster", "h100x8", "--nodes", "1", "--search", "--top", "3"]) == 0
    out = capsys.readouterr().out
    assert "cheapest that fits" in out and "Serving" in out
    assert main(["plan", "moe-small", "--cluster", "h999"]) == 2
    assert main(["plan", "moe-small", "--nodes", "1", "--layout", "dp=4,tp=2,ep=3"]) == 2
