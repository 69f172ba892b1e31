"""The per-task baseline: one small MLP behavior-cloning policy per task.

What the generalist must beat (issue 3): one MLP per task, their parameters
summed to the generalist's total, trained for the same wall time on the same data.

- An MLP maps the last ``history`` observations (the generalist's Normalize per
  embodiment and history padding) to an action chunk of ``chunk`` steps; blocks
  Linear -> LayerNorm -> GELU -> Dropout; L1 loss on normalized, unpadded actions.
- Sizing: one shared width found by search, then tasks one unit wider while
  that gets the sum closer to the target (typically within 0.1%).
- Every task gets ``minutes / ceil(tasks / processes)`` of wall time, trained
  one after the other in its process (AdamW, warmup then cosine in *time*, so
  the schedule ends with the budget); ``processes=2`` matches two DDP ranks.
- A baseline directory: ``baseline.json`` (kind ``per-task-mlp``, tasks, sizes,
  specs, stats, figures) and ``model.safetensors`` (``<task id>/<parameter>``),
  weights written first, marker last.
- :class:`BaselinePolicy` has ``BatchedPolicy``'s ``reset(n, embodiment,
  instruction)`` / ``act(obs)``: the instruction (en, ja or the task id) picks
  the MLP; chunks run with the same temporal ensembling or re-planning.
"""

from __future__ import annotations

import json
import math
import os
import queue as queue_lib
import time
import traceback
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from genba.eval.chunking import ChunkExecutor
from genba.data.spec import EmbodimentSpec
from genba.data.stats import stats_from_json, stats_to_json
from genba.data.transforms import Normalize, Unnormalize, stats_by_embodiment
from genba.finite import NonFiniteError, check_step

KIND = "per-task-mlp"
FORMAT = "genba-baseline/1"
MARKER = "baseline.json"
WEIGHTS = "model.safetensors"


class BaselineError(ValueError):
    """A baseline that cannot be built, trained or loaded; the message names the input."""


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


# ---- the model and its size ---------------------------------------------------
class TaskMLP(nn.Module):
    """(B, in_dim) -> (B, out_dim): ``depth`` blocks of Linear, LayerNorm, GELU, Dropout, then a Linear."""

    def __init__(self, in_dim: int, out_dim: int, width: int, depth: int, dropout: float = 0.0) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        d = in_dim
        for _ in range(depth):
            layers += [nn.Linear(d, width), nn.LayerNorm(width), nn.GELU(), nn.Dropout(dropout)]
            d = width
        layers.append(nn.Linear(d, out_dim))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


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
def task_table(datasets: Sequence[Any], task_ids: Sequence[str], history: int, chunk: int) -> list[TaskEntry]:
    """One entry per task id, with every (dataset, task_index) that holds its frames."""
    found: dict[str, TaskEntry] = {}
    for ds in datasets:
        for t in ds.tasks:
            tid = t.get("id")
            if tid not in task_ids:
                continue
            spec, src = ds.spec, (str(ds.root), int(t["task_index"]))
            _check_recorded_spec(ds.root, tid, spec)
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


def _check_recorded_spec(root: Any, task_id: str, spec: EmbodimentSpec) -> None:
    """Refuse data whose observation/action layout differs from what the task's env gives now
    (a policy trained on it could not be evaluated; better to know before training)."""
    from genba.envs.registry import get_task

    now = get_task(task_id).spec
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
    step, loss_avg, t0 = 0, float("nan"), time.perf_counter()
    last_tick, max_steps = t0, cfg.max_steps or math.inf
    while (elapsed := time.perf_counter() - t0) < seconds and step < max_steps:
        frac = max(elapsed / seconds, step / max_steps)
        for g in opt.param_groups:
            g["lr"] = cfg.lr * lr_factor(frac, cfg)
        idx = torch.randint(len(x), (min(cfg.batch_size, len(x)),), generator=gen)
        err = (model(x[idx]) - y[idx]).abs() * w[idx]  # (B, C*A) L1 on unpadded actions
        loss = err.sum() / w[idx].sum().clamp(min=1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        check_step(step + 1, loss, grad_norm, where=f"baseline task {entry.id!r}")  # before the update
        opt.step()
        step += 1
        loss_avg = loss.item() if step == 1 else 0.98 * loss_avg + 0.02 * loss.item()
        if tick is not None and time.perf_counter() - last_tick > 0.5:
            last_tick = time.perf_counter()
            tick(last_tick - t0, loss_avg, step)
    spent = time.perf_counter() - t0
    return model.eval(), {"steps": step, "seconds": round(spent, 2), "final_loss": loss_avg,
                          "frames": len(x), "params": sum(p.numel() for p in model.parameters())}


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
                   *, progress: bool = True) -> dict[str, Any]:
    """Size, train and save the baseline into ``out``; returns its manifest (``baseline.json``)."""
    from genba.data.dataset import open_dataset

    t_start = time.perf_counter()
    datasets = [open_dataset(r) for r in data_roots]
    entries = task_table(datasets, cfg.tasks, cfg.history, cfg.chunk)
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
    _atomic(out / WEIGHTS, lambda p: save_file(tensors, str(p), metadata={"format": FORMAT}))
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
    _atomic(out / MARKER, lambda p: p.write_text(text, encoding="utf-8"))
    return manifest


