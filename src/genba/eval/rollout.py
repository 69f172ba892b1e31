"""Closed-loop rollouts of a checkpoint (or the scripted experts) on registered tasks.

Episodes are split into jobs of up to ``lockstep`` episodes of one task; worker
processes (spawned, one BLAS thread each) run a job's envs in lockstep and ask
the model for all of them in one batched call. Seeds come from
``genba.envs.seeds.eval_seed``: disjoint from every training demonstration.

A checkpoint trained from cameras (its machine's pixels-mode spec, ``sawyer_px``,
``jaco_px``) is evaluated on the task's pixels view (:func:`checkpoint_view`):
the same cameras at the size the checkpoint's spec records, rendered as the
collector rendered them; each step's frames (``info["images"]``) go to the
policy with the state, for all lockstep envs in one call.

Stop rules follow the task (``registry.StopRule``, the collectors' rule): with
``stop_after_success`` set (Meta-World) an episode succeeds if success occurs at
any step, and evaluation ends it at the first success; otherwise (drives, arms)
it runs its fixed length and is judged on the last step. Actions outside the
spec limits are counted as violations, then clipped before they reach the env.

:class:`BatchedPolicy` runs N envs as one lockstep stream group of the
policy runtime (``genba.model.runtime``, the one ``Policy`` uses): the same
transforms, history, routes and chunk execution, one model call for all N.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from genba.data.language import LANGS
from genba.data.spec import EmbodimentSpec
from genba.data.transforms import RouteInstruction
from genba.envs import registry
from genba.envs.seeds import eval_seed
from genba.eval.metrics import EpisodeResult, count_violations
from genba.model.config import EXECUTE_CHOICES
from genba.model.runtime import Execution, model_runtime

EXPERT = "expert"  # pseudo-checkpoint: the tasks' scripted experts through the same harness


AUTO_REPLAN_HZ = 1000.0  # control rates at which ``auto`` re-plans every step (the drives run at 10 kHz)


@dataclass(frozen=True)
class EvalConfig:
    """What ``genba eval`` runs; every CLI flag maps to one field."""

    checkpoint: str  # a checkpoint directory, or "expert"
    tasks: tuple[str, ...]
    episodes: int = 50
    lang: str = "en"
    workers: int = 2
    lockstep: int = 10  # envs stepped together (one batched model call) per job
    seed_base: int = 0
    max_steps: int | None = None  # cap below the task's horizon (tests)
    execute: str = "auto"  # auto | ensemble | replan (see resolve_execution)
    replan_every: int | None = None
    trace_drives: bool = True  # record reference vs actual of episode 0 of each drive task
    instructions: str | None = None  # a phrasings file or packaged set (heldout): episode k speaks phrasing k mod n

    def __post_init__(self) -> None:
        if self.episodes < 1 or self.workers < 1 or self.lockstep < 1:
            raise ValueError("episodes, workers and lockstep must be >= 1")
        if self.execute not in EXECUTE_CHOICES:
            raise ValueError(f"execute {self.execute!r}: expected one of {EXECUTE_CHOICES}")
        if self.lang not in LANGS:
            raise ValueError(f"lang {self.lang!r}: expected one of {LANGS}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {self.max_steps}")


# ---- the batched policy ----------------------------------------------------------
class BatchedPolicy:
    """N lockstep envs of one embodiment and instruction: one stream group of the model's runtime
    (``genba.model.runtime``), one model call per step."""

    def __init__(self, model, stats, *, execute: str = "ensemble", replan_every: int | None = None,
                 ensemble_m: float = 0.1, seed: int = 0, device: torch.device | str = "cpu",
                 normalization: str = "mean_std", routes: RouteInstruction | None = None) -> None:
        self.model, self.cfg = model.eval(), model.cfg
        self.execution = Execution.make(execute, replan_every, ensemble_m, self.cfg.chunk)
        self.runtime = model_runtime(self.model, stats, normalization=normalization, routes=routes, device=device)
        self.seed = seed

    @property
    def embodiment(self) -> str:
        """The model entry of this episode batch (task-scoped or the machine)."""
        return self.stream.entry

    def reset(self, n: int, embodiment: str, instruction: str) -> None:
        """Start N episodes: empty histories and chunk queue, the instruction encoded (once per runtime)."""
        self.stream = self.runtime.new_stream(self.execution, self.seed)
        self.runtime.begin(self.stream, embodiment, instruction)
        self._frame = (embodiment, instruction)

    def act(self, obs: np.ndarray, images: dict[str, np.ndarray] | None = None) -> np.ndarray:
        """Actions (N, A) for observations (N, obs_dim) of this step and, on a camera machine, its frames
        ``{camera: (N, H, W, 3) uint8}`` (finished envs may pass anything)."""
        frame = (*self._frame, obs) if images is None else (*self._frame, obs, images)
        return self.runtime.step([self.stream], [frame])[0]


class ExpertPolicy:
    """The tasks' scripted experts behind the BatchedPolicy interface (one per env)."""

    def __init__(self, experts: list) -> None:
        self.experts = experts

    def reset(self, n: int, embodiment: str, instruction: str) -> None:
        for e in self.experts[:n]:
            e.reset()

    def act(self, obs: np.ndarray) -> np.ndarray:
        return np.stack([e.act(o) for e, o in zip(self.experts, obs)]).astype(np.float32)


