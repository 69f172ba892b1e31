"""Where an observation becomes an action: the one policy runtime, over any number of control streams.

Every caller (``Policy`` for one machine, the server's sessions, evaluation's
lockstep envs, the MLP baseline) steps :class:`Stream` objects through a
:class:`Runtime`; one step is

1. **route**: ``RouteInstruction`` picks the model entry for (machine,
   instruction); a stream whose entry changes starts a new episode;
2. **normalize** the frame on arrival (the checkpoint's ``Normalize``; camera
   frames, ``{camera: (n, h, w, 3) uint8}``, through ``NormalizeImages``, the
   training chain without its augmentation) and append it to the stream's
   history of ``history`` frames (front-padded with the first frame, ``is_pad``
   marking the padding, as the training reader does; images alike);
3. **instruction**: its language summary, encoded once and cached;
4. **predict** when the chunk queue is due: one call of ``predict(groups)`` for
   every stream that needs a fresh chunk (grouped by entry: one trunk pass);
   it returns normalized chunks ``(n, C, A)``, which ``Unnormalize`` maps to
   machine units;
5. **execute** the queued chunks (:class:`ChunkQueue`): ``ensemble`` averages
   every stored chunk's prediction for this step with weights ``exp(-m * age)``,
   age 0 for the newest chunk (ACT's temporal ensembling; ACT weights the oldest
   most, we favour the newest so fast machines react sooner, ``m = 0`` is a
   plain mean); ``replan`` plays a chunk open loop for ``replan_every`` steps
   (cheaper; OpenVLA-OFT style).

A :class:`Stream` holds ``n`` streams stepped in lockstep with one clock, entry,
instruction and noise generator (``n = 1`` for a machine or a server session,
``n`` envs of one task in evaluation). :class:`ModelPredict` is ``predict``
for the generalist; the baseline passes its own. Callers validate their
observations first (``genba.model.policy.validate_obs``).
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from genba.data.transforms import Normalize, NormalizeImages, RouteInstruction, TokenizeInstruction, Unnormalize
from genba.model.config import EXECUTE_MODES

LANG_CACHE = 64  # instruction summaries kept per runtime (a server sees a handful of instructions)


@dataclass(frozen=True)
class Execution:
    """How queued chunks become actions: ``ensemble`` (weights exp(-m * age)) or ``replan`` every k steps."""

    execute: str = "ensemble"
    replan_every: int = 1
    ensemble_m: float = 0.1

    @classmethod
    def make(cls, execute: str, replan_every: int | None, ensemble_m: float, chunk: int) -> Execution:
        """Checked; ``replan_every`` defaults to half the chunk."""
        if execute not in EXECUTE_MODES:
            raise ValueError(f"execute {execute!r}: expected one of {EXECUTE_MODES}")
        k = replan_every if replan_every is not None else max(1, chunk // 2)
        if not 1 <= k <= chunk:
            raise ValueError(f"replan_every {k}: must be between 1 and the chunk length {chunk}")
        if ensemble_m < 0 or not math.isfinite(ensemble_m):
            raise ValueError(f"ensemble_m {ensemble_m}: must be a finite number >= 0")
        return cls(execute, k, ensemble_m)


class ChunkQueue:
    """Chunks ``(..., C, A)`` in machine units with their start steps; the action for step t from them."""

    def __init__(self, execution: Execution, chunk: int) -> None:
        self.execution = execution
        self.items: deque[tuple[int, np.ndarray]] = deque(maxlen=chunk)  # older chunks no longer cover t

    def due(self, t: int) -> bool:
        """Whether step t needs a fresh chunk."""
        ex = self.execution
        return ex.execute == "ensemble" or not self.items or t - self.items[-1][0] >= ex.replan_every

    def push(self, t: int, chunk: np.ndarray) -> None:
        self.items.append((t, chunk))

    def action(self, t: int) -> np.ndarray:
        """The action ``(..., A)`` float32 for step t (open loop, or the temporal ensemble)."""
        if self.execution.execute == "replan":
            start, chunk = self.items[-1]
            return chunk[..., t - start, :].copy()
        preds, weights = [], []
        for start, chunk in self.items:
            age = t - start
            if 0 <= age < chunk.shape[-2]:
                preds.append(chunk[..., age, :])
                weights.append(math.exp(-self.execution.ensemble_m * age))
        w = np.asarray(weights, dtype=np.float64)
        p = np.stack(preds)  # (K, ..., A)
        return (p * (w / w.sum()).reshape(-1, *([1] * (p.ndim - 1)))).sum(0).astype(np.float32)


@dataclass
class Stream:
    """``n`` control streams in lockstep (n = 1: one machine): clock, entry, history, chunk queue, noise."""

    queue: ChunkQueue
    seed: int
    history: deque = field(default_factory=deque)  # normalized frames (n, obs) on the runtime's device
    images: deque = field(default_factory=deque)  # normalized camera frames {camera: (n, h, w, 3)}, same clock
    entry: str | None = None  # the model entry serving it (the machine, or a task-scoped entry)
    instruction: str | None = None
    lang: torch.Tensor | None = None  # (1, S, D) language summary of ``instruction``
    step: int = 0
    generator: torch.Generator | None = None


@dataclass(frozen=True)
class Inputs:
    """One stream group's model inputs (normalized)."""

    entry: str
    instruction: str
    state: torch.Tensor  # (n, H, obs), oldest first, front-padded with the first frame
    is_pad: torch.Tensor  # (n, H)
    lang: torch.Tensor | None  # (n, S, D), or None without a language encoder
    generator: torch.Generator  # the group's noise (flow heads)
    images: Mapping[str, torch.Tensor] | None = None  # {camera: (n, H, h, w, 3)} normalized; None: no cameras


