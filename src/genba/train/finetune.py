"""`genba finetune`: adapt a pretrained checkpoint to new tasks or a new machine.

    genba finetune runs/small --data runs/data/mt50-new/sawyer --out runs/ft-new-tasks --mode lora --steps 1500
    genba finetune runs/small --data runs/data/dc --spec dc.json --out runs/ft-dc --mode frozen-trunk --minutes 5

The datasets' embodiment names tell the two cases apart:

- **New tasks of a known embodiment**: its spec must equal the checkpoint's.
  Stats (``--stats auto``): the parent's are **kept** unless the new data's
  1st/99th percentile leaves their range by more than ``Z_LIMIT`` normalized
  units, then **pooled**; the decision is printed and stored in the lineage.
  ``--scope tasks`` (default with ``frozen-trunk``) copies the machine's stem
  and head into an entry ``<machine>__<tag>`` that alone trains, with a route
  table sending the new instructions to it, so old tasks compute exactly what
  the parent did (no forgetting); ``--scope embodiment`` (default with ``lora``
  and ``full``, which move the trunk anyway) trains the machine's own entry.
- **A new embodiment** described only by its spec (``meta/genba.json`` or
  ``--spec FILE``): a stem and head are built from it and trained on its data's
  own stats.

``--mode`` says what else trains (``frozen-trunk``, ``lora`` folded into the
weights at save time, ``full``); ``--from-scratch`` is the benchmark's baseline,
``--replay DIR`` rehearsal against forgetting. The result is an ordinary
checkpoint whose lineage records the parent. Every decision, its reasons and
the measurements: docs/adaptation.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from genba.errors import CLIError
from genba.train.finetune_data import (
    STATS_POLICIES,
    FinetuneError,
    build_data,
    choose_stats,
    open_data,
    plan_embodiments,
    read_spec_file,
    routed_entry,
    routes_for,
    scope_entries,
)
from genba.train.transfer import parse_channel_map, plan_warm_start, warm_start

MODES = ("frozen-trunk", "lora", "full")
SCOPES = ("auto", "tasks", "embodiment")


@dataclass(frozen=True)
class FinetuneConfig:
    """What an adaptation run does besides its data; ``train`` holds the optimizer recipe and length."""

    mode: str = "lora"
    lora_rank: int = 8
    lora_alpha: float | None = None  # None: alpha = rank (scale 1)
    stats: str = "auto"
    init: str = "pretrained"  # pretrained | scratch (the baseline: same architecture, fresh weights)
    replay_weight: float = 0.0  # share of samples drawn from --replay datasets
    scope: str = "auto"  # auto | tasks | embodiment (see the module docstring)
    scope_tag: str | None = None  # None: the run directory's name
    init_from: str | None = None  # warm-start new machines' stems/heads from this known one (genba.train.transfer)
    channel_map: tuple[tuple[str, str], ...] = ()  # (new, source) renames for init_from
    tensorboard: bool = True
    train: Any = None  # genba.train.config.TrainConfig; None: default_train_config()

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise FinetuneError(f"finetune mode {self.mode!r}: expected one of {MODES}")
        if self.stats not in STATS_POLICIES:
            raise FinetuneError(f"--stats {self.stats!r}: expected one of {STATS_POLICIES}")
        if self.init not in ("pretrained", "scratch"):
            raise FinetuneError(f"init {self.init!r}: expected 'pretrained' or 'scratch'")
        if self.lora_rank < 1:
            raise FinetuneError(f"--lora-rank must be >= 1, got {self.lora_rank}")
        if self.scope not in SCOPES:
            raise FinetuneError(f"--scope {self.scope!r}: expected one of {SCOPES}")
        if self.scope == "tasks" and (self.mode != "frozen-trunk" or self.init == "scratch"):
            raise FinetuneError(f"--scope tasks needs --mode frozen-trunk from a pretrained checkpoint (got mode "
                                f"{self.mode!r}, init {self.init!r}): {self.mode} changes the shared trunk, so old "
                                "tasks would move whatever the routes say; use --scope embodiment")
        if self.init_from is not None and self.init == "scratch":
            raise FinetuneError(f"--init-from {self.init_from} warm-starts from the pretrained checkpoint; it "
                                "cannot be combined with --from-scratch")
        if self.channel_map and self.init_from is None:
            raise FinetuneError("--channel-map renames channels for --init-from; give --init-from MACHINE too")
        if not 0.0 <= self.replay_weight < 1.0:
            raise FinetuneError(f"--replay-weight must be in [0, 1), got {self.replay_weight}")
        if self.train is None:
            object.__setattr__(self, "train", default_train_config())

    def to_dict(self) -> dict:
        return {**{f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "train"},
                "train": self.train.to_dict()}

    @property
    def task_scoped(self) -> bool:
        """Whether new tasks of known embodiments get their own entries (``auto``: with a frozen trunk)."""
        if self.scope == "auto":
            return self.mode == "frozen-trunk" and self.init == "pretrained"
        return self.scope == "tasks"


def default_train_config():
    """Short and gentle: few demonstrations overfit fast, so fewer steps than pretraining."""
    from genba.train.config import TrainConfig

    return TrainConfig(name="finetune", model="debug", steps=500, batch_size=64, lr=1e-3, warmup_steps=20,
                       weight_decay=0.0, log_every=25, ckpt_every=0, ckpt_every_minutes=0.0, keep_last=1)


@dataclass
class FinetuneResult:
    run_dir: Path
    checkpoint: Path
    step: int
    loss: float
    added: list[str]
    adapted: list[str]
    stats_decisions: dict[str, str]
    trainable_params: int
    history: list[dict] = field(default_factory=list)
    scoped: dict[str, str] = field(default_factory=dict)  # task-scoped entry -> the machine it copies
    routes: Any = None  # the checkpoint's RouteInstruction (parent's and this run's)


# ---- specs and data -----------------------------------------------------------------
def adapt_model(parent, new_specs: list, cfg: FinetuneConfig, train_names: Sequence[str], device,
                scoped: dict | None = None) -> tuple[Any, int]:
    """The model to train: the parent (or a fresh twin) with new stems/heads, freezing and adapters set.

    ``scoped`` (``{machine: entry spec}``) adds each entry as a copy of its machine's stem and head.

    Returns ``(model, trainable parameter count)``.
    """
    from genba.model.generalist import build_model
    from genba.model.lora import apply_lora

    torch.manual_seed(cfg.train.seed)
    if cfg.init == "scratch":  # only the embodiments the data feeds: no untrained heads in the baseline
        known = {**parent.specs, **{s.name: s for s in new_specs}}
        model = build_model(parent.cfg, {n: known[n] for n in train_names}, device)
    else:
        model = parent.to(device)
        for spec in new_specs:
            model.add_embodiment(spec)
        for machine, spec in (scoped or {}).items():
            model.add_embodiment(spec)
            model.stems[spec.name].load_state_dict(model.stems[machine].state_dict())
            model.heads[spec.name].load_state_dict(model.heads[machine].state_dict())
    model.train()
    mode = "full" if cfg.init == "scratch" else cfg.mode
    for p in model.parameters():
        p.requires_grad_(mode == "full")
    for name in model.specs:  # stems/heads: exactly those of embodiments the data feeds
        for p in (*model.stems[name].parameters(), *model.heads[name].parameters()):
            p.requires_grad_(name in train_names)
    if mode != "full":
        model.trunk.eval()  # frozen: also no MoE router-bias updates (they happen in training forwards)
        model.lang.eval()
    if mode == "lora":
        apply_lora(model.trunk, cfg.lora_rank, cfg.lora_alpha)
    return model, sum(p.numel() for p in model.parameters() if p.requires_grad)


def _plain_copy(model, state_dict: dict):
    """A Generalist without adapters holding ``state_dict`` (what the bundle stores)."""
    from genba.model.generalist import build_model

    plain = build_model(model.cfg, model.specs, "cpu", init=False)  # every tensor is loaded next
    plain.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state_dict.items()}, strict=True)
    return plain


# ---- lineage ----------------------------------------------------------------------------
def sha256_file(path: Path) -> str:
    from genba.model.bundle import sha256_file as digest  # lazy: `genba --help` stays light

    return digest(path)


def build_lineage(parent_dir: Path, parent_manifest: dict, data, run_dir: Path, cfg: FinetuneConfig,
                  adaptation: dict, access: dict | None) -> dict:
    """This run's data and recipe, the parent (hashes + its full lineage), and the merged ancestry/owners."""
    from genba.model.bundle import WEIGHTS, manifest_path

    parent_lineage = dict(parent_manifest.get("lineage") or {})
    parent = {"checkpoint": str(parent_dir), "preset": parent_manifest.get("preset"),
              "weights_sha256": sha256_file(parent_dir / WEIGHTS),
              "manifest_sha256": sha256_file(manifest_path(parent_dir)), "lineage": parent_lineage}
    ancestry = [{k: parent[k] for k in ("checkpoint", "weights_sha256")}] + list(parent_lineage.get("ancestry", []))
    out = {"datasets": data.lineage(),
           "training": {"kind": "finetune", "run_dir": str(run_dir), "finetune_config": cfg.to_dict()},
           "adaptation": adaptation, "parent": parent, "ancestry": ancestry, **(access or {})}
    owners = set(parent_lineage.get("owners", [])) | set((access or {}).get("owners", []))
    if owners:  # whose data is inside: the parent's owners stay inside the child
        out["owners"] = sorted(owners)
    return out


