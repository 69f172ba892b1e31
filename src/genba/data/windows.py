"""PyTorch-ready training samples: history windows, action chunks, mixing.

A sample at frame ``t`` of an episode spanning rows ``[s, e)``::

    "observation.state"        (H, obs_dim) rows t-H+1 .. t, oldest first
    "observation.state_is_pad" (H,)  True where t-H+1+k < s (repeats row s)
    "action"                   (C, act_dim) rows t .. t+C-1
    "action_is_pad"            (C,)  True where t+k >= e (repeats row e-1)
    "images"                   {camera: (H, h, w, 3) uint8} the same history rows as the state
                               (padded like it); only for machines with cameras

A sample's ``instruction`` is its task's sentence in ``lang`` (``mix``: en or ja
per sample); given ``phrasings`` (task id -> lang -> wordings, see
``genba.envs.phrasings``), one of the task's sentence and its wordings, drawn
per (seed, frame) like the language.

Window indices are precomputed once as integer arrays, so one sample (or a
whole batch with :meth:`WindowDataset.gather`) is a single fancy-index gather.

Several datasets (embodiments) mix in one loader: :class:`MixedDataset`
concatenates them and :class:`MixedSampler` draws part ``p`` with probability
``weights[p]`` and a frame uniformly inside it. The draw at position ``k`` is a
pure function of ``(seed, k)``, so a resumed run continues the exact sequence
(``start=samples_already_seen``). :func:`collate` groups samples by embodiment
because shapes differ between embodiments, so a batch mixing camera and
camera-less machines is one group with images and one without.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset as TorchDataset
from torch.utils.data import Sampler

from genba.data.dataset import Dataset
from genba.data.language import LANGS, TRAIN_LANGS

Transform = Callable[[dict], dict]
#: Task id -> lang -> phrasings of its instruction (``genba.envs.phrasings.training_table`` builds it; the
#: data layer takes it as plain data, since it may not import envs).
Phrasings = Mapping[str, Mapping[str, Sequence[str]]]


class WindowDataset(TorchDataset):
    """Samples of one dataset; index ``i`` is the window ending at frame ``i``."""

    def __init__(self, dataset: Dataset, history: int = 1, chunk: int = 1, lang: str = "en",
                 transforms: Transform | None = None, seed: int = 0, phrasings: Phrasings | None = None):
        if history < 1 or chunk < 1:
            raise ValueError(f"history and chunk must be >= 1, got history={history}, chunk={chunk}")
        if lang not in TRAIN_LANGS:
            raise ValueError(f"lang {lang!r}: expected one of {TRAIN_LANGS}")
        self.dataset, self.history, self.chunk, self.lang = dataset, history, chunk, lang
        self.transforms, self.seed = transforms, seed
        self.embodiment = dataset.spec.name
        self._obs = torch.from_numpy(np.ascontiguousarray(dataset.observation, dtype=np.float32))
        self._act = torch.from_numpy(np.ascontiguousarray(dataset.action, dtype=np.float32))
        self._task = dataset.task_index.astype(np.int64)
        self._instructions = _instruction_pools(dataset.tasks, phrasings or {})
        self._images = dict(dataset.images)  # camera -> FrameStore (memory-mapped frame cache)
        self._build_index()

    def _build_index(self) -> None:
        """Per-frame episode bounds, then clipped gather indices for all frames."""
        n = self.dataset.num_frames
        start = np.empty(n, np.int64)
        stop = np.empty(n, np.int64)
        for ep in self.dataset.episodes:
            start[ep.start:ep.stop], stop[ep.start:ep.stop] = ep.start, ep.stop
        frames = np.arange(n, dtype=np.int64)[:, None]
        hist = frames + np.arange(-self.history + 1, 1)[None, :]  # (N, H)
        fut = frames + np.arange(self.chunk)[None, :]  # (N, C)
        self._hist_pad = torch.from_numpy(hist < start[:, None])
        self._act_pad = torch.from_numpy(fut >= stop[:, None])
        self._hist_idx = torch.from_numpy(np.maximum(hist, start[:, None]))
        self._fut_idx = torch.from_numpy(np.minimum(fut, stop[:, None] - 1))

    def __len__(self) -> int:
        return self.dataset.num_frames

    def instruction(self, i: int) -> str:
        """The instruction for frame ``i`` (``mix``: en or ja; with phrasings, one of the task's; both
        fixed per (seed, i), so a resumed run reads what the killed one would have)."""
        h = _mix64(self.seed, i)
        lang = self.lang
        if lang == "mix":
            lang = "ja" if h & 1 else "en"
        pool = self._instructions[lang][int(self._task[i])]
        return pool[(h >> 1) % len(pool)]

    def __getitem__(self, i: int) -> dict[str, Any]:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"window {i} outside dataset of {n} frames ({self.dataset.root})")
        i = int(i) % n
        sample = {"embodiment": self.embodiment, "task_index": int(self._task[i]),
                  "instruction": self.instruction(i),
                  "observation.state": self._obs[self._hist_idx[i]],  # (H, obs_dim)
                  "observation.state_is_pad": self._hist_pad[i],  # (H,)
                  "action": self._act[self._fut_idx[i]],  # (C, act_dim)
                  "action_is_pad": self._act_pad[i]}  # (C,)
        if self._images:
            rows = self._hist_idx[i].numpy()
            sample["images"] = {cam: torch.from_numpy(store.take(rows)) for cam, store in self._images.items()}
        return self.transforms(sample) if self.transforms is not None else sample

    def gather(self, indices: Sequence[int] | np.ndarray | torch.Tensor) -> dict[str, Any]:
        """A batch of raw (untransformed) windows in one gather: tensors get a leading B."""
        idx = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        batch = {"embodiment": self.embodiment,
                "task_index": torch.from_numpy(self._task[idx.numpy()]),
                "instruction": [self.instruction(int(i)) for i in idx],
                "observation.state": self._obs[self._hist_idx[idx]],  # (B, H, obs_dim)
                "observation.state_is_pad": self._hist_pad[idx],  # (B, H)
                "action": self._act[self._fut_idx[idx]],  # (B, C, act_dim)
                "action_is_pad": self._act_pad[idx]}  # (B, C)
        if self._images:
            rows = self._hist_idx[idx].numpy()  # (B, H)
            batch["images"] = {cam: torch.from_numpy(s.take(rows)) for cam, s in self._images.items()}
        return batch


def _instruction_pools(tasks: list[dict], phrasings: Phrasings) -> dict[str, list[tuple[str, ...]]]:
    """lang -> per task index: the dataset's own sentence, then the task's phrasings (by task id; none: it alone)."""
    return {lg: [tuple(dict.fromkeys((t[lg], *phrasings.get(t.get("id", ""), {}).get(lg, ())))) for t in tasks]
            for lg in LANGS}


def _mix64(seed: int, i: int) -> int:
    """Cheap deterministic bits per (seed, frame): splitmix64's finalizer (bit 0 picks the language)."""
    x = (int(i) + 0x9E3779B97F4A7C15 * (int(seed) + 1)) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return x ^ (x >> 31)


