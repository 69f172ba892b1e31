"""`genba collect`: scripted experts -> one LeRobot v3 dataset per embodiment.

Experts run in worker processes (``spawn``: no inherited MuJoCo state, one
BLAS thread each; processes beat threads on this kind of machine). Each worker
keeps one env per task, so a task costs one construction per worker.

Attempt ``k`` of task ``t`` always starts from ``train_seed(t, k, base)``, so
the output does not depend on scheduling: the first round runs attempts
``0..N-1``; tasks short of ``N`` successes get the next attempts, round after
round, up to ``max_attempts_factor * N``. Every failure is counted in the
``collection`` report in ``meta/genba.json``; a task that stays short is
reported and kept with fewer episodes, never padded or hidden.

``noise`` collects DART-style (Laskey et al., 2017): the executed action is
the expert's plus Gaussian noise (std ``noise`` times each action's half
range, clipped to the limits), while the recorded label stays the expert's
clean action. The demonstrations then visit the states a clone drifts into and
show the expert's correction there; the noise stream is seeded by the episode
seed, so a collection stays reproducible. One level for every task (``0.2``)
or one per selection (``"arms=0.2,drives=0.01"``: tasks not named get none):
a drive's tracking threshold tolerates far less noise than an arm's task.

``obs="pixels"`` records each task's camera view (``registry.Task.view``):
the env renders every step in the worker (the fast settings of
``genba.envs.render``), the expert still acts on the simulator's state, and
the episodes carry the frames (``Episode.images``). Machines without a camera
(the drives) are recorded as they are, so one batch may mix both.

Nothing is written until every rollout is done, and each dataset is written
atomically (``genba.data.layout.write_dataset``): an interrupted collect
leaves no dataset that looks complete.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from genba.data.spec import OBS_MODES
from genba.envs import registry
from genba.envs.seeds import train_seed

# ---- one rollout ---------------------------------------------------------------


@dataclass
class Rollout:
    """One episode of one policy: frames (obs_t, action_t) and the outcome."""

    task_id: str
    k: int
    seed: int
    success: bool
    steps: int
    observation: np.ndarray | None = None  # (T, obs_dim) float32, None when not recorded
    action: np.ndarray | None = None  # (T, act_dim) float32
    tracking_error: float | None = None  # mean of info["tracking_error"] when the env reports it
    images: dict[str, np.ndarray] | None = None  # camera -> (T, H, W, 3) uint8, when the env renders


def run_episode(task: registry.Task, env: Any, policy: Callable[[np.ndarray], np.ndarray], seed: int,
                *, k: int = 0, record: bool = True, noise: float = 0.0) -> Rollout:
    """Roll ``policy`` out on ``env`` from ``seed`` following the task's stop rule.

    The task's stop rule (``registry.StopRule``) ends the episode: ``n`` steps
    after the first success with ``task.stop_after_success = n`` (success if it
    was ever reached), else at ``max_steps`` or termination (success if the last
    step succeeds). With ``noise`` > 0 the env executes a perturbed action and the
    clean one is recorded (see the module docstring).
    """
    obs, info = env.reset(seed=seed)
    perturb = _perturbation(task, seed, noise)
    verdict = task.stop_rule().judge()
    obs_buf, act_buf, errs = [], [], []
    img_buf: dict[str, list[np.ndarray]] = {name: [] for name in info.get("images", {})} if record else {}
    for t in range(task.max_steps):
        action = np.asarray(policy(obs), dtype=np.float32)
        if record:
            obs_buf.append(obs)
            act_buf.append(action)
            for name, frames in img_buf.items():
                frames.append(info["images"][name])  # the frame seen with obs_t
        obs, _, terminated, truncated, info = env.step(perturb(action))
        if "tracking_error" in info:
            errs.append(float(info["tracking_error"]))
        if verdict.step(t, info["success"]) or terminated or truncated:
            break
    success = verdict.success
    return Rollout(
        task_id=task.id, k=k, seed=seed, success=success, steps=t + 1,
        observation=np.stack(obs_buf).astype(np.float32) if record else None,
        action=np.stack(act_buf).astype(np.float32) if record else None,
        tracking_error=float(np.mean(errs)) if errs else None,
        images={name: np.stack(frames) for name, frames in img_buf.items()} or None,
    )


def _perturbation(task: registry.Task, seed: int, noise: float) -> Callable[[np.ndarray], np.ndarray]:
    """The executed-action map of one episode: identity, or seeded Gaussian noise clipped to the limits."""
    if noise == 0.0:
        return lambda action: action
    low = np.asarray(task.spec.action_low, np.float64)  # finite: EmbodimentSpec enforces it
    high = np.asarray(task.spec.action_high, np.float64)
    std = noise * (high - low) / 2
    rng = np.random.default_rng([seed, 0x0DA27])  # its own stream: the env's seeding is untouched

    def perturb(action: np.ndarray) -> np.ndarray:
        return np.clip(action + rng.normal(0.0, std), low, high).astype(np.float32)

    return perturb


# ---- worker processes ----------------------------------------------------------
#: A recording view: (obs mode, camera size); state mode ignores the size.
View = tuple[str, int]
STATE_VIEW: View = ("state", registry.DEFAULT_CAMERA_SIZE)
_ENVS: dict[tuple[str, View], tuple[Any, Any]] = {}  # per process: (task id, view) -> (env, expert)


def env_and_expert(task_id: str, seed: int, view: View = STATE_VIEW) -> tuple[registry.Task, Any, Any]:
    task = registry.get_task(task_id).view(*view)
    if (task_id, view) not in _ENVS:
        env = task.make_env(seed)
        _ENVS[task_id, view] = (env, task.make_expert(env))
    env, expert = _ENVS[task_id, view]
    return task, env, expert


def expert_rollouts(item: tuple) -> list[Rollout]:
    """Worker job: ``(task_id, [(k, seed), ...], record, noise[, view])`` -> expert rollouts.

    Failed rollouts drop their frames here, in the worker: they are counted, never written, and
    their images would only cost memory and pickling."""
    task_id, attempts, record, noise, *rest = item
    view = tuple(rest[0]) if rest else STATE_VIEW
    out = []
    for k, seed in attempts:
        task, env, expert = env_and_expert(task_id, seed, view)
        expert.reset()
        r = run_episode(task, env, expert.act, seed, k=k, record=record, noise=noise)
        if not r.success:
            r.images = None
        out.append(r)
    return out


@contextmanager
def _worker_environment() -> Iterator[None]:
    """Variables spawned workers inherit: one BLAS thread, no MuJoCo display."""
    # MUJOCO_GL stays "disable" by default: genba.envs.render makes its own EGL context when a
    # camera view renders, so no worker opens a display.
    wanted = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
              "MUJOCO_GL": os.environ.get("MUJOCO_GL", "disable")}
    saved = {k: os.environ.get(k) for k in wanted}
    os.environ.update(wanted)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextmanager
def worker_pool(workers: int) -> Iterator[Callable[[Callable, list], Iterable]]:
    """Yield ``map(fn, items)`` running on ``workers`` processes (``<= 1``: in-process).

    Results come back as they finish (unordered). One pool serves every round,
    so workers keep their envs; leaving the block (or an exception) ends them.
    """
    if workers <= 1:
        yield map
        return
    with _worker_environment():
        pool = mp.get_context("spawn").Pool(workers)
    try:
        yield pool.imap_unordered
    finally:
        pool.terminate()
        pool.join()


def parallel_map(fn: Callable[[Any], Any], items: list, workers: int) -> Iterator[Any]:
    """Yield ``fn(item)`` for each item as it finishes, on a pool of its own (``workers <= 1``: in-process)."""
    with worker_pool(min(workers, len(items))) as pmap:
        yield from pmap(fn, items)


def split_attempts(task_id: str, ks: list[int], seeds: list[int], record: bool,
                   chunk: int, noise: float, view: View = STATE_VIEW) -> list[tuple]:
    """Cut one task's attempts into jobs of at most ``chunk`` episodes."""
    pairs = list(zip(ks, seeds))
    return [(task_id, pairs[i:i + chunk], record, noise, view) for i in range(0, len(pairs), chunk)]