Predict = Callable[[Sequence[Inputs]], list[torch.Tensor]]  # groups -> normalized chunks (n, C, A) each


class Runtime:
    """Transforms, routes, instruction cache and one ``predict`` for any number of :class:`Stream` objects."""

    def __init__(self, predict: Predict, stats: Mapping[str, Any], entries: Iterable[str], *, history: int,
                 chunk: int, normalization: str = "mean_std", routes: RouteInstruction | None = None,
                 encode: Callable[[str], torch.Tensor] | None = None, device: torch.device | str = "cpu") -> None:
        self.predict, self.encode = predict, encode
        self.history, self.chunk, self.device = history, chunk, torch.device(device)
        self.route = routes if routes is not None else RouteInstruction()
        self.machines = sorted(set(entries) - set(self.route.entries))  # what callers name; entries are internal
        self.normalize = Normalize(stats, mode=normalization)
        self.unnormalize = Unnormalize(stats, mode=normalization)
        self.normalize_images = NormalizeImages(stats)
        self._pad_masks = [torch.arange(history, device=self.device) < pad for pad in range(history + 1)]
        self._lang: OrderedDict[str, torch.Tensor] = OrderedDict()

    def new_stream(self, execution: Execution, seed: int = 0) -> Stream:
        s = Stream(ChunkQueue(execution, self.chunk), seed)
        self.reset(s)
        return s

    def reset(self, s: Stream) -> None:
        """A new episode: forget history, entry and queued chunks; reseed the sampler."""
        s.history = deque(maxlen=self.history)
        s.images = deque(maxlen=self.history)
        s.queue = ChunkQueue(s.queue.execution, self.chunk)
        s.entry, s.instruction, s.lang, s.step = None, None, None, 0
        s.generator = torch.Generator(device=self.device).manual_seed(s.seed)

    def begin(self, s: Stream, machine: str, instruction: str) -> None:
        """A new episode of ``instruction`` on ``machine`` (evaluation starts its lockstep envs so)."""
        if machine not in self.machines:
            raise ValueError(f"embodiment {machine!r} is unknown to this checkpoint; it knows {self.machines}")
        self.reset(s)
        s.entry = self.route.entry(machine, instruction)
        self._instruct(s, instruction)

    def observe(self, s: Stream, machine: str, instruction: str, state: np.ndarray,
                images: Mapping[str, np.ndarray] | None = None) -> tuple[int, bool]:
        """Take one step's frames ``state`` (n, obs) and, for a machine with cameras, ``images``
        {camera: (n, h, w, 3) uint8}: (step t, whether the queue needs a fresh chunk at t)."""
        entry = self.route.entry(machine, instruction)
        if entry != s.entry:  # another machine (or task-scoped entry) on this stream: a new episode
            self.reset(s)
            s.entry = entry
        self._instruct(s, instruction)
        norm = self.normalize({"embodiment": entry, "observation.state": np.asarray(state, np.float32)})
        s.history.append(torch.from_numpy(norm["observation.state"]).to(self.device))
        if images:  # normalized on the device, as in training
            raw = {c: torch.from_numpy(np.ascontiguousarray(v)).to(self.device) for c, v in images.items()}
            s.images.append(self.normalize_images({"embodiment": entry, "images": raw})["images"])
        t, s.step = s.step, s.step + 1
        return t, s.queue.due(t)

    def inputs(self, s: Stream) -> Inputs:
        frames = list(s.history)
        pad = self.history - len(frames)
        state = torch.stack([frames[0]] * pad + frames, dim=1)  # (n, H, obs)
        n = state.shape[0]
        lang = None if s.lang is None else s.lang.expand(n, -1, -1)
        images = None
        if s.images:
            shots = list(s.images)
            shots = [shots[0]] * (self.history - len(shots)) + shots
            images = {c: torch.stack([f[c] for f in shots], dim=1) for c in shots[0]}  # (n, H, h, w, 3)
        return Inputs(s.entry, s.instruction, state, self._pad_masks[pad].expand(n, self.history), lang,
                      s.generator, images)

    def take(self, s: Stream, t: int, norm: torch.Tensor) -> np.ndarray:
        """Queue a predicted normalized chunk (n, C, A) from step t; returns it in machine units, float32."""
        out = self.unnormalize({"embodiment": s.entry, "action": norm.float().cpu().numpy()})
        chunk = np.asarray(out["action"], dtype=np.float32)
        s.queue.push(t, chunk)
        return chunk

    def step(self, streams: Sequence[Stream], frames: Sequence[tuple], *,
             whole: bool = False) -> list[np.ndarray]:
        """One step of every stream (see :func:`step`)."""
        return step([(self, s) for s in streams], frames, whole=whole)

    def _instruct(self, s: Stream, instruction: str) -> None:
        if instruction == s.instruction:
            return
        s.instruction = instruction
        if self.encode is None:
            return
        if instruction not in self._lang:
            self._lang[instruction] = self.encode(instruction)
            if len(self._lang) > LANG_CACHE:
                self._lang.popitem(last=False)
        self._lang.move_to_end(instruction)
        s.lang = self._lang[instruction]


