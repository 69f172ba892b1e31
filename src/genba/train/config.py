"""Training configuration: one frozen dataclass and a registry of named presets.

A train preset names a model preset (``genba.model.config.PRESETS``) plus the
optimization recipe. Variants are made with ``dataclasses.replace`` (the CLI
does exactly that for ``--steps``, ``--minutes``, ``--precision`` ...), never
by editing strings. Unknown preset names fail with the closest valid names.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass

from genba.data.language import TRAIN_LANGS

PRECISIONS = ("fp32", "bf16")  # fp32, or bf16 autocast
DISTS = ("none", "ddp", "fsdp")  # data parallelism under torchrun
INSTRUCTIONS = ("canonical", "phrasings")  # each task's one sentence, or also its training phrasings
CHOICES = {"precision": PRECISIONS, "lang": TRAIN_LANGS, "dist": DISTS, "instructions": INSTRUCTIONS}  # the fields with a fixed set of values


class TrainConfigError(ValueError):
    """A training configuration that cannot run; the message names the field."""


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a training run except the data and the output dir.

    ``steps`` is the run length; when ``minutes`` is set the run instead stops on
    wall time and the cosine schedule is stretched over the number of steps that
    fit in the budget (re-estimated from the measured step time as it goes).
    ``batch_size`` is global: each of ``world`` ranks takes ``batch_size / world``.
    """

    # The comment after each field is its `genba train --FLAG` help (genba.configflags).
    name: str  # the preset's name (chosen with --preset, not a flag of its own)
    model: str = "debug"  # model preset (genba.model.config), e.g. small, moe-small
    steps: int = 1000  # number of optimizer steps
    minutes: float | None = None  # wall-time budget; the schedule fits the steps that fit
    batch_size: int = 64  # global batch size (split across processes)
    lr: float = 3e-4  # peak learning rate
    min_lr_ratio: float = 0.1  # the cosine schedule ends at lr times this
    warmup_steps: int = 100  # linear warmup steps before the cosine (at most a tenth of the run)
    weight_decay: float = 0.05  # AdamW weight decay (matrices only; not norm gains, biases, tokens)
    betas: tuple[float, float] = (0.9, 0.95)  # AdamW betas, as B1,B2
    grad_clip: float = 1.0  # clip the global gradient norm to this (0: no clipping)
    ema_decay: float = 0.0  # export the weights' moving average with this decay, e.g. 0.999 (0: the raw weights)
    precision: str = "fp32"  # autocast precision
    seed: int = 0  # seed for init and data order
    lang: str = "mix"  # instruction language drawn in training
    instructions: str = "canonical"  # wordings drawn in training: the task's sentence, or phrasings (genba.envs.phrasings)
    log_every: int = 10  # log a metrics record every N steps
    ckpt_every: int = 500  # checkpoint every N steps (0: only at the end)
    ckpt_every_minutes: float = 5.0  # also checkpoint every M minutes of wall time, so a kill loses little
    keep_last: int = 2  # checkpoints kept in the run directory
    image_shift: int = 4  # DrQ random shift of camera frames, in pixels (0: off); training only
    dist: str = "none"  # data parallelism under torchrun
    tp: int = 1  # tensor-parallel ranks (needs --dist fsdp)
    ep: int = 1  # expert-parallel ranks for MoE presets (needs --dist fsdp)
    activation_checkpointing: bool = False  # recompute block activations
    compile: bool = False  # torch.compile each block

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise TrainConfigError naming the first field that is out of range."""
        _positive(self, "steps", "batch_size", "lr", "log_every", "keep_last")
        _non_negative(self, "warmup_steps", "weight_decay", "grad_clip", "ckpt_every", "ckpt_every_minutes",
                      "image_shift")
        if self.minutes is not None and not self.minutes > 0:
            raise TrainConfigError(f"train config {self.name!r}: minutes must be > 0, got {self.minutes}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise TrainConfigError(f"train config {self.name!r}: min_lr_ratio must be in [0, 1]")
        if not 0.0 <= self.ema_decay < 1.0:
            raise TrainConfigError(f"train config {self.name!r}: ema_decay must be in [0, 1) (0 = off), "
                                   f"got {self.ema_decay}")
        if not all(0.0 <= b < 1.0 for b in self.betas) or len(self.betas) != 2:
            raise TrainConfigError(f"train config {self.name!r}: betas must be two numbers in [0, 1)")
        _choice(self, "precision", PRECISIONS)
        _choice(self, "lang", TRAIN_LANGS)
        _choice(self, "instructions", INSTRUCTIONS)
        _choice(self, "dist", DISTS)
        _positive(self, "tp", "ep")
        if (self.tp > 1 or self.ep > 1) and self.dist != "fsdp":
            raise TrainConfigError(f"train config {self.name!r}: tp={self.tp}, ep={self.ep} need dist='fsdp'")

    def replace(self, **changes) -> TrainConfig:
        """A validated copy with some fields changed (``dataclasses.replace``)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise TrainConfigError(f"train config has unknown keys {sorted(unknown)}")
        kw = dict(d)
        if "betas" in kw:
            kw["betas"] = tuple(kw["betas"])
        return cls(**kw)


