"""Tensor parallelism of the trunk through DTensor (``parallelize_module``), Megatron-style.

Per block, on the ``tp`` mesh dimension:

- attention: ``wq`` column-parallel (each rank its heads), ``wo`` row-parallel
  (one all-reduce of the output); ``wkv`` is column-parallel too, but its
  output packs all K heads and then all V heads, so a contiguous column shard
  would hand rank 0 the keys and rank 1 the values. Its sharded output is
  all-gathered (``Shard(-1) -> Replicate``, tiny: GQA keeps kv_dim = d/8 in
  ``1t``) and each rank keeps the K/V heads its query heads attend to; the
  gradient is marked ``Partial`` so the backward reduce-scatters it. Splitting
  ``wkv`` into ``wk``/``wv`` in the model would make this a plain
  ``ColwiseParallel`` (asked of the model's owner).
- dense SwiGLU and the MoE's shared experts: ``w_gate``/``w_up`` column-parallel,
  ``w_down`` row-parallel.
- norms, router and routed experts stay replicated over ``tp`` (experts are
  split by expert parallelism instead, :mod:`genba.train.expert_parallel`).

The language encoder, stems and heads are small and stay replicated. Inputs to
every block are replicated across the TP group, so the single-device forward
of everything around the trunk is unchanged.
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import Partial, Replicate
from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

from genba.model.trunk import Attention, MoE, SwiGLU, apply_rotary


def swiglu_plan(prefix: str = "") -> dict:
    """Column-parallel gate/up, row-parallel down: one all-reduce per SwiGLU."""
    return {f"{prefix}w_gate": ColwiseParallel(), f"{prefix}w_up": ColwiseParallel(),
            f"{prefix}w_down": RowwiseParallel()}


def block_plan(block: nn.Module) -> dict:
    """The ``parallelize_module`` plan of one trunk block (names relative to the block)."""
    plan = {"attn.wq": ColwiseParallel(), "attn.wkv": ColwiseParallel(use_local_output=False),
            "attn.wo": RowwiseParallel()}
    if isinstance(block.ffn, SwiGLU):
        plan.update(swiglu_plan("ffn."))
    elif isinstance(block.ffn, MoE) and block.ffn.shared is not None:
        plan.update(swiglu_plan("ffn.shared."))
    return plan


def tp_attention_forward(self: Attention, x: torch.Tensor, rope, mask=None) -> torch.Tensor:
    """Attention on this rank's heads: q heads [r*h/tp, (r+1)*h/tp) and their K/V heads."""
    B, T, _ = x.shape
    h, kv, hd = self.n_heads // self.tp_size, self.n_kv_heads // self.tp_size, self.hd
    q = self.wq(x).view(B, T, h, hd).transpose(1, 2)  # (B, h/tp, T, hd): local heads
    full = self.wkv(x).redistribute(placements=[Replicate()]).to_local(grad_placements=[Partial()])
    k, v = full.view(B, T, 2, self.n_kv_heads, hd).permute(2, 0, 3, 1, 4)  # (B, kv, T, hd) all heads
    lo = self.tp_rank * kv
    k, v = k[:, lo:lo + kv], v[:, lo:lo + kv]  # (B, kv/tp, T, hd): the heads our q heads use
    q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
    y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=kv != h)  # (B, h/tp, T, hd)
    return self.wo(y.transpose(1, 2).reshape(B, T, -1))


def check_tp(model: nn.Module, tp: int) -> None:
    cfg = model.cfg
    if cfg.n_heads % tp or cfg.n_kv_heads % tp:
        raise ValueError(f"tp={tp} must divide n_heads ({cfg.n_heads}) and n_kv_heads ({cfg.n_kv_heads})")
    hidden = [cfg.mlp_hidden] + ([cfg.expert_hidden * cfg.n_shared_experts] if cfg.n_shared_experts else [])
    if any(h % tp for h in hidden):
        raise ValueError(f"tp={tp} must divide the MLP hidden sizes {hidden}")


def apply_tp(model: nn.Module, tp_mesh: DeviceMesh) -> None:
    """Shard every trunk block of ``model`` over ``tp_mesh`` (1-D) in place."""
    tp = tp_mesh.size()
    check_tp(model, tp)
    for block in model.trunk.layers:
        parallelize_module(block, tp_mesh, block_plan(block))
        attn = block.attn
        attn.tp_size, attn.tp_rank = tp, tp_mesh.get_local_rank()
        attn.forward = types.MethodType(tp_attention_forward, attn)
