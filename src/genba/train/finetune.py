"""`genba finetune`: adapt a pretrained checkpoint to new tasks or a new machine.

    genba finetune runs/small --data runs/data/mt50-new/sawyer --out runs/ft-new-tasks --mode lora --steps 1500
    genba finetune runs/small --data runs/data/dc --spec dc.json --out runs/ft-dc --mode frozen-trunk --minutes 5

Two cases, told apart by the datasets' embodiment names:

- **New tasks of a known embodiment** (new instructions, new goals): the
  pretrained stem and head of that embodiment are trained further. Its spec must
  equal the checkpoint's (a different spec under the same name is a different
  machine: give it another name). Normalization stats: the pretrained weights
  only make sense under the stats they were trained with, and the pretrained
  tasks are served with whatever stats the new checkpoint stores, so the
  parent's stats are **kept** unless the new data leaves their range (a 1st or
  99th percentile more than ``Z_LIMIT`` normalized units out), in which case
  they are **pooled** with the new data's (``--stats auto``, the default;
  ``keep``/``pool``/``data`` force a choice). openpi's quiet fine-tuning
  failures come from exactly this mismatch (#817, #433, #763); the decision is
  printed and stored in the lineage.
- **A new embodiment** described only by its spec (``meta/genba.json`` of the
  dataset, or ``--spec FILE``): a stem and a head are built from the spec
  (``Generalist.add_embodiment``) and trained on the new data's own stats.

``--scope`` says where new tasks of a known embodiment go. ``tasks`` (the
default with ``--mode frozen-trunk``): the machine's stem and head are *copied*
into a new model entry ``<machine>__<tag>`` (tag: ``--scope-tag``, default the
``--out`` directory's name; same spec but the name) and only the copy trains; a
route table (``genba.data.transforms.RouteInstruction``) sends every
instruction of the new data, in en and ja, to the copy, and is stored in the
checkpoint. The machine's own stem and head, the trunk and the language encoder
stay bit-identical, so every old task computes exactly what the parent did: no
forgetting (issue 7: unscoped frozen-trunk adaptation to five new MT50 tasks
took the sixteen pretrained tasks from 0.73 to 0.44). Stats: the copy gets
``choose_stats`` of the machine's stats and the new data; the machine keeps the
parent's. Routes accumulate over fine-tunes; an instruction the parent already
routes elsewhere is refused. ``embodiment`` (the default with ``lora`` and
``full``, which move the shared trunk and so every task anyway): today's
behaviour, the machine's own stem and head train. ``tasks`` is refused with
``lora``/``full``: an adapter merged into the trunk moves old tasks too.

``--mode`` chooses what else trains: ``frozen-trunk`` (only the stems/heads of
the embodiments in the data; trunk, language encoder and rate embedding stay
bit-identical), ``lora`` (plus low-rank adapters on the trunk's linear layers,
folded into the weights at save time, ``genba.model.lora``) or ``full``
(everything the data touches). ``--from-scratch`` trains the same architecture
from a fresh init with the same data and steps: the baseline the adaptation
benchmark compares against. ``--replay DIR`` mixes pretraining data back in
(rehearsal) against forgetting.

A spec whose dimensions or names differ from the dataset's features, or whose
limits the demonstrations violate, is refused with an error naming both.

The result is an ordinary checkpoint (``RUN/checkpoints/step-N``: bundle +
``checkpoint.json`` + train state) that ``load_policy``, ``genba eval`` and the
server take as they are. Its lineage records the parent (path and SHA-256 of
its weights and manifest, its whole lineage), the new data and the adaptation.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from genba.errors import CLIError
from genba.train.finetune_data import (STATS_POLICIES, FinetuneError, build_data, choose_stats, open_data,
                                       plan_embodiments, read_spec_file, routed_entry, routes_for, scope_entries)
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
    from genba.model.generalist import Generalist
    from genba.model.lora import apply_lora

    torch.manual_seed(cfg.train.seed)
    if cfg.init == "scratch":  # only the embodiments the data feeds: no untrained heads in the baseline
        known = {**parent.specs, **{s.name: s for s in new_specs}}
        specs = {n: known[n] for n in train_names}
        with torch.device("meta"):
            model = Generalist(parent.cfg, specs)
        model.to_empty(device=device)
        model.init_weights()
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
    from genba.model.generalist import Generalist

    with torch.device("meta"):
        plain = Generalist(model.cfg, model.specs)
    plain.to_empty(device="cpu")
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
             read_table: Callable | None = None, lineage: dict | Callable[[], dict] | None = None,
             overwrite: bool = False, progress: bool = True) -> FinetuneResult:
    """Adapt ``checkpoint`` to ``data_dirs`` into ``run_dir``; see the module docstring.

    ``spec`` (an EmbodimentSpec) replaces the datasets' own spec; ``read_table``
    and ``lineage`` are the governance seam, as for :func:`genba.train.trainer.train`.
    ``run_dir`` is locked for the run; one that already holds a run needs ``overwrite``.
    """
    from genba.train.rundir import claim

    with claim(run_dir, overwrite=overwrite, resume_hint=False) as out:
        return _finetune(checkpoint, data_dirs, out, cfg, spec=spec, replay=replay, read_table=read_table,
                         lineage=lineage, progress=progress)


def _finetune(checkpoint, data_dirs, run_dir: Path, cfg: FinetuneConfig | None, *, spec, replay, read_table,
              lineage, progress: bool) -> FinetuneResult:
    from genba.device import default_device
    from genba.data.transforms import Normalize, TransformError
    from genba.model.bundle import bundle_routes, bundle_stats, load_model
    from genba.train.checkpoint import resolve_checkpoint
    from genba.train.trainer import merge_stats

    cfg = cfg or FinetuneConfig()
    if not data_dirs:
        raise FinetuneError("no datasets given (--data DIR[,DIR...])")
    if replay and cfg.replay_weight == 0.0:
        cfg = dataclasses.replace(cfg, replay_weight=0.3)
    device = default_device()
    parent_dir = resolve_checkpoint(checkpoint)
    parent, manifest = load_model(parent_dir, device=device)
    norm_mode = manifest.get("normalization", {}).get("mode", "mean_std")
    datasets, replayed = open_data(data_dirs, spec, read_table), open_data(replay, None, read_table)
    new_specs, adapted = plan_embodiments(dict(parent.specs), datasets, replayed)
    run_dir = Path(run_dir)
    parent_routes = bundle_routes(manifest, str(parent_dir))
    scoped, routes = {}, parent_routes if cfg.init == "pretrained" else None
    added = []  # this run's route rows (lineage)
    if cfg.task_scoped and adapted:
        if replayed:
            raise FinetuneError("--replay with --scope tasks: the scoped fine-tune leaves every pretrained tensor "
                                "unchanged, so rehearsal protects nothing; drop --replay or use --scope embodiment")
        scoped = scope_entries(dict(parent.specs), parent_routes, adapted, cfg.scope_tag or run_dir.name,
                               cfg.scope_tag is not None)
        new_routes = routes_for(datasets, scoped)
        added = new_routes.to_dict()["routes"]
        try:
            routes = parent_routes.merge(new_routes)
        except TransformError as e:
            raise FinetuneError(f"route clash: {e} (to train that entry further: --scope embodiment)") from None
    parent_stats = bundle_stats(manifest, str(parent_dir))
    stats, decisions = dict(parent_stats), {}
    entry_specs = {**{e: parent.specs[e] for e in (routes.entries if routes else {}) if e in parent.specs},
                   **{s.name: s for s in scoped.values()}}
    entry_of = [routed_entry(routes, ds) if routes else ds.embodiment for ds in datasets]
    for entry in dict.fromkeys(entry_of):  # stats per model entry the data trains (a scoped machine keeps its own)
        group = [ds for ds, e in zip(datasets, entry_of) if e == entry]
        base = parent_stats.get(entry, parent_stats.get(group[0].embodiment))
        stats[entry], decisions[entry] = choose_stats(cfg.stats, base, merge_stats([d.stats for d in group]),
                                                      norm_mode)
        if progress:
            print(f"genba finetune: stats for {entry!r}: {decisions[entry]}")
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
                                           progress, routes)
    return FinetuneResult(run_dir, ckpt_dir, step, loss, [s.name for s in new_specs], adapted, decisions,
                          n_train, history, entries, routes)


def _train(model, data, cfg: FinetuneConfig, run_dir: Path, stats: dict, manifest: dict, lineage: dict,
           norm_mode: str, progress: bool, routes=None):
    """AdamW over the trainable parameters, the trainer's schedule and batches; one checkpoint at the end."""
    from genba.data.windows import mixed_sampler
    from genba.finite import check_step
    from genba.model.bundle import save_bundle
    from genba.model.lora import merged_state_dict
    from genba.train import checkpoint as ckpt
    from genba.train.monitor import Monitor
    from genba.train.trainer import build_optimizer, lr_at, make_batch

    tc = cfg.train
    device = next(model.parameters()).device
    optimizer = build_optimizer(model, tc)
    sampler = mixed_sampler(data.mixed, 2**62, seed=tc.seed)
    total = tc.steps
    monitor = Monitor(run_dir, enabled=True, total_steps=total, progress=progress, tensorboard=cfg.tensorboard)
    history, t0, step, sums = [], time.perf_counter(), 0, []
    try:
        while step < total:
            if tc.minutes is not None:  # time budget: re-fit the schedule to the measured step rate
                elapsed = time.perf_counter() - t0
                if elapsed >= tc.minutes * 60:
                    break
                if step >= 5:
                    total = max(step + 1, int(step * tc.minutes * 60 / elapsed))
            for g in optimizer.param_groups:
                g["lr"] = lr_at(step, tc, total)
            idx = sampler.indices(step * tc.batch_size, (step + 1) * tc.batch_size)
            loss, _ = model.loss(make_batch(data, idx, device))
            loss.backward()
            params = [p for p in model.parameters() if p.grad is not None]
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, tc.grad_clip or float("inf")))
            check_step(step + 1, loss, grad_norm, where="finetune")
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            sums.append(loss.item())
            if step % tc.log_every == 0 or step == total:
                rec = {"step": step, "loss": float(np.mean(sums)), "lr": optimizer.param_groups[0]["lr"],
                       "grad_norm": grad_norm, "elapsed_s": round(time.perf_counter() - t0, 3), "total_steps": total}
                sums = []
                history.append(rec)
                monitor.log(rec)
                monitor.advance(step, total, rec["loss"])
        monitor.advance(step, step)
    finally:
        monitor.close()

    def write_bundle(directory: Path, _full: dict) -> None:
        plain = _plain_copy(model, merged_state_dict(model))
        save_bundle(directory, plain, stats={n: stats[n] for n in plain.specs}, preset=manifest["preset"],
                    normalization=norm_mode, lineage=lineage, extra={"train_preset": "finetune"}, routes=routes)

    state = {"step": step, "total_steps": total, "elapsed": time.perf_counter() - t0, "kind": "finetune"}
    final = ckpt.save_checkpoint(run_dir, step, model, optimizer, state, write_bundle, keep_last=1)
    return step, (history[-1]["loss"] if history else float("nan")), history, final


