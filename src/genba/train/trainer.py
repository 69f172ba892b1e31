"""Train the generalist on mixed-embodiment demonstrations; single process or torchrun.

``train(cfg, data_dirs, run_dir)`` is the whole job: ``build_*`` helpers set up
the datasets (through a ``read_table`` hook the governance layer supplies), the
model (meta device, then ``init_weights`` under the fixed seed), the wrapping
(``parallelize``) and the optimizer; then a short loop runs AdamW with warmup +
cosine decay, gradient clipping and optional bf16 autocast, logging and
checkpointing atomically as it goes. With ``ema_decay`` set, the exported
weights are the moving average of the trained ones (:mod:`genba.train.ema`).

Batches: the global batch of step ``s`` is draws ``[s*B, (s+1)*B)`` of the
seeded mixed sampler (a pure function of the position, so a resumed run draws
exactly what the killed one would have), rank ``r`` of ``W`` takes every
``W``-th of them. The union over ranks equals the single-process batch, which
is why a 2-rank run tracks a 1-rank run.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.distributed as dist

from genba.data.dataset import open_dataset
from genba.data.windows import MixedDataset, WindowDataset, mixed_sampler
from genba.data.spec import diff_specs
from genba.data.transforms import Normalize, TokenizeInstruction, compose
from genba.device import autocast_dtype, default_device, distributed_backend
from genba.finite import check_step
from genba.model.bundle import save_bundle
from genba.model.config import ModelConfig, get_preset
from genba.model.generalist import Generalist
from genba.train import checkpoint as ckpt
from genba.train import rundir
from genba.train.config import TrainConfig, TrainConfigError
from genba.train.ema import WeightEMA
from genba.train.monitor import Monitor
from genba.train.parallelize import ParallelPlan, build_mesh, data_rank, parallelize

_SAMPLER_SPAN = 2**62  # the sampler is indexed by position; "infinite" for a time-budgeted run


# ---- data --------------------------------------------------------------------------
@dataclass
class TrainData:
    """Opened datasets and what the model and checkpoint need from them."""

    datasets: list  # genba.data.dataset.Dataset, one or more per embodiment
    mixed: MixedDataset
    specs: dict  # embodiment -> EmbodimentSpec
    stats: dict  # embodiment -> stats (merged when several datasets share an embodiment)
    normalize: Normalize
    tokenize: TokenizeInstruction
    _tokens: dict = field(default_factory=dict, repr=False)

    @property
    def transform(self) -> Callable[[dict], dict]:
        """The per-sample chain (what serving runs): normalize, then tokenize."""
        return compose(self.normalize, self.tokenize)

    def tokens(self, text: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokenized instruction, cached: a dataset has a handful of distinct instructions."""
        if text not in self._tokens:
            t = self.tokenize({"instruction": text})
            self._tokens[text] = (t["lang_tokens"], t["lang_mask"])
        return self._tokens[text]

    def lineage(self) -> list[dict[str, Any]]:
        return [{"root": str(ds.root), "embodiment": ds.embodiment, "episodes": ds.num_episodes,
                 "frames": ds.num_frames, "files": [str(p) for p in ds.files]} for ds in self.datasets]


def build_datasets(cfg: TrainConfig, data_dirs: Sequence[str | os.PathLike], *, weights: Sequence[float] | None = None,
                   read_table: Callable | None = None, model_cfg: ModelConfig | None = None) -> TrainData:
    """Open every dataset (via ``read_table``), window it, mix it with ``weights``.

    ``read_table`` is the governance seam: every parquet read goes through it.
    """
    if not data_dirs:
        raise TrainConfigError("no datasets given (--data DIR[,DIR...])")
    if weights is not None and len(weights) != len(data_dirs):
        raise TrainConfigError(f"{len(weights)} weights for {len(data_dirs)} datasets: give one weight per --data dir")
    model_cfg = model_cfg or get_preset(cfg.model)
    datasets = [open_dataset(d, read_table=read_table) for d in data_dirs]
    specs: dict = {}
    first: dict = {}  # embodiment -> the dataset its spec came from
    for ds in datasets:
        if ds.embodiment in specs and specs[ds.embodiment] != ds.spec:
            raise TrainConfigError(f"dataset {ds.root} has embodiment {ds.embodiment!r} with a spec that differs "
                                   f"from that of {first[ds.embodiment].root} (its value vs this one's): "
                                   f"{'; '.join(diff_specs(specs[ds.embodiment], ds.spec))}; a changed "
                                   "machine is a new embodiment: give its spec another name")
        specs[ds.embodiment] = ds.spec
        first.setdefault(ds.embodiment, ds)
    stats = {emb: merge_stats([ds.stats for ds in datasets if ds.embodiment == emb]) for emb in specs}
    parts = [WindowDataset(ds, history=model_cfg.history, chunk=model_cfg.chunk, lang=cfg.lang, seed=cfg.seed)
             for ds in datasets]
    return TrainData(datasets, MixedDataset(parts, weights), specs, stats, Normalize(stats),
                     TokenizeInstruction(model_cfg.max_lang_len))


