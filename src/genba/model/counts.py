"""Exact parameter counts of a preset, built on the ``meta`` device (no memory for weights).

A 1T preset builds in well under a second. Stems and heads depend on the
embodiments: :func:`nominal_specs` stands in when no checkpoint gives them.
``genba model info`` prints these counts; the training planner reads them.
"""

from __future__ import annotations

import torch

from genba.data.spec import EmbodimentSpec
from genba.model.config import get_preset
from genba.model.generalist import Generalist

COMPONENTS = ("attention", "dense_mlp", "routed_experts", "shared_experts", "router", "norms",
              "language_encoder", "embeddings", "stems_heads", "image_encoder")


def nominal_specs() -> dict[str, EmbodimentSpec]:
    """Stand-in embodiments for counting when no checkpoint is given (dims: obs, action)."""
    dims = {"arm": (39, 4), "drive": (8, 2), "jointarm": (24, 7)}
    return {n: _spec(n, o, a) for n, (o, a) in dims.items()}


def _spec(name: str, obs: int, act: int) -> EmbodimentSpec:
    return EmbodimentSpec(name=name, robot_type="nominal", obs_names=tuple(f"o{i}" for i in range(obs)),
                          obs_units=("",) * obs, obs_low=(-1.0,) * obs, obs_high=(1.0,) * obs,
                          action_names=tuple(f"a{i}" for i in range(act)), action_units=("",) * act,
                          action_low=(-1.0,) * act, action_high=(1.0,) * act, control_period=0.05,
                          action_meaning="nominal")


def component_of(name: str, model: Generalist) -> str:
    """Which component a parameter name belongs to (see COMPONENTS)."""
    parts = name.split(".")
    if parts[0] in ("stems", "heads"):
        return "stems_heads"
    if parts[0] == "rate" or name.startswith("lang.embed"):
        return "embeddings"
    if parts[0] == "lang":
        return "language_encoder"
    if parts[0] == "image":  # the shared camera encoder (genba.model.vision); only with camera embodiments
        return "image_encoder"
    if "norm" in name:
        return "norms"
    if ".attn." in name:
        return "attention"
    if ".ffn.shared." in name:
        return "shared_experts"
    if ".ffn.router" in name:
        return "router"
    if ".ffn." in name:
        layer = model.trunk.layers[int(parts[2])]
        return "routed_experts" if hasattr(layer.ffn, "n_experts") else "dense_mlp"
    raise ValueError(f"parameter {name!r} belongs to no known component")


def parameter_counts(model: Generalist) -> dict[str, dict[str, int]]:
    """``{component: {"total": n, "active": n}}`` plus a ``"total"`` row.

    Active = used per token: routed experts count ``top_k / n_experts`` of their
    parameters (exact: every expert has the same size); stems and heads count one
    embodiment's (the largest), since a sample drives one machine.
    """
    cfg = model.cfg
    rows = {c: {"total": 0, "active": 0} for c in COMPONENTS}
    per_emb: dict[str, int] = {}
    for name, p in model.named_parameters():
        comp, n = component_of(name, model), p.numel()
        rows[comp]["total"] += n
        if comp == "routed_experts":
            rows[comp]["active"] += n // cfg.n_experts * cfg.top_k
        elif comp == "stems_heads":
            emb = name.split(".")[1]
            per_emb[emb] = per_emb.get(emb, 0) + n
        else:
            rows[comp]["active"] += n
    rows["stems_heads"]["active"] = max(per_emb.values(), default=0)
    rows["total"] = {k: sum(r[k] for r in rows.values()) for k in ("total", "active")}
    return rows


def build_meta(preset: str, specs: dict[str, EmbodimentSpec]) -> Generalist:
    with torch.device("meta"):
        return Generalist(get_preset(preset), specs)
