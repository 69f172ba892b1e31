"""Synthetic embodiments, batches and stats for the model tests (no datasets, no envs)."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from genba.data.spec import EmbodimentSpec
from genba.data.stats import compute_stats
from genba.model.config import get_preset
from genba.model.generalist import Generalist


def make_spec(name: str, obs: int, act: int, period: float = 0.05) -> EmbodimentSpec:
    return EmbodimentSpec(name=name, robot_type="synthetic", obs_names=tuple(f"{name}_o{i}" for i in range(obs)),
                          obs_units=("m",) * obs, obs_low=(-5.0,) * obs, obs_high=(5.0,) * obs,
                          action_names=tuple(f"{name}_a{i}" for i in range(act)), action_units=("",) * act,
                          action_low=(-2.0,) * act, action_high=(2.0,) * act, control_period=period,
                          action_meaning="joint velocity")


def make_specs() -> dict[str, EmbodimentSpec]:
    return {"arm": make_spec("arm", 7, 3), "drive": make_spec("drive", 4, 2, period=1e-3)}


def make_stats(specs, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {n: compute_stats({"observation.state": rng.normal(1.0, 2.0, (200, s.obs_dim)).astype(np.float32),
                              "action": rng.normal(0.5, 0.3, (200, s.action_dim)).astype(np.float32)})
            for n, s in specs.items()}


def make_batch(cfg, specs, B: int = 3, seed: int = 0, text: str = "pick up the red block") -> dict:
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


def build(cfg, specs, seed: int = 0, linear: bool = True) -> Generalist:
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


