"""The one policy object evaluation, serving and the OPC UA bridge all call.

``Policy.infer(obs) -> action`` and ``Policy.reset()``; ``obs`` is
``{"embodiment": str, "state": (obs_dim,), "instruction": str}``, plus for a
machine with cameras ``"images": {camera: (h, w, 3) uint8}`` (one frame per
camera of its spec, this step's; the runtime keeps their history). A Policy is a
loaded model, its :class:`~genba.model.runtime.Runtime` (transforms, routes,
instruction cache; where an observation becomes an action) and one stream of
it (history, chunk queue, sampler). ``execute="ensemble"`` ensembles a fresh
chunk every step, ``execute="replan"`` plays a chunk open loop for
``replan_every`` steps (see ``genba.model.runtime``).

Task-scoped entries: a checkpoint adapted with ``genba finetune --scope tasks``
stores a route table (``RouteInstruction``) sending its new tasks' instructions
to a copy of the machine's stem and head; the runtime applies it on every
observation, so old tasks run exactly the parent's computation. ``specs`` lists
the machines a caller may name; routed entries are internal. A stream whose
entry changes (another machine, or an instruction routed elsewhere) starts a
new episode.

Several policies over one model (a server's sessions) step together with
:func:`infer_many` / :func:`infer_chunk_many`: one trunk pass for all of them,
each stream advancing exactly as its own ``infer`` would.

Bad observations raise ValueError naming the field (``obs['state']``, ...) or
the camera (``obs['images']['corner2']``: missing, other shape or dtype).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from genba.data.transforms import RouteInstruction, TokenizeInstruction
from genba.device import default_device
from genba.model.bundle import BundleError, bundle_routes, bundle_stats, check_routes, load_model
from genba.model.config import EXECUTE_MODES
from genba.model.generalist import Generalist
from genba.model.runtime import Execution, model_runtime, step

__all__ = ["EXECUTE_MODES", "Policy", "infer_chunk_many", "infer_many", "load_policy", "validate_obs"]


class Policy:
    """A loaded model plus its runtime and one control stream."""

    def __init__(self, model: Generalist, stats: Mapping[str, Mapping[str, Any]], *, execute: str = "ensemble",
                 replan_every: int | None = None, ensemble_m: float = 0.1, seed: int = 0,
                 normalization: str = "mean_std", device: torch.device | str | None = None,
                 manifest: Mapping[str, Any] | None = None, routes: RouteInstruction | None = None) -> None:
        self.cfg = model.cfg
        self.execution = Execution.make(execute, replan_every, ensemble_m, self.cfg.chunk)
        missing = sorted(set(model.specs) - set(stats))
        if missing:
            raise ValueError(f"Policy: no normalization stats for embodiments {missing}")
        self.device = torch.device(device) if device is not None else default_device()
        self.model = model.to(self.device).eval()
        self.manifest = dict(manifest or {})
        route = routes if routes is not None else bundle_routes(self.manifest) if "routes" in self.manifest \
            else RouteInstruction()
        check_routes(route, model.specs, "Policy routes")
        self.runtime = model_runtime(self.model, stats, normalization=normalization, routes=route,
                                     device=self.device)
        self.specs = {n: model.specs[n] for n in self.runtime.machines}  # machines a caller names
        self.seed = seed
        self.stream = self.runtime.new_stream(self.execution, seed)

    @property
    def execute(self) -> str:
        return self.execution.execute

    @property
    def replan_every(self) -> int:
        return self.execution.replan_every

    @property
    def ensemble_m(self) -> float:
        return self.execution.ensemble_m

    @property
    def entry(self) -> str | None:
        """The model entry serving the stream now (its machine, or a task-scoped entry); None before a step."""
        return self.stream.entry

    _embodiment = entry  # the former private name (tests/train reads it)

    def fork(self) -> Policy:
        """Another control stream (a server session): the same model, runtime, execution and seed, its own
        history, chunk queue and sampler."""
        other = copy.copy(self)
        other.stream = self.runtime.new_stream(self.execution, self.seed)
        return other

    def reset(self) -> None:
        """Start a new episode: forget history and queued chunks; reseed the sampler."""
        self.runtime.reset(self.stream)

    def infer(self, obs: Mapping[str, Any]) -> np.ndarray:
        """The action (action_dim,) float32 for this step, in the machine's units."""
        return self.runtime.step([self.stream], [as_frame(obs, self.specs)])[0][0]

    def observe(self, obs: Mapping[str, Any]) -> None:
        """Take this step's observation into the history without predicting (a caller that plans
        only every few steps, like the OPC UA bridge's prefetcher, still feeds every frame)."""
        self.runtime.observe(self.stream, *as_frame(obs, self.specs))

    def infer_chunk(self, obs: Mapping[str, Any]) -> np.ndarray:
        """The whole predicted chunk (chunk, action_dim) float32 starting at this step (for the server)."""
        return self.runtime.step([self.stream], [as_frame(obs, self.specs)], whole=True)[0][0]