# ---- the run ----------------------------------------------------------------------------
def finetune(checkpoint: str | os.PathLike, data_dirs: Sequence[str | os.PathLike], run_dir: str | os.PathLike,
             cfg: FinetuneConfig | None = None, *, spec=None, replay: Sequence[str | os.PathLike] = (),
             opener: Callable | None = None, lineage: dict | Callable[[], dict] | None = None,
             overwrite: bool = False, progress: bool = True) -> FinetuneResult:
    """Adapt ``checkpoint`` to ``data_dirs`` into ``run_dir``; see the module docstring.

    ``spec`` (an EmbodimentSpec) replaces the datasets' own spec; ``opener``
    and ``lineage`` are the governance seam, as for :func:`genba.train.trainer.train`.
    ``run_dir`` is locked for the run; one that already holds a run needs ``overwrite``.
    """
    from genba.train.rundir import claim

    origin = time.perf_counter()  # setup counts against a time budget, as in pretraining
    with claim(run_dir, overwrite=overwrite, resume_hint=False) as out:
        return _finetune(checkpoint, data_dirs, out, cfg, spec=spec, replay=replay, opener=opener,
                         lineage=lineage, progress=progress, origin=origin)


def _finetune(checkpoint, data_dirs, run_dir: Path, cfg: FinetuneConfig | None, *, spec, replay, opener,
              lineage, progress: bool, origin: float | None = None) -> FinetuneResult:
    from genba.data.transforms import Normalize
    from genba.device import default_device
    from genba.model.bundle import bundle_routes, bundle_stats, load_model
    from genba.train.checkpoint import resolve_checkpoint

    cfg = cfg or FinetuneConfig()
    if not data_dirs:
        raise FinetuneError("no datasets given (--data DIR[,DIR...])")
    if replay and cfg.replay_weight == 0.0:
        cfg = dataclasses.replace(cfg, replay_weight=0.3)
    device = default_device()
    parent_dir = resolve_checkpoint(checkpoint)
    parent, manifest = load_model(parent_dir, device=device)
    norm_mode = manifest.get("normalization", {}).get("mode", "mean_std")
    datasets, replayed = open_data(data_dirs, spec, opener), open_data(replay, None, opener)
    new_specs, adapted = plan_embodiments(dict(parent.specs), datasets, replayed)
    run_dir = Path(run_dir)
    parent_routes = bundle_routes(manifest, str(parent_dir))
    scoped, routes, added = _scope(cfg, parent, parent_routes, adapted, datasets, replayed, run_dir)
    entry_specs = {**{e: parent.specs[e] for e in (routes.entries if routes else {}) if e in parent.specs},
                   **{s.name: s for s in scoped.values()}}
    stats, decisions = _entry_stats(cfg, datasets, routes, bundle_stats(manifest, str(parent_dir)), norm_mode,
                                    progress)
    matches = plan_warm_start(cfg, dict(parent.specs), new_specs, adapted)
    data = build_data(datasets, replayed, stats, norm_mode, cfg, parent.cfg, routes, entry_specs)
    model, n_train = adapt_model(parent, new_specs, cfg, list(data.specs), device, scoped)
    for match in matches:
        warm_start(model, match, Normalize(stats, mode=norm_mode))
        if progress:
            print(f"genba finetune: {match.target!r} warm-started from {match.source!r}: {len(match.obs)} "
                  f"observation channels and actions {dict(match.action)} carried over; starting from zero: "
                  f"{', '.join(match.unmatched_obs + match.unmatched_action) or 'none'}")
    run_dir.mkdir(parents=True, exist_ok=True)
    entries = {s.name: m for m, s in scoped.items()}
    adaptation = {"mode": "full" if cfg.init == "scratch" else cfg.mode, "init": cfg.init,
                  "scope": "tasks" if scoped else "embodiment",
                  "added_embodiments": [s.name for s in new_specs], "adapted_embodiments": adapted,
                  "scoped_entries": entries,
                  "routes_added": added,
                  "stats": decisions, "trainable_params": n_train,
                  "warm_start": [m.to_dict() for m in matches],
                  "total_params": sum(p.numel() for p in model.parameters())}
    access = lineage() if callable(lineage) else lineage
    full_lineage = build_lineage(parent_dir, manifest, data, run_dir, cfg, adaptation, access)
    (run_dir / "config.json").write_text(json.dumps({"finetune": cfg.to_dict(), "checkpoint": str(parent_dir),
                                                     "data": [str(d) for d in data_dirs],
                                                     "replay": [str(d) for d in replay]}, indent=2))
    step, loss, history, ckpt_dir = _train(model, data, cfg, run_dir, stats, manifest, full_lineage, norm_mode,
                                           progress, routes, origin)
    return FinetuneResult(run_dir, ckpt_dir, step, loss, [s.name for s in new_specs], adapted, decisions,
                          n_train, history, entries, routes)


