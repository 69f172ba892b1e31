"""Train the generalist on mixed-embodiment demonstrations; single process or torchrun.

``train(cfg, data_dirs, run_dir)`` is the whole job: ``build_*`` helpers set up
the datasets (through an ``opener`` the governance layer supplies), the
model (``genba.model.generalist.build_model``: meta device, then ``init_weights``
under the fixed seed), the wrapping (``parallelize``) and the optimizer; then the
project's one loop (:func:`genba.train.loop.fit`) runs AdamW with warmup +
cosine decay (:func:`lr_at`), gradient clipping and optional bf16 autocast,
logging and checkpointing atomically as it goes. With ``ema_decay`` set, the exported
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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from genba.data.dataset import open_dataset
from genba.data.spec import diff_specs
from genba.data.transforms import (
    Normalize,
    NormalizeImages,
    RandomShift,
    TokenizeInstruction,
    compose,
    stats_by_embodiment,
)
from genba.data.windows import MixedDataset, WindowDataset, mixed_sampler
from genba.device import default_device, distributed_backend
from genba.model.bundle import save_bundle
from genba.model.config import ModelConfig, get_preset
from genba.model.generalist import build_model
from genba.train import checkpoint as ckpt
from genba.train import rundir
from genba.train.config import TrainConfig, TrainConfigError
from genba.train.ema import WeightEMA
from genba.train.loop import Dist, LoopConfig, LoopState, RunLength, fit
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
    images: NormalizeImages | None = None  # camera frames, from the same stats (None: built from them)
    augment: RandomShift | None = None  # training only (DrQ shift); None or pad 0: off
    _tokens: dict = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.images is None:
            self.images = NormalizeImages(self.stats)

    @property
    def transform(self) -> Callable[[dict], dict]:
        """The per-sample chain (what serving runs): normalize state and images, then tokenize."""
        return compose(self.normalize, self.images, self.tokenize)

    @property
    def train_transform(self) -> Callable[[dict], dict]:
        """The training chain: the serving chain after the image augmentation (the only difference)."""
        return compose(self.augment, self.transform)

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
                   opener: Callable | None = None, model_cfg: ModelConfig | None = None) -> TrainData:
    """Open every dataset (with ``opener``, default the plain reader), window it, mix it with ``weights``.

    ``opener(dir) -> Dataset`` is the governance seam (``GovernedAccess.open``: every parquet and
    video read through it, decoded frames kept in memory).
    """
    if not data_dirs:
        raise TrainConfigError("no datasets given (--data DIR[,DIR...])")
    if weights is not None and len(weights) != len(data_dirs):
        raise TrainConfigError(f"{len(weights)} weights for {len(data_dirs)} datasets: give one weight per --data dir")
    model_cfg = model_cfg or get_preset(cfg.model)
    datasets = [(opener or open_dataset)(d) for d in data_dirs]
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
    stats = stats_by_embodiment(datasets)  # datasets of one embodiment pooled (genba.data.stats)
    phrasings = None
    if cfg.instructions == "phrasings":  # the envs' training set, handed down as plain data (data cannot import envs)
        from genba.envs.phrasings import training_table

        phrasings = training_table()
    parts = [WindowDataset(ds, history=model_cfg.history, chunk=model_cfg.chunk, lang=cfg.lang, seed=cfg.seed,
                           phrasings=phrasings) for ds in datasets]
    return TrainData(datasets, MixedDataset(parts, weights), specs, stats, Normalize(stats),
                     TokenizeInstruction(model_cfg.max_lang_len), NormalizeImages(stats),
                     RandomShift(cfg.image_shift) if cfg.image_shift else None)


def make_batch(data: TrainData, indices: np.ndarray, device: torch.device) -> dict[str, dict[str, torch.Tensor]]:
    """``{embodiment: {key: (B_e, ...)}}`` for global sample indices, on ``device``.

    Same result as ``collate([transform(mixed[i]) for i in indices])`` (a test
    checks it), but one gather per part and one transform call per embodiment.
    Camera frames travel to ``device`` as uint8 and are augmented (``data.augment``)
    and normalized there (``data.images``): a quarter of the bytes, and the GPU's work.
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
        if "images" in raw:
            frames = {"embodiment": emb, "images": {c: v.to(device, non_blocking=True) for c, v in raw["images"].items()}}
            if data.augment is not None:
                frames = data.augment(frames)
            out[emb]["images"] = data.images(frames)["images"]  # {camera: (B, H, h, w, 3) float32}
    return out


def _concat(raws: list[dict]) -> dict:
    out = {}
    for k in raws[0]:
        vals = [r[k] for r in raws]
        if isinstance(vals[0], torch.Tensor):
            out[k] = torch.cat(vals)
        elif isinstance(vals[0], dict):  # images: {camera: tensor}
            out[k] = {c: torch.cat([v[c] for v in vals]) for c in vals[0]}
        elif isinstance(vals[0], list):
            out[k] = [x for v in vals for x in v]
        else:
            out[k] = vals[0]
    return out


