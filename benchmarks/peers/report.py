"""Tables, bar chart and RESULTS.md for ``run.py`` (genba's environment).

Input per contestant: ``{"train": ..., "eval": ..., "latency": ...}`` as run.py
stores them under ``OUT/{contestant}/train.json``, ``OUT/eval/``, ``OUT/latency/``.
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

from genba.eval.metrics import wilson_interval


def machine_line() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"{os.cpu_count()} vCPUs ({cpu}), Python {platform.python_version()}, load average at report {load:.1f}"


def pooled(row: dict) -> tuple[int, int, float, float]:
    """(successes, episodes, ci_low, ci_high) over all MT10 episodes of a contestant."""
    k, n = row["eval"]["overall"]["successes"], row["eval"]["overall"]["episodes"]
    lo, hi = wilson_interval(k, n)
    return k, n, lo, hi


def best_peer(rows: dict) -> str | None:
    peers = [n for n in rows if not n.startswith("genba")]
    return max(peers, key=lambda n: rows[n]["eval"]["mean_task_success"]) if peers else None


def verdict(rows: dict) -> list[str]:
    """The issue's acceptance criteria, evaluated on the measured figures."""
    if "genba-small" not in rows or best_peer(rows) is None:
        return ["(acceptance needs genba-small and at least one LeRobot contestant)"]
    g, name = rows["genba-small"], best_peer(rows)
    p = rows[name]
    gs, ps = g["eval"]["mean_task_success"], p["eval"]["mean_task_success"]
    ratio = p["latency"]["p50_ms"] / max(g["latency"]["p50_ms"], 1e-9)
    lines = [f"Best peer by MT10 mean success: {name} ({ps:.1%}).",
             f"Success: genba-small {gs:.1%} vs {ps:.1%} -> {'MET' if gs >= ps else 'NOT MET'} "
             f"(genba >= best peer).",
             f"Latency: best peer's fresh-chunk p50 is {ratio:.1f}x genba's -> "
             f"{'MET' if ratio >= 5 and gs >= ps else 'NOT MET'} (>= 5x at equal or better success)."]
    return lines


def samples(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:.1f}"


def summary_table(rows: dict) -> str:
    head = ("| contestant | params | train steps x batch | samples/s (train) | MT10 mean success [95% CI] "
            "| fresh chunk p50 / p99 (ms) | chunk / executed | load avg (train start, end) |\n"
            "|---|---:|---:|---:|---:|---:|---:|---:|\n")
    out = []
    for name, r in rows.items():
        t, lat = r["train"], r["latency"]
        k, n, lo, hi = pooled(r)
        executed = lat.get("n_action_steps", "ensemble (fresh every step)")
        out.append(f"| {name} | {t['params'] / 1e6:.2f}M | {t['steps']} x {t['batch_size']} | {samples(t['samples_per_s'])} "
                   f"| {r['eval']['mean_task_success']:.1%} ({k}/{n}) [{lo:.1%}, {hi:.1%}] "
                   f"| {lat['p50_ms']:.2f} / {lat['p99_ms']:.2f} | {lat['chunk']} / {executed} "
                   f"| {', '.join(str(x) for x in t.get('load_avg_1min', ['?']))} |")
    return head + "\n".join(out) + "\n"


def task_table(rows: dict) -> str:
    names = list(rows)
    tasks = list(next(iter(rows.values()))["eval"]["tasks"])
    head = "| task | " + " | ".join(names) + " |\n|---|" + "---:|" * len(names) + "\n"
    lines = []
    for t in tasks:
        cells = []
        for n in names:
            s = rows[n]["eval"]["tasks"][t]
            cells.append(f"{s['successes']}/{s['episodes']} [{s['ci_low']:.2f}, {s['ci_high']:.2f}]")
        lines.append(f"| {t.split('/')[-1]} | " + " | ".join(cells) + " |")
    return head + "\n".join(lines) + "\n"


def latency_notes(rows: dict) -> list[str]:
    out = []
    for name, r in rows.items():
        lat, t = r["latency"], r["train"]
        line = (f"- {name}: {lat['calls']} fresh chunks at batch 1, p50 {lat['p50_ms']:.2f} ms, p99 {lat['p99_ms']:.2f} ms, "
                f"mean {lat['mean_ms']:.2f} ms; trained {t['steps']} steps ({t.get('precision', '?')}), final loss "
                f"{t['final_loss']:.4f}; eval {r['eval']['eval_wall_s']:.0f} s.")
        if "pipe_roundtrip_p50_ms" in lat:
            line += (f" Through the adapter: an `infer` step (queue pop + LeRobot processors, a fresh chunk every "
                     f"{lat['n_action_steps']}th) p50 {lat['infer_roundtrip_p50_ms']:.2f} ms; the pipe alone "
                     f"(`ping`) p50 {lat['pipe_roundtrip_p50_ms']:.3f} ms.")
        out.append(line)
    return out