# ---- one job in a worker ---------------------------------------------------------
_CACHE: dict[Any, Any] = {}  # per process: loaded policies and built envs


def resolve_execution(cfg: EvalConfig, spec) -> tuple[str, int | None]:
    """Chunk execution for one machine: ``auto`` re-plans every step at control rates of 1 kHz and above
    (10 kHz drives tracked 1.6-1.7x worse with temporal ensembling, whose averaged chunks lag the
    current loop) and ensembles otherwise; an explicit ``ensemble``/``replan`` applies to every task."""
    if cfg.execute != "auto":
        return cfg.execute, cfg.replan_every
    return ("replan", 1) if spec.fps >= AUTO_REPLAN_HZ else ("ensemble", None)


def load_batched_policy(checkpoint: str, execute: str, replan_every: int | None) -> BatchedPolicy:
    """The checkpoint's model as a BatchedPolicy (cached per process)."""
    key = ("policy", checkpoint, execute, replan_every)
    if key not in _CACHE:
        from genba.model.bundle import bundle_routes, bundle_stats, load_model

        model, manifest = load_model(checkpoint, device="cpu")
        _CACHE[key] = BatchedPolicy(model, bundle_stats(manifest, checkpoint), execute=execute,
                                    replan_every=replan_every,
                                    normalization=manifest.get("normalization", {}).get("mode", "mean_std"),
                                    routes=bundle_routes(manifest, checkpoint))
    return _CACHE[key]


def checkpoint_view(task: registry.Task, specs: Mapping[str, EmbodimentSpec]) -> registry.Task:
    """The task as the checkpoint sees it: itself when the checkpoint knows its (state) spec, else its
    pixels view when the checkpoint knows the pixels-mode spec, at that spec's camera size; a camera
    set that differs from the one the view renders (names, sizes) is refused."""
    if task.spec.name in specs or not task.has_cameras:
        return task
    px_name = task.pixel_spec(registry.DEFAULT_CAMERA_SIZE).name
    if px_name not in specs:
        return task  # unknown either way: the caller names the missing embodiment
    want = specs[px_name].cameras
    sizes = {(c.height, c.width) for c in want}
    if len(sizes) != 1 or len({*sizes.pop()}) != 1:
        raise ValueError(f"checkpoint spec {px_name!r}: cameras {[(c.name, c.shape) for c in want]}; the "
                         "pixels view renders one square size for every camera")
    view = task.view("pixels", want[0].height)
    if view.spec.cameras != want:
        raise ValueError(f"task {task.id}: its pixels view renders {[(c.name, c.shape) for c in view.spec.cameras]}"
                         f", the checkpoint's {px_name!r} was trained on {[(c.name, c.shape) for c in want]}")
    return view


def _env(task: registry.Task, slot: int, seed: int):
    key = ("env", task.id, task.spec.name, slot)
    if key not in _CACHE:
        _CACHE[key] = task.make_env(seed)
    return _CACHE[key]


