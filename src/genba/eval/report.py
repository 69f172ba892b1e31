"""Evaluation reports: ``results.json``, a Markdown table and PNG plots.

- ``results.json``: the configuration, per-task / per-embodiment / overall
  summaries and every episode (seed, success, length, violations, tracking error).
- ``results.md``: the same summaries as Markdown tables.
- ``success.png``: success rate per task with 95% Wilson intervals as error bars.
- ``tracking-<task>.png``: reference vs actual of one drive episode per drive task
  (observation entries ``X`` and ``ref_X`` of the spec; references that stay at 0
  for the whole episode are left out).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from genba.eval.metrics import EpisodeResult, aggregate, paired_difference, summarize

RESULTS_JSON, RESULTS_MD, SUCCESS_PNG = "results.json", "results.md", "success.png"


def build_results(episodes: list[EpisodeResult], config: dict[str, Any]) -> dict[str, Any]:
    """The JSON document: config, summaries and per-episode records."""
    agg = aggregate(episodes)
    doc = {
        "config": config,
        "mean_task_success": agg["mean_task_success"],
        "overall": agg["overall"].to_dict(),
        "tasks": {k: s.to_dict() for k, s in agg["tasks"].items()},
        "embodiments": {k: s.to_dict() for k, s in agg["embodiments"].items()},
        "episodes": [e.to_dict() for e in episodes],
    }
    if any(e.instruction is not None for e in episodes):
        doc["phrasings"] = phrasing_summaries(episodes)
    return doc


def phrasing_summaries(episodes: list[EpisodeResult]) -> dict[str, dict[str, dict]]:
    """Task id -> phrasing -> summary, for an evaluation with ``--instructions`` (first-seen order)."""
    groups: dict[str, dict[str, list[EpisodeResult]]] = {}
    for e in episodes:
        groups.setdefault(e.task, {}).setdefault(e.instruction or "", []).append(e)
    return {t: {p: summarize(p, eps).to_dict() for p, eps in by.items()} for t, by in groups.items()}


def merge_results(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """One results document from evaluations of one policy run in parts (e.g. ``--tasks mt10`` and
    ``--tasks drives,arms``); an episode (task, seed) in two parts is an error."""
    if not parts:
        raise ValueError("merge_results: no results to merge")
    episodes, seen = [], set()
    for i, r in enumerate(parts):
        for d in r["episodes"]:
            key = (d["task"], d["seed"])
            if key in seen:
                raise ValueError(f"merge_results: part {i} repeats episode {key}")
            seen.add(key)
            try:
                episodes.append(EpisodeResult(**d))
            except TypeError as e:
                raise ValueError(f"merge_results: part {i} has a malformed episode record {d!r}: {e}") from None
    config = dict(parts[0]["config"], tasks=list(dict.fromkeys(e.task for e in episodes)), merged_from=len(parts))
    return build_results(episodes, config)


def write_report(out_dir: str | Path, episodes: list[EpisodeResult], config: dict[str, Any]) -> dict[str, Any]:
    """Write results.json, results.md and the plots into ``out_dir``; returns the JSON document."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results = build_results(episodes, config)
    (out / RESULTS_JSON).write_text(json.dumps(results, indent=1, ensure_ascii=False))
    (out / RESULTS_MD).write_text(markdown(results), encoding="utf-8")
    plot_success(results, out / SUCCESS_PNG)
    for e in episodes:
        if e.trace is not None:
            plot_tracking(e, out / f"tracking-{e.task.replace('/', '_')}.png")
    return results


# ---- Markdown ------------------------------------------------------------------------
_HEAD = "| {} | episodes | success | 95% CI | mean length | tracking error | action-limit violations |"


def _row(s: dict) -> str:
    err = f"{s['mean_tracking_error']:.4f}" if s["mean_tracking_error"] is not None else "-"
    return (f"| {s['name']} | {s['episodes']} | {s['success_rate']:.2f} | [{s['ci_low']:.2f}, {s['ci_high']:.2f}] "
            f"| {s['mean_length']:.1f} | {err} | {s['violations']} |")


def markdown(results: dict[str, Any]) -> str:
    """Per-task and per-embodiment tables plus the headline figure."""
    cfg = results["config"]
    lines = [f"# Evaluation of `{cfg.get('checkpoint')}`", "",
             f"Instructions: **{cfg.get('lang')}**; {cfg.get('episodes')} episodes per task on evaluation seeds "
             "(disjoint from training). Success: Meta-World at first success, drives and arms on the last step.",
             "", f"**Mean success over tasks: {results['mean_task_success']:.3f}**", "",
             "## Per task", "", _HEAD.format("task"), "|" + "---|" * 7]
    lines += [_row(s) for s in results["tasks"].values()]
    lines += ["", "## Per embodiment", "", _HEAD.format("embodiment"), "|" + "---|" * 7]
    lines += [_row(s) for s in results["embodiments"].values()]
    lines += [_row(results["overall"]), ""]
    if results.get("phrasings"):
        lines += [f"## Per phrasing (`--instructions {cfg.get('instructions')}`)", "",
                  "| task | phrasing | episodes | success |", "|---|---|---|---|"]
        lines += [f"| {t} | {p} | {s['episodes']} | {s['success_rate']:.2f} |"
                  for t, by in results["phrasings"].items() for p, s in by.items()]
        lines.append("")
    return "\n".join(lines)


