"""Deterministic, disjoint seeds for training demonstrations and evaluation.

Episode ``k`` of a task gets a seed from ``(base, task id, k)`` alone, so a
collection or an evaluation is reproducible whatever the worker scheduling.
Training seeds live in ``[0, 1_000_000)`` and evaluation seeds in
``[1_000_000, 2_000_000)``: no evaluation episode ever starts from a state a
demonstration started from. ``zlib.crc32`` (not ``hash``) keeps the offsets
stable across processes and Python versions.
"""

from __future__ import annotations

import zlib

SEED_SPAN = 1_000_000
TRAIN_BASE = 0
EVAL_BASE = SEED_SPAN


def _seed(kind: str, origin: int, task_id: str, k: int, base: int) -> int:
    if not 0 <= k < SEED_SPAN:
        raise ValueError(f"episode index {k} outside [0, {SEED_SPAN})")
    offset = zlib.crc32(f"{kind}:{base}:{task_id}".encode()) % SEED_SPAN
    return origin + (offset + k) % SEED_SPAN


def train_seed(task_id: str, k: int, base: int = 0) -> int:
    """Seed of demonstration attempt ``k`` of ``task_id``; always < 1_000_000."""
    return _seed("train", TRAIN_BASE, task_id, k, base)


def eval_seed(task_id: str, k: int, base: int = 0) -> int:
    """Seed of evaluation episode ``k`` of ``task_id``; always in [1_000_000, 2_000_000)."""
    return _seed("eval", EVAL_BASE, task_id, k, base)


def is_train_seed(seed: int) -> bool:
    return 0 <= seed < SEED_SPAN
