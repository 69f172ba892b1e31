"""The shared transformer trunk: pre-norm blocks of rotary attention and a
feed-forward that is either a dense SwiGLU or a Mixture of Experts.

Notable features
- Bidirectional attention over a short fixed token layout (one control step),
  grouped-query when ``n_kv_heads < n_heads``; rotary positions computed per
  call (the sequence is ~10 tokens, so caching buys nothing and keeps
  ``to_empty`` free of buffers to rebuild).
- MoE experts are stored stacked as ``[E, d, h]`` parameters rather than a
  ModuleList of experts: a 1T config builds on ``meta`` in seconds, and expert
  parallelism can shard dim 0 (torchtitan does the same).
- Routing: softmax or sigmoid scores, top-k, always-on shared experts,
  switch-style load-balancing loss and/or DeepSeek-V3's auxiliary-loss-free
  per-expert bias (it only changes which experts are *selected*, never the gate
  weights), updated in training forwards from the observed load.

Everything here is single-device; ``genba.train.parallelize`` wraps it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from genba.model.config import ModelConfig


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.empty(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == self.weight.dtype:
            return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)
        # mixed (bf16 autocast): in fp32, else the fused kernel is skipped and precision lost
        return F.rms_norm(x.float(), (x.shape[-1],), self.weight.float(), self.eps).to(x.dtype)

    def init_weights(self) -> None:
        nn.init.ones_(self.weight)


_CONSTANTS: dict = {}


def cached_constant(key: tuple, build):
    """Small constant tensors (rotary tables, rate features) built once per key.

    Built outside inference mode so the same tensor serves training too (an
    inference tensor cannot be saved for backward); the key includes the device.
    Batch-1 inference is op-count bound, so every op saved per step counts.
    """
    value = _CONSTANTS.get(key)
    if value is None:
        with torch.inference_mode(False), torch.no_grad():
            value = _CONSTANTS[key] = build()
    return value


def rotary(seq_len: int, head_dim: int, theta: float, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables, each (T, head_dim / 2), float32, cached."""
    def build():
        inv = theta ** (-torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim)
        ang = torch.outer(torch.arange(seq_len, device=device, dtype=torch.float32), inv)
        return ang.cos(), ang.sin()
    return cached_constant(("rotary", seq_len, head_dim, theta, torch.device(device)), build)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (first half, second half) of the last dim; x is (B, heads, T, hd)."""
    x1, x2 = x.chunk(2, dim=-1)
    if cos.dtype != x.dtype:
        cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


class Attention(nn.Module):
    """Multi-head (grouped-query) self-attention with rotary positions."""

    def __init__(self, dim: int, n_heads: int, n_kv_heads: int) -> None:
        super().__init__()
        self.n_heads, self.n_kv_heads, self.hd = n_heads, n_kv_heads, dim // n_heads
        self.wq = nn.Linear(dim, n_heads * self.hd, bias=False)
        self.wkv = nn.Linear(dim, 2 * n_kv_heads * self.hd, bias=False)
        self.wo = nn.Linear(n_heads * self.hd, dim, bias=False)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor],
                mask: torch.Tensor | None = None) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.wq(x).view(B, T, self.n_heads, self.hd).transpose(1, 2)  # (B, h, T, hd)
        k, v = self.wkv(x).view(B, T, 2, self.n_kv_heads, self.hd).permute(2, 0, 3, 1, 4)  # (B, kv, T, hd)
        q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
        gqa = self.n_kv_heads != self.n_heads
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)  # (B, h, T, hd)
        return self.wo(y.transpose(1, 2).reshape(B, T, -1))

    def init_weights(self, std: float, out_std: float) -> None:
        nn.init.normal_(self.wq.weight, std=std)
        nn.init.normal_(self.wkv.weight, std=std)
        nn.init.normal_(self.wo.weight, std=out_std)


class SwiGLU(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.w_gate = nn.Linear(dim, hidden, bias=False)
        self.w_up = nn.Linear(dim, hidden, bias=False)
        self.w_down = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w_down(F.silu(self.w_gate(x)) * self.w_up(x))

    def init_weights(self, std: float, out_std: float) -> None:
        nn.init.normal_(self.w_gate.weight, std=std)
        nn.init.normal_(self.w_up.weight, std=std)
        nn.init.normal_(self.w_down.weight, std=out_std)


class MoE(nn.Module):
    """Top-k routed experts (stacked ``[E, d, h]``) plus always-on shared experts.

    ``forward`` returns ``(y, aux)`` where ``aux`` is the switch-style balance
    loss ``E * sum_e f_e * P_e`` (f: fraction of routed slots, P: mean score), 1.0
    when perfectly balanced. ``tokens_per_expert`` (a buffer) holds the last
    forward's load for metrics and tests.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        d, h, E = cfg.d_model, cfg.expert_hidden, cfg.n_experts
        self.n_experts, self.top_k, self.sigmoid = E, cfg.top_k, cfg.router == "sigmoid"
        self.bias_rate = cfg.router_bias_rate
        self.router = nn.Linear(d, E, bias=False)
        self.w_gate = nn.Parameter(torch.empty(E, d, h))
        self.w_up = nn.Parameter(torch.empty(E, d, h))
        self.w_down = nn.Parameter(torch.empty(E, h, d))
        self.shared = SwiGLU(d, h * cfg.n_shared_experts) if cfg.n_shared_experts else None
        # Aux-loss-free balancing bias: state, not a learned weight (no gradient), but saved.
        self.register_buffer("expert_bias", torch.empty(E))
        self.register_buffer("tokens_per_expert", torch.empty(E), persistent=False)

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Top-k expert ids (N, k), gate weights (N, k) and all scores (N, E) for tokens x (N, d)."""
        logits = self.router(x).float()  # (N, E)
        scores = logits.sigmoid() if self.sigmoid else logits.softmax(-1)
        idx = (scores + self.expert_bias).topk(self.top_k, dim=-1).indices  # bias only steers selection
        gates = scores.gather(-1, idx)
        if self.sigmoid:  # sigmoid scores are not a distribution: renormalize the chosen ones
            gates = gates / gates.sum(-1, keepdim=True).clamp_min(1e-9)
        return idx, gates, scores

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shape = x.shape
        x = x.reshape(-1, shape[-1])  # (N, d)
        idx, gates, scores = self.route(x)
        counts = torch.bincount(idx.flatten(), minlength=self.n_experts)  # (E,)
        y = self.dispatch(x, idx, gates, counts)
        if self.shared is not None:
            y = y + self.shared(x)
        frac = counts.float() / idx.numel()
        if self.sigmoid:  # the balance loss wants per-token distributions
            scores = scores / scores.sum(-1, keepdim=True).clamp_min(1e-9)
        aux = self.n_experts * (frac * scores.mean(0)).sum()
        with torch.no_grad():
            self.tokens_per_expert.copy_(counts.float())
            if self.training and self.bias_rate > 0:  # DeepSeek-V3: raise underloaded, lower overloaded
                self.expert_bias.add_(self.bias_rate * torch.sign(frac.mean() - frac))
        return y.reshape(shape), aux

    def dispatch(self, x: torch.Tensor, idx: torch.Tensor, gates: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """Run each expert on the tokens routed to it; gate-weighted sum back per token."""
        order = idx.flatten().argsort(stable=True)  # slots grouped by expert
        token_of_slot = order // self.top_k  # (N*k,)
        xs = x[token_of_slot]  # (N*k, d)
        outs = []
        for e, xe in enumerate(xs.split(counts.tolist())):
            if xe.shape[0]:
                outs.append((F.silu(xe @ self.w_gate[e]) * (xe @ self.w_up[e])) @ self.w_down[e])
        ys = torch.cat(outs) * gates.flatten()[order].unsqueeze(-1).to(x.dtype)  # (N*k, d)
        return torch.zeros_like(x).index_add_(0, token_of_slot, ys)

    def init_weights(self, std: float, out_std: float) -> None:
        nn.init.normal_(self.router.weight, std=std)
        nn.init.normal_(self.w_gate, std=std)
        nn.init.normal_(self.w_up, std=std)
        nn.init.normal_(self.w_down, std=out_std)
        nn.init.zeros_(self.expert_bias)
        nn.init.zeros_(self.tokens_per_expert)
        if self.shared is not None:
            self.shared.init_weights(std, out_std)


class Block(nn.Module):
    """Pre-norm: x + attn(norm(x)), then x + ffn(norm(x))."""

    def __init__(self, cfg: ModelConfig, moe: bool) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.attn = Attention(cfg.d_model, cfg.n_heads, cfg.n_kv_heads)
        self.ffn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.ffn = MoE(cfg) if moe else SwiGLU(cfg.d_model, cfg.mlp_hidden)

    def forward(self, x: torch.Tensor, rope, mask=None) -> tuple[torch.Tensor, torch.Tensor | None]:
        x = x + self.attn(self.attn_norm(x), rope, mask)
        if isinstance(self.ffn, MoE):
            y, aux = self.ffn(self.ffn_norm(x))
            return x + y, aux
        return x + self.ffn(self.ffn_norm(x)), None

    def init_weights(self, std: float, out_std: float) -> None:
        self.attn_norm.init_weights()
        self.ffn_norm.init_weights()
        self.attn.init_weights(std, out_std)
        self.ffn.init_weights(std, out_std)


class Trunk(nn.Module):
    """A stack of blocks and a final norm; ``forward(x) -> (x, aux_loss)``.

    ``aux_loss`` is the mean MoE balance loss over MoE layers (0 for dense trunks).
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.layers = nn.ModuleList(Block(cfg, cfg.is_moe_layer(i)) for i in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rope = rotary(x.shape[1], self.cfg.head_dim, self.cfg.rope_theta, x.device)
        aux_terms = []
        for layer in self.layers:
            x, aux = layer(x, rope)
            if aux is not None:
                aux_terms.append(aux)
        aux = torch.stack(aux_terms).mean() if aux_terms else x.new_zeros(())
        return self.norm(x), aux

    def init_weights(self) -> None:
        std = self.cfg.init_std
        out_std = std / math.sqrt(2 * self.cfg.n_layers)  # residual branches scaled by depth (GPT-2)
        for layer in self.layers:
            layer.init_weights(std, out_std)
        self.norm.init_weights()

    def expert_load(self) -> dict[int, torch.Tensor]:
        """Tokens routed to each expert in the last forward, per MoE layer index."""
        return {i: l.ffn.tokens_per_expert.clone() for i, l in enumerate(self.layers) if isinstance(l.ffn, MoE)}
