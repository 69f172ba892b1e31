"""Stop a training loop at the first non-finite loss or gradient norm.

One guard, applied by the project's one optimizer loop
(:func:`genba.train.loop.fit`: pretraining, ``genba finetune``, the per-task MLP
baseline) after ``backward()`` and gradient clipping, before
``optimizer.step()``. A NaN or inf
there means the next step would write it into the weights and every later
checkpoint (issue 19: one flipped byte in an optimizer shard resumed to
``loss nan`` and saved 46 all-NaN tensors with exit code 0); stopping before the
update keeps the weights, and so the last checkpoint, finite.

Under ``torch.distributed`` the losses differ per rank, so the verdict is
all-reduced: every rank raises together instead of one rank leaving the others
waiting in the next collective.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.distributed as dist


class NonFiniteError(RuntimeError):
    """A training step produced a non-finite loss or gradient norm; the step was not applied."""

    def __init__(self, message: str, *, step: int = 0, what: str = "") -> None:  # defaults: picklable
        super().__init__(message)
        self.step, self.what = step, what


def _value(x) -> float:
    return float(x.detach().float().item()) if isinstance(x, torch.Tensor) else float(x)


def check_step(step: int, loss, grad_norm, *, parts: Mapping[str, object] | None = None,
               where: str = "training") -> None:
    """Raise :class:`NonFiniteError` if ``loss`` or ``grad_norm`` (tensors or floats) is NaN or inf.

    ``step`` is the 1-based number of the step being taken (the one metrics
    would log); ``parts`` (e.g. per-embodiment losses) are named in the message
    when they are the non-finite ones; ``where`` prefixes it (``task reach-v3``).
    """
    loss_v, grad_v = _value(loss), _value(grad_norm)
    bad = [float(not math.isfinite(loss_v)), float(not math.isfinite(grad_v))]
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        device = loss.device if isinstance(loss, torch.Tensor) else torch.device("cpu")
        flags = torch.tensor(bad, dtype=torch.float32, device=device)
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        bad = flags.tolist()
    if not any(bad):
        return
    what = "loss" if bad[0] else "gradient norm"
    value = loss_v if bad[0] else grad_v
    if math.isfinite(value):
        shown = "not finite on another rank"
    else:
        culprits = [f"{k}={_value(v)}" for k, v in (parts or {}).items()
                    if isinstance(v, (int, float, torch.Tensor)) and not math.isfinite(_value(v))]
        shown = f"{value}" + (f" ({', '.join(culprits)})" if bad[0] and culprits else "")
    raise NonFiniteError(f"{where} stopped at step {step}: the {what} is {shown}; the step was not applied and no "
                         "checkpoint was written from it (check the data for NaN, inf or extreme values, or lower "
                         "the learning rate)", step=step, what=what)
