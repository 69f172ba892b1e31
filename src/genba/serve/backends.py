"""What the policy server calls to run a model: the :class:`Backend` protocol and its two implementations.

:class:`PolicyBackend` wraps any object with the Policy interface (tests serve
scripted fakes through it); :class:`GenbaBackend` serves a genba checkpoint:
one policy runtime (``genba.model.runtime``), a Policy forked from it per
session, one trunk pass per micro-batch. torch and the model are imported only when a
checkpoint is loaded.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import numpy as np

from genba.data.spec import EmbodimentSpec


class Backend(Protocol):
    """What the server needs from a model: specs, chunk length, per-session state, batched inference."""

    specs: Mapping[str, EmbodimentSpec]
    chunk: int

    def metadata(self) -> dict: ...

    def new_state(self) -> Any: ...

    def reset_state(self, state: Any) -> None: ...

    def infer_batch(self, items: list[tuple[Any, dict]]) -> list[np.ndarray | Exception]: ...


class PolicyBackend:
    """Any object with the Policy interface (``infer_chunk``, ``reset``, ``specs``), one per session."""

    def __init__(self, factory, *, chunk: int, specs: Mapping[str, EmbodimentSpec], meta: dict | None = None) -> None:
        self.factory, self.chunk, self.specs, self._meta = factory, chunk, dict(specs), dict(meta or {})

    def metadata(self) -> dict:
        return dict(self._meta)

    def new_state(self):
        return self.factory()

    def reset_state(self, state) -> None:
        state.reset()

    def infer_batch(self, items):
        """One chunk per item, or the exception that item raised (the others are still served)."""
        return [_try_chunk(pol, obs) for pol, obs in items]


def _try_chunk(pol, obs) -> np.ndarray | Exception:
    try:
        return np.asarray(pol.infer_chunk(obs))
    except Exception as e:  # reported to that request's caller only
        return e


class GenbaBackend(PolicyBackend):
    """The genba model: one Policy forked per session (one shared runtime, ``genba.model.runtime``;
    its own history and chunk queue) and one trunk pass per micro-batch, across embodiments.

    Batches go through ``genba.model.policy.infer_chunk_many``: each session advances
    exactly as its own ``infer_chunk`` would. A bad observation fails only its own
    request (checked before any session advances); a session with two requests in
    one batch gets them served in order.
    """

    def __init__(self, policy, meta: dict) -> None:
        super().__init__(policy.fork, chunk=policy.cfg.chunk, specs=policy.specs, meta=meta)
        self.policy, self.model, self.device = policy, policy.model, policy.device

    @classmethod
    def load(cls, checkpoint_dir: str, **policy_kwargs) -> GenbaBackend:
        import hashlib
        from pathlib import Path

        from genba.model.policy import load_policy

        policy = load_policy(checkpoint_dir, **policy_kwargs)
        man = policy.manifest
        files = {f: hashlib.sha256((Path(checkpoint_dir) / f).read_bytes()).hexdigest()
                 for f in ("model.safetensors", "checkpoint.json", "genba.json") if (Path(checkpoint_dir) / f).exists()}
        meta = {"model": {"preset": man.get("preset"), "num_params": man.get("weights", {}).get("num_params"),
                          "sha256": files}, "lineage": man.get("lineage", {})}
        return cls(policy, meta)

    def infer_batch(self, items):
        """One chunk per item, or the ValueError that item's observation raised."""
        from genba.model.policy import infer_chunk_many, validate_obs

        outs: list = [None] * len(items)
        todo = []
        for i, (pol, obs) in enumerate(items):
            try:
                validate_obs(obs, self.specs)
                todo.append((i, pol, obs))
            except ValueError as e:  # reported to that request's caller only
                outs[i] = e
        for now in _rounds(todo):
            for (i, _, _), chunk in zip(now, infer_chunk_many([p for _, p, _ in now], [o for _, _, o in now])):
                outs[i] = chunk
        return outs


def _rounds(todo: list[tuple[int, Any, dict]]) -> list[list[tuple[int, Any, dict]]]:
    """``(index, session, obs)`` items in rounds of at most one per session, each session's in order."""
    rounds: list[list] = []
    seen: dict[int, int] = {}
    for item in todo:
        k = seen[id(item[1])] = seen.get(id(item[1]), -1) + 1
        if k == len(rounds):
            rounds.append([])
        rounds[k].append(item)
    return rounds


def load_backend(checkpoint_dir: str, **policy_kwargs) -> GenbaBackend:
    """The genba model from a checkpoint (torch and the model are imported only here)."""
    return GenbaBackend.load(checkpoint_dir, **policy_kwargs)
