"""Action chunks ahead of time, so the bridge's control cycle never waits on a model.

The policy emits a chunk of ``C`` actions planned from one observation: the
action for the cycle that read it, and the ``C - 1`` cycles after. A
:class:`ChunkPrefetcher` keeps the newest chunk and a worker thread that plans
the next one from the newest observation while the current one plays, so each
cycle only posts its observation and pops the action planned for it:

* cycle ``k`` plays ``chunk[k - k0]`` of the newest chunk planned from cycle
  ``k0``'s observation, while ``k - k0 < min(C, max_age + 1)`` (its validity);
* past that, or before any chunk arrived, there is no fresh action: the bridge
  gives the shield a no-command step (the watchdog turns a lasting gap into a
  controlled stop) and counts a missed deadline; an expired action is never
  played;
* a chunk that arrives later than an already-published newer one is dropped.

A camera machine's frames (``{camera: (H, W, 3) uint8}``, from the bridge's
:mod:`~genba.serve.cameras` source) are posted with its observation; a source
is then called as ``source(states, images)`` with one frame map per state,
and the policy sources put them in the observation (``obs["images"]``). A
machine without cameras posts none and its sources are called as before.

Sources (the blocking calls the worker makes, one at a time):

* :class:`StepSource`: any ``act(state) -> action`` (an expert, a per-step
  client); its answer is valid for its own cycle and ``hold`` cycles after.
* :class:`PolicySource`: an in-process :class:`genba.model.policy.Policy` in the
  worker thread (tests, light models). Every observation reaches the policy's
  history (``Policy.observe``), even those no chunk was planned from.
* :class:`ProcessPolicySource`: the same Policy in a child process, so model
  compute never holds the bridge's GIL; optionally at a lower priority
  (``nice``) and on its own CPUs (``cpus``) so the cycle preempts it.
* :class:`ServerSource`: a genba policy server through ``genba.client``.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

log = logging.getLogger(__name__)


class ChunkSource(Protocol):
    """Blocking: the observations since the last call (oldest first) -> a chunk (C, A) planned
    from the last of them; on a camera machine also their frames (``images``, one map per state)."""

    def __call__(self, states: Sequence[np.ndarray], images: Sequence[dict] | None = None) -> np.ndarray: ...


@dataclass(frozen=True)
class PrefetchConfig:
    """``replan_every``: plan from the newest observation once it is this many cycles past the last
    plan's (1 = from every observation the worker is free for: the freshest actions; measured on
    2 CPUs, planning less often made each plan slower to arrive, not the cycle faster).
    ``max_age``: the largest index into a chunk the bridge still plays (None = the chunk's own
    length); an action past its validity is never played. ``backlog``: observations kept for the
    next plan's history."""

    replan_every: int = 1
    max_age: int | None = None
    backlog: int = 64

    def __post_init__(self) -> None:
        if self.replan_every < 1:
            raise ValueError(f"PrefetchConfig.replan_every {self.replan_every}: must be >= 1")
        if self.max_age is not None and self.max_age < 0:
            raise ValueError(f"PrefetchConfig.max_age {self.max_age}: must be >= 0 (or None)")
        if self.backlog < 1:
            raise ValueError(f"PrefetchConfig.backlog {self.backlog}: must be >= 1")