# ---- model and optimizer ------------------------------------------------------------
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


# ---- the run ----------------------------------------------------------------------------
@dataclass
class TrainResult:
    run_dir: Path
    checkpoint: Path | None
    step: int
    loss: float
    samples_per_s: float
    history: list[dict] = field(default_factory=list)


def train(cfg: TrainConfig, data_dirs: Sequence[str | os.PathLike], run_dir: str | os.PathLike, *,
          weights: Sequence[float] | None = None, resume: bool = False, overwrite: bool = False,
          opener: Callable | None = None, lineage: dict | Callable[[], dict] | None = None,
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
                      opener=opener, lineage=lineage, stop_at=stop_at, progress=progress)


def _train(cfg: TrainConfig, data_dirs, run_dir: Path, world: Dist, device: torch.device, t0: float, *, weights,
           resume: bool, opener, lineage, stop_at: int | None, progress: bool) -> TrainResult:
    """The run itself, with ``run_dir`` held: set up, then :func:`genba.train.loop.fit`."""
    model_cfg = get_preset(cfg.model)
    if cfg.batch_size % world.world:
        raise TrainConfigError(f"batch_size {cfg.batch_size} is not divisible by the {world.world} processes")
    data = build_datasets(cfg, data_dirs, weights=weights, opener=opener, model_cfg=model_cfg)
    model = build_model(model_cfg, data.specs, device, cfg.seed)
    plan = ParallelPlan(cfg.dist, cfg.activation_checkpointing, cfg.compile, tp=cfg.tp, ep=cfg.ep)
    module = parallelize(model, plan, build_mesh(device))
    dp_rank, dp_size = data_rank(world.rank, world.world, plan)
    optimizer = build_optimizer(model, cfg)
    ema = WeightEMA(model, cfg.ema_decay) if cfg.ema_decay else None
    state = LoopState(total_steps=cfg.steps)
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

    def save(st: LoopState) -> Path:
        return ckpt.save_checkpoint(run_dir, st.step, model, optimizer, st.to_dict(), write_bundle, cfg.keep_last,
                                    extra=_ema_extra(ema), export=ema.full_state if ema else None)

    sampler = mixed_sampler(data.mixed, _SAMPLER_SPAN, seed=cfg.seed)

    def batch(step: int) -> tuple[dict, int]:
        idx = sampler.indices(step * cfg.batch_size, (step + 1) * cfg.batch_size)[dp_rank::dp_size]
        return make_batch(data, idx, device), len(idx) * dp_size

    monitor = Monitor(run_dir, enabled=world.main, resume_step=state.step, total_steps=state.total_steps,
                      progress=progress)
    try:
        res = fit(loop_config(cfg, data.specs, stop_at), model, optimizer, batch, module,
                  lambda p: lr_at(p.step, cfg, p.total), state=state, origin=t0, world=world, device=device,
                  after_step=(lambda step, _: ema.update(step)) if ema is not None else None,
                  log=monitor.record, save=save)
        monitor.advance(state.step, state.step)
    finally:
        monitor.close()
    loss = res.history[-1]["loss"] if res.history else float("nan")
    return TrainResult(run_dir, res.checkpoint, state.step, loss, res.samples / max(1e-9, res.seconds), res.history)


def loop_config(cfg: TrainConfig, specs, stop_at: int | None = None) -> LoopConfig:
    """The loop settings of a training config (fine-tuning uses the same mapping)."""
    seconds = cfg.minutes * 60.0 if cfg.minutes is not None else None
    return LoopConfig(length=RunLength(cfg.steps, seconds), grad_clip=cfg.grad_clip, precision=cfg.precision,
                      log_every=cfg.log_every, ckpt_every=cfg.ckpt_every, ckpt_every_minutes=cfg.ckpt_every_minutes,
                      loss_keys=("loss", *(f"loss/{e}" for e in sorted(specs))),
                      mixed_meshes=cfg.tp > 1 or cfg.ep > 1, stop_at=stop_at)


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


def _save_weights(directory: Path, model_cfg: ModelConfig, data: TrainData, full_sd: dict, cfg: TrainConfig,
                  lineage: dict) -> None:
    """model.safetensors + genba.json from the gathered full state dict (rank 0)."""
    plain = build_model(model_cfg, data.specs, "cpu", init=False)  # every tensor is loaded next
    plain.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in full_sd.items()}, strict=True)
    save_bundle(directory, plain, stats=data.stats, preset=cfg.model, lineage=lineage,
                extra={"train_preset": cfg.name})


def _write_run_config(run_dir: Path, cfg: TrainConfig, data_dirs, weights) -> None:
    rundir.write_run_config(run_dir, {"train": cfg.to_dict(), "data": [str(d) for d in data_dirs],
                                      "weights": list(weights) if weights is not None else None})
