"""The one policy object evaluation, serving and the OPC UA bridge all call.

``Policy.infer(obs) -> action`` and ``Policy.reset()``; ``obs`` is
``{"embodiment": str, "state": (obs_dim,), "instruction": str}``. Inside: the
same transforms as training (``genba.data.transforms``: Normalize, tokenize,
Unnormalize), an observation history of ``cfg.history`` frames, the language
summary cached per instruction, and chunk execution:

- ``execute="ensemble"``: a fresh chunk every step; the action for step t is the
  weighted mean of every stored chunk's prediction for t with weights
  ``exp(-m * age)``, age 0 for the newest chunk (ACT's temporal ensembling; ACT
  indexes from the oldest, we favour the newest so fast machines react sooner,
  and ``m = 0`` is a plain mean).
- ``execute="replan"``: a fresh chunk every ``replan_every`` steps, played open
  loop in between (cheaper; OpenVLA-OFT style).

Bad observations raise ValueError naming the field (``obs['state']``, ...).
"""

from __future__ import annotations

import math
import os
from collections import deque
from typing import Any, Mapping

import numpy as np
import torch

from genba.data.transforms import Normalize, TokenizeInstruction, Unnormalize
from genba.device import default_device
from genba.model.bundle import BundleError, bundle_stats, load_model
from genba.model.generalist import Generalist

EXECUTE_MODES = ("ensemble", "replan")


class Policy:
    """A loaded model plus its transforms, history and chunk queue (one control stream)."""

    def __init__(self, model: Generalist, stats: Mapping[str, Mapping[str, Any]], *, execute: str = "ensemble",
                 replan_every: int | None = None, ensemble_m: float = 0.1, seed: int = 0,
                 normalization: str = "mean_std", device: torch.device | str | None = None,
                 manifest: Mapping[str, Any] | None = None) -> None:
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
        self.specs = dict(model.specs)
        self.manifest = dict(manifest or {})
        self.execute, self.replan_every, self.ensemble_m, self.seed = execute, k, ensemble_m, seed
        self._normalize = Normalize(stats, mode=normalization)
        self._unnormalize = Unnormalize(stats, mode=normalization)
        self._tokenize = TokenizeInstruction(self.cfg.max_lang_len)
        self._lang: tuple[str, torch.Tensor] | None = None  # (instruction, summary (1, S, D))
        self.reset()

    # ---- public ------------------------------------------------------------
    def reset(self) -> None:
        """Start a new episode: forget history and queued chunks; reseed the sampler."""
        self._embodiment: str | None = None
        self._history: deque[np.ndarray] = deque(maxlen=self.cfg.history)
        self._chunks: deque[tuple[int, np.ndarray]] = deque(maxlen=self.cfg.chunk)  # (start step, (C, A))
        self._step = 0
        self._generator = torch.Generator(device=self.device).manual_seed(self.seed)

    def infer(self, obs: Mapping[str, Any]) -> np.ndarray:
        """The action (action_dim,) float32 for this step, in the machine's units."""
        self._observe(obs)
        t = self._step
        self._step += 1
        if self.execute == "replan":
            if not self._chunks or t - self._chunks[-1][0] >= self.replan_every:
                self._chunks.append((t, self._predict()))
            start, chunk = self._chunks[-1]
            return chunk[t - start].copy()
        self._chunks.append((t, self._predict()))
        return self._ensemble(t)

    def infer_chunk(self, obs: Mapping[str, Any]) -> np.ndarray:
        """The whole predicted chunk (chunk, action_dim) float32 starting at this step (for the server)."""
        self._observe(obs)
        t = self._step
        self._step += 1
        chunk = self._predict()
        self._chunks.append((t, chunk))
        return chunk.copy()

    # ---- internals ---------------------------------------------------------
    def _observe(self, obs: Mapping[str, Any]) -> None:
        name, state, instruction = validate_obs(obs, self.specs)
        if name != self._embodiment:  # another machine on this stream: a new episode
            self.reset()
            self._embodiment = name
        self._history.append(state)
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
        H, name = self.cfg.history, self._embodiment
        frames = list(self._history)
        pad = H - len(frames)
        history = np.stack([frames[0]] * pad + frames).astype(np.float32)  # (H, obs), oldest first
        sample = self._normalize({"embodiment": name, "observation.state": history})
        state = torch.as_tensor(np.asarray(sample["observation.state"], dtype=np.float32), device=self.device)
        is_pad = torch.arange(H, device=self.device) < pad
        batch = {name: {"observation.state": state[None], "observation.state_is_pad": is_pad[None],
                        "lang_summary": self._lang[1]}}
        norm = self.model.sample_actions(batch, generator=self._generator)[name][0].float().cpu().numpy()
        out = self._unnormalize({"embodiment": name, "action": norm})
        return np.asarray(out["action"], dtype=np.float32)  # (C, A)

    def _ensemble(self, t: int) -> np.ndarray:
        preds, weights = [], []
        for start, chunk in self._chunks:
            i = t - start
            if 0 <= i < len(chunk):
                preds.append(chunk[i])
                weights.append(math.exp(-self.ensemble_m * i))  # i = age of that chunk
        w = np.asarray(weights, dtype=np.float64)
        return (np.stack(preds) * (w / w.sum())[:, None]).sum(0).astype(np.float32)


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