# ---- CLI --------------------------------------------------------------------------------
def register(subparsers: argparse._SubParsersAction) -> None:
    from genba.train.commands import _dirs, add_access_args

    p = subparsers.add_parser("finetune", help="adapt a pretrained checkpoint to new tasks or a new embodiment",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", help="pretrained checkpoint dir or run dir (its latest checkpoint)")
    p.add_argument("--data", required=True, type=_dirs, help="new datasets, comma-separated")
    p.add_argument("--out", required=True, type=Path, help="run directory of the adapted model")
    p.add_argument("--overwrite", action="store_true", help="start over in an --out that already holds a run")
    p.add_argument("--mode", choices=MODES, default="lora", help="what trains besides the stems/heads")
    p.add_argument("--scope", choices=SCOPES, default="auto",
                   help="new tasks of a known machine: 'tasks' trains a routed copy of its stem/head (old tasks "
                        "bit-identical; needs frozen-trunk), 'embodiment' trains the machine's own; auto: tasks "
                        "with --mode frozen-trunk, else embodiment")
    p.add_argument("--scope-tag", help="name tag of task-scoped entries, MACHINE__TAG (default: the --out dir name)")
    p.add_argument("--spec", type=Path, help="embodiment spec JSON replacing the datasets' own")
    p.add_argument("--init-from", metavar="MACHINE",
                   help="new embodiment: warm-start its stem and head from this known machine's, channel by "
                        "channel (same names and units; see --channel-map)")
    p.add_argument("--channel-map", metavar="NEW=SOURCE,...",
                   help="renames for --init-from, e.g. i_a=i,u_a=u (also maps ref_i_a, err_i_a, ...)")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--steps", type=int, help="optimizer steps (default 500)")
    length.add_argument("--minutes", type=float, help="wall-time budget")
    p.add_argument("--lora-rank", type=int, default=8, help="adapter rank with --mode lora")
    p.add_argument("--lora-alpha", type=float, default=None, help="adapter scale numerator (default: the rank)")
    p.add_argument("--stats", choices=STATS_POLICIES, default="auto",
                   help="normalization stats of known embodiments")
    p.add_argument("--replay", type=_dirs, default=(), help="pretraining datasets mixed back in (rehearsal)")
    p.add_argument("--replay-weight", type=float, default=0.0,
                   help="share of replay samples (default 0.3 with --replay)")
    p.add_argument("--from-scratch", action="store_true", help="baseline: same architecture, fresh weights, all trained")
    p.add_argument("--batch-size", type=int, help="batch size (default 64)")
    p.add_argument("--lr", type=float, help="peak learning rate (default 1e-3)")
    p.add_argument("--seed", type=int, help="seed for new weights and data order")
    p.add_argument("--lang", choices=("en", "ja", "mix"), help="instruction language drawn in training")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_access_args(p)
    p.set_defaults(func=run, purpose="finetune")  # the declared purpose of governed reads


def run(args: argparse.Namespace) -> int:
    from genba.data.layout import DatasetError
    from genba.finite import NonFiniteError
    from genba.model.bundle import BundleError
    from genba.train.checkpoint import CheckpointError
    from genba.train.commands import access_from_args
    from genba.train.config import TrainConfigError

    try:
        over = {k: v for k, v in {"steps": args.steps, "minutes": args.minutes, "batch_size": args.batch_size,
                                  "lr": args.lr, "seed": args.seed, "lang": args.lang}.items() if v is not None}
        cfg = FinetuneConfig(mode=args.mode, lora_rank=args.lora_rank, lora_alpha=args.lora_alpha, stats=args.stats,
                             init="scratch" if args.from_scratch else "pretrained", replay_weight=args.replay_weight,
                             scope=args.scope, scope_tag=args.scope_tag, init_from=args.init_from,
                             channel_map=parse_channel_map(args.channel_map),
                             train=default_train_config().replace(**over))
        spec = read_spec_file(args.spec) if args.spec else None
        # replay data is read too, so it is authorized (and audited) with the new data
        read_table, lineage = access_from_args(argparse.Namespace(**{**vars(args),
                                                                    "data": [*args.data, *args.replay]}))
        res = finetune(args.checkpoint, args.data, args.out, cfg, spec=spec, replay=args.replay,
                       read_table=read_table, lineage=lineage, overwrite=args.overwrite, progress=not args.no_progress)
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