class ChunkPrefetcher:
    """The newest chunk plus a worker thread planning the next (see the module docstring)."""

    def __init__(self, source: ChunkSource, cfg: PrefetchConfig = PrefetchConfig()) -> None:
        self.source, self.cfg = source, cfg
        self._cv = threading.Condition()
        self._pending: deque[tuple[int, np.ndarray, dict | None]] = deque(maxlen=cfg.backlog)
        self._chunk: tuple[int, np.ndarray] | None = None  # (cycle of its observation, (C, A))
        self._last_plan = -(10 ** 9)  # cycle the last request planned from
        self._newest = -1  # newest cycle posted
        self._lat_max: int | None = None  # most cycles from a plan's observation to its chunk
        self._closed = False
        self._thread: threading.Thread | None = None
        self.requests = self.errors = self.dropped = 0
        self.latency_ms: list[float] = []  # per answered request
        self.last_error: str | None = None

    def start(self) -> ChunkPrefetcher:
        self._thread = threading.Thread(target=self._work, name="genba-prefetch", daemon=True)
        self._thread.start()
        return self

    def close(self, timeout: float = 5.0) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    def __enter__(self) -> ChunkPrefetcher:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def post(self, k: int, state: np.ndarray, images: dict[str, np.ndarray] | None = None) -> None:
        """Cycle ``k``'s observation and, on a camera machine, its frames (never blocks on the worker)."""
        with self._cv:
            self._pending.append((k, np.array(state, dtype=np.float64), images))
            self._newest = k
            self._cv.notify()

    def action(self, k: int) -> tuple[np.ndarray | None, int | None]:
        """(the action planned for cycle ``k``, its age ``k - k0``) or (None, None) if none is valid."""
        with self._cv:
            got = self._chunk
        if got is None:
            return None, None
        k0, chunk = got
        age = k - k0
        if not 0 <= age < self._valid(chunk):
            return None, None
        return chunk[age].copy(), age

    def _valid(self, chunk: np.ndarray) -> int:
        return len(chunk) if self.cfg.max_age is None else min(len(chunk), self.cfg.max_age + 1)

    def _due(self) -> bool:
        """Is a plan due from the newest pending observation (called under the lock)?"""
        return bool(self._pending) and self._pending[-1][0] - self._last_plan >= self.cfg.replan_every

    # ---- the worker ---------------------------------------------------------
    def _take(self) -> list[tuple[int, np.ndarray, dict | None]] | None:
        """Wait until a plan is due; the observations since the last one (None once closed)."""
        with self._cv:
            while not self._closed and not self._due():
                self._cv.wait()
            if self._closed:
                return None
            batch = list(self._pending)
            self._pending.clear()
            self._last_plan = batch[-1][0]
            return batch

    def _work(self) -> None:
        while (batch := self._take()) is not None:
            k0 = batch[-1][0]
            t0 = time.perf_counter()
            self.requests += 1
            try:
                states, images = [s for _, s, _ in batch], [im for _, _, im in batch]
                got = self.source(states) if all(im is None for im in images) else self.source(states, images)
                chunk = np.asarray(got, dtype=np.float64)
            except Exception as e:  # a failing model is a missing command (the shield stops), not a crash
                self.errors += 1
                self.last_error = f"{type(e).__name__}: {e}"
                log.log(logging.WARNING if self.errors == 1 else logging.DEBUG,
                        "prefetch: the policy failed (%s); no command until it answers", self.last_error)
                continue
            self.latency_ms.append((time.perf_counter() - t0) * 1e3)
            if chunk.ndim == 1:
                chunk = chunk[None]
            with self._cv:
                self._lat_max = max(self._lat_max or 0, self._newest - k0)
                if self._chunk is not None and self._chunk[0] >= k0:
                    self.dropped += 1
                else:
                    self._chunk = (k0, chunk)

    def stats(self) -> dict:
        lat = np.asarray(self.latency_ms) if self.latency_ms else np.zeros(1)
        return {"requests": self.requests, "errors": self.errors, "dropped": self.dropped,
                "latency_cycles_max": self._lat_max,
                "latency_ms_p50": float(np.percentile(lat, 50)), "latency_ms_p99": float(np.percentile(lat, 99)),
                "last_error": self.last_error}


# ---- sources ------------------------------------------------------------------
class StepSource:
    """A per-step ``act(state) -> action``: its answer is valid for ``hold`` cycles after its
    observation (the action is repeated, not extrapolated)."""

    def __init__(self, act: Callable[[np.ndarray], Any], hold: int = 1) -> None:
        self.act, self.hold = act, hold

    def __call__(self, states: Sequence[np.ndarray], images: Sequence[dict] | None = None) -> np.ndarray:
        a = np.asarray(self.act(states[-1]), dtype=np.float64).reshape(-1)  # an expert acts on the state
        return np.tile(a, (self.hold + 1, 1))


def _obs(embodiment: str, instruction: str, state: np.ndarray, images: dict | None = None) -> dict:
    obs = {"embodiment": embodiment, "state": np.asarray(state, np.float32), "instruction": instruction}
    if images is not None:
        obs["images"] = images
    return obs


def plan_chunk(policy, embodiment: str, instruction: str, states: Sequence[np.ndarray],
               images: Sequence[dict | None] | None = None) -> np.ndarray:
    """Every observation (with its frames) into the policy's history, a chunk from the last (what the
    sources share)."""
    images = list(images) if images is not None else [None] * len(states)
    for s, im in zip(states[:-1], images[:-1]):
        policy.observe(_obs(embodiment, instruction, s, im))
    return policy.infer_chunk(_obs(embodiment, instruction, states[-1], images[-1]))


class PolicySource:
    """An in-process Policy, called in the prefetch worker thread."""

    def __init__(self, policy, embodiment: str, instruction: str) -> None:
        self.policy, self.embodiment, self.instruction = policy, embodiment, instruction

    def __call__(self, states: Sequence[np.ndarray], images: Sequence[dict] | None = None) -> np.ndarray:
        return plan_chunk(self.policy, self.embodiment, self.instruction, states, images)


