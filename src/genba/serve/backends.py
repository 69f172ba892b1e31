"""What the policy server calls to run a model: the :class:`Backend` protocol and its two implementations.

:class:`PolicyBackend` wraps any object with the Policy interface (tests serve
scripted fakes through it); :class:`GenbaBackend` serves a genba checkpoint
with one shared model and one trunk pass per micro-batch. torch and the model
are imported only when a checkpoint is loaded.
"""

from __future__ import annotations

from typing import Any, Mapping, Protocol

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
    """The genba model: one shared Generalist, one Policy (history, chunk queue) per
    session, and one trunk pass per micro-batch, across embodiments.

    Batches go through ``genba.model.policy.infer_chunk_many``: each session's policy
    advances exactly as its own ``infer_chunk`` would. A bad observation refuses the
    batch before any session advances; then each is served alone, so only it fails.
    """

    @classmethod
    def load(cls, checkpoint_dir: str, **policy_kwargs) -> "GenbaBackend":
        import hashlib
        from pathlib import Path

        from genba.model.bundle import bundle_stats
        from genba.model.policy import Policy, load_policy

        base = load_policy(checkpoint_dir, **policy_kwargs)
        man = base.manifest
        stats = bundle_stats(man, str(checkpoint_dir))
        mode = man.get("normalization", {}).get("mode", "mean_std")

        def factory():
            return Policy(base.model, stats, device=base.device, manifest=man, normalization=mode, **policy_kwargs)

        files = {f: hashlib.sha256((Path(checkpoint_dir) / f).read_bytes()).hexdigest()
                 for f in ("model.safetensors", "checkpoint.json", "genba.json") if (Path(checkpoint_dir) / f).exists()}
        meta = {"model": {"preset": man.get("preset"), "num_params": man.get("weights", {}).get("num_params"),
                          "sha256": files}, "lineage": man.get("lineage", {})}
        be = cls(factory, chunk=base.cfg.chunk, specs=base.specs, meta=meta)
        be.model, be.device = base.model, base.device
        return be

    def infer_batch(self, items):
        from genba.model.policy import infer_chunk_many

        try:
            return infer_chunk_many([pol for pol, _ in items], [obs for _, obs in items])
        except ValueError:  # a bad observation: no stream advanced; serve one by one so only it fails
            return super().infer_batch(items)


def load_backend(checkpoint_dir: str, **policy_kwargs) -> GenbaBackend:
    """The genba model from a checkpoint (torch and the model are imported only here)."""
    return GenbaBackend.load(checkpoint_dir, **policy_kwargs)
