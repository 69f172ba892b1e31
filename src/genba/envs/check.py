"""The expert table: how well each task's scripted expert does, over seeded episodes.

Used by ``genba envs check`` and ``benchmarks/expert_table.py``. Episodes use
evaluation seeds (``genba.envs.seeds.eval_seed``), disjoint from the seeds
demonstrations are collected on, so the table measures the experts on starts
they were not selected on. Success follows the task's stop rule (see
``genba.envs.collect.run_episode``). Tasks whose env reports
``info["tracking_error"]`` (the drives) also get a zero-action baseline on the
same seeds, so the expert's error reads against doing nothing.

Acceptance targets (issue 2): MT10 mean success >= 0.97, MT50 mean >= 0.95,
every drive and every joint-space arm task >= 0.95 on its own.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np

from genba.envs import registry
from genba.envs.collect import Rollout, chunk_size, env_and_expert, progress_bar, run_episode, worker_pool
from genba.envs.seeds import eval_seed

# group -> (threshold, "mean" over the group's tasks or "each" task on its own)
TARGETS: dict[str, tuple[float, str]] = {
    "mt10": (0.97, "mean"), "mt50": (0.95, "mean"), "drives": (0.95, "each"), "arms": (0.95, "each"),
}


@dataclass(frozen=True)
class TaskRow:
    """One line of the expert table."""

    task_id: str
    embodiment: str
    groups: tuple[str, ...]
    episodes: int
    success_rate: float
    mean_steps: float
    tracking_error: float | None = None  # expert's mean normalized tracking error
    baseline_error: float | None = None  # zero action, same seeds
    failed_seeds: tuple[int, ...] = ()


@dataclass(frozen=True)
class GroupRow:
    group: str
    tasks: int
    mean_success: float
    min_success: float
    threshold: float
    rule: str
    passed: bool


def check_rollouts(item: tuple[str, list[tuple[int, int]]]) -> list[tuple[Rollout, Rollout | None]]:
    """Worker job: expert rollout per seed, plus a zero-action one where tracking error exists."""
    task_id, attempts = item
    out = []
    for k, seed in attempts:
        task, env, expert = env_and_expert(task_id, seed)
        expert.reset()
        r = run_episode(task, env, expert.act, seed, k=k, record=False)
        base = None
        if r.tracking_error is not None:
            zero = np.clip(np.zeros(task.spec.action_dim, np.float32), task.spec.action_low, task.spec.action_high)
            base = run_episode(task, env, lambda obs: zero, seed, k=k, record=False)  # noqa: B023 (run now)
        out.append((r, base))
    return out


def run_check(selection: str, episodes: int = 50, workers: int = 2, base_seed: int = 0,
              progress: bool = True) -> list[TaskRow]:
    """Roll every selected task's expert out on ``episodes`` evaluation seeds."""
    tasks = registry.resolve(selection)
    chunk = chunk_size(len(tasks), episodes, workers)
    jobs = []
    for t in tasks:
        pairs = [(k, eval_seed(t.id, k, base_seed)) for k in range(episodes)]
        jobs += [(t.id, pairs[i:i + chunk]) for i in range(0, episodes, chunk)]
    results: dict[str, list[tuple[Rollout, Rollout | None]]] = {t.id: [] for t in tasks}
    with progress_bar(progress, "expert table") as bar, worker_pool(workers) as pmap:
        bar.submit(len(tasks) * episodes)
        for pairs in pmap(check_rollouts, jobs):
            for r, base in pairs:
                results[r.task_id].append((r, base))
            bar.advance(r for r, _ in pairs)
    return [_row(t, sorted(results[t.id], key=lambda p: p[0].k)) for t in tasks]


def _row(task: registry.Task, pairs: list[tuple[Rollout, Rollout | None]]) -> TaskRow:
    experts = [r for r, _ in pairs]
    bases = [b for _, b in pairs if b is not None]
    errs = [r.tracking_error for r in experts if r.tracking_error is not None]
    return TaskRow(
        task_id=task.id, embodiment=task.embodiment, groups=task.groups, episodes=len(experts),
        success_rate=float(np.mean([r.success for r in experts])),
        mean_steps=float(np.mean([r.steps for r in experts])),
        tracking_error=float(np.mean(errs)) if errs else None,
        baseline_error=float(np.mean([b.tracking_error for b in bases])) if bases else None,
        failed_seeds=tuple(r.seed for r in experts if not r.success),
    )


def group_rows(rows: list[TaskRow]) -> list[GroupRow]:
    """Per-group success against the issue's targets, for groups whose tasks all appear in ``rows``."""
    out, registered = [], registry.groups()
    present = {r.task_id for r in rows}
    for group, (threshold, rule) in TARGETS.items():
        if group not in registered or not set(registered[group]) <= present:
            continue  # a group is judged only when all of its tasks were run
        members = [r.success_rate for r in rows if group in r.groups]
        mean, low = float(np.mean(members)), float(np.min(members))
        passed = (mean if rule == "mean" else low) >= threshold
        out.append(GroupRow(group, len(members), mean, low, threshold, rule, passed))
    return out


def render_table(rows: list[TaskRow], console=None) -> None:
    """Print the per-task table and the group summary with rich."""
    from rich.console import Console
    from rich.table import Table

    # rich falls back to 80 columns when piped; task ids and instructions need more
    console = console or (Console() if sys.stdout.isatty() else Console(width=140))
    table = Table(title="expert table", show_lines=False)
    for col in ("task", "embodiment", "episodes", "success", "mean steps", "expert error", "zero-action error"):
        table.add_column(col, justify="left" if col in ("task", "embodiment") else "right")
    fmt = lambda x: "-" if x is None else f"{x:.4f}"  # noqa: E731
    for r in rows:
        style = None if r.success_rate >= 0.95 else "yellow"
        table.add_row(r.task_id, r.embodiment, str(r.episodes), f"{r.success_rate:.3f}", f"{r.mean_steps:.1f}",
                      fmt(r.tracking_error), fmt(r.baseline_error), style=style)
    console.print(table)
    summary = Table(title="groups")
    for col in ("group", "tasks", "mean success", "min success", "target", "result"):
        summary.add_column(col)
    for g in group_rows(rows):
        target = f"{g.rule} >= {g.threshold:.2f}"
        summary.add_row(g.group, str(g.tasks), f"{g.mean_success:.3f}", f"{g.min_success:.3f}", target,
                        "[green]PASS" if g.passed else "[red]FAIL")
    console.print(summary)


def plot_table(rows: list[TaskRow], path: str) -> None:
    """Bar chart of success per task (PNG), threshold lines at 0.95 and 0.97."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6, 0.28 * len(rows)), 4))
    ax.bar(range(len(rows)), [r.success_rate for r in rows],
           color=["tab:blue" if r.success_rate >= 0.95 else "tab:orange" for r in rows])
    for y in (0.95, 0.97):
        ax.axhline(y, color="gray", lw=0.8, ls="--")
    ax.set_xticks(range(len(rows)), [r.task_id.split("/", 1)[-1] for r in rows], rotation=90, fontsize=7)
    ax.set_ylim(0, 1.02)
    ax.set_ylabel(f"expert success ({rows[0].episodes if rows else 0} seeded episodes)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)

