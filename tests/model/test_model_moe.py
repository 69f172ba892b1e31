import dataclasses

import torch
import torch.nn.functional as F

from genba.model.config import get_preset
from genba.model.trunk import MoE
from tests.fixtures import build_model, toy_batch


def moe_cfg(**kw):
    base = dict(n_experts=4, top_k=2, expert_hidden=16, n_shared_experts=1, first_dense_layers=1)
    return dataclasses.replace(get_preset("debug"), **{**base, **kw})


def build_moe(seed=0, **kw):
    cfg = moe_cfg(**kw)
    with torch.device("meta"):
        moe = MoE(cfg)
    moe.to_empty(device="cpu")
    torch.manual_seed(seed)
    moe.init_weights(0.5, 0.5)
    return moe


def test_dispatch_matches_per_token_reference():
    moe = build_moe()
    x = torch.randn(10, moe.router.in_features)
    y, _ = moe(x)
    idx, gates, _ = moe.route(x)
    ref = moe.shared(x)
    for n in range(x.shape[0]):
        for j in range(moe.top_k):
            e = idx[n, j]
            h = F.silu(x[n] @ moe.w_gate[e]) * (x[n] @ moe.w_up[e])
            ref[n] += gates[n, j] * (h @ moe.w_down[e])
    assert torch.allclose(y, ref, atol=1e-5)


def test_experts_receive_tokens_and_gradients(specs):
    # 3 layers: in the last one only readout tokens reach the loss, so check the middle one
    cfg = moe_cfg(n_layers=3)
    model = build_model(cfg, specs)
    loss, metrics = model.loss(toy_batch(cfg, specs, B=8))
    loss.backward()
    layer = model.trunk.layers[1].ffn
    assert isinstance(layer, MoE) and not isinstance(model.trunk.layers[0].ffn, MoE)
    load = model.trunk.expert_load()[1]
    assert load.sum() == 2 * 8 * cfg.tokens_per_step * 2 and (load > 0).all()  # k * tokens, all experts used
    assert layer.w_gate.grad.abs().sum(dim=(1, 2)).gt(0).all()
    assert layer.router.weight.grad.abs().sum() > 0  # the gate weights carry the router's gradient
    assert metrics["loss/aux"] >= 1.0 - 1e-4  # E * sum f*P >= 1, equality when balanced
    assert metrics["moe/max_load"] >= 1.0


def test_aux_loss_is_higher_when_routing_collapses():
    moe = build_moe()
    x = torch.randn(64, moe.router.in_features)
    _, balanced = moe(x)
    with torch.no_grad():
        moe.router.weight[0] = x.mean(0) * 50  # everything prefers expert 0
    _, skewed = moe(x)
    assert skewed > balanced + 0.3


def test_bias_balancing_evens_the_load():
    moe = build_moe(router="sigmoid", router_bias_rate=0.05, n_shared_experts=0)
    torch.manual_seed(0)
    x = torch.randn(256, moe.router.in_features)
    with torch.no_grad():
        moe.router.weight[0] += 2 * x.mean(0) / x.mean(0).norm()  # skew towards expert 0
    moe.train()
    moe(x)
    first = moe.tokens_per_expert.max() / moe.tokens_per_expert.mean()
    for _ in range(60):
        moe(x)
    last = moe.tokens_per_expert.max() / moe.tokens_per_expert.mean()
    assert last < first and last < 1.3, (first, last)
    moe.eval()
    bias = moe.expert_bias.clone()
    moe(x)
    assert torch.equal(bias, moe.expert_bias)  # no updates outside training
