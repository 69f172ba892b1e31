"""Device and dtype, decided once for the whole process.

Every layer asks here; nothing else names a device. ``GENBA_DEVICE`` overrides
(e.g. ``cpu``, ``cuda``, ``cuda:1``, ``mps``); otherwise the first available
accelerator wins, else the CPU.
"""

from __future__ import annotations

import os
from functools import cache

import torch


@cache
def default_device() -> torch.device:
    env = os.environ.get("GENBA_DEVICE")
    if env:
        return torch.device(env)
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def autocast_dtype(precision: str) -> torch.dtype | None:
    """Map a precision name to the autocast dtype (None = full fp32)."""
    table = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
    if precision not in table:
        raise ValueError(f"precision {precision!r}: expected one of {sorted(table)}")
    return table[precision]


def distributed_backend(device: torch.device) -> str:
    """nccl on GPUs, gloo on the CPU."""
    return "nccl" if device.type == "cuda" else "gloo"
