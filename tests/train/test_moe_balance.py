"""MoE load balance on the training data (the toy datasets of conftest.py).

Load = tokens routed to each expert over one large batch; the figure is the
worst MoE layer's max/mean (1.0 = perfectly even). A freshly initialized
``moe-small`` router is already uneven (~1.5-2x) on these data.

- fast: DeepSeek-V3's auxiliary-loss-free bias (``router_bias_rate``, what
  ``1t`` uses, rate 1e-3) evens the load within 60 training-mode forwards:
  worst layer 1.81x -> <= 1.35x (measured 1.16x).
- slow: 300 optimizer steps of ``moe-small`` as configured (switch balance loss
  0.01) keep the worst layer <= 1.6x (measured 1.45x) and end more even than
  training without any balancing (measured 1.77x). Figures:
  ``benchmarks/moe_balance.py``.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from genba.data.windows import mixed_sampler
from genba.model.config import get_preset
from genba.train import trainer as T
from genba.train.config import get_train_preset

CPU = torch.device("cpu")


def worst_load(model, data, sampler) -> float:
    """Worst layer's max/mean tokens per expert over 512 held-out draws (eval mode: bias frozen)."""
    model.eval()
    with torch.no_grad():
        model.loss(T.make_batch(data, sampler.indices(10**9, 10**9 + 512), CPU))
    model.train()
    return max(float(l.max() / l.mean()) for l in model.trunk.expert_load().values())


def setup(toy_data, **moe):
    cfg = dataclasses.replace(get_preset("moe-small"), **moe)
    data = T.build_datasets(get_train_preset("moe-small"), toy_data, model_cfg=cfg)
    return data, T.build_model(cfg, data.specs, CPU, seed=0), mixed_sampler(data.mixed, 2**40, seed=0)


def test_bias_balancing_evens_expert_load(toy_data):
    rate = get_preset("1t").router_bias_rate  # 1e-3; much larger steps overshoot and oscillate
    data, model, sampler = setup(toy_data, router_bias_rate=rate)
    before = worst_load(model, data, sampler)
    with torch.no_grad():  # the bias moves in training-mode forwards; no gradient involved
        for s in range(60):
            model.loss(T.make_batch(data, sampler.indices(s * 32, (s + 1) * 32), CPU))
    after = worst_load(model, data, sampler)
    assert before > 1.4, "the fresh router should start uneven on these data"
    assert after <= 1.35 and after < before - 0.1


def train(model, data, sampler, steps: int, batch: int = 32) -> None:
    cfg = get_train_preset("moe-small").replace(lr=2e-3, warmup_steps=10, steps=steps)
    opt = T.build_optimizer(model, cfg)
    for s in range(steps):
        for g in opt.param_groups:
            g["lr"] = T.lr_at(s, cfg, steps)
        loss, _ = model.loss(T.make_batch(data, sampler.indices(s * batch, (s + 1) * batch), CPU))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)


@pytest.mark.slow
def test_balance_loss_keeps_load_even_over_training(toy_data):
    data, model, sampler = setup(toy_data)  # moe-small as configured: aux_loss_coef 0.01
    train(model, data, sampler, 300)
    balanced = worst_load(model, data, sampler)
    data, free, sampler = setup(toy_data, aux_loss_coef=0.0, router_bias_rate=0.0)
    train(free, data, sampler, 300)
    unbalanced = worst_load(free, data, sampler)
    assert balanced <= 1.6
    assert balanced < unbalanced