# ---- mixing ---------------------------------------------------------------------
class MixedDataset(TorchDataset):
    """Parts (usually one WindowDataset per embodiment) under one global index."""

    def __init__(self, parts: Sequence[TorchDataset], weights: Sequence[float] | None = None):
        if not parts:
            raise ValueError("MixedDataset needs at least one part")
        weights = [1.0] * len(parts) if weights is None else [float(w) for w in weights]
        if len(weights) != len(parts):
            raise ValueError(f"MixedDataset: {len(weights)} weights for {len(parts)} parts")
        if any(not (w >= 0) for w in weights) or sum(weights) <= 0:
            raise ValueError(f"MixedDataset: weights must be >= 0 with a positive sum, got {weights}")
        if any(len(p) == 0 for p in parts):
            raise ValueError("MixedDataset: a part is empty")
        self.parts = list(parts)
        self.weights = np.asarray(weights, dtype=np.float64) / sum(weights)
        self.offsets = np.concatenate([[0], np.cumsum([len(p) for p in parts])]).astype(np.int64)

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def locate(self, i: int) -> tuple[int, int]:
        """(part, index inside the part) of global index ``i``."""
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} outside MixedDataset of {len(self)} samples")
        p = bisect.bisect_right(self.offsets.tolist(), int(i)) - 1
        return p, int(i - self.offsets[p])

    def __getitem__(self, i: int) -> dict[str, Any]:
        p, j = self.locate(int(i))
        return self.parts[p][j]


