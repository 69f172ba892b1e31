"""Train the per-task baseline: one small MLP behavior-cloning policy per task.

What the generalist must beat (issue 3): one MLP per task, their parameters
summed to the generalist's total, trained for the same wall time on the same data.

- An MLP (:class:`genba.model.baseline.TaskMLP`) maps the last ``history``
  observations (the generalist's Normalize per embodiment and history padding)
  to an action chunk of ``chunk`` steps; L1 loss on normalized, unpadded actions.
- Sizing: one shared width found by search, then tasks one unit wider while
  that gets the sum closer to the target (typically within 0.1%).
- Every task gets ``minutes / ceil(tasks / processes)`` of wall time, trained
  one after the other in its process by the project's one loop
  (:func:`genba.train.loop.fit`: AdamW, warmup then cosine in *time*, so the
  schedule ends with the budget); ``processes=2`` matches two DDP ranks.
- The result is a baseline directory (:mod:`genba.model.baseline`), weights
  written first, marker last; :mod:`genba.eval.baselines` runs it.
"""

from __future__ import annotations

import json
import math
import os
import queue as queue_lib
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from genba.atomic import write_atomic
from genba.data.spec import EmbodimentSpec
from genba.data.stats import stats_to_json
from genba.data.transforms import Normalize, stats_by_embodiment
from genba.finite import NonFiniteError
from genba.model.baseline import FORMAT, KIND, MARKER, WEIGHTS, BaselineError, TaskMLP
from genba.train.loop import LoopConfig, RunLength, fit

_UNBOUNDED = 2**62  # "no step limit" for a run that only has a time budget

SpecOf = Callable[[str], EmbodimentSpec]  # task id -> the spec its env gives now


@dataclass(frozen=True)
class BaselineConfig:
    """How the baseline is sized and trained; the benchmark's flags map to these fields."""

    tasks: tuple[str, ...]
    target_params: int  # the generalist's total parameters
    minutes: float = 20.0  # wall budget of every process
    processes: int = 1
    history: int = 2
    chunk: int = 8
    depth: int = 3  # hidden layers per MLP
    dropout: float = 0.1
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup: float = 0.02  # fraction of each task's time
    min_lr_ratio: float = 0.05
    grad_clip: float = 1.0
    max_steps: int | None = None  # per task, stops before the time budget (tests, quick runs)
    normalization: str = "mean_std"
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.tasks:
            raise BaselineError("no tasks to train a baseline for")
        if self.target_params < 1 or self.minutes <= 0 or self.processes < 1:
            raise BaselineError("target_params, minutes and processes must be positive")
        if self.history < 1 or self.chunk < 1 or self.depth < 1 or self.batch_size < 1:
            raise BaselineError("history, chunk, depth and batch_size must be >= 1")


@dataclass(frozen=True)
class TaskEntry:
    """One task: where its frames are and its MLP's shape."""

    id: str
    embodiment: str
    sources: tuple[tuple[str, int], ...]  # (dataset root, task_index in it)
    en: str
    ja: str
    in_dim: int  # history * obs_dim
    out_dim: int  # chunk * action_dim
    width: int = 0


# ---- sizing ---------------------------------------------------------------------
def mlp_params(in_dim: int, out_dim: int, width: int, depth: int) -> int:
    """Exact parameter count of ``TaskMLP(in_dim, out_dim, width, depth)``."""
    first = in_dim * width + 3 * width  # weight, bias, LayerNorm weight and bias
    hidden = (depth - 1) * (width * width + 3 * width)
    return first + hidden + width * out_dim + out_dim


def match_widths(dims: Sequence[tuple[int, int]], target: int, depth: int) -> list[int]:
    """Widths (one per ``(in_dim, out_dim)``) whose MLPs sum to about ``target`` parameters."""
    def total(ws: Sequence[int]) -> int:
        return sum(mlp_params(i, o, w, depth) for (i, o), w in zip(dims, ws))

    lo, hi = 1, 1
    while total([hi] * len(dims)) < target:
        lo, hi = hi, hi * 2
    while hi - lo > 1:  # largest shared width not above the target
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if total([mid] * len(dims)) <= target else (lo, mid)
    widths = [lo] * len(dims)
    for k in range(len(dims)):  # one unit wider, task by task, while that gets closer
        bumped = widths[:k] + [lo + 1] + widths[k + 1:]
        if abs(total(bumped) - target) >= abs(total(widths) - target):
            break
        widths = bumped
    return widths