def caveats(rows: dict, meta: dict) -> list[str]:
    loads = [x for r in rows.values() for x in r["train"].get("load_avg_1min", [])]
    out = [f"- Wall-clock budgets measure this machine as it was: the 1-minute load average during training ranged "
           f"{min(loads, default=float('nan')):.1f}-{max(loads, default=float('nan')):.1f} on "
           f"{os.cpu_count()} vCPUs (other work shared them), so every contestant got fewer steps, and slower "
           "latencies, than on an idle machine, and not necessarily the same share of it.",
           "- Success rates are from few episodes per task; compare the confidence intervals, not the points."]
    if meta["smoke"]:
        out.insert(0, "- SMOKE RUN: a few minutes of training per contestant is far too little for any of them to "
                      "learn MT10; these figures show that the pipeline works end to end, not who wins.")
    return out


def plot(rows: dict, path: Path, title: str) -> None:
    """Grouped bars: success per MT10 task and the mean, Wilson 95% CIs as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = list(rows)
    tasks = list(next(iter(rows.values()))["eval"]["tasks"])
    labels = [t.split("/")[-1].replace("-v3", "") for t in tasks] + ["MT10 mean"]
    x = np.arange(len(labels))
    width = 0.8 / len(names)
    fig, ax = plt.subplots(figsize=(13, 4.8))
    for i, n in enumerate(names):
        ev = rows[n]["eval"]
        rates = [ev["tasks"][t]["success_rate"] for t in tasks] + [ev["mean_task_success"]]
        _, _, lo, hi = pooled(rows[n])
        los = [ev["tasks"][t]["ci_low"] for t in tasks] + [lo]
        his = [ev["tasks"][t]["ci_high"] for t in tasks] + [hi]
        err = np.clip([np.subtract(rates, los), np.subtract(his, rates)], 0, None)
        lat = rows[n]["latency"]["p50_ms"]
        ax.bar(x + (i - (len(names) - 1) / 2) * width, rates, width, yerr=err, capsize=2,
               label=f"{n} ({rows[n]['train']['params'] / 1e6:.1f}M, {lat:.1f} ms/chunk)")
    ax.set_xticks(x, labels, rotation=30, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("success rate (95% Wilson CI)")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def interop_text(interop: dict) -> str:
    lines = [f"- LeRobot {interop.get('lerobot_version', '?')} `LeRobotDataset` opened the unmodified genba dataset: "
             f"{interop.get('num_frames')} frames, {interop.get('num_episodes')} episodes; "
             f"{sum(c['ok'] for c in interop['checks'])}/{len(interop['checks'])} checks passed."]
    for c in interop["checks"]:
        lines.append(f"  - {'ok' if c['ok'] else 'FAIL'}: {c['name']}: {c['detail']}")
    return "\n".join(lines)


def write_all(out: Path, rows: dict, meta: dict) -> dict:
    """results.json, success.png and RESULTS.md in ``out``; returns the results document."""
    label = "SMOKE RUN (reduced budget, few episodes: orientation only)" if meta["smoke"] else "benchmark run"
    title = (f"MT10 closed-loop success, {meta['budget_min']:g} min training each, {meta['episodes']} "
             f"episodes/task" + (" [smoke]" if meta["smoke"] else ""))
    plot(rows, out / "success.png", title)
    summary = summary_table(rows)
    md = [f"# genba vs LeRobot reference policies on MT10: {label}", "",
          f"- Date: {meta['date']}", f"- Command: `{meta['command']}`", f"- Machine: {meta['machine']}",
          f"- Training budget: {meta['budget_min']:g} min wall clock per contestant, one thread, run one after "
          f"the other; {meta['demos']} demonstrations per task ({meta['dataset']}).",
          f"- Evaluation: genba's closed-loop harness, {meta['episodes']} unseen-seed episodes per task "
          f"(`genba.envs.seeds.eval_seed`, disjoint from training seeds), the same seeds for every contestant.",
          f"- Whole run: {meta['wall_min']} min.", "",
          "## Summary", "", summary, "## Acceptance (issue 8)", "",
          *(["Smoke figures: the criteria below are evaluated mechanically and decide nothing."] if meta["smoke"] else []),
          *[f"- {v}" for v in verdict(rows)], "",
          "## Latency and training details", "", *latency_notes(rows), "",
          "## Caveats", "", *caveats(rows, meta), "",
          "## Success per task (successes/episodes [95% Wilson CI])", "", task_table(rows),
          "![success](success.png)", "", "## Dataset interoperability", "", interop_text(meta["interop"]), ""]
    text = "\n".join(md)
    (out / "RESULTS.md").write_text(text)
    doc = {"meta": meta, "rows": rows, "verdict": verdict(rows), "summary_text": summary}
    (out / "results.json").write_text(json.dumps(doc, indent=2, default=str))
    return doc
