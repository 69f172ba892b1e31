"""The model part of a checkpoint directory: ``model.safetensors`` + ``checkpoint.json``.

``checkpoint.json`` carries everything needed to drive a machine from the checkpoint
alone: the model config and preset name, the embodiment specs, the per-embodiment
normalization statistics, the tokenizer and lineage (datasets, training run),
and the route table of task-scoped entries (``routes``: which (embodiment,
instruction) pairs a fine-tune gave their own stem and head, see
``genba.data.transforms.RouteInstruction``; absent = no routes).
Stats live here because fine-tuning breaks quietly when they drift from the
weights (openpi #817, #433).

Writes are atomic (temporary file, then ``os.replace``), weights first and
``checkpoint.json`` last, so a directory with a ``checkpoint.json`` always has the weights
it describes. ``checkpoint.json`` records the weights' size and SHA-256; loading
checks both (a size or content mismatch is a truncated, corrupt or replaced
file: issue 19 found 16 flipped bytes serving silently), then the preset a
caller asked for and the tensor names and shapes against the config, and names
the file in every error. A bundle written before digests were recorded loads
with the size check only.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load, save_file

from genba.atomic import write_atomic
from genba.data.spec import EmbodimentSpec, SpecError
from genba.data.stats import stats_from_json, stats_to_json
from genba.data.transforms import MODES, RouteInstruction, TokenizeInstruction, TransformError
from genba.model.config import ModelConfig, preset_name_of
from genba.model.generalist import Generalist, build_model

FORMAT = "genba-model/1"
WEIGHTS = "model.safetensors"
MANIFEST = "checkpoint.json"
# The manifest's name before issue 18 (it clashed with a dataset's meta/genba.json): still read, never written.
LEGACY_MANIFEST = "genba.json"


class BundleError(ValueError):
    """A checkpoint that is missing, truncated, of another preset or inconsistent."""


def tokenizer_config(cfg: ModelConfig) -> dict[str, Any]:
    """How instructions become ``lang_tokens``: ``TokenizeInstruction.to_dict()`` for ``cfg``."""
    return TokenizeInstruction(cfg.max_lang_len).to_dict()


def save_bundle(directory: str | os.PathLike, model: Generalist, *, stats: Mapping[str, Mapping[str, Any]],
                preset: str | None = None, normalization: str = "mean_std",
                lineage: Mapping[str, Any] | None = None, extra: Mapping[str, Any] | None = None,
                state_dict: Mapping[str, torch.Tensor] | None = None,
                routes: RouteInstruction | None = None) -> Path:
    """Write the weights and ``checkpoint.json`` into ``directory`` (created); returns the directory.

    ``stats`` is ``{embodiment: {"observation.state": {...}, "action": {...}}}`` as
    ``genba.data.stats`` computes them; every embodiment of the model needs an entry.
    ``normalization`` is the ``mode`` of the Normalize/Unnormalize transforms used in
    training (the policy rebuilds the same ones). ``state_dict`` overrides
    ``model.state_dict()``: a sharded (FSDP2) trainer passes the gathered full one
    (``get_model_state_dict(..., full_state_dict=True)``), with the plain model's names.
    ``routes`` (task-scoped entries) must only name embodiments and entries of the model.
    """
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    if normalization not in MODES:
        raise BundleError(f"save_bundle: normalization {normalization!r}, expected one of {MODES}")
    missing = sorted(set(model.specs) - set(stats))
    if missing:
        raise BundleError(f"save_bundle: no normalization stats for embodiments {missing}")
    if routes is not None:
        check_routes(routes, model.specs, str(out / MANIFEST))
    source = model.state_dict() if state_dict is None else state_dict
    _check_shapes(out / WEIGHTS, model, source, preset or "custom")
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in source.items()}
    write_atomic(out / WEIGHTS, lambda p: save_file(tensors, str(p), metadata={"format": FORMAT}))
    manifest = {
        "format": FORMAT,
        "preset": preset or preset_name_of(model.cfg) or "custom",
        "config": model.cfg.to_dict(),
        "specs": {n: s.to_dict() for n, s in model.specs.items()},
        "stats": {n: stats_to_json(stats[n]) for n in model.specs},
        "normalization": {"mode": normalization},
        "tokenizer": tokenizer_config(model.cfg),
        "lineage": dict(lineage or {}),
        "weights": {"file": WEIGHTS, "num_bytes": (out / WEIGHTS).stat().st_size,
                    "sha256": sha256_file(out / WEIGHTS), "num_params": sum(p.numel() for p in model.parameters())},
        **dict(extra or {}),
    }
    if routes is not None and routes.routes:
        manifest["routes"] = routes.to_dict()
    text = json.dumps(manifest, indent=1, ensure_ascii=False)
    write_atomic(out / MANIFEST, text)
    return out


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def manifest_path(directory: str | os.PathLike) -> Path:
    """``checkpoint.json`` of a checkpoint, or ``genba.json`` in one written before the rename."""
    d = Path(directory)
    legacy = d / LEGACY_MANIFEST
    return legacy if not (d / MANIFEST).is_file() and legacy.is_file() else d / MANIFEST


def read_manifest(directory: str | os.PathLike) -> dict[str, Any]:
    """``checkpoint.json`` of a checkpoint, checked for format and required keys."""
    path = manifest_path(directory)
    if not path.is_file():
        raise BundleError(f"{path}: not found (is {directory} a genba checkpoint directory?)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BundleError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        got = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise BundleError(f"{path}: format {got!r}, expected {FORMAT!r}")
    for key in ("preset", "config", "specs", "stats", "tokenizer"):
        if key not in manifest:
            raise BundleError(f"{path}: lacks {key!r}")
    return manifest


def bundle_specs(manifest: Mapping[str, Any], source: str = MANIFEST) -> dict[str, EmbodimentSpec]:
    try:
        return {n: EmbodimentSpec.from_dict(d) for n, d in manifest["specs"].items()}
    except SpecError as e:
        raise BundleError(f"{source}: bad embodiment spec: {e}") from None


def bundle_stats(manifest: Mapping[str, Any], source: str = MANIFEST) -> dict[str, dict]:
    return {n: stats_from_json(s, source=f"{source} stats[{n!r}]") for n, s in manifest["stats"].items()}


def check_routes(routes: RouteInstruction, specs: Mapping[str, EmbodimentSpec], source: str) -> None:
    """Every route joins a machine of the model to an entry of the model with the same spec but its name."""
    for (emb, instruction), entry in routes.routes.items():
        for name in (emb, entry):
            if name not in specs:
                raise BundleError(f"{source}: route ({emb!r}, {instruction!r}) -> {entry!r} names {name!r}, "
                                  f"which the model lacks (has {sorted(specs)})")
        if emb in routes.entries:
            raise BundleError(f"{source}: route ({emb!r}, {instruction!r}) starts at {emb!r}, itself a routed entry")
        if specs[entry].to_dict() != {**specs[emb].to_dict(), "name": entry}:
            raise BundleError(f"{source}: routed entry {entry!r} has a spec that differs from {emb!r}'s "
                              "beyond its name")


def bundle_routes(manifest: Mapping[str, Any], source: str = MANIFEST) -> RouteInstruction:
    """The checkpoint's route table (empty without one), checked against its specs."""
    try:
        routes = RouteInstruction.from_dict(manifest.get("routes"))
    except TransformError as e:
        raise BundleError(f"{source}: bad routes: {e}") from None
    check_routes(routes, bundle_specs(manifest, source), source)
    return routes