def _scope(cfg: FinetuneConfig, parent, parent_routes, adapted: list, datasets: list, replayed: list,
           run_dir: Path) -> tuple[dict, Any, list]:
    """``(scoped entries {machine: spec}, the route table, this run's route rows)`` (module docstring: --scope)."""
    from genba.data.transforms import TransformError

    if not (cfg.task_scoped and adapted):
        return {}, parent_routes if cfg.init == "pretrained" else None, []
    if replayed:
        raise FinetuneError("--replay with --scope tasks: the scoped fine-tune leaves every pretrained tensor "
                            "unchanged, so rehearsal protects nothing; drop --replay or use --scope embodiment")
    scoped = scope_entries(dict(parent.specs), parent_routes, adapted, cfg.scope_tag or run_dir.name,
                           cfg.scope_tag is not None)
    new_routes = routes_for(datasets, scoped)
    try:
        routes = parent_routes.merge(new_routes)
    except TransformError as e:
        raise FinetuneError(f"route clash: {e} (to train that entry further: --scope embodiment)") from None
    return scoped, routes, new_routes.to_dict()["routes"]


def _entry_stats(cfg: FinetuneConfig, datasets: list, routes, parent_stats: dict, norm_mode: str,
                 progress: bool) -> tuple[dict, dict[str, str]]:
    """Stats per model entry the data trains (a scoped machine keeps its own), and each decision."""
    from genba.data.stats import aggregate_stats

    stats, decisions = dict(parent_stats), {}
    entry_of = [routed_entry(routes, ds) if routes else ds.embodiment for ds in datasets]
    for entry in dict.fromkeys(entry_of):
        group = [ds for ds, e in zip(datasets, entry_of) if e == entry]
        base = parent_stats.get(entry, parent_stats.get(group[0].embodiment))
        stats[entry], decisions[entry] = choose_stats(cfg.stats, base, aggregate_stats([d.stats for d in group]),
                                                      norm_mode)
        if progress:
            print(f"genba finetune: stats for {entry!r}: {decisions[entry]}")
    return stats, decisions


