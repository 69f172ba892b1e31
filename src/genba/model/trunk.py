"""The shared transformer trunk: pre-norm blocks of rotary attention and a
feed-forward that is either a dense SwiGLU or a Mixture of Experts.

Notable features
- Bidirectional attention over a short fixed token layout (one control step),
  grouped-query when ``n_kv_heads < n_heads``; rotary tables are cached
  constants, not buffers (``to_empty`` has nothing to rebuild).
- MoE experts are stored stacked as ``[E, d, h]`` parameters rather than a
  ModuleList of experts: a 1T config builds on ``meta`` in seconds, and expert
  parallelism can shard dim 0 (torchtitan does the same).
- Inference fast path (``torch.inference_mode`` and ``eval()``): batch-1
  control is op-count bound (~9 tokens, ~30 MFLOP per step), so the trunk runs
  from a cached set of fused, pre-transposed weights (q|k|v and gate|up in one
  matmul each, residual adds folded into ``addmm``, rotary as one complex
  multiply) rebuilt whenever a weight changes. Same results to float rounding.
- Routing: softmax or sigmoid scores, top-k, always-on shared experts,
  switch-style load-balancing loss and/or DeepSeek-V3's auxiliary-loss-free
  per-expert bias (it only changes which experts are *selected*, never the gate
  weights), updated in training forwards from the observed load.

Everything here is single-device; ``genba.train.parallelize`` wraps it.
"""

from __future__ import annotations

import math
import weakref
from typing import NamedTuple

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


def rotary_complex(seq_len: int, head_dim: int, theta: float, device: torch.device) -> torch.Tensor:
    """The same rotations as :func:`rotary` as unit complex numbers (T, 1, head_dim / 2), cached."""
    def build():
        cos, sin = rotary(seq_len, head_dim, theta, device)
        return torch.complex(cos, sin)[:, None]  # broadcasts over (B, T, heads, hd / 2)
    return cached_constant(("rotary_complex", seq_len, head_dim, theta, torch.device(device)), build)


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


# ---- inference fast path -----------------------------------------------------
# The fused copies double the dense trunk weights; beyond this the model is
# FLOP-bound anyway and the copies would only cost memory.
FAST_PATH_MAX_NUMEL = 50_000_000
FAST_DTYPES = (torch.float32, torch.float64)  # complex rotary needs complex64/128
# Trunk -> (modules, weight versions, weights, fused layers or None); outside the
# module so state_dict, deepcopy and pickling never see it.
_FAST_CACHE: weakref.WeakKeyDictionary[nn.Module, tuple] = weakref.WeakKeyDictionary()


class FastLayer(NamedTuple):
    """One block's weights for the inference fast path (pre-transposed for ``torch.mm``)."""

    heads: int
    kv_heads: int
    head_dim: int
    eps: float
    attn_norm: torch.Tensor  # (D,)
    w_qkv: torch.Tensor  # (D, (h + 2 kv) hd); q and k columns in interleaved rotary pairs
    w_o: torch.Tensor  # (h hd, D)
    ffn_norm: torch.Tensor  # (D,)
    w_gate_up: torch.Tensor | None  # (D, 2 hidden); None: an MoE layer, run through its module
    w_down: torch.Tensor | None  # (hidden, D)


def _plain_weight(layer: nn.Module) -> torch.Tensor | None:
    """The weight of a bias-free linear computing exactly x W^T (a merged LoRA counts), else None."""
    if not isinstance(layer, nn.Linear) or layer.bias is not None:
        return None
    if type(layer) is not nn.Linear and not getattr(layer, "merged", False):
        return None  # an active LoRA adapter (or an unknown subclass) adds to x W^T
    return layer.weight


