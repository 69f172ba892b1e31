"""Low-rank adapters (LoRA) for the trunk's linear layers; our own ~100 lines, no ``peft``.

A wrapped layer computes ``y = x W^T + b + s * (x A^T) B^T`` with ``A`` (r, in)
and ``B`` (out, r), ``s = alpha / r`` (Hu et al. 2021). ``B`` starts at zero, so
a freshly adapted model computes exactly what the pretrained one did; ``A`` gets
a Kaiming-uniform start so the first gradient step into ``B`` is not zero.
Only ``A`` and ``B`` train; ``W`` and ``b`` are frozen.

:class:`LoRALinear` *is* an ``nn.Linear`` (same ``weight``/``bias`` objects,
same state-dict names, plus ``lora_a``/``lora_b``), so code that walks the
model keeps working. :func:`merged_state_dict` folds every adapter into its
weight and drops the adapter keys: the result loads into a plain model of the
same config, which is why an adapted checkpoint is an ordinary checkpoint that
serves without knowing LoRA existed.

Targets: the attention projections and dense SwiGLU layers of the trunk
(``wq``, ``wkv``, ``wo``, ``w_gate``, ``w_up``, ``w_down``). MoE experts are
stacked ``[E, d, h]`` parameters, not ``nn.Linear``; they and the routers stay
frozen under LoRA (an adapter per expert would multiply the adapter count by E).
Single-device model code, like the rest of ``genba.model``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

DEFAULT_TARGETS = ("wq", "wkv", "wo", "w_gate", "w_up", "w_down")


class LoRALinear(nn.Linear):
    """An ``nn.Linear`` with a frozen base and a trainable low-rank update."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float | None = None) -> None:
        if rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {rank}")
        nn.Module.__init__(self)  # reuse the base's tensors instead of allocating new ones
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight
        self.bias = base.bias
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)
        self.rank = rank
        self.scale = (alpha if alpha is not None else rank) / rank
        kw = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_a = nn.Parameter(torch.empty(rank, self.in_features, **kw))
        self.lora_b = nn.Parameter(torch.zeros(self.out_features, rank, **kw))
        self.merged = False
        if base.weight.device.type != "meta":
            self.reset_adapter()

    def reset_adapter(self) -> None:
        """A ~ Kaiming uniform, B = 0: the layer equals its base (LoRA's init)."""
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))
        nn.init.zeros_(self.lora_b)

    def delta(self) -> torch.Tensor:
        """The weight update ``s * B A``, (out, in)."""
        return (self.lora_b @ self.lora_a) * self.scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.weight, self.bias)
        if self.merged:
            return y
        return y + F.linear(F.linear(x, self.lora_a), self.lora_b) * self.scale  # (..., out)

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the update into ``weight`` (inference without the extra matmuls)."""
        if not self.merged:
            self.weight += self.delta().to(self.weight.dtype)
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Undo :meth:`merge` (up to float rounding), e.g. to continue training the adapter."""
        if self.merged:
            self.weight -= self.delta().to(self.weight.dtype)
            self.merged = False

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rank={self.rank}, scale={self.scale:g}"


def apply_lora(module: nn.Module, rank: int, alpha: float | None = None,
               targets: Iterable[str] = DEFAULT_TARGETS) -> list[str]:
    """Replace every ``nn.Linear`` child named in ``targets`` under ``module`` by a LoRALinear.

    Returns the qualified names replaced (relative to ``module``); raises if none
    matched, since an adapter run that adapts nothing would silently train only
    the heads.
    """
    targets = set(targets)
    replaced = []
    for parent_name, parent in list(module.named_modules()):
        for name, child in list(parent.named_children()):
            if name in targets and type(child) is nn.Linear:
                setattr(parent, name, LoRALinear(child, rank, alpha))
                replaced.append(f"{parent_name}.{name}" if parent_name else name)
    if not replaced:
        raise ValueError(f"apply_lora: no nn.Linear named {sorted(targets)} under {type(module).__name__}")
    return replaced


def lora_layers(module: nn.Module) -> list[tuple[str, LoRALinear]]:
    return [(n, m) for n, m in module.named_modules() if isinstance(m, LoRALinear)]


def lora_parameters(module: nn.Module) -> list[nn.Parameter]:
    """The adapters' ``A`` and ``B`` (what an optimizer should train)."""
    return [p for _, m in lora_layers(module) for p in (m.lora_a, m.lora_b)]


def merged_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """``module.state_dict()`` with every adapter folded into its weight and the adapter keys removed.

    Loads into the same architecture without adapters (``strict=True``); the
    module itself is left unchanged.
    """
    sd = {k: v.detach().clone() for k, v in module.state_dict().items()}
    for name, layer in lora_layers(module):
        prefix = f"{name}." if name else ""
        if not layer.merged:
            sd[prefix + "weight"] += layer.delta().detach().to(sd[prefix + "weight"].dtype)
        del sd[prefix + "lora_a"], sd[prefix + "lora_b"]
    return sd