# ---- several control streams, one model call --------------------------------
def infer_many(policies: Sequence[Policy], observations: Sequence[Mapping[str, Any]]) -> list[np.ndarray]:
    """``[p.infer(o) for p, o in zip(policies, observations)]`` with one model call for every
    stream that needs a fresh chunk this step (a server's sessions, an evaluation's envs).

    The policies must share one model; they may serve different embodiments and
    instructions and use different execute modes. Each keeps its own history,
    chunk queue, ensemble and sampler exactly as its own ``infer`` would: a flow
    head draws each stream's noise from that stream's generator. Every
    observation is checked before any policy changes: a bad one raises ValueError
    naming its index and field, and no policy advances.
    """
    return [a[0] for a in step(*_many(policies, observations))]


def infer_chunk_many(policies: Sequence[Policy], observations: Sequence[Mapping[str, Any]]) -> list[np.ndarray]:
    """``[p.infer_chunk(o) ...]`` with one model call for all (see :func:`infer_many`)."""
    return [c[0] for c in step(*_many(policies, observations), whole=True)]


def _many(policies: Sequence[Policy], observations: Sequence[Mapping[str, Any]]) -> tuple[list, list]:
    """The (runtime, stream) pairs and frames of a batch, every observation checked first."""
    if len(policies) != len(observations):
        raise ValueError(f"{len(policies)} policies but {len(observations)} observations")
    if len({id(p) for p in policies}) != len(policies):
        raise ValueError("the same Policy appears twice in one batch (one observation per stream and step)")
    if policies and any(p.model is not policies[0].model for p in policies):
        raise ValueError("batched policies must share one model object")
    frames = []
    for i, (p, obs) in enumerate(zip(policies, observations)):
        try:
            frames.append(as_frame(obs, p.specs))
        except ValueError as e:
            raise ValueError(f"observations[{i}]: {e}") from None
    return [(p.runtime, p.stream) for p in policies], frames


def as_frame(obs: Mapping[str, Any], specs: Mapping[str, Any]) -> tuple:
    """A checked observation as the runtime's frame ``(machine, instruction, state (1, obs_dim))``,
    plus ``images`` {camera: (1, h, w, 3) uint8} for a machine with cameras."""
    name, state, instruction = validate_obs(obs, specs)
    images = validate_images(obs, specs[name])
    if images is None:
        return name, instruction, state[None]
    return name, instruction, state[None], {c: v[None] for c, v in images.items()}