def load_model(directory: str | os.PathLike, *, preset: str | None = None,
               device: torch.device | str | None = None) -> tuple[Generalist, dict[str, Any]]:
    """Rebuild the model of a checkpoint (eval mode) and return it with its manifest.

    ``preset``, when given, must be the preset the checkpoint was saved as.
    """
    directory = Path(directory)
    manifest = read_manifest(directory)
    if preset is not None and manifest["preset"] != preset:
        raise BundleError(f"{directory}: checkpoint is preset {manifest['preset']!r}, not the requested {preset!r}")
    try:
        cfg = ModelConfig.from_dict(manifest["config"])
    except (TypeError, ValueError) as e:
        raise BundleError(f"{manifest_path(directory)}: bad model config: {e}") from None
    specs = bundle_specs(manifest, str(manifest_path(directory)))
    bundle_routes(manifest, str(manifest_path(directory)))  # a bad table fails here, not at the first routed request
    tensors = _read_weights(directory / WEIGHTS, manifest)
    _check_shapes(directory / WEIGHTS, build_model(cfg, specs, "meta"), tensors, manifest["preset"])
    model = build_model(cfg, specs, device or "cpu")  # init fills non-persistent buffers; the rest is overwritten
    model.load_state_dict(tensors, strict=True)
    return model.eval(), manifest


def verify_weights(directory: str | os.PathLike) -> None:
    """Check a bundle's weights against the size and SHA-256 its ``checkpoint.json`` records (no model built)."""
    directory = Path(directory)
    _weights_bytes(directory / WEIGHTS, read_manifest(directory))


def _weights_bytes(path: Path, manifest: Mapping[str, Any]) -> bytes:
    if not path.is_file():
        raise BundleError(f"{path}: not found")
    want = manifest.get("weights", {}).get("num_bytes")
    have = path.stat().st_size
    if want is not None and have != want:
        raise BundleError(f"{path}: {have} bytes but checkpoint.json records {want}: the file is truncated or "
                          "was replaced")
    data = path.read_bytes()  # read once: hashed, then parsed from memory
    want_sha = manifest.get("weights", {}).get("sha256")
    if want_sha is not None and (have_sha := hashlib.sha256(data).hexdigest()) != want_sha:
        raise BundleError(f"{path}: SHA-256 {have_sha[:16]}... differs from the {want_sha[:16]}... checkpoint.json "
                          "records: the file is corrupt or was replaced")
    return data


def _read_weights(path: Path, manifest: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    data = _weights_bytes(path, manifest)
    try:
        return load(data)
    except (SafetensorError, OSError, ValueError) as e:
        raise BundleError(f"{path}: truncated or corrupt safetensors file ({e})") from None


def _check_shapes(path: Path, model: Generalist, tensors: Mapping[str, torch.Tensor], preset: str) -> None:
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    have = {k: tuple(v.shape) for k, v in tensors.items()}
    problems = [f"missing {k}" for k in want if k not in have]
    problems += [f"unexpected {k}" for k in have if k not in want]
    problems += [f"{k}: file {have[k]} vs config {want[k]}" for k in want if k in have and have[k] != want[k]]
    if problems:
        shown = "; ".join(problems[:5]) + (f"; ... ({len(problems)} problems)" if len(problems) > 5 else "")
        raise BundleError(f"{path}: weights do not match the config of preset {preset!r}: {shown}")
