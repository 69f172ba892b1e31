"""Tiny frozen transforms, ``__call__(sample) -> sample``, shared by training and serving.

- :class:`Normalize` / :class:`Unnormalize`: per-embodiment normalization from
  the dataset stats (``mean_std``, ``min_max`` to [-1, 1], or ``quantile``:
  q01/q99 to [-1, 1] as openpi does). Scales are floored by
  :func:`genba.data.stats.normalization_stats` so near-constant features cannot
  blow up. Work on numpy arrays and torch tensors alike (same type back), with
  any leading batch/time dims.
- :class:`NormalizeImages`: camera frames uint8 ``(..., h, w, 3)`` -> [0, 1] ->
  per-channel mean/std of the dataset's image stats (``observation.images.<camera>``,
  carried in the checkpoint with the other stats), float32; training and serving alike.
- :class:`RandomShift`: DrQ's augmentation (pad ``pad`` by edge replication, random
  crop back, one shift per sample across its history); training transforms only.
- :class:`TokenizeInstruction`: byte-level UTF-8, byte ``b`` -> token ``b+1``,
  0 = pad (vocab 257), truncated at a character boundary.
- :class:`RouteInstruction`: ``(embodiment, instruction) -> model entry`` for
  task-scoped stems/heads (a fine-tune's new tasks get their own copy of the
  machine's stem and head; every other pair keeps the machine's own).
- :func:`compose`.

Stats travel as plain JSON (``to_dict``/``from_dict``) inside checkpoints.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from genba.data import stats as S

MODES = ("mean_std", "min_max", "quantile")
VOCAB_SIZE = 257  # 256 byte values + pad
PAD_TOKEN = 0
_KEEP = ("mean", "std", "min", "max", "q01", "q99", "count")


class TransformError(ValueError):
    """A sample a transform cannot handle (unknown embodiment, wrong shape)."""


def stats_by_embodiment(datasets: Any) -> dict[str, dict[str, dict[str, np.ndarray]]]:
    """``{embodiment: stats}`` from opened datasets; datasets of one embodiment are pooled."""
    groups: dict[str, list] = {}
    for ds in datasets:
        groups.setdefault(ds.embodiment, []).append(ds.stats)
    return {emb: S.aggregate_stats(st) for emb, st in groups.items()}


def _like(value: np.ndarray, x: Any) -> Any:
    """``value`` as the same kind (numpy/torch), dtype and device as ``x``."""
    if isinstance(x, torch.Tensor):
        return torch.as_tensor(value, dtype=x.dtype, device=x.device)
    return value.astype(np.asarray(x).dtype if np.issubdtype(np.asarray(x).dtype, np.floating) else np.float32)


@dataclass(frozen=True)
class _Norm:
    """Shared machinery: guarded constants per (embodiment, key), built once."""

    stats: Mapping[str, Mapping[str, Mapping[str, Any]]]
    keys: tuple[str, ...] = ("observation.state", "action")
    mode: str = "mean_std"
    _consts: dict = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise TransformError(f"normalization mode {self.mode!r}: expected one of {MODES}")
        consts = {}
        for emb, feats in self.stats.items():
            for key in self.keys:
                if key not in feats:
                    raise TransformError(f"stats of embodiment {emb!r} lack feature {key!r}")
                try:
                    consts[emb, key] = S.normalization_stats(feats[key])
                except S.StatsError as e:
                    raise TransformError(f"stats of {emb!r}/{key!r}: {e}") from None
        object.__setattr__(self, "keys", tuple(self.keys))
        object.__setattr__(self, "_consts", consts)

    def affine(self, emb: str, key: str) -> tuple[np.ndarray, np.ndarray]:
        """``(shift, scale)`` of ``key`` for ``emb``: normalized = (raw - shift) / scale, per channel."""
        if (emb, key) not in self._consts:
            known = sorted({e for e, _ in self._consts})
            raise TransformError(f"no normalization stats for embodiment {emb!r} (have {known})")
        c = self._consts[emb, key]
        if self.mode == "mean_std":
            return c["mean"], c["std"]
        lo, hi = (c["min"], c["max"]) if self.mode == "min_max" else (c["q01"], c["q99"])
        return (lo + hi) / 2, (hi - lo) / 2

    def _shift_scale(self, emb: str, key: str, x: Any) -> tuple[Any, Any]:
        shift, scale = self.affine(emb, key)
        if x.shape[-1] != shift.shape[0]:
            raise TransformError(f"{key!r} of embodiment {emb!r} has last dim {x.shape[-1]}, "
                                 f"stats have {shift.shape[0]}")
        return _like(shift, x), _like(scale, x)

    def _apply(self, sample: dict, forward: bool) -> dict:
        emb = sample.get("embodiment")
        out = dict(sample)
        for key in self.keys:
            if key in sample:
                shift, scale = self._shift_scale(emb, key, sample[key])
                out[key] = (sample[key] - shift) / scale if forward else sample[key] * scale + shift
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (raw stats of the normalized keys, mode, keys)."""
        stats = {emb: {k: {s: np.asarray(v).tolist() for s, v in feats[k].items() if s in _KEEP}
                       for k in self.keys} for emb, feats in self.stats.items()}
        return {"type": type(self).__name__, "mode": self.mode, "keys": list(self.keys), "stats": stats}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]):
        if not isinstance(d, Mapping) or "stats" not in d:
            raise TransformError(f"{cls.__name__}.from_dict: expected an object with 'stats'")
        stats = {emb: S.stats_from_json(feats, source=f"stats of {emb!r}") for emb, feats in d["stats"].items()}
        return cls(stats, keys=tuple(d.get("keys", ("observation.state", "action"))),
                   mode=d.get("mode", "mean_std"))