def make_batch(data: TrainData, indices: np.ndarray, device: torch.device) -> dict[str, dict[str, torch.Tensor]]:
    """``{embodiment: {key: (B_e, ...)}}`` for global sample indices, on ``device``.

    Same result as ``collate([transform(mixed[i]) for i in indices])`` (a test
    checks it), but one gather per part and one transform call per embodiment.
    """
    part_of = np.searchsorted(data.mixed.offsets, indices, side="right") - 1
    groups: dict[str, dict[str, Any]] = {}
    for p in dict.fromkeys(part_of.tolist()):  # first-seen order, like collate
        part = data.mixed.parts[p]
        raw = part.gather(indices[part_of == p] - data.mixed.offsets[p])
        groups.setdefault(part.embodiment, []).append(raw)
    out = {}
    for emb, raws in groups.items():
        raw = raws[0] if len(raws) == 1 else _concat(raws)
        norm = data.normalize({"embodiment": emb, "observation.state": raw["observation.state"],
                               "action": raw["action"]})  # the whole group at once
        toks = [data.tokens(s) for s in raw["instruction"]]
        group = {"observation.state": norm["observation.state"],
                 "observation.state_is_pad": raw["observation.state_is_pad"],
                 "action": norm["action"], "action_is_pad": raw["action_is_pad"],
                 "lang_tokens": torch.stack([t for t, _ in toks]), "lang_mask": torch.stack([m for _, m in toks])}
        out[emb] = {k: v.to(device, non_blocking=True) for k, v in group.items()}
    return out


def _concat(raws: list[dict]) -> dict:
    out = {}
    for k in raws[0]:
        vals = [r[k] for r in raws]
        if isinstance(vals[0], torch.Tensor):
            out[k] = torch.cat(vals)
        elif isinstance(vals[0], list):
            out[k] = [x for v in vals for x in v]
        else:
            out[k] = vals[0]
    return out


def merge_stats(parts: list[dict]) -> dict:
    """Stats of several datasets of one embodiment pooled as if they were one.

    Mean and std exactly (count-weighted moments), min/max exactly, quantiles
    as the count-weighted mean of the parts' quantiles (LeRobot's
    ``aggregate_stats`` approximation).
    """
    if len(parts) == 1:
        return parts[0]
    out = {}
    for feat in parts[0]:
        n = np.array([float(np.asarray(p[feat]["count"]).reshape(-1)[0]) for p in parts])
        w = (n / n.sum())[:, None]
        mean = np.stack([np.asarray(p[feat]["mean"], np.float64) for p in parts])
        var = np.stack([np.asarray(p[feat]["std"], np.float64) ** 2 for p in parts])
        pooled = (w * mean).sum(0)
        d = {"mean": pooled, "std": np.sqrt((w * (var + (mean - pooled) ** 2)).sum(0)),
             "min": np.min([p[feat]["min"] for p in parts], axis=0),
             "max": np.max([p[feat]["max"] for p in parts], axis=0),
             "count": np.array([int(n.sum())], dtype=np.int64)}
        for key in parts[0][feat]:
            if key not in d:
                d[key] = (w * np.stack([np.asarray(p[feat][key], np.float64) for p in parts])).sum(0)
        out[feat] = d
    return out


# ---- model and optimizer ------------------------------------------------------------
def build_model(model_cfg: ModelConfig, specs: dict, device: torch.device, seed: int) -> Generalist:
    """Build on ``meta``, materialize on ``device``, init deterministically from ``seed``.

    Every rank materializes the full model with the same seed before any
    sharding, so a sharded run starts from the very weights a single process does.
    """
    with torch.device("meta"):
        model = Generalist(model_cfg, specs)
    model.to_empty(device=device)
    torch.manual_seed(seed)
    model.init_weights()
    return model.train()


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW; no weight decay on vectors (norm gains, biases, pad/embodiment tokens)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    rest = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": rest, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas)


