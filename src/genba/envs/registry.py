"""One registry of tasks across every embodiment.

Plug-in convention (the only one): each module in ``genba.envs.embodiments``
calls :func:`register` for its tasks when imported. Adding a machine means
adding one file there; :func:`load_all` discovers it with ``pkgutil``.

A task id is ``<family>/<name>``, e.g. ``metaworld/reach-v3``,
``drive/pmsm-current``, ``arm/jaco-reach``. Groups (``mt10``, ``mt50``,
``drives``, ``arms``, ``all``) name sets of tasks. :class:`StopRule` is how an
episode ends and is judged, for collectors and evaluators alike.

A task with cameras has a ``pixels`` view (:meth:`Task.view`): the same task
under its embodiment's camera spec (``<name>_px``: own sensing, commands and
camera images, nothing simulator-only), with an env that renders and an expert
that still acts on the simulator's state (docs/machines.md#cameras).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import gymnasium as gym
import numpy as np

from genba.data.language import LANGS
from genba.data.spec import OBS_MODES, EmbodimentSpec

#: The default camera resolution (square): see docs/machines.md#cameras for the measurement behind it.
DEFAULT_CAMERA_SIZE = 64


class Expert(Protocol):
    """A scripted controller: same tiny interface as a policy."""

    def reset(self) -> None: ...

    def act(self, obs: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class Task:
    """One task: what to do, on which machine, and who can do it already."""

    id: str
    spec: EmbodimentSpec
    instruction_en: str
    instruction_ja: str
    max_steps: int
    make_env: Callable[[int], gym.Env]  # seed -> env; info["success"] on every step
    make_expert: Callable[[gym.Env], Expert]
    groups: tuple[str, ...] = ()
    # How an episode ends (see StopRule). None: it runs to max_steps and success
    # is judged on the last step (drives, arms). An int n: success at any step
    # counts (Meta-World) and a collector stops n steps after the first success
    # (the extra frames teach holding); an evaluator stops at the first success.
    stop_after_success: int | None = None
    # The camera view (None: the machine has no camera). ``pixel_spec(camera_size)`` is the pixels-mode
    # spec; ``make_pixel_env(seed, camera_size=...)`` an env whose observations follow it, whose ``info``
    # carries ``images`` (camera name -> (H, W, 3) uint8) and whose ``state_obs`` is the state-mode
    # observation the expert acts on.
    pixel_spec: Callable[[int], EmbodimentSpec] | None = None
    make_pixel_env: Callable[..., gym.Env] | None = None

    @property
    def has_cameras(self) -> bool:
        return self.pixel_spec is not None

    def view(self, obs_mode: str = "state", camera_size: int = DEFAULT_CAMERA_SIZE) -> Task:
        """This task recorded in ``obs_mode``: itself for ``state``, and for a camera-less machine
        (a drive has nothing simulator-only to hide; a mixed batch keeps it as it is)."""
        if obs_mode not in OBS_MODES:
            raise ValueError(f"observation mode {obs_mode!r}: expected one of {OBS_MODES}")
        if obs_mode == "state" or not self.has_cameras:
            return self
        if not 8 <= camera_size <= 1024:
            raise ValueError(f"camera size {camera_size}: expected 8..1024 pixels")
        return dataclasses.replace(
            self, spec=self.pixel_spec(camera_size), pixel_spec=None, make_pixel_env=None,
            make_env=functools.partial(self.make_pixel_env, camera_size=camera_size),
            make_expert=functools.partial(_privileged_expert, self.make_expert))

    @property
    def embodiment(self) -> str:
        return self.spec.name

    def stop_rule(self, *, evaluating: bool = False) -> StopRule:
        """This task's stop rule for a collector, or (``evaluating``) for an evaluator."""
        if self.stop_after_success is None:
            return StopRule(None)
        return StopRule(0 if evaluating else self.stop_after_success)

    def instruction(self, lang: str = "en") -> str:
        if lang not in LANGS:
            raise ValueError(f"instruction language {lang!r}: expected {' or '.join(map(repr, LANGS))}")
        return self.instruction_en if lang == "en" else self.instruction_ja


