"""The one optimizer loop: pretraining, ``genba finetune`` and the per-task MLP baseline all call :func:`fit`.

A step: learning rate from the caller's schedule, the caller's batch, forward
under autocast, backward, gradient clipping, the non-finite guard
(:mod:`genba.finite`, before the update so the weights stay finite), the
optimizer step, the ``after_step`` hook (weight EMA, progress ticks); then the
windowed metrics record every ``log_every`` steps and the checkpoint cadence.
What differs between the three callers (the model, the batches, the loss, the
schedule, what a checkpoint holds) is passed in; how long a run lasts is decided
here only, by :func:`stop_and_total`.

One time-budget rule: the run stops once ``seconds`` (counted from the clock's
origin, so setup and earlier sessions of a resumed run count too) minus a
reserve for the final checkpoint are spent, and the total step count the
schedule stretches over is re-estimated from the measured step rate after the
first :data:`MEASURE_AFTER` steps of a session. Under ``torch.distributed`` rank
0 decides for all (wall clocks differ slightly between ranks: one rank stopping
a step early would leave the others waiting in a collective).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from genba.device import autocast_dtype
from genba.finite import check_step

MEASURE_AFTER = 5  # steps of a session before its rate re-estimates the total (the first ones warm up)
RESERVE_S, RESERVE_FRAC = 5.0, 0.05  # time kept for the final checkpoint: min(5 s, 5% of the budget)


@dataclass(frozen=True)
class Dist:
    """This process's place in the job (rank 0 of 1 without ``torch.distributed``)."""

    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


@dataclass(frozen=True)
class RunLength:
    """How long a run lasts: ``steps``, or ``seconds`` of wall time.

    With ``seconds``, ``steps`` is only the first estimate of the total (the
    schedule's length until the rate is measured); ``max_steps`` caps the run
    even then (quick runs, tests).
    """

    steps: int
    seconds: float | None = None
    max_steps: int | None = None

    def reserve(self, final_save: bool) -> float:
        """Seconds kept for the final checkpoint (none without one)."""
        return min(RESERVE_S, RESERVE_FRAC * self.seconds) if final_save and self.seconds else 0.0


@dataclass(frozen=True)
class LoopConfig:
    """The loop's own settings; ``loss_keys`` are the metrics averaged into each record (same on every rank)."""

    length: RunLength
    grad_clip: float = 1.0  # 0: measure the norm, do not clip
    precision: str = "fp32"  # fp32 | bf16 (autocast)
    log_every: int = 0  # 0: no records
    ckpt_every: int = 0  # steps; 0: only the final checkpoint
    ckpt_every_minutes: float = 0.0
    loss_keys: tuple[str, ...] = ("loss",)
    where: str = "training"  # names the loop in a non-finite error
    mixed_meshes: bool = False  # TP/EP parameters on several meshes (see _clip)
    stop_at: int | None = None  # end the session after this step, as if killed there (tests, demos)


@dataclass
class LoopState:
    """What a resumed run needs besides weights and optimizer (the trainer saves it as trainer.json)."""

    step: int = 0
    total_steps: int = 0
    elapsed: float = 0.0  # training wall seconds over all sessions (time budget)

    def to_dict(self) -> dict:
        return {"step": self.step, "total_steps": self.total_steps, "elapsed": self.elapsed}


@dataclass(frozen=True)
class Progress:
    """Where the run is, for the learning-rate schedule."""

    step: int  # steps done (0-based index of the step about to run)
    total: int  # current estimate of the run's length
    elapsed: float  # seconds on the run's clock
    seconds: float | None  # the time budget, if any


@dataclass
class FitResult:
    state: LoopState
    history: list[dict] = field(default_factory=list)
    checkpoint: Path | None = None  # the last one saved
    samples: int = 0  # seen in this session, all ranks
    seconds: float = 0.0  # this session's loop wall time


def fit(cfg: LoopConfig, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
        batch: Callable[[int], tuple[Any, int]], loss: Callable[[Any], tuple[torch.Tensor, dict]],
        schedule: Callable[[Progress], float], *, state: LoopState | None = None, origin: float | None = None,
        world: Dist = Dist(), device: torch.device | None = None,
        after_step: Callable[[int, dict], None] | None = None, log: Callable[[dict], None] | None = None,
        save: Callable[[LoopState], Path] | None = None) -> FitResult:
    """Train ``model`` until ``cfg.length`` is spent; see the module docstring.

    ``batch(step) -> (batch, samples in it over all ranks)``; ``loss(batch) ->
    (loss, metrics)`` runs under autocast (``model`` is what gets clipped: the
    bare model, not a wrapper); ``schedule(progress) -> lr``. ``state`` is a
    resumed run's (default: step 0); ``origin`` is the ``perf_counter()`` its
    clock started at (default: now). ``save(state)`` writes a checkpoint on the
    cadence and once at the end; ``log(record)`` gets every metrics record.
    """
    state = state if state is not None else LoopState(total_steps=cfg.length.steps)
    clock = Clock(time.perf_counter() if origin is None else origin, state.elapsed, state.step)
    device = device or next(model.parameters()).device
    autocast, reserve = autocast_dtype(cfg.precision), cfg.length.reserve(save is not None)
    out, window = FitResult(state), _Window(cfg.loss_keys)
    saved_step, last_save = None, time.perf_counter()
    while True:
        elapsed = clock.elapsed()
        stop, state.total_steps = stop_and_total(cfg.length, state, elapsed, clock, world, reserve)
        if stop or state.step >= state.total_steps or (cfg.stop_at is not None and state.step >= cfg.stop_at):
            break
        lr = schedule(Progress(state.step, state.total_steps, elapsed, cfg.length.seconds))
        for g in optimizer.param_groups:
            g["lr"] = lr
        data, samples = batch(state.step)
        with torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
            value, metrics = loss(data)
        grad_norm = _update(cfg, model, optimizer, value, metrics, state.step + 1)
        state.step += 1
        if after_step is not None:
            after_step(state.step, metrics)
        state.elapsed = clock.elapsed()
        window.add(samples, metrics)
        if cfg.log_every and (state.step % cfg.log_every == 0 or state.step == state.total_steps):
            out.history.append(window.record(state, lr, grad_norm, world))
            if log is not None:
                log(out.history[-1])
        if save is not None and _ckpt_due(cfg, state.step, last_save, world):
            out.checkpoint, saved_step, last_save = save(state), state.step, time.perf_counter()
    if save is not None and saved_step != state.step:
        out.checkpoint = save(state)
    out.samples, out.seconds = window.total_samples, time.perf_counter() - clock.session_t0
    return out