def lr_at(step: int, cfg: TrainConfig, total_steps: int) -> float:
    """Linear warmup to ``cfg.lr``, then cosine decay to ``cfg.lr * min_lr_ratio`` at ``total_steps``."""
    warm = min(cfg.warmup_steps, max(1, total_steps // 10)) if cfg.warmup_steps else 0
    if step < warm:
        return cfg.lr * (step + 1) / warm
    frac = min(1.0, (step - warm) / max(1, total_steps - warm))
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + (cfg.lr - floor) * 0.5 * (1.0 + math.cos(math.pi * frac))


# ---- processes ------------------------------------------------------------------------
@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(cfg: TrainConfig) -> tuple[Dist, torch.device]:
    """Join the torchrun group (gloo on CPU, nccl on GPUs) when ``cfg.dist`` asks for it."""
    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if cfg.dist == "none":
        if launched:
            raise TrainConfigError("launched with several processes but --dist none: pass --dist ddp or --dist fsdp")
        return Dist(), default_device()
    if "RANK" not in os.environ:
        raise TrainConfigError(f"--dist {cfg.dist} needs a torchrun launch "
                               "(torchrun --nproc_per_node N -m genba.cli train ...)")
    if torch.cuda.is_available() and "GENBA_DEVICE" not in os.environ:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))  # before default_device() caches
    device = default_device()
    if not dist.is_initialized():
        dist.init_process_group(backend=distributed_backend(device))
    return Dist(dist.get_rank(), dist.get_world_size()), device


# ---- the loop -----------------------------------------------------------------------
@dataclass
class TrainResult:
    run_dir: Path
    checkpoint: Path | None
    step: int
    loss: float
    samples_per_s: float
    history: list[dict] = field(default_factory=list)


@dataclass
class _State:
    """What a resumed run needs besides weights and optimizer (saved as trainer.json)."""

    step: int = 0
    total_steps: int = 0
    elapsed: float = 0.0  # training wall seconds over all sessions (time budget)

    def to_dict(self) -> dict:
        return {"step": self.step, "total_steps": self.total_steps, "elapsed": self.elapsed}


def train(cfg: TrainConfig, data_dirs: Sequence[str | os.PathLike], run_dir: str | os.PathLike, *,
          weights: Sequence[float] | None = None, resume: bool = False, overwrite: bool = False,
          read_table: Callable | None = None, lineage: dict | Callable[[], dict] | None = None,
          stop_at: int | None = None, progress: bool = True) -> TrainResult:
    """Train ``cfg`` on ``data_dirs`` into ``run_dir``; see the module docstring.

    ``run_dir`` is locked for the run (a second run into it fails at once); if
    it already holds a run, ``resume`` continues it and ``overwrite`` starts it
    over (:mod:`genba.train.rundir`). ``lineage`` (datasets' manifests, audit
    entries...) is merged into the checkpoint's lineage; it may be a callable,
    evaluated once the datasets are open (the governed reader knows what it
    authorized only then). ``stop_at`` ends this session after that step with a
    checkpoint, as if killed there (tests, demos).
    """
    t0 = time.perf_counter()
    world, device = init_distributed(cfg)
    with rundir.claim(run_dir, resume=resume, overwrite=overwrite, main=world.main) as run_dir:
        return _train(cfg, data_dirs, run_dir, world, device, t0, weights=weights, resume=resume,
                      read_table=read_table, lineage=lineage, stop_at=stop_at, progress=progress)