def step(pairs: Sequence[tuple[Runtime, Stream]], frames: Sequence[tuple], *,
         whole: bool = False) -> list[np.ndarray]:
    """One step of each ``(runtime, stream)`` on ``(machine, instruction, state (n, obs)[, images])``, with one
    ``predict`` call for all streams that need a fresh chunk (the runtimes must share their model).

    Returns each stream's actions (n, A), or with ``whole`` a fresh chunk (n, C, A) for every stream
    (the server's answer; it is queued too).
    """
    ticks = [rt.observe(s, *f) for (rt, s), f in zip(pairs, frames)]
    todo = [i for i, (_, fresh) in enumerate(ticks) if fresh or whole]
    chunks: dict[int, np.ndarray] = {}
    if todo:
        norms = pairs[todo[0]][0].predict([pairs[i][0].inputs(pairs[i][1]) for i in todo])
        chunks = {i: pairs[i][0].take(pairs[i][1], ticks[i][0], norm) for i, norm in zip(todo, norms)}
    if whole:
        return [chunks[i].copy() for i in range(len(pairs))]
    return [s.queue.action(t) for (_, s), (t, _) in zip(pairs, ticks)]


# ---- the generalist's predict ------------------------------------------------------
class ModelPredict:
    """``predict`` for a ``Generalist``: one trunk pass for every group, each entry's head once
    (a flow head draws each group's noise from that group's generator)."""

    def __init__(self, model) -> None:
        self.model = model
        self._tokenize = TokenizeInstruction(model.cfg.max_lang_len)

    @torch.inference_mode()
    def encode(self, instruction: str) -> torch.Tensor:
        """The language summary (1, S, D) of ``instruction``."""
        device = next(self.model.parameters()).device
        sample = self._tokenize({"instruction": instruction})
        tokens = torch.as_tensor(np.asarray(sample["lang_tokens"]), device=device).long()[None]  # (1, L)
        mask = torch.as_tensor(np.asarray(sample["lang_mask"]), device=device).bool()[None]  # (1, L)
        return self.model.encode_language(tokens, mask)

    @torch.inference_mode()
    def __call__(self, groups: Sequence[Inputs]) -> list[torch.Tensor]:
        model, steps = self.model, self.model.cfg.flow_steps
        by_entry: dict[str, list[int]] = {}
        for i, g in enumerate(groups):
            by_entry.setdefault(g.entry, []).append(i)
        batch = {e: {"observation.state": _cat([groups[i].state for i in idx]),  # (B, H, obs)
                     "observation.state_is_pad": _cat([groups[i].is_pad for i in idx]),  # (B, H)
                     "lang_summary": _cat([groups[i].lang for i in idx])}  # (B, S, D)
                 for e, idx in by_entry.items()}
        for e, idx in by_entry.items():
            if groups[idx[0]].images is not None:  # {camera: (B, H, h, w, 3)}
                batch[e]["images"] = {c: _cat([groups[i].images[c] for i in idx]) for c in groups[idx[0]].images}
        readouts, _ = model.readouts(batch)
        out: list[torch.Tensor] = [None] * len(groups)  # type: ignore[list-item]
        for e, idx in by_entry.items():
            head, ro = model.heads[e], readouts[e]  # (B, R, D)
            sizes = [groups[i].state.shape[0] for i in idx]
            if model.cfg.head == "l1" or len(idx) == 1:  # deterministic, or one generator: one head call
                norm = head.sample(ro, steps, groups[idx[0]].generator)  # (B, C, A)
            else:
                norm = torch.cat([head.sample(r, steps, groups[i].generator) for r, i in zip(ro.split(sizes), idx)])
            norm = norm + model.linear_part(e, batch[e], norm.dtype)  # the head predicts the residual
            for i, part in zip(idx, norm.split(sizes)):
                out[i] = part
        return out


def _cat(tensors: list[torch.Tensor]) -> torch.Tensor:
    return tensors[0] if len(tensors) == 1 else torch.cat(tensors)


def model_runtime(model, stats: Mapping[str, Any], *, normalization: str = "mean_std",
                  routes: RouteInstruction | None = None, device: torch.device | str = "cpu") -> Runtime:
    """The runtime of a ``Generalist`` (already on ``device``) with the checkpoint's stats and routes."""
    mp = ModelPredict(model)
    return Runtime(mp, stats, model.specs, history=model.cfg.history, chunk=model.cfg.chunk,
                   normalization=normalization, routes=routes, encode=mp.encode, device=device)