def _update(cfg: LoopConfig, model, optimizer, loss: torch.Tensor, metrics: dict, step: int) -> float:
    """Backward, clip, guard, apply; returns the gradient norm before clipping."""
    loss.backward()
    grad_norm = _clip(model, cfg.grad_clip, mixed_meshes=cfg.mixed_meshes)
    check_step(step, loss, grad_norm, parts=metrics, where=cfg.where)  # before the update: weights stay finite
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm


@dataclass
class Clock:
    """The run's wall clock (what a time budget counts) and this session's (what the step rate is measured on)."""

    origin: float  # perf_counter() when the run's clock started (this session's setup counts)
    before: float  # seconds of earlier sessions
    steps0: int  # step this session started at
    session_t0: float = field(default_factory=time.perf_counter)

    def elapsed(self) -> float:
        return self.before + time.perf_counter() - self.origin


def stop_and_total(length: RunLength, state: LoopState, elapsed: float, clock: Clock, world: Dist,
                   reserve: float = 0.0) -> tuple[bool, int]:
    """(stop now?, total steps): the one time-budget rule (module docstring); rank 0 decides for all."""
    if length.seconds is None:
        return False, length.steps
    stop, total = elapsed >= length.seconds - reserve, state.total_steps
    done = state.step - clock.steps0
    if done >= MEASURE_AFTER:
        rate = done / max(1e-9, time.perf_counter() - clock.session_t0)
        total = max(state.step + 1, int(state.step + max(0.0, length.seconds - reserve - elapsed) * rate))
    if length.max_steps is not None:
        total = min(total, length.max_steps)
    if world.world > 1:
        flags = torch.tensor([float(stop), float(total)], dtype=torch.float64)
        dist.broadcast(flags, src=0)
        stop, total = bool(flags[0]), int(flags[1])
    return stop, total


def _ckpt_due(cfg: LoopConfig, step: int, last_time: float, world: Dist) -> bool:
    due = bool(cfg.ckpt_every and step % cfg.ckpt_every == 0)
    if cfg.ckpt_every_minutes and time.perf_counter() - last_time >= cfg.ckpt_every_minutes * 60:
        due = True
    if world.world > 1:  # wall clocks differ slightly between ranks: rank 0 decides
        flag = torch.tensor([float(due)])
        dist.broadcast(flag, src=0)
        due = bool(flag[0])
    return due


def _clip(model, max_norm: float, mixed_meshes: bool = False) -> float:
    if mixed_meshes:  # TP/EP/FSDP parameters live on different meshes: clip_grad_norm_ cannot stack them
        from genba.train.expert_parallel import grad_norm_

        return grad_norm_(model.parameters(), max_norm)
    params = [p for p in model.parameters() if p.grad is not None]
    if not params:
        return 0.0
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm > 0 else float("inf"))
    if hasattr(norm, "full_tensor"):  # FSDP2: a DTensor with a partial placement
        norm = norm.full_tensor()
    return float(norm)


class _Window:
    """Losses and throughput accumulated since the last record."""

    def __init__(self, keys: tuple[str, ...]) -> None:
        self.keys, self.total_samples = keys, 0
        self.reset()

    def reset(self) -> None:
        self.t0, self.samples, self.sums, self.counts = time.perf_counter(), 0, {}, {}

    def add(self, samples: int, metrics: dict) -> None:
        self.samples += samples
        self.total_samples += samples
        for k, v in metrics.items():
            if k.startswith("loss"):
                self.sums[k] = self.sums.get(k, 0.0) + float(v)
                self.counts[k] = self.counts.get(k, 0) + 1

    def record(self, state: LoopState, lr: float, grad_norm: float, world: Dist) -> dict:
        """One metrics line; losses averaged over the window's steps and over ranks."""
        vec = torch.tensor([[self.sums.get(k, 0.0), self.counts.get(k, 0)] for k in self.keys], dtype=torch.float64)
        if world.world > 1:
            dist.all_reduce(vec)
        dt = max(1e-9, time.perf_counter() - self.t0)
        rec = {"step": state.step, "lr": lr, "grad_norm": grad_norm, "samples_per_s": self.samples / dt,
               "elapsed_s": round(state.elapsed, 3), "total_steps": state.total_steps}
        for k, (s, n) in zip(self.keys, vec.tolist()):
            if n > 0:
                rec[k] = s / n
        self.reset()
        return rec