# ---- data -----------------------------------------------------------------------
def task_table(datasets: Sequence[Any], task_ids: Sequence[str], history: int, chunk: int,
               spec_of: SpecOf | None = None) -> list[TaskEntry]:
    """One entry per task id, with every (dataset, task_index) that holds its frames.

    ``spec_of`` (task id -> the spec its env gives now, e.g. from
    ``genba.envs.registry``) refuses data recorded with another layout.
    """
    found: dict[str, TaskEntry] = {}
    for ds in datasets:
        for t in ds.tasks:
            tid = t.get("id")
            if tid not in task_ids:
                continue
            spec, src = ds.spec, (str(ds.root), int(t["task_index"]))
            if spec_of is not None:
                _check_recorded_spec(ds.root, tid, spec, spec_of(tid))
            if tid in found:
                if found[tid].embodiment != spec.name:
                    raise BaselineError(f"task {tid!r} appears in datasets of embodiments "
                                        f"{found[tid].embodiment!r} and {spec.name!r}")
                found[tid] = replace(found[tid], sources=found[tid].sources + (src,))
            else:
                found[tid] = TaskEntry(tid, spec.name, (src,), t["en"], t["ja"], history * spec.obs_dim,
                                       chunk * spec.action_dim)
    missing = [t for t in task_ids if t not in found]
    if missing:
        have = sorted(t.get("id") for ds in datasets for t in ds.tasks)
        raise BaselineError(f"tasks {missing} are in none of the datasets (they hold {have})")
    return [found[t] for t in task_ids]


def _check_recorded_spec(root: Any, task_id: str, spec: EmbodimentSpec, now: EmbodimentSpec) -> None:
    """Refuse data whose observation/action layout differs from what the task's env gives now
    (a policy trained on it could not be evaluated; better to know before training)."""
    for what in ("obs_names", "action_names"):
        if getattr(now, what) != getattr(spec, what):
            raise BaselineError(f"dataset {root}: recorded {what} {list(getattr(spec, what))} but task {task_id!r} "
                                f"now gives {list(getattr(now, what))}; recollect the dataset")


def task_arrays(datasets: dict[str, Any], entry: TaskEntry, cfg: BaselineConfig,
                normalize: Normalize) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Normalized inputs (N, in_dim), targets (N, out_dim) and target weights (N, out_dim) of a task."""
    from genba.data.windows import WindowDataset

    xs, ys, ws = [], [], []
    for root, k in entry.sources:
        ds = datasets[root]
        frames = np.flatnonzero(ds.task_index == k)
        if len(frames) == 0:
            raise BaselineError(f"dataset {root}: no frames of task {entry.id!r} (task_index {k})")
        b = WindowDataset(ds, history=cfg.history, chunk=cfg.chunk).gather(frames)
        b = normalize(b)
        n = len(frames)
        xs.append(b["observation.state"].reshape(n, -1))
        ys.append(b["action"].reshape(n, -1))
        act_dim = b["action"].shape[-1]
        ws.append((~b["action_is_pad"]).float().repeat_interleave(act_dim, dim=1))  # (N, C*A)
    return torch.cat(xs).float(), torch.cat(ys).float(), torch.cat(ws)


# ---- training -------------------------------------------------------------------
def lr_factor(frac: float, cfg: BaselineConfig) -> float:
    """Linear warmup, then cosine down to ``min_lr_ratio``, over the fraction of the time budget spent."""
    if frac < cfg.warmup:
        return max(frac / cfg.warmup, 1e-3)
    p = min(1.0, (frac - cfg.warmup) / max(1e-9, 1 - cfg.warmup))
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * p))


def train_task(entry: TaskEntry, data: tuple[torch.Tensor, ...], cfg: BaselineConfig, seconds: float,
               seed: int, tick: Callable[[float, float, int], None] | None = None) -> tuple[TaskMLP, dict]:
    """Train one task's MLP for ``seconds`` of wall time (or ``max_steps``); returns it and its figures."""
    torch.manual_seed(seed)
    x, y, w = data
    model = TaskMLP(entry.in_dim, entry.out_dim, entry.width, cfg.depth, cfg.dropout)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.95))
    gen = torch.Generator().manual_seed(seed)
    max_steps = cfg.max_steps or math.inf
    smooth = _Smoothed(tick)

    def batch(step: int) -> tuple[tuple[torch.Tensor, ...], int]:
        idx = torch.randint(len(x), (min(cfg.batch_size, len(x)),), generator=gen)
        return (x[idx], y[idx], w[idx]), len(idx)

    def loss(b: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, dict]:
        xb, yb, wb = b
        err = (model(xb) - yb).abs() * wb  # (B, C*A) L1 on unpadded actions
        value = err.sum() / wb.sum().clamp(min=1)
        return value, {"loss": value.item()}

    def schedule(p) -> float:  # in time, so the schedule ends with the budget
        return cfg.lr * lr_factor(max(p.elapsed / p.seconds, p.step / max_steps), cfg)

    loop = LoopConfig(RunLength(cfg.max_steps or _UNBOUNDED, seconds, cfg.max_steps), grad_clip=cfg.grad_clip,
                      where=f"baseline task {entry.id!r}")
    res = fit(loop, model, opt, batch, loss, schedule, after_step=smooth.update)
    return model.eval(), {"steps": res.state.step, "seconds": round(res.seconds, 2), "final_loss": smooth.value,
                          "frames": len(x), "params": sum(p.numel() for p in model.parameters())}


