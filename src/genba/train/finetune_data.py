"""The data side of `genba finetune`: specs, datasets, stats, task-scoped entries and routes.

Split from :mod:`genba.train.finetune` (which owns the model, the training loop
and the CLI) so each reads in one sitting; the module docstring there explains
the decisions these helpers implement (stats policy, ``--scope tasks``).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from genba.data.language import LANGS

SCOPE_SEP = "__"  # entry name = machine + SCOPE_SEP + tag (spec names allow letters, digits, '_' and '-')
STATS_POLICIES = ("auto", "keep", "pool", "data")
Z_LIMIT = 6.0  # |normalized q01/q99| beyond which new data counts as outside the parent's range
LIMIT_TOL = 1e-4  # relative tolerance of the limit check (float32 rounding of recorded actions)


class FinetuneError(ValueError):
    """Adaptation that cannot run as asked; the message names the input at fault."""


def read_spec_file(path: str | os.PathLike):
    """An EmbodimentSpec from a JSON file (a bare spec, or a dataset's ``meta/genba.json`` with ``spec``)."""
    from genba.data.spec import EmbodimentSpec, SpecError

    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FinetuneError(f"--spec {path}: cannot read JSON ({e})") from None
    if isinstance(doc, dict) and "spec" in doc and "obs_names" not in doc:
        doc = doc["spec"]
    try:
        return EmbodimentSpec.from_dict(doc)
    except SpecError as e:
        raise FinetuneError(f"--spec {path}: {e}") from None


def check_spec_fits(spec, ds) -> None:
    """Refuse a spec whose dimensions, names or limits disagree with the dataset's frames."""
    from genba.data.layout import ACTION, STATE

    feats = ds.info["features"]
    for key, dim, names, frames in ((STATE, spec.obs_dim, spec.obs_names, ds.observation),
                                    (ACTION, spec.action_dim, spec.action_names, ds.action)):
        if frames.shape[1] != dim:
            raise FinetuneError(f"spec {spec.name!r} has {dim} {key} entries but dataset {ds.root} has "
                                f"{frames.shape[1]} per frame")
        have = feats.get(key, {}).get("names")
        if have is not None and list(have) != list(names):
            diff = next(i for i, (a, b) in enumerate(zip(have, names)) if a != b)
            raise FinetuneError(f"spec {spec.name!r} names {key}[{diff}] {names[diff]!r} but dataset {ds.root} "
                                f"calls it {have[diff]!r}: is this the right spec for this data?")
    _check_limits(spec, ds, "action", spec.action_names, spec.action_low, spec.action_high, ds.action)
    _check_limits(spec, ds, "observation", spec.obs_names, spec.obs_low, spec.obs_high, ds.observation)


def _check_limits(spec, ds, kind, names, low, high, frames) -> None:
    lo, hi = np.asarray(low, np.float64), np.asarray(high, np.float64)
    span = np.where(np.isfinite(hi - lo), hi - lo, 0.0)
    x = frames.astype(np.float64)
    outside = (x < lo - LIMIT_TOL * span) | (x > hi + LIMIT_TOL * span)
    if outside.any():
        i = int(np.argmax(outside.sum(0)))
        raise FinetuneError(
            f"spec {spec.name!r}: {int(outside[:, i].sum())} of {len(x)} frames of dataset {ds.root} have "
            f"{kind} {names[i]!r} outside the spec's limits [{lo[i]:g}, {hi[i]:g}] (data spans "
            f"[{x[:, i].min():g}, {x[:, i].max():g}]): the limits or the units of the spec are wrong")


def open_data(dirs: Sequence[str | os.PathLike], spec_override=None, opener: Callable | None = None) -> list:
    """Open every dataset; with ``spec_override`` each must fit it and takes it as its spec."""
    from genba.data.dataset import open_dataset
    from genba.data.layout import DatasetError

    out = []
    for d in dirs:
        try:
            ds = (opener or open_dataset)(d)
        except DatasetError as e:
            raise FinetuneError(str(e)) from None
        spec = spec_override if spec_override is not None else ds.spec
        check_spec_fits(spec, ds)
        out.append(dataclasses.replace(ds, spec=spec) if spec is not ds.spec else ds)
    return out


def plan_embodiments(parent_specs: dict, datasets: list, replay: list) -> tuple[list, list]:
    """(new specs, names of known embodiments adapted); refuse a known name with a different spec."""
    from genba.data.spec import diff_specs

    new, adapted = {}, []
    for is_replay, ds in [(False, d) for d in datasets] + [(True, d) for d in replay]:
        name, spec = ds.embodiment, ds.spec
        if name in parent_specs:
            if spec != parent_specs[name]:
                diff = "; ".join(diff_specs(parent_specs[name], spec))
                raise FinetuneError(f"dataset {ds.root}: embodiment {name!r} differs from the checkpoint's spec "
                                    f"(checkpoint vs data): {diff}; a changed machine is a new embodiment: give its "
                                    "spec another name")
            if not is_replay and name not in adapted:
                adapted.append(name)
        elif is_replay:
            raise FinetuneError(f"--replay {ds.root}: embodiment {name!r} is not in the checkpoint; replay is for "
                                "pretraining data")
        elif name in new and new[name] != spec:
            raise FinetuneError(f"dataset {ds.root}: embodiment {name!r} has a spec that differs from another "
                                f"--data dir of the same name (that dir vs this one): "
                                f"{'; '.join(diff_specs(new[name], spec))}")
        else:
            new[name] = spec
    return list(new.values()), adapted


def scope_entries(parent_specs: dict, parent_routes, adapted: Sequence[str], tag: str, explicit: bool) -> dict:
    """``{machine: spec of its task-scoped entry}`` for every adapted machine; see the module docstring.

    The entry is ``machine__tag``; a derived tag that is taken gets ``-2``, ``-3``...; an explicit one is refused.
    """
    from genba.data.spec import SpecError

    slug = "".join(c if c.isalnum() or c in "_-" else "-" for c in tag).strip("-_") or "ft"
    out = {}
    for name in adapted:
        if name in parent_routes.entries:
            raise FinetuneError(f"embodiment {name!r} of the data is a task-scoped entry of the checkpoint; name "
                                f"the machine {parent_routes.entries[name]!r} instead")
        entry, k = f"{name}{SCOPE_SEP}{slug}", 1
        while entry in parent_specs:
            if explicit:
                raise FinetuneError(f"--scope-tag {tag!r}: the checkpoint already has an entry {entry!r}; "
                                    "choose another tag")
            k += 1
            entry = f"{name}{SCOPE_SEP}{slug}-{k}"
        try:
            out[name] = dataclasses.replace(parent_specs[name], name=entry)
        except SpecError as e:
            raise FinetuneError(f"--scope-tag {tag!r}: {e}") from None
    return out


def routes_for(datasets: list, scoped: dict):
    """A RouteInstruction sending every instruction (en and ja) of the scoped machines' data to their entry."""
    from genba.data.transforms import RouteInstruction

    routes = {}
    for ds in datasets:
        if ds.embodiment in scoped:
            for task in ds.tasks:
                for lang in LANGS:
                    if task.get(lang):
                        routes[ds.embodiment, task[lang]] = scoped[ds.embodiment].name
    return RouteInstruction(routes)


def choose_stats(policy: str, parent: dict | None, data: dict, mode: str) -> tuple[dict, str]:
    """(stats to store, decision) for one embodiment; see the module docstring."""
    from genba.data.stats import aggregate_stats

    if parent is None:
        return data, "data (new embodiment)"
    if policy == "auto":
        worst = _worst_z(parent, data, mode)
        policy = "keep" if worst <= Z_LIMIT else "pool"
        why = f" (new data's q01/q99 reach {worst:.1f} normalized units; limit {Z_LIMIT:g})"
    else:
        why = " (forced)"
    if policy == "keep":
        return parent, "keep parent" + why
    if policy == "pool":
        return aggregate_stats([parent, data]), "pooled parent + new data" + why
    return data, "new data only" + why


def _worst_z(parent: dict, data: dict, mode: str) -> float:
    from genba.data.transforms import Normalize

    norm = Normalize({"x": parent}, mode=mode)
    worst = 0.0
    for q in ("q01", "q99"):
        sample = {"embodiment": "x", **{k: np.asarray(data[k][q], np.float32) for k in norm.keys}}
        z = norm(sample)
        worst = max(worst, *(float(np.abs(np.asarray(z[k])).max()) for k in norm.keys))
    return worst


def build_data(datasets: list, replay: list, stats: dict, mode: str, cfg, model_cfg, route=None,
               entry_specs: dict | None = None):
    """The trainer's TrainData over new data (and replay at ``cfg.replay_weight``).

    ``route`` (a RouteInstruction) keys each dataset's samples to the model entry its instructions route to;
    ``entry_specs`` holds the specs of task-scoped entries.
    """
    from genba.data.transforms import Normalize, NormalizeImages, RandomShift, RouteInstruction, TokenizeInstruction
    from genba.data.windows import MixedDataset, WindowDataset
    from genba.train.trainer import TrainData

    tc = cfg.train
    route, entry_specs = route or RouteInstruction(), entry_specs or {}
    parts = [WindowDataset(ds, history=model_cfg.history, chunk=model_cfg.chunk, lang=tc.lang, seed=tc.seed)
             for ds in datasets + replay]
    specs = {}
    for part, ds in zip(parts, datasets + replay):
        part.embodiment = routed_entry(route, ds)  # the batch key (make_batch groups by it)
        specs[part.embodiment] = entry_specs.get(part.embodiment, ds.spec)
    w_new = (1.0 - cfg.replay_weight) / len(datasets)
    weights = [w_new] * len(datasets) + ([cfg.replay_weight / len(replay)] * len(replay) if replay else [])
    used = {k: stats[k] for k in specs}
    return TrainData(datasets + replay, MixedDataset(parts, weights), specs, used, Normalize(used, mode=mode),
                     TokenizeInstruction(model_cfg.max_lang_len), NormalizeImages(used),
                     RandomShift(tc.image_shift) if tc.image_shift else None)


def routed_entry(route, ds) -> str:
    """The one model entry every instruction (en and ja) of dataset ``ds`` routes to."""
    entries = {route({"embodiment": ds.embodiment, "instruction": t[lang]})["embodiment"]
               for t in ds.tasks for lang in LANGS if t.get(lang)} or {ds.embodiment}
    if len(entries) != 1:
        raise FinetuneError(f"dataset {ds.root}: its tasks route to several model entries {sorted(entries)}; "
                            "split it so each dataset feeds one entry")
    return entries.pop()


# ---- the model --------------------------------------------------------------------------