def _train(model, data, cfg: FinetuneConfig, run_dir: Path, stats: dict, manifest: dict, lineage: dict,
           norm_mode: str, progress: bool, routes=None, origin: float | None = None):
    """The trainer's optimizer, schedule, batches and loop (:func:`genba.train.loop.fit`) over the trainable
    parameters; checkpoints on the config's cadence (by default only at the end)."""
    from genba.data.windows import mixed_sampler
    from genba.model.bundle import save_bundle
    from genba.model.lora import merged_state_dict
    from genba.train import checkpoint as ckpt
    from genba.train import trainer
    from genba.train.loop import fit
    from genba.train.monitor import Monitor

    tc = cfg.train
    device = next(model.parameters()).device
    optimizer = trainer.build_optimizer(model, tc)
    sampler = mixed_sampler(data.mixed, 2**62, seed=tc.seed)

    def batch(step: int) -> tuple[dict, int]:
        idx = sampler.indices(step * tc.batch_size, (step + 1) * tc.batch_size)
        return trainer.make_batch(data, idx, device), len(idx)

    def write_bundle(directory: Path, _full: dict) -> None:
        plain = _plain_copy(model, merged_state_dict(model))
        save_bundle(directory, plain, stats={n: stats[n] for n in plain.specs}, preset=manifest["preset"],
                    normalization=norm_mode, lineage=lineage, extra={"train_preset": "finetune"}, routes=routes)

    def save(state) -> Path:
        return ckpt.save_checkpoint(run_dir, state.step, model, optimizer, {**state.to_dict(), "kind": "finetune"},
                                    write_bundle, keep_last=1)

    loop = dataclasses.replace(trainer.loop_config(tc, data.specs), where="finetune")
    monitor = Monitor(run_dir, enabled=True, total_steps=tc.steps, progress=progress, tensorboard=cfg.tensorboard)
    try:
        res = fit(loop, model, optimizer, batch, model.loss, lambda p: trainer.lr_at(p.step, tc, p.total),
                  origin=origin, device=device, log=monitor.record, save=save)
        monitor.advance(res.state.step, res.state.step)
    finally:
        monitor.close()
    loss = res.history[-1]["loss"] if res.history else float("nan")
    return res.state.step, loss, res.history, res.checkpoint