def _train(cfg: TrainConfig, data_dirs, run_dir: Path, world: Dist, device: torch.device, t0: float, *, weights,
           resume: bool, read_table, lineage, stop_at: int | None, progress: bool) -> TrainResult:
    """The run itself, with ``run_dir`` held."""
    model_cfg = get_preset(cfg.model)
    if cfg.batch_size % world.world:
        raise TrainConfigError(f"batch_size {cfg.batch_size} is not divisible by the {world.world} processes")
    data = build_datasets(cfg, data_dirs, weights=weights, read_table=read_table, model_cfg=model_cfg)
    model = build_model(model_cfg, data.specs, device, cfg.seed)
    plan = ParallelPlan(cfg.dist, cfg.activation_checkpointing, cfg.compile, tp=cfg.tp, ep=cfg.ep)
    module = parallelize(model, plan, build_mesh(device))
    dp_rank, dp_size = data_rank(world.rank, world.world, plan)
    optimizer = build_optimizer(model, cfg)
    ema = WeightEMA(model, cfg.ema_decay) if cfg.ema_decay else None
    state = _State(total_steps=cfg.steps)
    if world.main:
        run_dir.mkdir(parents=True, exist_ok=True)
    start = _maybe_resume(run_dir, cfg, model, optimizer, state, resume, world, ema)
    if world.main and not resume:
        _write_run_config(run_dir, cfg, data_dirs, weights)
    # flow-head noise: distinct per rank; a resumed rank continues its saved generator exactly
    torch.manual_seed(cfg.seed * 1000 + world.rank + 7919 * state.step)
    if start is not None and start[1] is not None:
        ckpt.set_rng_state(start[1])

    lineage_full = {"datasets": data.lineage(), "training": {"run_dir": str(run_dir), "train_config": cfg.to_dict(),
                                                               "world_size": world.world},
                    **((lineage() if callable(lineage) else lineage) or {})}

    def write_bundle(directory: Path, full_sd: dict) -> None:
        _save_weights(directory, model_cfg, data, full_sd, cfg, lineage_full)

    def save(step: int) -> Path:
        return ckpt.save_checkpoint(run_dir, step, model, optimizer, state.to_dict(), write_bundle, cfg.keep_last,
                                    extra=_ema_extra(ema), export=ema.full_state if ema else None)

    monitor = Monitor(run_dir, enabled=world.main, resume_step=state.step, total_steps=state.total_steps,
                      progress=progress)
    autocast = autocast_dtype(cfg.precision)
    sampler = mixed_sampler(data.mixed, _SAMPLER_SPAN, seed=cfg.seed)
    history: list[dict] = []
    last_ckpt, last_ckpt_time, session_t0 = None, time.perf_counter(), time.perf_counter()
    elapsed0, steps0 = state.elapsed, state.step  # this session's setup time counts against the budget too
    window = _Window()
    try:
        while True:
            stop, total = _plan(cfg, state, elapsed0 + time.perf_counter() - t0, steps0, session_t0, world)
            state.total_steps = total
            if stop or state.step >= total or (stop_at is not None and state.step >= stop_at):
                break
            lr = lr_at(state.step, cfg, total)
            for g in optimizer.param_groups:
                g["lr"] = lr
            idx = sampler.indices(state.step * cfg.batch_size, (state.step + 1) * cfg.batch_size)[dp_rank::dp_size]
            batch = make_batch(data, idx, device)
            with torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
                loss, metrics = module(batch)
            loss.backward()
            grad_norm = _clip(model, cfg.grad_clip, mixed_meshes=cfg.tp > 1 or cfg.ep > 1)
            check_step(state.step + 1, loss, grad_norm, parts=metrics)  # before the update: weights stay finite
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            state.step += 1
            if ema is not None:
                ema.update(state.step)
            state.elapsed = elapsed0 + time.perf_counter() - t0
            window.add(len(idx) * dp_size, metrics)
            if state.step % cfg.log_every == 0 or state.step == total:
                rec = _record(window, state, lr, grad_norm, data, world)
                history.append(rec)
                monitor.log(rec)
                monitor.advance(state.step, total, rec["loss"], rec["samples_per_s"])
            if _ckpt_due(cfg, state, last_ckpt_time, world):
                last_ckpt = save(state.step)
                last_ckpt_time = time.perf_counter()
        if last_ckpt is None or last_ckpt.name != ckpt.step_name(state.step):
            last_ckpt = save(state.step)
        monitor.advance(state.step, state.step)
    finally:
        monitor.close()
    sps = window.total_samples / max(1e-9, time.perf_counter() - session_t0)
    return TrainResult(run_dir, last_ckpt, state.step, history[-1]["loss"] if history else float("nan"), sps, history)


def _ema_extra(ema: WeightEMA | None) -> dict | None:
    """What the distributed checkpoint holds besides model and optimizer: the weight average, if any."""
    return {"ema": ema.state_dict()} if ema is not None else None