def chunk_size(n_tasks: int, episodes: int, workers: int) -> int:
    """Jobs small enough to balance the workers, big enough to amortize env builds."""
    per_task = max(1, math.ceil(4 * max(workers, 1) / max(n_tasks, 1)))  # ~4 jobs per worker in all
    return max(1, math.ceil(episodes / per_task))


# ---- the collection ------------------------------------------------------------


@dataclass(frozen=True)
class CollectConfig:
    """What ``genba collect`` does; every CLI flag maps to one field."""

    tasks: str
    out: Path
    episodes: int = 50
    workers: int = 2
    seed: int = 0
    max_attempts_factor: float = 2.0
    noise: str | float = "0"  # DART: "LEVEL" or "SELECTION=LEVEL,..." (fraction of each action's half range)
    overwrite: bool = False
    progress: bool = True
    obs: str = "state"  # "pixels": each camera machine's camera view (see the module docstring)
    camera_size: int = registry.DEFAULT_CAMERA_SIZE  # pixels, square

    @property
    def view(self) -> View:
        return (self.obs, self.camera_size)

    def __post_init__(self) -> None:
        if self.obs not in OBS_MODES:
            raise ValueError(f"obs must be one of {OBS_MODES}, got {self.obs!r}")
        if not 8 <= self.camera_size <= 1024:
            raise ValueError(f"camera_size must be 8..1024 pixels, got {self.camera_size}")
        if self.episodes < 1:
            raise ValueError(f"episodes must be >= 1, got {self.episodes}")
        if self.max_attempts_factor < 1:
            raise ValueError(f"max_attempts_factor must be >= 1, got {self.max_attempts_factor}")
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers}")
        parse_noise(self.noise)