def run_job(job: tuple) -> list[EpisodeResult]:
    """Worker entry: ``(cfg, task_id, [(k, seed), ...][, instruction])`` -> one result per episode, run in
    lockstep (the instruction: one phrasing for the whole job; none: the task's sentence in ``cfg.lang``)."""
    cfg, task_id, episodes, *phrase = job
    torch.set_num_threads(1)
    task = registry.get_task(task_id)
    execute, replan_every = resolve_execution(cfg, task.spec)
    if cfg.checkpoint == EXPERT:
        policy = None
    elif (Path(cfg.checkpoint) / "baseline.json").is_file():  # the per-task MLP baseline (genba.eval.baselines)
        from genba.eval.baselines import load_baseline_policy

        policy = load_baseline_policy(cfg.checkpoint, execute, replan_every)
    else:
        policy = load_batched_policy(cfg.checkpoint, execute, replan_every)
        task = checkpoint_view(task, policy.model.specs)  # a camera checkpoint: the pixels view
    envs = [_env(task, j, seed) for j, (_, seed) in enumerate(episodes)]
    if policy is None:
        policy = ExpertPolicy([task.make_expert(env) for env in envs])
    return run_lockstep(task, envs, policy, episodes, cfg, instruction=phrase[0] if phrase else None)


def run_lockstep(task: registry.Task, envs: list, policy, episodes: list[tuple[int, int]],
                 cfg: EvalConfig, instruction: str | None = None) -> list[EpisodeResult]:
    """Step ``envs`` together until each has finished by the task's stop rule."""
    n, spec = len(envs), task.spec
    low, high = np.asarray(spec.action_low, np.float32), np.asarray(spec.action_high, np.float32)
    first = [env.reset(seed=seed) for env, (_, seed) in zip(envs, episodes)]
    obs = np.stack([o for o, _ in first])
    seen = [info.get("images") for _, info in first]  # each env's newest frames {camera: (H, W, 3)}
    images = _frames(task.spec, seen)  # {camera: (n, H, W, 3)}, None without cameras
    policy.reset(n, spec.name, instruction or task.instruction(cfg.lang))
    horizon = min(task.max_steps, cfg.max_steps or task.max_steps)
    live = np.ones(n, bool)
    rule = task.stop_rule(evaluating=True)
    st = _Tally(n, trace=[cfg.trace_drives and k == 0 and task.id.startswith("drive/") for k, _ in episodes])
    verdicts = [rule.judge() for _ in range(n)]
    for t in range(horizon):
        actions = policy.act(obs) if images is None else policy.act(obs, _frames(task.spec, seen))
        for i in np.flatnonzero(live):
            st.record(i, obs[i], actions[i])
            st.violations[i] += count_violations(actions[i], low, high)
            o, r, terminated, truncated, info = envs[i].step(np.clip(actions[i], low, high))
            obs[i] = o
            seen[i] = info.get("images")
            st.length[i], st.ret[i] = t + 1, st.ret[i] + float(r)
            if "tracking_error" in info:
                st.errors[i].append(float(info["tracking_error"]))
            if verdicts[i].step(t, info["success"]) or terminated or truncated:
                live[i] = False
        if not live.any():
            break
    results = [st.result(i, task, k, seed, verdicts[i].success) for i, (k, seed) in enumerate(episodes)]
    for r in results:
        r.instruction = instruction
    return results


def _frames(spec: EmbodimentSpec, seen: list[dict | None]) -> dict[str, np.ndarray] | None:
    """Every env's newest camera frames as ``{camera: (n, H, W, 3) uint8}`` (fresh arrays: a finished env
    keeps its last frame), checked against the spec; None for a machine without cameras."""
    if not spec.cameras:
        return None
    out = {}
    for cam in spec.cameras:
        frames = np.stack([images[cam.name] for images in seen])
        if frames.shape[1:] != cam.shape or frames.dtype != np.uint8:
            raise ValueError(f"camera {cam.name!r} rendered {frames.shape[1:]} {frames.dtype}, "
                             f"spec {spec.name!r} expects {cam.shape} uint8")
        out[cam.name] = frames
    return out