def _atomic(path: Path, write: Callable[[Path], Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def is_baseline(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a baseline directory (holds ``baseline.json``)."""
    return (Path(path) / MARKER).is_file()


def read_baseline_manifest(directory: str | os.PathLike) -> dict[str, Any]:
    """``baseline.json`` of a baseline directory, checked for kind and format."""
    d = Path(directory)
    try:
        manifest = json.loads((d / MARKER).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BaselineError(f"{d / MARKER}: cannot read the baseline marker ({e})") from None
    if manifest.get("kind") != KIND or manifest.get("format") != FORMAT:
        raise BaselineError(f"{d / MARKER}: kind {manifest.get('kind')!r} / format {manifest.get('format')!r}, "
                            f"expected {KIND!r} / {FORMAT!r}")
    return manifest


def check_baseline_tasks(directory: str | os.PathLike, task_ids: Sequence[str]) -> None:
    """Refuse tasks the baseline has no MLP for (``genba eval`` checks before spawning workers)."""
    have = {t["id"] for t in read_baseline_manifest(directory)["tasks"]}
    missing = [t for t in task_ids if t not in have]
    if missing:
        raise BaselineError(f"baseline {directory} has no MLP for tasks {missing} (it has {sorted(have)}); "
                            "drop them from --tasks")


def load_baseline(directory: str | os.PathLike) -> tuple[dict[str, TaskMLP], dict[str, Any]]:
    """``({task id: TaskMLP in eval mode}, manifest)`` of a baseline directory."""
    manifest = read_baseline_manifest(d := Path(directory))
    try:
        tensors = load_file(str(d / WEIGHTS))
    except Exception as e:  # noqa: BLE001 - safetensors raises several types for bad files
        raise BaselineError(f"{d / WEIGHTS}: cannot read the weights ({e})") from None
    depth, mlps = int(manifest["config"]["depth"]), {}
    for t in manifest["tasks"]:
        mlp = TaskMLP(t["in_dim"], t["out_dim"], t["width"], depth)
        own = {k[len(t["id"]) + 1:]: v for k, v in tensors.items() if k.startswith(t["id"] + "/")}
        try:
            mlp.load_state_dict(own, strict=True)
        except RuntimeError as e:
            raise BaselineError(f"{d / WEIGHTS}: weights of task {t['id']!r} do not fit its MLP: {e}") from None
        mlps[t["id"]] = mlp.eval()
    return mlps, manifest


# ---- the policy -------------------------------------------------------------------
class BaselinePolicy(ChunkExecutor):
    """N lockstep envs of one task, its MLP called once per step for all of them (BatchedPolicy's interface)."""

    def __init__(self, mlps: dict[str, TaskMLP], manifest: dict[str, Any], *, execute: str = "ensemble",
                 replan_every: int | None = None, ensemble_m: float = 0.1) -> None:
        if execute not in ("ensemble", "replan"):
            raise ValueError(f"execute {execute!r}: expected 'ensemble' or 'replan'")
        self.mlps, self.manifest = mlps, manifest
        self.history, self.chunk = int(manifest["config"]["history"]), int(manifest["config"]["chunk"])
        self.execute, self.ensemble_m = execute, ensemble_m
        self.replan_every = replan_every if replan_every is not None else max(1, self.chunk // 2)
        stats = {n: stats_from_json(s, source=f"{MARKER} stats[{n!r}]") for n, s in manifest["stats"].items()}
        mode = manifest.get("normalization", {}).get("mode", "mean_std")
        self._normalize, self._unnormalize = Normalize(stats, mode=mode), Unnormalize(stats, mode=mode)
        self._by_text = {(t["embodiment"], key): t["id"] for t in manifest["tasks"]
                         for key in (t["id"], t["en"], t["ja"])}

    def reset(self, n: int, embodiment: str, instruction: str) -> None:
        """Start N episodes of the task ``instruction`` (en, ja or its id) names on ``embodiment``."""
        tid = self._by_text.get((embodiment, instruction))
        if tid is None:
            known = sorted(t["id"] for t in self.manifest["tasks"] if t["embodiment"] == embodiment)
            raise BaselineError(f"instruction {instruction!r} names no task of embodiment {embodiment!r} in this "
                                f"baseline (its tasks there: {known or 'none'})")
        self.n, self.embodiment, self.task, self.t = n, embodiment, tid, 0
        self._frames: list[np.ndarray] = []  # per step (N, obs)
        self._chunks: list[tuple[int, np.ndarray]] = []  # (start step, (N, C, A))

    @torch.inference_mode()
    def _predict(self) -> np.ndarray:
        H = self.history
        frames = self._frames[-H:]
        hist = np.stack([frames[0]] * (H - len(frames)) + frames, axis=1)  # (N, H, obs), oldest first
        norm = self._normalize({"embodiment": self.embodiment, "observation.state": hist})["observation.state"]
        x = torch.as_tensor(np.asarray(norm, np.float32)).reshape(self.n, -1)  # (N, H*obs)
        out = self.mlps[self.task](x).reshape(self.n, self.chunk, -1).numpy()  # (N, C, A)
        act = self._unnormalize({"embodiment": self.embodiment, "action": out})["action"]
        return np.asarray(act, dtype=np.float32)


_POLICIES: dict[Any, BaselinePolicy] = {}  # per worker process


def load_baseline_policy(directory: str | os.PathLike, execute: str = "ensemble",
                         replan_every: int | None = None) -> BaselinePolicy:
    """The baseline at ``directory`` as a :class:`BaselinePolicy` (cached per process)."""
    key = (str(directory), execute, replan_every)
    if key not in _POLICIES:
        mlps, manifest = load_baseline(directory)
        _POLICIES[key] = BaselinePolicy(mlps, manifest, execute=execute, replan_every=replan_every)
    return _POLICIES[key]