def _positive(cfg: TrainConfig, *names: str) -> None:
    for n in names:
        if not getattr(cfg, n) > 0:
            raise TrainConfigError(f"train config {cfg.name!r}: {n} must be > 0, got {getattr(cfg, n)}")


def _non_negative(cfg: TrainConfig, *names: str) -> None:
    for n in names:
        if not getattr(cfg, n) >= 0:
            raise TrainConfigError(f"train config {cfg.name!r}: {n} must be >= 0, got {getattr(cfg, n)}")


def _choice(cfg: TrainConfig, name: str, allowed: tuple[str, ...]) -> None:
    if getattr(cfg, name) not in allowed:
        raise TrainConfigError(f"train config {cfg.name!r}: {name} {getattr(cfg, name)!r} not in {list(allowed)}")


# ---- the registry ----------------------------------------------------------
# `debug` is for tests: a handful of steps of the debug model, no warmup to speak of.
_DEBUG = TrainConfig(name="debug", model="debug", steps=8, batch_size=8, lr=1e-3, warmup_steps=2,
                     log_every=1, ckpt_every=4, keep_last=2, ckpt_every_minutes=0.0)
# `small` is the product recipe for the `small` model on this CPU. Batch 64 keeps
# one step around a fraction of a second; lr 1e-3 with a short warmup suits a
# few-million-parameter transformer trained for minutes, not days.
_SMALL = TrainConfig(name="small", model="small", steps=20_000, batch_size=64, lr=1e-3,
                     warmup_steps=200, log_every=25, ckpt_every=2000)

TRAIN_PRESETS: dict[str, TrainConfig] = {
    c.name: c
    for c in (
        _DEBUG,
        _DEBUG.replace(name="debug-fsdp", dist="fsdp"),
        _DEBUG.replace(name="debug-pixels", model="debug-pixels"),  # tests with cameras (issue 21)
        TrainConfig(name="tiny", model="tiny", steps=5_000, batch_size=64, lr=1e-3, warmup_steps=100,
                    log_every=25, ckpt_every=1000),
        _SMALL,
        # The acceptance run: 20 minutes of wall time from scratch. fp32: at 2.4M
        # parameters bf16 autocast measured no faster here (benchmarks/train_throughput.py).
        _SMALL.replace(name="small-20min", minutes=20.0),
        _SMALL.replace(name="small-10min", minutes=10.0),
        # From pixels (issue 21): the small trunk with the image stem, 20 and 40 minutes (the bars)
        _SMALL.replace(name="small-pixels-20min", model="small-pixels", minutes=20.0),
        _SMALL.replace(name="small-pixels-40min", model="small-pixels", minutes=40.0),
        TrainConfig(name="base", model="base", steps=100_000, batch_size=256, lr=6e-4, warmup_steps=2000,
                    log_every=50, ckpt_every=5000, precision="bf16"),
    )
}


def get_train_preset(name: str) -> TrainConfig:
    """The named train preset (or a model preset with the `small` recipe); unknown names list the closest."""
    if name in TRAIN_PRESETS:
        return TRAIN_PRESETS[name]
    from genba.model.config import PRESETS as MODEL_PRESETS

    if name in MODEL_PRESETS:  # any model preset trains with the `small` recipe (e.g. moe-small)
        return _SMALL.replace(name=name, model=name)
    close = difflib.get_close_matches(name, list(TRAIN_PRESETS), n=3, cutoff=0.3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise TrainConfigError(f"unknown train preset {name!r}{hint} (valid: {', '.join(TRAIN_PRESETS)})")