@dataclass(frozen=True)
class StopRule:
    """When an episode ends and whether it succeeded; the one rule of collectors and evaluators.

    ``hold=None``: the episode runs to its horizon (or termination) and succeeds
    if the last step does (drives and arms track a target to the end).
    ``hold=n``: Meta-World's convention, an episode succeeds if success occurs at
    any step; it ends ``n`` steps after the first success. Collectors hold for the
    task's ``stop_after_success`` steps, evaluators stop at once (``n = 0``):
    the frames after a success cannot change the verdict.
    """

    hold: int | None = None

    def judge(self) -> Verdict:
        """A fresh verdict for one episode."""
        return Verdict(self)


@dataclass
class Verdict:
    """One episode's running verdict under a :class:`StopRule`: feed it every step's success flag."""

    rule: StopRule
    first_success: int | None = None
    last_success: bool = False

    def step(self, t: int, success: Any) -> bool:
        """Record step t's ``info["success"]``; True when the rule ends the episode after it."""
        self.last_success = bool(success)
        if self.first_success is None and self.last_success:
            self.first_success = t
        hold = self.rule.hold
        return hold is not None and self.first_success is not None and t >= self.first_success + hold

    @property
    def success(self) -> bool:
        return self.first_success is not None if self.rule.hold is not None else self.last_success


class PrivilegedExpert:
    """A state-mode expert driving a pixels-mode env: it acts on ``env.state_obs``, never on the
    recorded observation (a scripted expert needs the object poses the camera spec hides)."""

    def __init__(self, expert: Expert, env: Any) -> None:
        self.expert, self.env = expert, env

    def reset(self) -> None:
        self.expert.reset()

    def act(self, obs: np.ndarray) -> np.ndarray:
        return self.expert.act(self.env.state_obs)


def _privileged_expert(make_expert: Callable[[gym.Env], Expert], env: Any) -> PrivilegedExpert:
    return PrivilegedExpert(make_expert(env.state_env), env)


class UnknownTaskError(KeyError):
    """A task id or group that is not registered; names the closest valid ones."""

    def __str__(self) -> str:  # KeyError quotes its message otherwise
        return str(self.args[0])


_TASKS: dict[str, Task] = {}
_LOADED = False


def register(task: Task) -> Task:
    if task.id in _TASKS:
        raise ValueError(f"task {task.id!r} registered twice")
    _TASKS[task.id] = task
    return task


def load_all() -> None:
    """Import every embodiment module once so its tasks register."""
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    from genba.envs import embodiments

    for mod in sorted(pkgutil.iter_modules(embodiments.__path__), key=lambda m: m.name):
        importlib.import_module(f"{embodiments.__name__}.{mod.name}")


def all_tasks() -> list[Task]:
    load_all()
    return list(_TASKS.values())


def groups() -> dict[str, list[str]]:
    """Group name -> task ids, in registration order; ``all`` holds everything."""
    out: dict[str, list[str]] = {"all": []}
    for t in all_tasks():
        out["all"].append(t.id)
        for g in t.groups:
            out.setdefault(g, []).append(t.id)
    return out


def get_task(task_id: str) -> Task:
    load_all()
    if task_id in _TASKS:
        return _TASKS[task_id]
    # accept a bare name when it is unambiguous ("reach-v3" -> "metaworld/reach-v3")
    tails = [t for t in _TASKS if t.split("/", 1)[-1] == task_id]
    if len(tails) == 1:
        return _TASKS[tails[0]]
    close = difflib.get_close_matches(task_id, list(_TASKS) + list(groups()), n=5, cutoff=0.4)
    hint = f"; closest valid ids: {', '.join(close)}" if close else "; see `genba envs list`"
    raise UnknownTaskError(f"unknown task id {task_id!r}{hint}")


def resolve(selection: str) -> list[Task]:
    """Comma-separated task ids and/or group names -> tasks, without duplicates."""
    if not selection or not selection.strip():
        raise UnknownTaskError("empty task selection; give ids or groups such as 'mt10' or 'drives'")
    grp = groups()
    out: dict[str, Task] = {}
    for part in (p.strip() for p in selection.split(",")):
        if not part:
            continue
        ids = grp.get(part) or [get_task(part).id]
        for i in ids:
            out.setdefault(i, _TASKS[i])
    return list(out.values())


def make_env(task_id: str, seed: int) -> gym.Env:
    """A Gymnasium env for ``task_id`` whose resets are reproducible from ``seed``."""
    return get_task(task_id).make_env(seed)


def specs() -> dict[str, EmbodimentSpec]:
    """Embodiment name -> spec, for every registered embodiment."""
    return {t.spec.name: t.spec for t in all_tasks()}