def _maybe_resume(run_dir, cfg, model, optimizer, state, resume, world, ema=None):
    """Restore from ``latest`` when resuming; returns (trainer_state, rank_state) or None."""
    ckpt.clean_partial(run_dir)
    if not resume:
        return None
    found = ckpt.latest_checkpoint(run_dir)
    if found is None:
        if world.main:
            print(f"genba train: --resume but no checkpoint in {run_dir}; starting from scratch")
        return None
    saved = rundir.read_json(run_dir / "config.json").get("train", {})
    if saved and saved.get("model") != cfg.model:
        raise TrainConfigError(f"--resume: {run_dir} was trained with model preset {saved.get('model')!r}, "
                               f"not {cfg.model!r}")
    if saved and bool(saved.get("ema_decay", 0.0)) != bool(cfg.ema_decay):
        raise TrainConfigError(f"--resume: {run_dir} was trained with ema_decay {saved.get('ema_decay', 0.0)}, "
                               f"this run asks for {cfg.ema_decay} (the weight average cannot be switched mid-run)")
    trainer_state, rank_state = ckpt.load_checkpoint(found, model, optimizer, extra=_ema_extra(ema))
    state.step = int(trainer_state["step"])
    state.total_steps = int(trainer_state.get("total_steps", cfg.steps))
    state.elapsed = float(trainer_state.get("elapsed", 0.0))
    if world.main:
        print(f"genba train: resumed from {found} at step {state.step}")
    return trainer_state, rank_state


def _plan(cfg, state, elapsed, steps0, session_t0, world) -> tuple[bool, int]:
    """(stop now?, total steps) — by step count, or re-estimated from the time budget.

    In a time-budgeted run the cosine schedule is stretched over the steps that
    fit: total = done + remaining time * measured rate; rank 0 decides for all.
    """
    if cfg.minutes is None:
        return False, cfg.steps
    budget = cfg.minutes * 60.0
    reserve = min(5.0, 0.05 * budget)  # seconds kept for the final checkpoint
    stop, total = elapsed >= budget - reserve, state.total_steps
    done = state.step - steps0
    if done >= 5:
        rate = done / max(1e-9, time.perf_counter() - session_t0)
        total = max(state.step + 1, int(state.step + max(0.0, budget - reserve - elapsed) * rate))
    if world.world > 1:
        flags = torch.tensor([float(stop), float(total)], dtype=torch.float64)
        dist.broadcast(flags, src=0)
        stop, total = bool(flags[0]), int(flags[1])
    return stop, total


def _ckpt_due(cfg, state, last_time, world) -> bool:
    due = bool(cfg.ckpt_every and state.step % cfg.ckpt_every == 0)
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
    """Loss and throughput accumulated since the last log line."""

    def __init__(self) -> None:
        self.total_samples = 0
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


def _record(window: _Window, state: _State, lr: float, grad_norm: float, data: TrainData, world: Dist) -> dict:
    """One metrics line; losses averaged over steps of the window and over ranks."""
    keys = ["loss"] + [f"loss/{e}" for e in sorted(data.specs)]
    vec = torch.tensor([[window.sums.get(k, 0.0), window.counts.get(k, 0)] for k in keys], dtype=torch.float64)
    if world.world > 1:
        dist.all_reduce(vec)
    dt = max(1e-9, time.perf_counter() - window.t0)
    rec = {"step": state.step, "lr": lr, "grad_norm": grad_norm, "samples_per_s": window.samples / dt,
           "elapsed_s": round(state.elapsed, 3), "total_steps": state.total_steps}
    for k, (s, n) in zip(keys, vec.tolist()):
        if n > 0:
            rec[k] = s / n
    window.reset()
    return rec


def _save_weights(directory: Path, model_cfg: ModelConfig, data: TrainData, full_sd: dict, cfg: TrainConfig,
                  lineage: dict) -> None:
    """model.safetensors + checkpoint.json from the gathered full state dict (rank 0)."""
    with torch.device("meta"):
        plain = Generalist(model_cfg, data.specs)
    plain.to_empty(device="cpu")
    plain.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in full_sd.items()}, strict=True)
    save_bundle(directory, plain, stats=data.stats, preset=cfg.model, lineage=lineage,
                extra={"train_preset": cfg.name})


def _write_run_config(run_dir: Path, cfg: TrainConfig, data_dirs, weights) -> None:
    rundir.write_run_config(run_dir, {"train": cfg.to_dict(), "data": [str(d) for d in data_dirs],
                                      "weights": list(weights) if weights is not None else None})