def comparison_markdown(named: dict[str, dict[str, Any]], *, paired: bool = True) -> str:
    """One table of success per task, a column per results document (e.g. expert vs model, en vs ja);
    with ``paired``, a line per later column with its paired difference to the first."""
    tasks = list(dict.fromkeys(t for r in named.values() for t in r["tasks"]))
    lines = ["| task | " + " | ".join(named) + " |", "|---|" + "---|" * len(named)]
    for t in tasks:
        cells = []
        for r in named.values():
            s = r["tasks"].get(t)
            cells.append("-" if s is None else f"{s['success_rate']:.2f} [{s['ci_low']:.2f}, {s['ci_high']:.2f}]"
                         + (f", err {s['mean_tracking_error']:.4f}" if s["mean_tracking_error"] is not None else ""))
        lines.append(f"| {t} | " + " | ".join(cells) + " |")
    lines.append("| **mean** | " + " | ".join(f"**{r['mean_task_success']:.3f}**" for r in named.values()) + " |")
    if paired:
        lines += _paired_lines(named)
    return "\n".join(lines) + "\n"


def _paired_lines(named: dict[str, dict[str, Any]]) -> list[str]:
    """The first column against each other one evaluated on the same (task, seed) episodes."""
    if len(named) < 2:
        return []
    (first, ref), *others = named.items()
    out = []
    for name, r in others:
        try:
            d = paired_difference(ref["episodes"], r["episodes"])
        except (KeyError, ValueError) as e:  # other seeds or tasks: the intervals above are all there is
            out.append(f"\n{first} vs {name}: no paired figure ({e})")
            continue
        out.append(f"\n{first} minus {name}: {d.diff:+.3f} mean task success, paired bootstrap 95% "
                   f"[{d.ci_low:+.3f}, {d.ci_high:+.3f}] over {d.episodes} shared episodes "
                   f"({d.p_not_better:.0%} of resamples not better)")
    return out


# ---- plots --------------------------------------------------------------------------
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_success(results: dict[str, Any], path: Path) -> None:
    """Bar per task, Wilson 95% interval as asymmetric error bars."""
    plt = _pyplot()
    tasks = list(results["tasks"].values())
    x = np.arange(len(tasks))
    rate = np.array([s["success_rate"] for s in tasks])
    err = np.array([[r - s["ci_low"] for r, s in zip(rate, tasks)], [s["ci_high"] - r for r, s in zip(rate, tasks)]])
    err = np.clip(err, 0.0, None)  # a CI bound equal to the rate can land a rounding error past it
    fig, ax = plt.subplots(figsize=(max(4.0, 0.6 * len(tasks) + 2), 4))
    ax.bar(x, rate, yerr=err, capsize=3, color="tab:blue", alpha=0.8)
    ax.set_xticks(x, [s["name"].split("/", 1)[-1] for s in tasks], rotation=45, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("success rate (95% Wilson CI)")
    ax.set_title(f"{results['config'].get('checkpoint')} ({results['config'].get('lang')}): "
                 f"mean {results['mean_task_success']:.2f}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def tracking_pairs(names: list[str], obs: np.ndarray) -> list[tuple[str, int, int]]:
    """(quantity, actual index, reference index) for every ``ref_X`` that is ever non-zero."""
    idx = {n: i for i, n in enumerate(names)}
    return [(n[4:], idx[n[4:]], i) for n, i in idx.items()
            if n.startswith("ref_") and n[4:] in idx and np.any(obs[:, i] != 0)]


def plot_tracking(episode: EpisodeResult, path: Path) -> None:
    """Reference vs actual over time for one drive episode, one panel per referenced quantity."""
    plt = _pyplot()
    tr = episode.trace
    obs = np.asarray(tr["obs"])
    pairs = tracking_pairs(tr["obs_names"], obs) or [(n, i, None) for i, n in enumerate(tr["obs_names"][:1])]
    t = np.arange(len(obs)) * tr["control_period"] * 1e3  # ms
    fig, axes = plt.subplots(len(pairs), 1, figsize=(7, 2.4 * len(pairs)), sharex=True, squeeze=False)
    for ax, (name, a, r) in zip(axes[:, 0], pairs):
        if r is not None:
            ax.plot(t, obs[:, r], "k--", lw=1.2, label=f"reference {name}")
        ax.plot(t, obs[:, a], "tab:red", lw=1.0, label=f"actual {name}")
        ax.set_ylabel(f"{name} (normalized)")
        ax.legend(loc="upper right", fontsize=8)
    err = f", mean tracking error {episode.tracking_error:.4f}" if episode.tracking_error is not None else ""
    axes[0, 0].set_title(f"{episode.task} seed {episode.seed}{err}")
    axes[-1, 0].set_xlabel("time (ms)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def load_results(path: str | Path) -> dict[str, Any]:
    """A ``results.json`` (or the directory holding it)."""
    p = Path(path)
    p = p / RESULTS_JSON if p.is_dir() else p
    return json.loads(p.read_text(encoding="utf-8"))