# ---- CLI --------------------------------------------------------------------------------
@dataclass(frozen=True)
class FinetuneArgs:
    """What `genba finetune` takes besides its configs; each field is a flag, its comment the help."""

    checkpoint: str  # pretrained checkpoint dir or run dir (its latest checkpoint)
    out: Path  # run directory of the adapted model
    data: tuple[Path, ...] = ()  # new datasets, comma-separated
    overwrite: bool = False  # start over in an --out that already holds a run
    spec: Path | None = None  # embodiment spec JSON replacing the datasets' own
    replay: tuple[Path, ...] = ()  # pretraining datasets mixed back in (rehearsal)
    progress: bool = True  # no progress bar


FINETUNE_HELP = {  # --help of the FinetuneConfig fields, and of the TrainConfig fields finetune takes
    "mode": "what trains besides the stems/heads",
    "lora_rank": "adapter rank with --mode lora",
    "lora_alpha": "adapter scale numerator (default: the rank)",
    "stats": "normalization stats of known embodiments",
    "init": "pretrained weights, or scratch: the baseline (same architecture, fresh weights, all trained)",
    "replay_weight": "share of replay samples (default 0.3 with --replay)",
    "scope": "new tasks of a known machine: 'tasks' trains a routed copy of its stem/head (old tasks "
             "bit-identical; needs frozen-trunk), 'embodiment' trains the machine's own; auto: tasks "
             "with --mode frozen-trunk, else embodiment",
    "scope_tag": "name tag of task-scoped entries, MACHINE__TAG (default: the --out dir name)",
    "init_from": "new embodiment: warm-start its stem and head from this known machine's, channel by "
                 "channel (same names and units; see --channel-map)",
    "channel_map": "renames for --init-from, e.g. i_a=i,u_a=u (also maps ref_i_a, err_i_a, ...)",
    "tensorboard": "no TensorBoard event files in the run directory",
    "steps": "optimizer steps (default 500)",
    "minutes": "wall-time budget",
    "batch_size": "batch size (default 64)",
    "lr": "peak learning rate (default 1e-3)",
    "seed": "seed for new weights and data order",
}
TRAIN_FLAGS = ("steps", "minutes", "batch_size", "lr", "seed", "lang")  # the TrainConfig fields finetune reads