class ServerSource:
    """A genba policy server (``genba.client.PolicyClient``): one request per plan, the newest
    observation and its frames; ``horizon`` None asks for the whole chunk (the most slack under load)."""

    def __init__(self, client, embodiment: str, instruction: str, horizon: int | None = None) -> None:
        self.client, self.embodiment, self.instruction, self.horizon = client, embodiment, instruction, horizon

    def __call__(self, states: Sequence[np.ndarray], images: Sequence[dict] | None = None) -> np.ndarray:
        frames = {"images": images[-1]} if images else {}  # a camera-less call as before (any client version)
        return self.client.infer(self.embodiment, states[-1], self.instruction, horizon=self.horizon,
                                 **frames)["actions"]


def set_priority(nice: int | None = None, cpus: Sequence[int] | None = None, what: str = "process", *,
                 rt: int | None = None) -> list[str]:
    """Optionally renice the calling thread (Linux: nice is per thread), give it the real-time
    SCHED_FIFO class at priority ``rt`` (it then preempts every normal task; fine for a thread that
    sleeps most of its period, never for a busy one) and pin it to ``cpus``. A negative nice and
    SCHED_FIFO need CAP_SYS_NICE: returns what could not be applied (and logs it), never raises."""
    problems = []
    if nice is not None:
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
        except (OSError, AttributeError) as e:
            problems.append(f"{what}: nice {nice} not applied ({e})")
    if rt is not None:
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(rt))
        except (OSError, AttributeError, ValueError) as e:
            problems.append(f"{what}: SCHED_FIFO {rt} not applied ({e})")
    if cpus:
        try:
            os.sched_setaffinity(0, set(cpus))
        except (OSError, AttributeError, ValueError) as e:
            problems.append(f"{what}: CPUs {sorted(cpus)} not applied ({e})")
    for p in problems:
        log.warning("%s", p)
    return problems


def _policy_worker(conn, checkpoint: str, embodiment: str, instruction: str, policy_kwargs: dict,
                   nice: int | None, cpus: Sequence[int] | None, threads: int) -> None:
    """Child process: load the checkpoint, then answer (states, images) with chunks until None."""
    set_priority(nice, cpus, "policy worker")
    try:
        import torch

        from genba.model.policy import load_policy

        torch.set_num_threads(threads)
        policy = load_policy(checkpoint, device="cpu", **policy_kwargs)
        conn.send(("ready", policy.cfg.chunk))
    except Exception as e:  # reported to the parent, which raises it with the checkpoint's name
        conn.send(("error", f"{type(e).__name__}: {e}"))
        return
    while (msg := conn.recv()) is not None:
        try:
            conn.send(("ok", plan_chunk(policy, embodiment, instruction, *msg)))
        except Exception as e:
            conn.send(("error", f"{type(e).__name__}: {e}"))


class ProcessPolicySource:
    """A Policy loaded from ``checkpoint`` in a child process (spawned: no forked torch state).
    ``nice`` > 0 runs the model below the bridge's cycle; ``cpus`` pins it; ``threads`` are torch's."""

    def __init__(self, checkpoint: str | os.PathLike, embodiment: str, instruction: str, *,
                 nice: int | None = None, cpus: Sequence[int] | None = None, threads: int = 1,
                 start_timeout: float = 120.0, **policy_kwargs: Any) -> None:
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_policy_worker, name="genba-policy", daemon=True,
                                 args=(child, str(checkpoint), embodiment, instruction, policy_kwargs, nice,
                                       tuple(cpus) if cpus else None, threads))
        self._proc.start()
        child.close()
        if not self._conn.poll(start_timeout):
            self.close()
            raise RuntimeError(f"policy worker for {checkpoint}: not ready within {start_timeout:g} s")
        kind, payload = self._conn.recv()
        if kind != "ready":
            self.close()
            raise RuntimeError(f"policy worker for {checkpoint}: {payload}")
        self.chunk = int(payload)

    def __call__(self, states: Sequence[np.ndarray], images: Sequence[dict] | None = None) -> np.ndarray:
        self._conn.send(([np.asarray(s, np.float32) for s in states], images))
        kind, payload = self._conn.recv()
        if kind != "ok":
            raise RuntimeError(f"policy worker: {payload}")
        return payload

    def close(self) -> None:
        try:
            self._conn.send(None)
        except (OSError, ValueError):
            pass
        self._proc.join(5)
        if self._proc.is_alive():
            self._proc.terminate()
            self._proc.join(5)
        self._conn.close()