@dataclass(frozen=True)
class Normalize(_Norm):
    """Normalize ``keys`` of a sample with its embodiment's stats."""

    def __call__(self, sample: dict) -> dict:
        return self._apply(sample, forward=True)


@dataclass(frozen=True)
class Unnormalize(_Norm):
    """Inverse of :class:`Normalize`; by default for model outputs (actions)."""

    keys: tuple[str, ...] = ("action",)

    def __call__(self, sample: dict) -> dict:
        return self._apply(sample, forward=False)


IMAGE_PREFIX = "observation.images."
IMAGE_STD_FLOOR = 1e-3  # a flat-coloured camera (std ~ 0) must not amplify codec noise


@dataclass(frozen=True)
class NormalizeImages:
    """``images`` {camera: uint8 (..., h, w, 3)} -> float32 ``(x / 255 - mean) / std`` per channel.

    ``stats`` is ``{embodiment: stats}`` as for :class:`Normalize`; every
    ``observation.images.<camera>`` feature gives that camera's constants (LeRobot
    stores them as (3, 1, 1) in [0, 1]). A sample without ``images`` passes
    unchanged; numpy in, numpy out; a tensor stays on its device.
    """

    stats: Mapping[str, Mapping[str, Mapping[str, Any]]]
    _consts: dict = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        consts = {}
        for emb, feats in self.stats.items():
            for key, st in feats.items():
                if key.startswith(IMAGE_PREFIX):
                    mean = np.asarray(st["mean"], np.float64).reshape(-1)
                    std = np.maximum(np.asarray(st["std"], np.float64).reshape(-1), IMAGE_STD_FLOOR)
                    if mean.shape != (3,) or std.shape != (3,):
                        raise TransformError(f"image stats of {emb!r}/{key!r}: expected 3 channels, got {mean.shape}")
                    # x_norm = x * scale + shift with scale = 1 / (255 std), shift = -mean / std
                    consts[emb, key[len(IMAGE_PREFIX):]] = ((1 / (255 * std)).astype(np.float32),
                                                            (-mean / std).astype(np.float32))
        object.__setattr__(self, "_consts", consts)

    def cameras(self, emb: str) -> list[str]:
        return [c for e, c in self._consts if e == emb]

    def __call__(self, sample: dict) -> dict:
        if "images" not in sample:
            return sample
        emb = sample.get("embodiment")
        out = {}
        for cam, x in sample["images"].items():
            if (emb, cam) not in self._consts:
                raise TransformError(f"no image stats for camera {cam!r} of embodiment {emb!r} "
                                     f"(have {self.cameras(emb)})")
            scale, shift = self._consts[emb, cam]
            if isinstance(x, torch.Tensor):
                out[cam] = x.float() * torch.as_tensor(scale, device=x.device) + torch.as_tensor(shift, device=x.device)
            else:
                out[cam] = np.asarray(x, np.float32) * scale + shift
        return {**sample, "images": out}


