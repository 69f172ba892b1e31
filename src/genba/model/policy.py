"""The one policy object evaluation, serving and the OPC UA bridge all call.

``Policy.infer(obs) -> action`` and ``Policy.reset()``; ``obs`` is
``{"embodiment": str, "state": (obs_dim,), "instruction": str}``. Inside: the
same transforms as training (``genba.data.transforms``: Normalize, tokenize,
Unnormalize; their shift and scale are read once per embodiment, and each frame
is normalized once, on arrival), an observation history of ``cfg.history``
frames, the language summary cached per instruction, and chunk execution:

- ``execute="ensemble"``: a fresh chunk every step; the action for step t is the
  weighted mean of every stored chunk's prediction for t with weights
  ``exp(-m * age)``, age 0 for the newest chunk (ACT's temporal ensembling; ACT
  indexes from the oldest, we favour the newest so fast machines react sooner,
  and ``m = 0`` is a plain mean).
- ``execute="replan"``: a fresh chunk every ``replan_every`` steps, played open
  loop in between (cheaper; OpenVLA-OFT style).

Task-scoped entries: a checkpoint adapted with ``genba finetune --scope tasks``
stores a route table (``RouteInstruction``) sending its new tasks' instructions
to a copy of the machine's stem and head; the policy applies it on every
observation, so old tasks run exactly the parent's computation. ``specs`` lists
the machines a caller may name; routed entries are internal. A stream whose
entry changes (another machine, or an instruction routed elsewhere) starts a
new episode.

Several streams over one model (a server's sessions) step together with
:func:`infer_many` / :func:`infer_chunk_many`: one trunk pass for all of them,
each stream's state advancing exactly as its own ``infer`` would.

Bad observations raise ValueError naming the field (``obs['state']``, ...).
"""

from __future__ import annotations

import math
import os
from collections import deque
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from genba.data.transforms import Normalize, RouteInstruction, TokenizeInstruction, Unnormalize
from genba.device import default_device
from genba.model.bundle import BundleError, bundle_routes, bundle_stats, check_routes, load_model
from genba.model.config import EXECUTE_MODES
from genba.model.generalist import Generalist