class _Smoothed:
    """The loss's running average (what the progress bar and the figures show), ticked every 0.5 s."""

    def __init__(self, tick: Callable[[float, float, int], None] | None) -> None:
        self.tick, self.value = tick, float("nan")
        self.t0 = self.last = time.perf_counter()

    def update(self, step: int, metrics: dict) -> None:
        v = metrics["loss"]
        self.value = v if step == 1 else 0.98 * self.value + 0.02 * v
        if self.tick is not None and time.perf_counter() - self.last > 0.5:
            self.last = time.perf_counter()
            self.tick(self.last - self.t0, self.value, step)


def _train_group(cfg: BaselineConfig, entries: list[TaskEntry], seconds: float, stats: dict,
                 emit: Callable) -> None:
    """One process's share: open its datasets, train its tasks one after the other, emit results.

    ``stats`` come from the parent (all datasets pooled per embodiment), as saved with the weights."""
    from genba.data.dataset import open_dataset

    torch.set_num_threads(1)
    try:
        roots = sorted({root for e in entries for root, _ in e.sources})
        datasets = {root: open_dataset(root) for root in roots}
        normalize = Normalize(stats, mode=cfg.normalization)
        for e in entries:
            data = task_arrays(datasets, e, cfg, normalize)
            seed = cfg.seed + cfg.tasks.index(e.id)

            def tick(t: float, loss: float, step: int, tid: str = e.id) -> None:
                emit(("tick", tid, t, loss, step))

            model, figures = train_task(e, data, cfg, seconds, seed, tick)
            state = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
            emit(("done", e.id, state, figures))
    except NonFiniteError as e:  # a data problem, not a bug: one line, no traceback
        emit(("error", str(e)))
    except Exception:  # noqa: BLE001 - the parent re-raises it with the traceback
        emit(("error", traceback.format_exc()))
    emit(("exit",))


def _worker(cfg: BaselineConfig, entries: list[TaskEntry], seconds: float, stats: dict, queue) -> None:
    _train_group(cfg, entries, seconds, stats, queue.put)


def split_tasks(entries: list[TaskEntry], processes: int) -> list[list[TaskEntry]]:
    """Round-robin groups (at most ``processes``, none empty)."""
    k = min(processes, len(entries))
    return [entries[i::k] for i in range(k)]


def train_baseline(cfg: BaselineConfig, data_roots: Sequence[str], out: str | os.PathLike,
                   *, progress: bool = True, spec_of: SpecOf | None = None) -> dict[str, Any]:
    """Size, train and save the baseline into ``out``; returns its manifest (``baseline.json``).

    ``spec_of``: see :func:`task_table` (the train layer does not import the envs).
    """
    from genba.data.dataset import open_dataset

    t_start = time.perf_counter()
    datasets = [open_dataset(r) for r in data_roots]
    entries = task_table(datasets, cfg.tasks, cfg.history, cfg.chunk, spec_of)
    widths = match_widths([(e.in_dim, e.out_dim) for e in entries], cfg.target_params, cfg.depth)
    entries = [replace(e, width=w) for e, w in zip(entries, widths)]
    groups = split_tasks(entries, cfg.processes)
    seconds = cfg.minutes * 60 / max(len(g) for g in groups)
    stats = stats_by_embodiment(datasets)
    results = _run_groups(cfg, groups, seconds, stats, progress)
    specs = {ds.spec.name: ds.spec for ds in datasets}
    wall = time.perf_counter() - t_start
    return save_baseline(out, cfg, entries, results, specs, stats,
                         extra={"data": [str(r) for r in data_roots], "seconds_per_task": round(seconds, 2),
                                "wall_seconds": round(wall, 1)})