@dataclass
class _Tally:
    n: int
    trace: list[bool]
    length: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.length = np.zeros(self.n, int)
        self.ret = np.zeros(self.n)
        self.violations = np.zeros(self.n, int)
        self.errors: list[list[float]] = [[] for _ in range(self.n)]
        self.obs: list[list[np.ndarray]] = [[] for _ in range(self.n)]
        self.actions: list[list[np.ndarray]] = [[] for _ in range(self.n)]

    def record(self, i: int, obs: np.ndarray, action: np.ndarray) -> None:
        if self.trace[i]:
            self.obs[i].append(obs.copy())
            self.actions[i].append(action.copy())

    def result(self, i: int, task: registry.Task, k: int, seed: int, success: bool) -> EpisodeResult:
        trace = None
        if self.trace[i] and self.obs[i]:
            trace = {"obs_names": list(task.spec.obs_names), "obs": np.stack(self.obs[i]).tolist(),
                     "action": np.stack(self.actions[i]).tolist(), "tracking_error": self.errors[i],
                     "control_period": task.spec.control_period}
        return EpisodeResult(
            task=task.id, embodiment=task.spec.name, seed=seed,
            success=success, length=int(self.length[i]),
            violations=int(self.violations[i]), ret=float(self.ret[i]),
            tracking_error=float(np.mean(self.errors[i])) if self.errors[i] else None, trace=trace)


# ---- the evaluation ---------------------------------------------------------------
def plan_jobs(cfg: EvalConfig) -> list[tuple]:
    """Every (task, episode k, eval seed), cut into lockstep jobs; biggest tasks first. With
    ``cfg.instructions``, episode k of a task speaks its phrasing k mod n (the same seeds as without),
    and a job holds the episodes of one phrasing (one lockstep group shares an instruction)."""
    table = _phrasings(cfg)
    jobs = []
    for task_id in cfg.tasks:
        eps = [(k, eval_seed(task_id, k, cfg.seed_base)) for k in range(cfg.episodes)]
        if table is None:
            jobs += [(cfg, task_id, eps[i:i + cfg.lockstep]) for i in range(0, len(eps), cfg.lockstep)]
            continue
        phrases = table[task_id]
        for j, phrase in enumerate(phrases):
            mine = eps[j::len(phrases)]
            jobs += [(cfg, task_id, mine[i:i + cfg.lockstep], phrase) for i in range(0, len(mine), cfg.lockstep)]
    return jobs


def _phrasings(cfg: EvalConfig) -> dict[str, tuple[str, ...]] | None:
    """Task id -> the ``cfg.lang`` phrasings of ``cfg.instructions`` (None: the tasks' own sentences)."""
    if cfg.instructions is None:
        return None
    from genba.envs import phrasings

    return phrasings.for_tasks(phrasings.load(cfg.instructions), cfg.tasks, cfg.lang, cfg.instructions)


def iter_results(cfg: EvalConfig) -> Iterator[list[EpisodeResult]]:
    """Results job by job as workers finish them (spawned processes, OMP_NUM_THREADS=1)."""
    from genba.envs.collect import parallel_map

    jobs = plan_jobs(cfg)
    yield from parallel_map(run_job, jobs, min(cfg.workers, len(jobs)))


def resolve_target(checkpoint: str | os.PathLike) -> str:
    """``expert``, or the checkpoint directory a path names (a run dir resolves to its latest)."""
    if str(checkpoint) == EXPERT:
        return EXPERT
    from genba.model.checkpoints import resolve_checkpoint

    return str(resolve_checkpoint(Path(checkpoint)))


def evaluate(cfg: EvalConfig, out_dir: str | os.PathLike | None = None, *, progress: bool = True) -> dict[str, Any]:
    """Run every episode of ``cfg`` (progress bar over episodes) and write the report when ``out_dir`` is given.

    Returns the results document (``genba.eval.report.build_results``).
    """
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from genba.eval.report import build_results, write_report

    episodes: list[EpisodeResult] = []
    total = cfg.episodes * len(cfg.tasks)
    columns = (TextColumn("[bold]eval"), BarColumn(), MofNCompleteColumn(), TextColumn("success {task.fields[ok]}"),
               TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn())
    with Progress(*columns, disable=not progress) as bar:
        task = bar.add_task("eval", total=total, ok=0)
        for results in iter_results(cfg):
            episodes += results
            bar.update(task, advance=len(results), ok=sum(e.success for e in episodes))
    order = {t: i for i, t in enumerate(cfg.tasks)}
    episodes.sort(key=lambda e: (order[e.task], e.seed))
    config = {**asdict(cfg), "tasks": list(cfg.tasks)}
    if out_dir is not None:
        return write_report(out_dir, episodes, config)
    return build_results(episodes, config)