def _interleave_pairs(w: torch.Tensor, heads: int, hd: int) -> torch.Tensor:
    """Rows (heads * hd, D) reordered per head from halves [x1 | x2] to pairs (x1_0, x2_0, x1_1, ...).

    q and k get the same order, so every q.k is unchanged, and each rotary pair
    becomes one complex number: (x1 + i x2)(cos + i sin) is exactly :func:`apply_rotary`.
    """
    return w.reshape(heads, 2, hd // 2, -1).transpose(1, 2).reshape(heads * hd, -1)


def build_fast_layer(block: Block) -> FastLayer | None:
    """Fused weights of one block, or None when a layer is not a plain linear (e.g. active LoRA)."""
    attn = block.attn
    wq, wkv, wo = (_plain_weight(m) for m in (attn.wq, attn.wkv, attn.wo))
    if wq is None or wkv is None or wo is None:
        return None
    h, kv, hd = attn.n_heads, attn.n_kv_heads, attn.hd
    wk, wv = wkv.reshape(2, kv * hd, -1)  # Attention.forward splits wkv's outputs as (k, v)
    w_qkv = torch.cat((_interleave_pairs(wq, h, hd), _interleave_pairs(wk, kv, hd), wv)).t().contiguous()
    gate_up = down = None
    if isinstance(block.ffn, SwiGLU):
        wg, wu, wd = (_plain_weight(m) for m in (block.ffn.w_gate, block.ffn.w_up, block.ffn.w_down))
        if wg is None or wu is None or wd is None:
            return None
        gate_up, down = torch.cat((wg, wu)).t().contiguous(), wd.t().contiguous()
    return FastLayer(h, kv, hd, block.attn_norm.eps, block.attn_norm.weight, w_qkv, wo.t().contiguous(),
                     block.ffn_norm.weight, gate_up, down)


def fast_block(layer: Block, f: FastLayer, x: torch.Tensor, B: int, T: int, rot: torch.Tensor,
               keep: int | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``Block.forward`` on rows x (B*T, D) from fused weights; with ``keep`` only the last ``keep``
    tokens of each sequence come out (B*keep, D) (they still attend to all T)."""
    N, D = x.shape
    h, kv, hd = f.heads, f.kv_heads, f.head_dim
    qkv = torch.mm(F.rms_norm(x, (D,), f.attn_norm, f.eps), f.w_qkv)  # (N, (h + 2 kv) hd)
    qk = torch.view_as_complex(qkv[:, :(h + kv) * hd].view(B, T, h + kv, hd // 2, 2))
    qk = torch.view_as_real(qk * rot).view(B, T, h + kv, hd)  # rotated q and k, (B, T, h + kv, hd)
    q = qk[:, :, :h] if keep is None else qk[:, -keep:, :h]  # (B, Tq, h, hd)
    v = qkv[:, (h + kv) * hd:].view(B, T, kv, hd)
    y = F.scaled_dot_product_attention(q.transpose(1, 2), qk[:, :, h:].transpose(1, 2), v.transpose(1, 2),
                                       enable_gqa=h != kv)  # (B, h, Tq, hd)
    Tq = q.shape[1]
    if keep is not None:
        x = x.view(B, T, D)[:, -keep:].reshape(B * keep, D)
    x = torch.addmm(x, y.transpose(1, 2).reshape(B * Tq, h * hd), f.w_o)  # x + attn
    n = F.rms_norm(x, (D,), f.ffn_norm, f.eps)
    if f.w_gate_up is None:  # MoE: its own module (routing, load statistics, balance loss)
        y, aux = layer.ffn(n)
        return x + y, aux
    gate, up = torch.mm(n, f.w_gate_up).chunk(2, dim=-1)  # (N, hidden) each
    return torch.addmm(x, F.silu(gate).mul_(up), f.w_down), None  # x + SwiGLU


def _weight_versions(tensors: list[torch.Tensor]) -> tuple:
    return tuple((t.data_ptr(), t._version) for t in tensors)


def _structure(trunk: nn.Module) -> tuple:
    """Every submodule with its LoRA merge state: a swapped layer (``apply_lora``) or a merge changes it."""
    # not the trunk itself: the cache is weakly keyed by it, and its value must not keep it alive
    return tuple((m, getattr(m, "merged", None)) for m in trunk.modules() if m is not trunk)


class Trunk(nn.Module):
    """A stack of blocks and a final norm; ``forward(x) -> (x, aux_loss)``.

    ``aux_loss`` is the mean MoE balance loss over MoE layers (0 for dense trunks).
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.layers = nn.ModuleList(Block(cfg, cfg.is_moe_layer(i)) for i in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)

    def forward(self, x: torch.Tensor, keep_last: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T, D) -> normed (B, T, D), or (B, keep_last, D): only the last tokens (the readouts),
        which lets the inference fast path skip the other rows' work in the last layer."""
        if keep_last is not None and not 1 <= keep_last <= x.shape[1]:
            raise ValueError(f"keep_last {keep_last}: must be between 1 and the sequence length {x.shape[1]}")
        fast = self._fast_layers(x)
        if fast is not None:
            return self._forward_fast(x, fast, keep_last)
        rope = rotary(x.shape[1], self.cfg.head_dim, self.cfg.rope_theta, x.device)
        aux_terms = []
        for layer in self.layers:
            x, aux = layer(x, rope)
            if aux is not None:
                aux_terms.append(aux)
        aux = torch.stack(aux_terms).mean() if aux_terms else x.new_zeros(())
        if keep_last is not None:
            x = x[:, -keep_last:]
        return self.norm(x), aux

    def _forward_fast(self, x: torch.Tensor, fast: list[FastLayer], keep_last: int | None):
        B, T, D = x.shape
        rot = rotary_complex(T, self.cfg.head_dim, self.cfg.rope_theta, x.device)  # (T, 1, hd / 2)
        x = x.reshape(B * T, D)  # (N, D): every linear is one 2-D matmul
        aux_terms = []
        last = len(fast) - 1
        for i, (layer, f) in enumerate(zip(self.layers, fast)):
            keep = keep_last if i == last else None
            x, aux = fast_block(layer, f, x, B, T, rot, keep)
            if aux is not None:
                aux_terms.append(aux)
        T = keep_last if keep_last is not None else T
        aux = torch.stack(aux_terms).mean() if aux_terms else x.new_zeros(())
        return F.rms_norm(x, (D,), self.norm.weight, self.norm.eps).view(B, T, D), aux

    def _fast_layers(self, x: torch.Tensor) -> list[FastLayer] | None:
        """The fused weights when this call may take the fast path (cached; rebuilt after any change).

        Only under ``torch.inference_mode`` in eval mode, without autocast, in
        float32/64, with plain (or merged LoRA) linears; anything else runs the
        module path. Inference-mode parameters carry no version counter, so
        they get no cache either.
        """
        if (self.training or not torch.is_inference_mode_enabled() or x.dtype not in FAST_DTYPES
                or x.dtype != self.norm.weight.dtype or torch.is_autocast_enabled(x.device.type)):
            return None
        cache = _FAST_CACHE.get(self)
        structure = _structure(self)
        if cache is not None and cache[0] == structure and cache[1] == _weight_versions(cache[2]):
            return cache[3]
        sources = list(self.parameters())
        if any(p.is_inference() for p in sources):
            return None
        layers = [build_fast_layer(layer) for layer in self.layers]
        if any(f is None for f in layers) or sum(
                t.numel() for f in layers for t in (f.w_qkv, f.w_o, f.w_gate_up, f.w_down)
                if t is not None) > FAST_PATH_MAX_NUMEL:
            layers = None
        _FAST_CACHE[self] = (structure, _weight_versions(sources), sources, layers)
        return layers

    def init_weights(self) -> None:
        std = self.cfg.init_std
        out_std = std / math.sqrt(2 * self.cfg.n_layers)  # residual branches scaled by depth (GPT-2)
        for layer in self.layers:
            layer.init_weights(std, out_std)
        self.norm.init_weights()

    def expert_load(self) -> dict[int, torch.Tensor]:
        """Tokens routed to each expert in the last forward, per MoE layer index."""
        return {i: l.ffn.tokens_per_expert.clone() for i, l in enumerate(self.layers) if isinstance(l.ffn, MoE)}
