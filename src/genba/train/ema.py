"""Exponential moving average of the weights (Polyak averaging), the weights a run exports.

Why: behavior cloning of fast feedback loops needs precise actions, and the
last Adam steps still move the weights by about ``lr`` per step; the average
over the last ~``1 / (1 - decay)`` steps removes most of that step-to-step noise
(Diffusion Policy and openpi export EMA weights for the same reason). Training
keeps updating the raw weights; the bundle (``model.safetensors``) holds the
average, and the training state holds both, so ``--resume`` continues exactly.

Off by default (``TrainConfig.ema_decay = 0``): on the drives it showed no
clear gain at this project's run lengths (the measurement:
docs/concepts.md#weight-averaging-ema-built-off-by-default).

The decay warms up as ``min(decay, (1 + step) / (10 + step))`` so the average
does not remember the random initialization for thousands of steps.

The shadow tensors have the parameters' own types: plain tensors in a single
process or under DDP, DTensors (same sharding) under FSDP2/TP/EP, so the update
is local to each rank and the distributed checkpoint saves them like the model.
"""

from __future__ import annotations

import torch
from torch import nn

# segments that wrappers insert into parameter names but not into state-dict keys
_WRAPPER_SEGMENTS = ("_checkpoint_wrapped_module.", "_orig_mod.")


def state_key(name: str) -> str:
    """The model-state-dict key of parameter ``name`` (activation-checkpoint/compile wrappers removed)."""
    for seg in _WRAPPER_SEGMENTS:
        name = name.replace(seg, "")
    return name


class WeightEMA:
    """The moving average of ``model``'s trainable parameters."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema decay {decay}: must be in (0, 1)")
        self.decay = decay
        self._params = {state_key(n): p for n, p in model.named_parameters() if p.requires_grad}
        self.shadow = {n: p.detach().clone() for n, p in self._params.items()}

    def rate(self, step: int) -> float:
        """The decay applied after optimizer step ``step`` (1-based)."""
        return min(self.decay, (1.0 + step) / (10.0 + step))

    @torch.no_grad()
    def update(self, step: int) -> None:
        """Fold the current weights in: ``shadow += (1 - rate) (param - shadow)``."""
        w = 1.0 - self.rate(step)
        for name, p in self._params.items():
            self.shadow[name].lerp_(p.detach(), w)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The shadow tensors (sharded as the parameters are), for the distributed checkpoint."""
        return self.shadow

    def full_state(self, model_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``model_state`` (a full, unsharded state dict) with every parameter replaced by its average.

        Collective under FSDP/TP/EP (each shadow is gathered); ranks other than 0 pass ``{}`` and get ``{}``.
        """
        full = {}
        for name, t in self.shadow.items():
            full_t = t.full_tensor() if hasattr(t, "full_tensor") else t  # DTensor: gather (every rank)
            full[name] = full_t.detach().cpu()
        if not model_state:
            return {}
        missing = sorted(set(full) - set(model_state))
        if missing:
            raise KeyError(f"EMA parameters {missing[:3]} are not in the model state dict")
        return {**model_state, **full}