class Policy:
    """A loaded model plus its transforms, history and chunk queue (one control stream)."""

    def __init__(self, model: Generalist, stats: Mapping[str, Mapping[str, Any]], *, execute: str = "ensemble",
                 replan_every: int | None = None, ensemble_m: float = 0.1, seed: int = 0,
                 normalization: str = "mean_std", device: torch.device | str | None = None,
                 manifest: Mapping[str, Any] | None = None, routes: RouteInstruction | None = None) -> None:
        if execute not in EXECUTE_MODES:
            raise ValueError(f"execute {execute!r}: expected one of {EXECUTE_MODES}")
        self.cfg = model.cfg
        k = replan_every if replan_every is not None else max(1, self.cfg.chunk // 2)
        if not 1 <= k <= self.cfg.chunk:
            raise ValueError(f"replan_every {k}: must be between 1 and the chunk length {self.cfg.chunk}")
        if ensemble_m < 0 or not math.isfinite(ensemble_m):
            raise ValueError(f"ensemble_m {ensemble_m}: must be a finite number >= 0")
        missing = sorted(set(model.specs) - set(stats))
        if missing:
            raise ValueError(f"Policy: no normalization stats for embodiments {missing}")
        self.device = torch.device(device) if device is not None else default_device()
        self.model = model.to(self.device).eval()
        self.manifest = dict(manifest or {})
        self.route = routes if routes is not None else bundle_routes(self.manifest) if "routes" in self.manifest \
            else RouteInstruction()
        check_routes(self.route, model.specs, "Policy routes")
        entries = self.route.entries
        self.specs = {n: s for n, s in model.specs.items() if n not in entries}  # machines a caller names
        self.execute, self.replan_every, self.ensemble_m, self.seed = execute, k, ensemble_m, seed
        self._normalize = Normalize(stats, mode=normalization)
        self._unnormalize = Unnormalize(stats, mode=normalization)
        self._tokenize = TokenizeInstruction(self.cfg.max_lang_len)
        self._obs_norm, self._act_norm = self._build_norm_constants()
        H = self.cfg.history
        self._pad_masks = [torch.arange(H, device=self.device) < pad for pad in range(H + 1)]  # by pad count
        self._lang: tuple[str, torch.Tensor] | None = None  # (instruction, summary (1, S, D))
        self.reset()

    # ---- public ------------------------------------------------------------
    def reset(self) -> None:
        """Start a new episode: forget history and queued chunks; reseed the sampler."""
        self._embodiment: str | None = None  # the model entry serving this stream (routed)
        self._history: deque[torch.Tensor] = deque(maxlen=self.cfg.history)  # normalized frames (obs,)
        self._chunks: deque[tuple[int, np.ndarray]] = deque(maxlen=self.cfg.chunk)  # (start step, (C, A))
        self._step = 0
        self._generator = torch.Generator(device=self.device).manual_seed(self.seed)

    def infer(self, obs: Mapping[str, Any]) -> np.ndarray:
        """The action (action_dim,) float32 for this step, in the machine's units."""
        t, fresh = self._advance(obs)
        if fresh:
            self._chunks.append((t, self._predict()))
        return self._action(t)

    def observe(self, obs: Mapping[str, Any]) -> None:
        """Take this step's observation into the history without predicting (a caller that plans
        only every few steps, like the OPC UA bridge's prefetcher, still feeds every frame)."""
        self._advance(obs)

    def infer_chunk(self, obs: Mapping[str, Any]) -> np.ndarray:
        """The whole predicted chunk (chunk, action_dim) float32 starting at this step (for the server)."""
        t, _ = self._advance(obs)
        chunk = self._predict()
        self._chunks.append((t, chunk))
        return chunk.copy()

    # ---- internals ---------------------------------------------------------
    def _advance(self, obs: Mapping[str, Any]) -> tuple[int, bool]:
        """Take this step's observation: (step t, whether ``infer`` needs a fresh chunk at t)."""
        self._observe(obs)
        t = self._step
        self._step += 1
        fresh = (self.execute == "ensemble" or not self._chunks
                 or t - self._chunks[-1][0] >= self.replan_every)
        return t, fresh

    def _action(self, t: int) -> np.ndarray:
        """The action for step t from the queued chunks (open loop, or the temporal ensemble)."""
        if self.execute == "replan":
            start, chunk = self._chunks[-1]
            return chunk[t - start].copy()
        return self._ensemble(t)

    def _observe(self, obs: Mapping[str, Any]) -> None:
        machine, state, instruction = validate_obs(obs, self.specs)
        name = self.route.entry(machine, instruction)
        if name != self._embodiment:  # another machine (or task-scoped entry) on this stream: a new episode
            self.reset()
            self._embodiment = name
        shift, scale = self._obs_norm[name]
        self._history.append(torch.from_numpy((state - shift) / scale).to(self.device))  # Normalize, per frame
        if self._lang is None or self._lang[0] != instruction:
            self._lang = (instruction, self._encode_instruction(instruction))

    @torch.inference_mode()
    def _encode_instruction(self, instruction: str) -> torch.Tensor:
        sample = self._tokenize({"instruction": instruction})
        tokens = torch.as_tensor(np.asarray(sample["lang_tokens"]), device=self.device).long()[None]  # (1, L)
        mask = torch.as_tensor(np.asarray(sample["lang_mask"]), device=self.device).bool()[None]  # (1, L)
        return self.model.encode_language(tokens, mask)  # (1, S, D)

    @torch.inference_mode()
    def _predict(self) -> np.ndarray:
        """One model call on the current history: unnormalized chunk (C, A)."""
        name = self._embodiment
        state, is_pad = self._model_inputs()
        batch = {name: {"observation.state": state[None], "observation.state_is_pad": is_pad[None],
                        "lang_summary": self._lang[1]}}
        norm = self.model.sample_actions(batch, generator=self._generator)[name][0]
        return self._to_machine(norm)

    def _model_inputs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The normalized, front-padded history (H, obs) and its pad mask (H,) on the policy's device."""
        frames = list(self._history)
        pad = self.cfg.history - len(frames)
        return torch.stack([frames[0]] * pad + frames), self._pad_masks[pad]  # oldest first

    def _to_machine(self, norm: torch.Tensor) -> np.ndarray:
        """A normalized chunk (C, A) -> machine units, float32 (Unnormalize's ``x * scale + shift``)."""
        shift, scale = self._act_norm[self._embodiment]
        return norm.float().cpu().numpy() * scale + shift  # (C, A)

    def _build_norm_constants(self) -> tuple[dict, dict]:
        """Per embodiment: float32 (shift, scale) of observations and of actions, taken once from the
        shared transforms (so training and inference agree) instead of a dict transform per step."""
        obs, act = {}, {}
        for name, spec in self.model.specs.items():  # machines and routed entries
            for out, norm, key, dim in ((obs, self._normalize, "observation.state", spec.obs_dim),
                                        (act, self._unnormalize, "action", spec.action_dim)):
                shift, scale = norm._shift_scale(name, key, np.zeros(dim, np.float32))
                out[name] = (np.asarray(shift, np.float32), np.asarray(scale, np.float32))
        return obs, act

    def _ensemble(self, t: int) -> np.ndarray:
        preds, weights = [], []
        for start, chunk in self._chunks:
            i = t - start
            if 0 <= i < len(chunk):
                preds.append(chunk[i])
                weights.append(math.exp(-self.ensemble_m * i))  # i = age of that chunk
        w = np.asarray(weights, dtype=np.float64)
        return (np.stack(preds) * (w / w.sum())[:, None]).sum(0).astype(np.float32)


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
    _check_many(policies, observations)
    steps = [p._advance(o) for p, o in zip(policies, observations)]
    todo = [i for i, (_, fresh) in enumerate(steps) if fresh]
    for i, chunk in zip(todo, _predict_many([policies[i] for i in todo])):
        policies[i]._chunks.append((steps[i][0], chunk))
    return [p._action(t) for p, (t, _) in zip(policies, steps)]


def infer_chunk_many(policies: Sequence[Policy], observations: Sequence[Mapping[str, Any]]) -> list[np.ndarray]:
    """``[p.infer_chunk(o) ...]`` with one model call for all (see :func:`infer_many`)."""
    _check_many(policies, observations)
    steps = [p._advance(o)[0] for p, o in zip(policies, observations)]
    chunks = _predict_many(list(policies))
    for p, t, chunk in zip(policies, steps, chunks):
        p._chunks.append((t, chunk))
    return [c.copy() for c in chunks]


def _check_many(policies: Sequence[Policy], observations: Sequence[Mapping[str, Any]]) -> None:
    if len(policies) != len(observations):
        raise ValueError(f"{len(policies)} policies but {len(observations)} observations")
    if len({id(p) for p in policies}) != len(policies):
        raise ValueError("the same Policy appears twice in one batch (one observation per stream and step)")
    if policies and any(p.model is not policies[0].model for p in policies):
        raise ValueError("batched policies must share one model object")
    for i, (p, obs) in enumerate(zip(policies, observations)):
        try:
            validate_obs(obs, p.specs)
        except ValueError as e:
            raise ValueError(f"observations[{i}]: {e}") from None


@torch.inference_mode()
def _predict_many(pols: list[Policy]) -> list[np.ndarray]:
    """One trunk pass for several policies' current histories (any embodiments): chunks (C, A) each."""
    if len(pols) <= 1:
        return [p._predict() for p in pols]
    model = pols[0].model
    groups: dict[str, list[int]] = {}
    for i, p in enumerate(pols):
        groups.setdefault(p._embodiment, []).append(i)
    batch = {}
    for name, idx in groups.items():
        states, pads = zip(*(pols[i]._model_inputs() for i in idx))
        batch[name] = {"observation.state": torch.stack(states),  # (B, H, obs)
                       "observation.state_is_pad": torch.stack(pads),  # (B, H)
                       "lang_summary": torch.cat([pols[i]._lang[1] for i in idx])}  # (B, S, D)
    readouts, _ = model.readouts(batch)
    chunks: list[np.ndarray] = [None] * len(pols)  # type: ignore[list-item]
    steps = model.cfg.flow_steps
    for name, idx in groups.items():
        head, ro = model.heads[name], readouts[name]  # (B, R, D)
        if model.cfg.head == "l1":  # deterministic: one head call for the group
            norm = head.sample(ro, steps, None)  # (B, C, A)
        else:  # stochastic: each stream's noise from its own generator, as in its own infer
            norm = torch.cat([head.sample(ro[k:k + 1], steps, pols[i]._generator) for k, i in enumerate(idx)])
        norm = norm + model.linear_part(name, batch[name], norm.dtype)  # the head predicts the residual
        for k, i in enumerate(idx):
            chunks[i] = pols[i]._to_machine(norm[k])
    return chunks


def validate_obs(obs: Mapping[str, Any], specs: Mapping[str, Any]) -> tuple[str, np.ndarray, str]:
    """(embodiment, state float32 (obs_dim,), instruction) or ValueError naming the bad field."""
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