def _run_groups(cfg: BaselineConfig, groups: list[list[TaskEntry]], seconds: float, stats: dict,
                progress: bool) -> dict[str, tuple[dict, dict]]:
    """Train every group (in this process, or one spawned process each) under one progress bar."""
    import multiprocessing as mp

    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    results: dict[str, tuple[dict, dict]] = {}
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.fields[info]}"),
               TimeRemainingColumn())
    with Progress(*columns, disable=not progress) as bar:
        rows = {e.id: bar.add_task(e.id, total=seconds, info="waiting") for g in groups for e in g}

        def handle(msg: tuple) -> None:
            if msg[0] == "tick":
                _, tid, t, loss, step = msg
                bar.update(rows[tid], completed=t, info=f"step {step} loss {loss:.4f}")
            elif msg[0] == "done":
                _, tid, state, figures = msg
                results[tid] = (state, figures)
                bar.update(rows[tid], completed=seconds,
                           info=f"{figures['steps']} steps, loss {figures['final_loss']:.4f}")
            elif msg[0] == "error":
                raise BaselineError(f"baseline training failed in a worker:\n{msg[1]}")

        if len(groups) == 1:
            _train_group(cfg, groups[0], seconds, stats, handle)
        else:
            _spawn_groups(mp.get_context("spawn"), cfg, groups, seconds, stats, handle)
    return results


def _spawn_groups(ctx, cfg: BaselineConfig, groups: list[list[TaskEntry]], seconds: float, stats: dict,
                  handle: Callable[[tuple], None]) -> None:
    queue = ctx.Queue()  # workers set one thread each (_train_group)
    procs = [ctx.Process(target=_worker, args=(cfg, g, seconds, stats, queue), daemon=True) for g in groups]
    for p in procs:
        p.start()
    ok = False
    try:
        running = len(procs)
        while running:
            try:
                msg = queue.get(timeout=5)
            except queue_lib.Empty:  # check that nobody died silently
                dead = [p for p in procs if not p.is_alive() and p.exitcode != 0]
                if dead:
                    raise BaselineError(f"a baseline worker died (exit code {dead[0].exitcode})") from None
                continue
            if msg[0] == "exit":
                running -= 1
            else:
                handle(msg)
        ok = True
    finally:
        for p in procs:  # after an error the others would train on for minutes: stop them
            p.join(timeout=10 if ok else 0)
            if p.is_alive():
                p.terminate()


# ---- the baseline directory -------------------------------------------------------
def save_baseline(out: str | os.PathLike, cfg: BaselineConfig, entries: list[TaskEntry],
                  results: dict[str, tuple[dict, dict]], specs: dict[str, EmbodimentSpec], stats: dict,
                  extra: dict | None = None) -> dict[str, Any]:
    """Write ``model.safetensors`` then ``baseline.json`` (atomically, in that order); returns the manifest."""
    (out := Path(out)).mkdir(parents=True, exist_ok=True)
    missing = [e.id for e in entries if e.id not in results]
    if missing:
        raise BaselineError(f"no trained weights for tasks {missing}")
    tensors = {f"{e.id}/{k}": torch.from_numpy(np.ascontiguousarray(v))
               for e in entries for k, v in results[e.id][0].items()}
    write_atomic(out / WEIGHTS, lambda p: save_file(tensors, str(p), metadata={"format": FORMAT}))
    embs = sorted({e.embodiment for e in entries})
    manifest = {
        "format": FORMAT, "kind": KIND,
        "config": {**asdict(cfg), "tasks": list(cfg.tasks)},
        "tasks": [{**asdict(e), "sources": [list(s) for s in e.sources], **results[e.id][1]} for e in entries],
        "total_params": int(sum(t.numel() for t in tensors.values())),
        "specs": {n: specs[n].to_dict() for n in embs},
        "stats": {n: stats_to_json(stats[n]) for n in embs},
        "normalization": {"mode": cfg.normalization},
        **dict(extra or {}),
    }
    text = json.dumps(manifest, indent=1, ensure_ascii=False)
    write_atomic(out / MARKER, text)
    return manifest