class MixedSampler(Sampler[int]):
    """Seeded weighted draws over a MixedDataset's parts, resumable at any position.

    Position ``k`` maps to block ``k // block`` whose draws come from a
    generator seeded by ``(seed, block)``: resuming at ``start`` regenerates
    only the current block.
    """

    def __init__(self, mixed: MixedDataset, num_samples: int | None, seed: int = 0, start: int = 0,
                 weights: Sequence[float] | None = None, block: int = 4096):
        if start < 0 or (num_samples is not None and not start <= num_samples):
            raise ValueError(f"MixedSampler: need 0 <= start <= num_samples, got {start}, {num_samples}")
        w = mixed.weights if weights is None else np.asarray(weights, np.float64) / np.sum(weights)
        if len(w) != len(mixed.parts):
            raise ValueError(f"MixedSampler: {len(w)} weights for {len(mixed.parts)} parts")
        self.mixed, self.num_samples, self.seed, self.start, self.block = mixed, num_samples, seed, start, block
        self._cdf = np.cumsum(w)
        self._sizes = np.diff(mixed.offsets)

    def _block(self, b: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, b])
        u = rng.random(self.block)
        part = np.minimum(np.searchsorted(self._cdf, u * self._cdf[-1], side="right"), len(self._cdf) - 1)
        local = (rng.random(self.block) * self._sizes[part]).astype(np.int64)
        return self.mixed.offsets[part] + local

    def indices(self, start: int, stop: int) -> np.ndarray:
        """Global indices of draws ``start .. stop-1`` (what iteration yields there)."""
        out = [self._block(b) for b in range(start // self.block, (max(stop, start + 1) - 1) // self.block + 1)]
        flat = np.concatenate(out)
        off = start - (start // self.block) * self.block
        return flat[off:off + (stop - start)]

    def __iter__(self) -> Iterator[int]:
        pos, end = self.start, self.num_samples
        while end is None or pos < end:  # None: endless
            stop = (pos // self.block + 1) * self.block
            stop = stop if end is None else min(end, stop)
            yield from self.indices(pos, stop).tolist()
            pos = stop

    def __len__(self) -> int:
        if self.num_samples is None:
            raise TypeError("an endless MixedSampler (num_samples=None) has no length")
        return self.num_samples - self.start


def mixed_sampler(mixed: MixedDataset, num_samples: int | None, *, seed: int = 0, start: int = 0,
                  weights: Sequence[float] | None = None) -> MixedSampler:
    """The sampler a trainer uses: ``start`` = samples already consumed (exact resume).

    ``num_samples=None`` draws forever (step-based training loops).
    """
    return MixedSampler(mixed, num_samples, seed=seed, start=start, weights=weights)


# ---- batching -----------------------------------------------------------------
def collate(samples: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Group samples by embodiment: ``{embodiment: {key: Tensor (B_e, ...)}}``.

    Tensors and arrays are stacked, ints/floats/bools become tensors, strings
    (e.g. ``instruction``) are kept as lists, mappings (``images``) are
    collated key by key. Order inside a group is the
    order of ``samples``.
    """
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for s in samples:
        if "embodiment" not in s:
            raise KeyError("collate: every sample needs an 'embodiment' key")
        groups.setdefault(s["embodiment"], []).append(s)
    return {emb: _stack(group) for emb, group in groups.items()}


def _stack(group: list[Mapping[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in group[0]:
        if key == "embodiment":
            continue
        vals = [s[key] for s in group]
        first = vals[0]
        if hasattr(first, "shape") and any(tuple(v.shape) != tuple(first.shape) for v in vals):
            shapes = sorted({tuple(v.shape) for v in vals})
            raise ValueError(f"collate: samples of one embodiment disagree on the shape of {key!r}: {shapes}")
        if isinstance(first, Mapping):
            out[key] = _stack(vals)
        elif isinstance(first, torch.Tensor):
            out[key] = torch.stack(vals)
        elif isinstance(first, np.ndarray):
            out[key] = torch.from_numpy(np.stack(vals))
        elif isinstance(first, (bool, int, float, np.number, np.bool_)):
            out[key] = torch.tensor(vals)
        else:
            out[key] = list(vals)
    return out