def parse_noise(text: str) -> list[tuple[str | None, float]]:
    """``"0.2"`` -> ``[(None, 0.2)]``; ``"arms=0.2,drives=0.01"`` -> ``[("arms", 0.2), ("drives", 0.01)]``."""
    out: list[tuple[str | None, float]] = []
    for part in (p.strip() for p in str(text).split(",")):
        selection, sep, level = part.rpartition("=")
        if sep and not selection.strip():
            raise ValueError(f"noise {text!r}: {part!r} has no task selection before '='")
        try:
            value = float(level)
        except ValueError:
            raise ValueError(f"noise {text!r}: {level!r} is not a number") from None
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"noise {text!r}: {value} is outside [0, 1] (a fraction of the action half range)")
        out.append((selection.strip() if sep else None, value))
    if len(out) > 1 and any(sel is None for sel, _ in out):
        raise ValueError(f"noise {text!r}: give one level, or SELECTION=LEVEL for every part")
    return out


def noise_levels(text: str, tasks: list[registry.Task]) -> dict[str, float]:
    """Task id -> noise level for the collected ``tasks`` (a selection naming none of them is an error)."""
    wanted = {t.id for t in tasks}
    levels = {t.id: 0.0 for t in tasks}
    named: dict[str, str] = {}
    for selection, value in parse_noise(text):
        try:
            ids = wanted if selection is None else {t.id for t in registry.resolve(selection)}
        except registry.UnknownTaskError as e:
            raise ValueError(f"noise: {e}") from None
        hit = ids & wanted
        if not hit:
            raise ValueError(f"noise: {selection!r} names none of the collected tasks")
        for i in sorted(hit):
            if i in named:
                raise ValueError(f"noise: task {i} is named by both {named[i]!r} and {selection!r}")
            named[i], levels[i] = str(selection), value
    return levels


@dataclass
class TaskLedger:
    """Attempts of one task so far."""

    task: registry.Task
    noise: float = 0.0  # DART level of this task's rollouts
    next_k: int = 0
    kept: list[Rollout] = field(default_factory=list)
    failed: list[Rollout] = field(default_factory=list)


def collect(cfg: CollectConfig) -> dict[str, Path]:
    """Run the experts and write one dataset per embodiment; returns name -> path."""
    tasks = [t.view(*cfg.view) for t in registry.resolve(cfg.tasks)]
    _refuse_existing_outputs(cfg, tasks)
    noise_levels(cfg.noise, tasks)  # a bad selection fails before minutes of rollouts
    t0, cpu0 = time.perf_counter(), _cpu_seconds()
    ledgers = run_rounds(tasks, cfg)
    wall, cpu = time.perf_counter() - t0, _cpu_seconds() - cpu0
    paths = {}
    for name, group in _by_embodiment(ledgers).items():
        paths[name] = write_embodiment(cfg, name, group, wall_s=wall, cpu_s=cpu)
    return paths


def run_rounds(tasks: list[registry.Task], cfg: CollectConfig) -> list[TaskLedger]:
    """Attempt rounds until every task has ``cfg.episodes`` successes or its attempt budget is spent."""
    noise = noise_levels(cfg.noise, tasks)
    ledgers = {t.id: TaskLedger(t, noise[t.id]) for t in tasks}
    max_attempts = math.ceil(cfg.max_attempts_factor * cfg.episodes)
    chunk = chunk_size(len(tasks), cfg.episodes, cfg.workers)
    with progress_bar(cfg.progress, "collect") as bar, worker_pool(cfg.workers) as pmap:
        while True:
            jobs = []
            for led in ledgers.values():
                want = min(cfg.episodes - len(led.kept), max_attempts - led.next_k)
                if want <= 0:
                    continue
                ks = list(range(led.next_k, led.next_k + want))
                led.next_k += want
                seeds = [train_seed(led.task.id, k, cfg.seed) for k in ks]
                jobs += split_attempts(led.task.id, ks, seeds, True, chunk, led.noise, cfg.view)
            if not jobs:
                break
            bar.submit(sum(len(j[1]) for j in jobs))
            for rollouts in pmap(expert_rollouts, jobs):
                for r in rollouts:
                    (ledgers[r.task_id].kept if r.success else ledgers[r.task_id].failed).append(r)
                bar.advance(rollouts)
    for led in ledgers.values():
        led.kept.sort(key=lambda r: r.k)
        led.failed.sort(key=lambda r: r.k)
    return list(ledgers.values())


