"""Shared test fixtures: toy embodiment specs, their stats, a tiny model and a tiny checkpoint.

One place for what the model, eval, serve and golden tests used to build each
on their own (no datasets, no envs): ``toy_specs()`` are two synthetic machines
(an arm and a fast drive), ``build_model`` a materialized model of any preset,
``tiny_checkpoint`` a saved bundle of the ``debug`` preset. Import as
``from tests.fixtures import ...`` (pytest runs from the repository root).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from genba.data.spec import EmbodimentSpec
from genba.data.stats import compute_stats
from genba.data.transforms import RouteInstruction
from genba.model.bundle import save_bundle
from genba.model.config import get_preset
from genba.model.generalist import Generalist


def toy_spec(name: str, obs: int, act: int, period: float = 0.05) -> EmbodimentSpec:
    """A synthetic machine: ``obs`` observations in [-5, 5] m, ``act`` actions in [-2, 2]."""
    return EmbodimentSpec(name=name, robot_type="synthetic", obs_names=tuple(f"{name}_o{i}" for i in range(obs)),
                          obs_units=("m",) * obs, obs_low=(-5.0,) * obs, obs_high=(5.0,) * obs,
                          action_names=tuple(f"{name}_a{i}" for i in range(act)), action_units=("",) * act,
                          action_low=(-2.0,) * act, action_high=(2.0,) * act, control_period=period,
                          action_meaning="joint velocity")


def plain_spec(name: str, obs: int, act: int, period: float, *, obs_low: float = -10.0, robot_type: str | None = None,
               obs_names=None, act_names=None, wide_first: bool = False) -> EmbodimentSpec:
    """The data and train tests' synthetic machine: observations ``o{i}`` in [obs_low, 10] m, actions ``a{i}`` in
    [-1, 1] V. ``wide_first``: entry 0 of both spans +-1e4 (data_synth's coded episodes store a code there, and
    the opener refuses values far outside a spec's limits)."""
    obs_names = tuple(obs_names or (f"o{i}" for i in range(obs)))
    act_names = tuple(act_names or (f"a{i}" for i in range(act)))
    first_o, first_a = ((-1e4, 1e4), (-1e4, 1e4)) if wide_first else ((obs_low, 10.0), (-1.0, 1.0))
    n_o, n_a = len(obs_names) - 1, len(act_names) - 1
    return EmbodimentSpec(name=name, robot_type=robot_type or f"{name}_robot", obs_names=obs_names,
                          obs_units=("m",) * len(obs_names), obs_low=(first_o[0],) + (obs_low,) * n_o,
                          obs_high=(first_o[1],) + (10.0,) * n_o, action_names=act_names,
                          action_units=("V",) * len(act_names), action_low=(first_a[0],) + (-1.0,) * n_a,
                          action_high=(first_a[1],) + (1.0,) * n_a, control_period=period,
                          action_meaning="joint velocity")


def toy_specs() -> dict[str, EmbodimentSpec]:
    """An arm (7 obs, 3 actions, 20 Hz) and a drive (4 obs, 2 actions, 1 kHz)."""
    return {"arm": toy_spec("arm", 7, 3), "drive": toy_spec("drive", 4, 2, period=1e-3)}


def routed_spec(spec: EmbodimentSpec, tag: str) -> EmbodimentSpec:
    """The spec of a task-scoped entry ``<machine>__<tag>``: the machine's spec under another name."""
    return dataclasses.replace(spec, name=f"{spec.name}__{tag}")


def toy_stats(specs: Mapping[str, EmbodimentSpec], seed: int = 0) -> dict:
    """Stats of random frames: observations around 1 (std 2), actions around 0.5 (std 0.3)."""
    rng = np.random.default_rng(seed)
    return {n: compute_stats({"observation.state": rng.normal(1.0, 2.0, (200, s.obs_dim)).astype(np.float32),
                              "action": rng.normal(0.5, 0.3, (200, s.action_dim)).astype(np.float32)})
            for n, s in specs.items()}


def spec_stats(spec: EmbodimentSpec, seed: int = 0) -> dict:
    """Plausible stats for a real machine: observations around 0, actions spread over the spec's limits."""
    rng = np.random.default_rng(seed)
    lo, hi = np.asarray(spec.action_low), np.asarray(spec.action_high)
    return compute_stats({"observation.state": rng.normal(size=(200, spec.obs_dim)).astype(np.float32),
                          "action": rng.uniform(lo, hi, size=(200, spec.action_dim)).astype(np.float32)})


def limit_stats(spec: EmbodimentSpec) -> dict:
    """Stats (JSON form) from the spec's limits, clipped to +-10: mean and std the middle and half-range."""
    def one(lo, hi):
        lo = np.clip(np.asarray(lo, float), -10, 10)
        hi = np.clip(np.asarray(hi, float), -10, 10)
        mid, half = (lo + hi) / 2, np.maximum((hi - lo) / 2, 1e-3)
        return {"mean": mid.tolist(), "std": half.tolist(), "min": lo.tolist(), "max": hi.tolist(),
                "q01": lo.tolist(), "q99": hi.tolist()}
    return {"observation.state": one(spec.obs_low, spec.obs_high), "action": one(spec.action_low, spec.action_high)}


def toy_batch(cfg, specs, B: int = 3, seed: int = 0, text: str = "pick up the red block") -> dict:
    """A training batch ``{embodiment: {...}}`` of B random samples per embodiment."""
    g = torch.Generator().manual_seed(seed)
    ids = list(text.encode("utf-8"))[: cfg.max_lang_len]
    tokens = torch.zeros(B, cfg.max_lang_len, dtype=torch.long)
    tokens[:, : len(ids)] = torch.tensor(ids) + 1
    mask = tokens > 0
    out = {}
    for n, s in specs.items():
        out[n] = {"observation.state": torch.randn(B, cfg.history, s.obs_dim, generator=g),
                  "observation.state_is_pad": torch.zeros(B, cfg.history, dtype=torch.bool),
                  "lang_tokens": tokens.clone(), "lang_mask": mask.clone(),
                  "action": torch.randn(B, cfg.chunk, s.action_dim, generator=g),
                  "action_is_pad": torch.zeros(B, cfg.chunk, dtype=torch.bool)}
    return out


def build_model(cfg, specs, seed: int = 0, linear: bool = True) -> Generalist:
    """A materialized model; ``linear``: give the observation-linear paths random weights (they start at
    zero), so tests that compare two ways of computing actions also compare that path."""
    with torch.device("meta"):
        model = Generalist(cfg, specs)
    model.to_empty(device="cpu")
    torch.manual_seed(seed)
    model.init_weights()
    if linear:
        with torch.no_grad():
            for head in model.heads.values():
                if head.obs_linear is not None:
                    head.obs_linear.fc.weight.normal_(std=0.05)
                    head.obs_linear.fc.bias.normal_(std=0.05)
    return model


def tiny_checkpoint(out: str | Path, specs: Mapping[str, EmbodimentSpec] | None = None, *, head: str = "l1",
                    seed: int = 0, stats: Mapping | None = None, linear: bool = True,
                    routes: RouteInstruction | None = None, lineage: Mapping | None = None) -> Path:
    """A ``debug``-preset bundle at ``out`` (untrained weights): ``toy_specs()`` and ``toy_stats`` by default."""
    specs = dict(specs or toy_specs())
    model = build_model(dataclasses.replace(get_preset("debug"), head=head), specs, seed=seed, linear=linear)
    return save_bundle(out, model, stats=dict(stats or toy_stats(specs)), preset="debug", routes=routes,
                       lineage=lineage)