def validate_images(obs: Mapping[str, Any], spec: Any) -> dict[str, np.ndarray] | None:
    """``obs['images']`` checked against the spec's cameras: {camera: (h, w, 3) uint8}, or None for a
    camera-less machine; ValueError naming the camera otherwise."""
    images = obs.get("images")
    cams = {c.name: c for c in getattr(spec, "cameras", ())}
    if not cams:
        if images:
            raise ValueError(f"obs['images'] has cameras {sorted(images)} but embodiment {spec.name!r} has none")
        return None
    if not isinstance(images, Mapping):
        raise ValueError(f"obs lacks 'images' ({{camera: (h, w, 3) uint8}}) for embodiment {spec.name!r}, "
                         f"whose cameras are {sorted(cams)}")
    unknown = sorted(set(images) - set(cams))
    if unknown:
        raise ValueError(f"obs['images'] has unknown cameras {unknown}; embodiment {spec.name!r} has {sorted(cams)}")
    out = {}
    for name, cam in cams.items():
        if name not in images:
            raise ValueError(f"obs['images'] lacks camera {name!r} of embodiment {spec.name!r}")
        frame = images[name]
        if not isinstance(frame, np.ndarray):
            frame = np.asarray(frame.cpu() if hasattr(frame, "cpu") else frame)
        if frame.dtype != np.uint8:
            raise ValueError(f"obs['images'][{name!r}] has dtype {frame.dtype}, expected uint8")
        if frame.shape != cam.shape:
            raise ValueError(f"obs['images'][{name!r}] has shape {frame.shape}, expected {cam.shape} "
                             f"(height, width, RGB) for embodiment {spec.name!r}")
        out[name] = frame
    return out


def validate_obs(obs: Mapping[str, Any], specs: Mapping[str, Any]) -> tuple[str, np.ndarray, str]:
    """(embodiment, state float32 (obs_dim,), instruction) or ValueError naming the bad field
    (the camera frames are checked too: :func:`validate_images`)."""
    if not isinstance(obs, Mapping):
        raise ValueError(f"obs must be a dict with 'embodiment', 'state', 'instruction', got {type(obs).__name__}")
    for key in ("embodiment", "state", "instruction"):
        if key not in obs:
            raise ValueError(f"obs lacks {key!r} (have {sorted(obs)})")
    name = obs["embodiment"]
    if not isinstance(name, str) or name not in specs:
        raise ValueError(f"obs['embodiment'] {name!r} is unknown to this policy; known: {sorted(specs)}")
    if not isinstance(obs["instruction"], str):
        raise ValueError(f"obs['instruction'] must be a str, got {type(obs['instruction']).__name__}")
    spec = specs[name]
    try:
        state = np.asarray(obs["state"], dtype=np.float32)
    except (TypeError, ValueError) as e:
        raise ValueError(f"obs['state'] is not a numeric vector: {e}") from None
    if state.shape != (spec.obs_dim,):
        raise ValueError(f"obs['state'] has shape {state.shape}, expected ({spec.obs_dim},) for embodiment {name!r}")
    bad = np.flatnonzero(~np.isfinite(state))
    if bad.size:
        fields = ", ".join(f"{spec.obs_names[i]}={state[i]}" for i in bad[:5])
        raise ValueError(f"obs['state'] holds non-finite values ({fields}) for embodiment {name!r}")
    validate_images(obs, spec)
    return name, state, obs["instruction"]


def load_policy(checkpoint_dir: str | os.PathLike, *, preset: str | None = None,
                device: torch.device | str | None = None, **kwargs: Any) -> Policy:
    """A Policy from a checkpoint directory alone (weights, config, specs, stats, tokenizer).

    ``kwargs`` go to :class:`Policy` (``execute``, ``replan_every``, ``ensemble_m``, ``seed``).
    """
    dev = torch.device(device) if device is not None else default_device()
    model, manifest = load_model(checkpoint_dir, preset=preset, device=dev)
    tokenizer = TokenizeInstruction.from_dict(manifest["tokenizer"])
    if tokenizer.max_len != model.cfg.max_lang_len:
        raise BundleError(f"{checkpoint_dir}: tokenizer max_len {tokenizer.max_len} differs from the model's "
                          f"max_lang_len {model.cfg.max_lang_len}")
    mode = manifest.get("normalization", {}).get("mode", "mean_std")
    return Policy(model, bundle_stats(manifest, str(checkpoint_dir)), device=dev, manifest=manifest,
                  normalization=mode, **kwargs)