@dataclass(frozen=True)
class RandomShift:
    """DrQ's random shift (Kostrikov et al. 2020): each sample's frames move by up to ``pad`` pixels.

    ``images`` {camera: (B, H, h, w, 3) or (H, h, w, 3)} tensors: one integer shift per sample (and
    camera), the same for its whole history; pixels beyond the edge repeat the edge (DrQ's
    replicate padding), so nothing is padded in memory. Draws from ``generator`` (default: torch's
    global RNG, which the trainer seeds and checkpoints). ``pad = 0`` is the identity.
    """

    pad: int = 4
    generator: torch.Generator | None = field(default=None, compare=False)

    def __call__(self, sample: dict) -> dict:
        if self.pad <= 0 or "images" not in sample:
            return sample
        return {**sample, "images": {cam: self.shift(x) for cam, x in sample["images"].items()}}

    def shift(self, x: torch.Tensor) -> torch.Tensor:
        single = x.dim() == 4
        x = x[None] if single else x  # (B, H, h, w, 3)
        B, _, h, w, _ = x.shape
        dev = x.device
        off = torch.randint(0, 2 * self.pad + 1, (2, B), generator=self.generator).to(dev) - self.pad
        rows = (off[0][:, None] + torch.arange(h, device=dev)).clamp(0, h - 1)  # (B, h)
        cols = (off[1][:, None] + torch.arange(w, device=dev)).clamp(0, w - 1)  # (B, w)
        b = torch.arange(B, device=dev)[:, None, None]
        out = x[b, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2, 4)  # (B, H, h, w, 3)
        return out[0] if single else out