def register(subparsers: argparse._SubParsersAction) -> None:
    from genba.configflags import add_config_flags
    from genba.train.commands import _dirs, add_access_args
    from genba.train.config import CHOICES, TrainConfig

    p = subparsers.add_parser("finetune", help="adapt a pretrained checkpoint to new tasks or a new embodiment",
                              description=__doc__.split("\n\n")[0])
    add_config_flags(p, FinetuneArgs, defaults=True, positional=("checkpoint",), required=("data", "out"),
                     kw={"data": {"type": _dirs}, "replay": {"type": _dirs}})
    choices = {"mode": MODES, "scope": SCOPES, "stats": STATS_POLICIES, "init": ("pretrained", "scratch")}
    add_config_flags(p, FinetuneConfig, defaults=True, skip=("train",), help=FINETUNE_HELP, choices=choices,
                     kw={"init_from": {"metavar": "MACHINE"},
                         "channel_map": {"metavar": "NEW=SOURCE,...", "type": str}})
    p.add_argument("--from-scratch", dest="init", action="store_const", const="scratch",
                   help="the same as --init scratch")
    add_config_flags(p, TrainConfig, only=TRAIN_FLAGS, exclusive=(("steps", "minutes"),), help=FINETUNE_HELP,
                     choices=CHOICES)
    add_access_args(p)
    p.set_defaults(func=run, purpose="finetune")  # the declared purpose of governed reads


def run(args: argparse.Namespace) -> int:
    from genba.configflags import given_values
    from genba.data.layout import DatasetError
    from genba.finite import NonFiniteError
    from genba.model.bundle import BundleError
    from genba.train.checkpoint import CheckpointError
    from genba.train.commands import access_from_args
    from genba.train.config import TrainConfig, TrainConfigError

    try:
        train = default_train_config().replace(**given_values(args, TrainConfig, only=TRAIN_FLAGS))
        cfg = FinetuneConfig(**{**given_values(args, FinetuneConfig, skip=("train",)),
                                "channel_map": parse_channel_map(args.channel_map), "train": train})
        spec = read_spec_file(args.spec) if args.spec else None
        # replay data is read too, so it is authorized (and audited) with the new data
        opener, lineage = access_from_args(argparse.Namespace(**{**vars(args),
                                                                    "data": [*args.data, *args.replay]}))
        res = finetune(args.checkpoint, args.data, args.out, cfg, spec=spec, replay=args.replay,
                       opener=opener, lineage=lineage, overwrite=args.overwrite, progress=args.progress)
    except (FinetuneError, TrainConfigError, DatasetError, CheckpointError, BundleError, NonFiniteError) as e:
        raise CLIError(str(e)) from None
    print(f"fine-tuned {res.step} steps ({cfg.mode if cfg.init == 'pretrained' else 'from scratch'}, "
          f"{res.trainable_params:,} trainable parameters), loss {res.loss:.4f}; added {res.added or 'none'}, "
          f"adapted {res.adapted or 'none'}; checkpoint {res.checkpoint}")
    for entry, machine in res.scoped.items():
        n = sum(1 for e in res.routes.routes.values() if e == entry)
        print(f"  task-scoped entry {entry!r} (a copy of the stem and head of {machine!r}): "
              f"{n} instructions routed to it")
    return 0