def write_embodiment(cfg: CollectConfig, name: str, ledgers: list[TaskLedger], *, wall_s: float,
                     cpu_s: float) -> Path:
    """Write the kept episodes of one embodiment's tasks with the collection report."""
    from genba.data.layout import Episode, write_dataset  # envs -> data is the allowed direction

    spec = ledgers[0].task.spec
    episodes = list(episodes_of(ledgers, Episode))
    report = collection_report(cfg, ledgers, wall_s=wall_s, cpu_s=cpu_s)
    if not episodes:
        raise RuntimeError(f"embodiment {name!r}: no successful episode in {report['attempted']} attempts; "
                           f"nothing to write")
    return write_dataset(cfg.out / name, episodes, spec, [led.task for led in ledgers],
                         extra={"collection": report}, overwrite=cfg.overwrite)


def episodes_of(ledgers: list[TaskLedger], episode_type: Any) -> Iterator[Any]:
    """The kept rollouts of one embodiment as ``episode_type`` (``genba.data.layout.Episode``) records,
    with their camera frames (camera name -> (T, H, W, 3) uint8) when the spec has cameras."""
    for ti, led in enumerate(ledgers):
        for r in led.kept:
            yield episode_type(r.observation, r.action, ti, r.seed, images=r.images or {})


def collection_report(cfg: CollectConfig, ledgers: list[TaskLedger], *, wall_s: float, cpu_s: float) -> dict:
    """The JSON report stored in ``meta/genba.json`` under ``collection``."""
    per_task = {}
    for ti, led in enumerate(ledgers):
        attempted = len(led.kept) + len(led.failed)
        per_task[led.task.id] = {
            "task_index": ti, "noise": led.noise, "attempted": attempted, "kept": len(led.kept),
            "failed": len(led.failed),
            "short_by": cfg.episodes - len(led.kept),
            "kept_seeds": [r.seed for r in led.kept], "failed_seeds": [r.seed for r in led.failed],
        }
    return {
        "episodes_requested_per_task": cfg.episodes, "base_seed": cfg.seed,
        "seed_rule": "genba.envs.seeds.train_seed(task_id, k, base_seed)",
        "max_attempts_factor": cfg.max_attempts_factor, "workers": cfg.workers,
        "obs": cfg.obs, "camera_size": cfg.camera_size if cfg.obs == "pixels" else None,
        "noise": cfg.noise, "noise_rule": "executed = clip(expert + N(0, level * half range)); label = expert",
        "attempted": sum(t["attempted"] for t in per_task.values()),
        "kept": sum(t["kept"] for t in per_task.values()),
        "failed": sum(t["failed"] for t in per_task.values()),
        "complete": all(t["short_by"] == 0 for t in per_task.values()),
        "wall_s": round(wall_s, 3), "cpu_s_all_processes": round(cpu_s, 3),
        "tasks": per_task,
    }


# ---- helpers ------------------------------------------------------------------------
def _by_embodiment(ledgers: list[TaskLedger]) -> dict[str, list[TaskLedger]]:
    out: dict[str, list[TaskLedger]] = {}
    for led in ledgers:
        out.setdefault(led.task.spec.name, []).append(led)
    return out


def _refuse_existing_outputs(cfg: CollectConfig, tasks: list[registry.Task]) -> None:
    """Fail before minutes of rollouts, not after, when an output already exists."""
    if cfg.overwrite:
        return
    for name in sorted({t.spec.name for t in tasks}):
        if (cfg.out / name).exists():
            raise FileExistsError(f"dataset {cfg.out / name} already exists (use --overwrite to replace it)")


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (the workers)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


class _Bar:
    """Progress over submitted episodes; retries extend the total."""

    def __init__(self, bar: Any = None, label: str = "") -> None:
        self.bar, self.total, self.counts = bar, 0, {"ok": 0, "failed": 0}
        self.tid = bar.add_task(label, total=0, **self.counts) if bar is not None else None

    def submit(self, n: int) -> None:
        self.total += n
        if self.bar is not None:
            self.bar.update(self.tid, total=self.total)

    def advance(self, rollouts: Iterable[Rollout]) -> None:
        for r in rollouts:
            self.counts["ok" if r.success else "failed"] += 1
        if self.bar is not None:
            self.bar.update(self.tid, completed=sum(self.counts.values()), **self.counts)


@contextmanager
def progress_bar(enabled: bool, label: str) -> Iterator[_Bar]:
    """A rich progress bar over episodes (or a silent stand-in)."""
    if not enabled:
        yield _Bar()
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("success {task.fields[ok]} failed {task.fields[failed]}"),
                  TimeElapsedColumn()) as progress:
        yield _Bar(progress, label)