@dataclass(frozen=True)
class TokenizeInstruction:
    """``instruction`` -> ``lang_tokens`` int64 (L,), ``lang_mask`` bool (L,)."""

    max_len: int = 64

    def __post_init__(self) -> None:
        if self.max_len < 1:
            raise TransformError(f"TokenizeInstruction: max_len must be >= 1, got {self.max_len}")

    def encode(self, text: str) -> list[int]:
        """Tokens (no padding), cut at the last whole UTF-8 character within max_len."""
        if not isinstance(text, str):
            raise TransformError(f"instruction must be a str, got {type(text).__name__}")
        data = text.encode("utf-8")
        if len(data) > self.max_len:
            cut = self.max_len
            while cut > 0 and (data[cut] & 0xC0) == 0x80:  # data[cut] continues a character
                cut -= 1
            data = data[:cut]
        return [b + 1 for b in data]

    @staticmethod
    def decode(tokens: Any) -> str:
        """Text from tokens; pads (0) are skipped."""
        vals = tokens.tolist() if hasattr(tokens, "tolist") else list(tokens)
        return bytes(int(t) - 1 for t in vals if int(t) != PAD_TOKEN).decode("utf-8")

    def batch(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens (B, L) int64 and mask (B, L) bool for several instructions."""
        tokens = torch.zeros(len(texts), self.max_len, dtype=torch.int64)
        for i, text in enumerate(texts):
            ids = self.encode(text)
            tokens[i, :len(ids)] = torch.tensor(ids, dtype=torch.int64)
        return tokens, tokens != PAD_TOKEN

    def __call__(self, sample: dict) -> dict:
        ids = self.encode(sample["instruction"])
        tokens = torch.zeros(self.max_len, dtype=torch.int64)
        tokens[:len(ids)] = torch.tensor(ids, dtype=torch.int64)
        mask = torch.zeros(self.max_len, dtype=torch.bool)
        mask[:len(ids)] = True
        return {**sample, "lang_tokens": tokens, "lang_mask": mask}

    def to_dict(self) -> dict[str, Any]:
        return {"type": "TokenizeInstruction", "max_len": self.max_len, "vocab_size": VOCAB_SIZE,
                "scheme": "utf8-bytes+1"}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TokenizeInstruction:
        if d.get("scheme", "utf8-bytes+1") != "utf8-bytes+1":
            raise TransformError(f"unknown tokenizer scheme {d.get('scheme')!r}")
        return cls(max_len=int(d["max_len"]))


@dataclass(frozen=True)
class RouteInstruction:
    """``(embodiment, instruction) -> model entry``; unrouted pairs keep the embodiment itself.

    Task-scoped adaptation (``genba finetune --scope tasks``) trains a copy of a
    machine's stem and head under a new entry name for the new tasks only, so
    the machine's own entry (and so every old task) stays bit-identical: the
    parameter isolation of per-skill adapters. This transform sets
    ``sample["embodiment"]`` to the routed entry; it runs before Normalize
    (the entry has its own stats) in training, evaluation and serving alike.
    Instructions match exactly (the stored en and ja strings).
    """

    routes: Mapping[tuple[str, str], str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for key, entry in self.routes.items():
            if (not isinstance(key, tuple) or len(key) != 2 or not all(isinstance(k, str) for k in key)
                    or not isinstance(entry, str) or not entry):
                raise TransformError(f"route {key!r} -> {entry!r}: expected (embodiment, instruction) -> entry, "
                                     "all strings")
            if entry == key[0]:
                raise TransformError(f"route {key!r} -> {entry!r}: an entry routes to itself")
        object.__setattr__(self, "routes", dict(self.routes))

    @property
    def entries(self) -> dict[str, str]:
        """``{entry: embodiment it serves}`` of every routed entry."""
        return {entry: emb for (emb, _), entry in self.routes.items()}

    def entry(self, embodiment: str, instruction: str) -> str:
        """The model entry that serves ``instruction`` on ``embodiment``."""
        return self.routes.get((embodiment, instruction), embodiment)

    def __call__(self, sample: dict) -> dict:
        entry = self.entry(sample["embodiment"], sample["instruction"])
        return sample if entry == sample["embodiment"] else {**sample, "embodiment": entry}

    def merge(self, other: RouteInstruction) -> RouteInstruction:
        """Both tables in one; a pair routed to two different entries raises TransformError."""
        for key, entry in other.routes.items():
            if self.routes.get(key, entry) != entry:
                raise TransformError(f"instruction {key[1]!r} of embodiment {key[0]!r} is already routed to "
                                     f"{self.routes[key]!r}; it cannot also route to {entry!r}")
        return RouteInstruction({**self.routes, **other.routes})

    def to_dict(self) -> dict[str, Any]:
        rows = [{"embodiment": e, "instruction": i, "entry": t} for (e, i), t in sorted(self.routes.items())]
        return {"type": "RouteInstruction", "routes": rows}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> RouteInstruction:
        if d is None:
            return cls()
        if not isinstance(d, Mapping) or not isinstance(d.get("routes"), list):
            raise TransformError("RouteInstruction.from_dict: expected an object with a 'routes' list")
        try:
            routes = {(r["embodiment"], r["instruction"]): r["entry"] for r in d["routes"]}
        except (KeyError, TypeError) as e:
            raise TransformError(f"RouteInstruction.from_dict: bad route row ({e!r})") from None
        if len(routes) != len(d["routes"]):
            raise TransformError("RouteInstruction.from_dict: a (embodiment, instruction) pair appears twice")
        return cls(routes)


@dataclass(frozen=True)
class Compose:
    """Apply transforms in order."""

    transforms: tuple[Callable[[dict], dict], ...]

    def __call__(self, sample: dict) -> dict:
        for t in self.transforms:
            sample = t(sample)
        return sample


def compose(*ts: Callable[[dict], dict]) -> Compose:
    """One transform running ``ts`` left to right (``None`` entries are skipped)."""
    return Compose(tuple(t for t in ts if t is not None))
