"""Evaluation metrics: per-episode records aggregated per task and per embodiment.

Success rates come with a 95% Wilson score interval: unlike the normal
approximation it stays inside [0, 1] and is honest at 0/n and n/n, which is
exactly where a good policy lands on 50 episodes.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

Z95 = 1.959963984540054  # two-sided 95% normal quantile


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion; (0, 1) when n == 0."""
    if n < 0 or not 0 <= successes <= n:
        raise ValueError(f"wilson_interval: need 0 <= successes <= n, got {successes}/{n}")
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass
class EpisodeResult:
    """What one closed-loop episode produced.

    ``violations`` counts action components the policy proposed outside the
    spec limits (before the harness clipped them). ``tracking_error`` is the
    mean of ``info["tracking_error"]`` over the episode (drives only, else None).
    ``trace`` optionally holds per-step reference/actual arrays for plotting.
    """

    task: str
    embodiment: str
    seed: int
    success: bool
    length: int
    violations: int = 0
    tracking_error: float | None = None
    ret: float = 0.0
    instruction: str | None = None  # the phrasing the episode was given (None: the task's sentence)
    trace: dict | None = field(default=None, repr=False)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("trace")
        return d


@dataclass(frozen=True)
class Summary:
    """Aggregate over a set of episodes (one task, or one embodiment, or all)."""

    name: str
    episodes: int
    successes: int
    success_rate: float
    ci_low: float
    ci_high: float
    mean_length: float
    violations: int
    mean_tracking_error: float | None

    def to_dict(self) -> dict:
        return asdict(self)


def summarize(name: str, episodes: list[EpisodeResult]) -> Summary:
    """Success rate with Wilson CI, mean length, violations, mean tracking error."""
    n = len(episodes)
    k = sum(bool(e.success) for e in episodes)
    lo, hi = wilson_interval(k, n)
    errs = [e.tracking_error for e in episodes if e.tracking_error is not None]
    return Summary(
        name=name,
        episodes=n,
        successes=k,
        success_rate=k / n if n else 0.0,
        ci_low=lo,
        ci_high=hi,
        mean_length=float(np.mean([e.length for e in episodes])) if n else 0.0,
        violations=int(sum(e.violations for e in episodes)),
        mean_tracking_error=float(np.mean(errs)) if errs else None,
    )


def aggregate(episodes: list[EpisodeResult]) -> dict:
    """``{"tasks": {id: Summary}, "embodiments": {name: Summary}, "overall": Summary,
    "mean_task_success": float}``; tasks keep first-seen order.

    ``mean_task_success`` is the mean of per-task rates (the MT10 headline
    figure), which differs from the pooled rate when tasks have unequal counts.
    """
    by_task: dict[str, list[EpisodeResult]] = {}
    by_emb: dict[str, list[EpisodeResult]] = {}
    for e in episodes:
        by_task.setdefault(e.task, []).append(e)
        by_emb.setdefault(e.embodiment, []).append(e)
    tasks = {t: summarize(t, eps) for t, eps in by_task.items()}
    return {
        "tasks": tasks,
        "embodiments": {m: summarize(m, eps) for m, eps in by_emb.items()},
        "overall": summarize("all", episodes),
        "mean_task_success": float(np.mean([s.success_rate for s in tasks.values()])) if tasks else 0.0,
    }


@dataclass(frozen=True)
class PairedDifference:
    """Difference of mean task success, A minus B, on the same (task, seed) episodes."""

    a: float
    b: float
    diff: float
    ci_low: float
    ci_high: float
    p_not_better: float  # fraction of resamples with A - B <= 0
    tasks: int
    episodes: int


def paired_difference(a: list[dict], b: list[dict], *, resamples: int = 10_000,
                      seed: int = 0) -> PairedDifference:
    """Paired, task-stratified bootstrap of the mean-over-tasks success difference.

    ``a`` and ``b`` are episode records (``task``, ``seed``, ``success``) of two
    evaluations on the same seeds. Each resample draws every task's episode
    indices with replacement and applies the same draw to both policies, so a
    seed that is hard for both cancels: the interval is the one for "A beats
    B on this suite", narrower than comparing two Wilson intervals.
    """
    ka, kb = _episode_index(a, "A"), _episode_index(b, "B")
    if ka.keys() != kb.keys():
        only_a, only_b = sorted(ka.keys() - kb.keys()), sorted(kb.keys() - ka.keys())
        raise ValueError(f"paired_difference: the evaluations differ in (task, seed): {len(only_a)} only in A "
                         f"(e.g. {only_a[:2]}), {len(only_b)} only in B (e.g. {only_b[:2]}); "
                         f"evaluate both on the same tasks, episodes and --seed-base")
    tasks = sorted({t for t, _ in ka})
    keys = {t: sorted(k for k in ka if k[0] == t) for t in tasks}
    sa = [np.array([ka[k] for k in keys[t]]) for t in tasks]
    sb = [np.array([kb[k] for k in keys[t]]) for t in tasks]
    rng = np.random.default_rng(seed)
    boots = np.zeros(resamples)
    for x, y in zip(sa, sb):
        idx = rng.integers(0, len(x), size=(resamples, len(x)))
        boots += x[idx].mean(axis=1) - y[idx].mean(axis=1)
    boots /= len(tasks)
    ma, mb = float(np.mean([x.mean() for x in sa])), float(np.mean([y.mean() for y in sb]))
    lo, hi = np.percentile(boots, [2.5, 97.5])
    return PairedDifference(a=ma, b=mb, diff=ma - mb, ci_low=float(lo), ci_high=float(hi),
                            p_not_better=float(np.mean(boots <= 0.0)), tasks=len(tasks), episodes=len(ka))


def _episode_index(episodes: list[dict], label: str) -> dict[tuple[str, int], float]:
    out: dict[tuple[str, int], float] = {}
    for e in episodes:
        key = (str(e["task"]), int(e["seed"]))
        if key in out:
            raise ValueError(f"paired_difference: {label} has episode {key} twice")
        out[key] = float(bool(e["success"]))
    if not out:
        raise ValueError(f"paired_difference: {label} has no episodes")
    return out


def count_violations(action: np.ndarray, low: np.ndarray, high: np.ndarray) -> int:
    """Number of action components outside [low, high] (NaN counts as outside)."""
    a = np.asarray(action, dtype=np.float64)
    inside = (a >= low) & (a <= high)
    return int(np.size(a) - np.count_nonzero(inside))
