"""The demo's run report: ``OUT/report.md`` with PNG plots, and the summary printed at the end.

Everything here is read back from what the stages wrote (``demo-state.json``,
the training ``metrics.jsonl``, the evaluation ``results.json`` files, the
bridge summary), so the report can be rebuilt at any time from a run directory.

Plots: ``training_curve.png`` (loss per embodiment vs step), ``success.png``
(success per task: expert demonstrations, model with English and with Japanese
instructions), ``tracking.png`` (reference vs actual of a drive episode, copied
from the English evaluation), ``audit.png`` (audit entries by kind and decision,
refusals by policy).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np

from genba.atomic import write_atomic
from genba.data.language import LANGS

REPORT = "report.md"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def load_results(root: Path) -> dict[str, dict]:
    """Evaluation results per language (those that exist)."""
    out = {}
    for lang in LANGS:
        p = root / f"eval-{lang}" / "results.json"
        if p.is_file():
            out[lang] = json.loads(p.read_text(encoding="utf-8"))
    return out


def expert_rates(collect: dict) -> dict[str, float]:
    """Per task: the scripted expert's success on the training seeds (kept / attempted while collecting)."""
    return {t: r["kept"] / max(1, r["attempted"]) for d in collect.values() for t, r in d["tasks"].items()}


def audit_counts(entries: list[dict]) -> dict:
    """Entries per kind and decision, and refusals per policy (the audit summary plot)."""
    kinds: dict[str, dict[str, int]] = {}
    policies: dict[str, int] = {}
    for e in entries:
        ev = e["event"]
        kind, decision = ev.get("kind", "?"), ev.get("decision", "?")
        kinds.setdefault(kind, {}).setdefault(decision, 0)
        kinds[kind][decision] += 1
        if decision == "deny":
            for p in ev.get("policy_ids") or ["?"]:
                policies[p] = policies.get(p, 0) + 1
    return {"by_kind": kinds, "denied_by_policy": policies}


# ---- plots --------------------------------------------------------------------------------
def plot_training(records: list[dict], path: Path) -> bool:
    if not records:
        return False
    plt = _pyplot()
    steps = np.array([r["step"] for r in records])
    fig, ax = plt.subplots(figsize=(7, 3.6))
    ax.plot(steps, [r.get("loss", np.nan) for r in records], "k", lw=1.6, label="total")
    for key in sorted({k for r in records for k in r if k.startswith("loss/")}):
        ax.plot(steps, [r.get(key, np.nan) for r in records], lw=1.0, label=key.split("/", 1)[1])
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("pretraining on the pooled consortium data")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_success(results: dict[str, dict], expert: dict[str, float], path: Path) -> bool:
    if not results:
        return False
    plt = _pyplot()
    tasks = list(next(iter(results.values()))["tasks"])
    series = [("expert (demonstrations)", [expert.get(t, np.nan) for t in tasks], "0.6")]
    series += [(f"model, {lang} instructions", [results[lang]["tasks"][t]["success_rate"] for t in tasks], c)
               for lang, c in zip(LANGS, ("tab:blue", "tab:red")) if lang in results]
    x, w = np.arange(len(tasks)), 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.55 * len(tasks) + 2), 4))
    for i, (label, vals, color) in enumerate(series):
        ax.bar(x + (i - (len(series) - 1) / 2) * w, vals, w, label=label, color=color)
    ax.set_xticks(x, [t.split("/", 1)[-1] for t in tasks], rotation=50, ha="right", fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("success rate")
    ax.legend(fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=len(series), frameon=False)
    ax.set_title("closed-loop success per task (unseen seeds)", pad=22)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_audit(counts: dict, path: Path) -> bool:
    if not counts:
        return False
    plt = _pyplot()
    kinds = sorted(counts["by_kind"])
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.4))
    x = np.arange(len(kinds))
    for off, decision, color in ((-0.2, "allow", "tab:green"), (0.2, "deny", "tab:red")):
        vals = [counts["by_kind"][k].get(decision, 0) for k in kinds]
        bars = a1.bar(x + off, vals, 0.4, color=color, label=decision)
        a1.bar_label(bars, fontsize=7)
    a1.set_xticks(x, kinds)
    a1.set_title("audit entries by kind and decision")
    a1.legend(fontsize=8)
    pol = counts["denied_by_policy"]
    a2.barh(list(pol) or ["(none)"], list(pol.values()) or [0], color="tab:red")
    a2.set_title("refusals by policy")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# ---- Markdown ------------------------------------------------------------------------------
def _f(x, fmt="{:.2f}") -> str:
    return "-" if x is None or (isinstance(x, float) and not np.isfinite(x)) else fmt.format(x)


def section_consortium(st: dict) -> list[str]:
    from genba.demo.members import MEMBERS

    cons, collect, ingest = st["consortium"], st["collect"], st["ingest"]
    lines = ["## 1. Consortium and data", "",
             "Members (all JP): " + ", ".join(f"`{m['org']}`" for m in cons["members"]) + ". Sites: "
             + ", ".join(f"`{s[0]}` ({s[1]})" for s in cons["sites"]) + f". Grants in force: {cons['grants']}.", "",
             "| owner | contributes | dataset | embodiment | classification | episodes | frames | expert success while collecting |",
             "|---|---|---|---|---|---|---|---|"]
    plans = {m.org: m for m in MEMBERS}
    for ds_id, d in ingest.items():
        c = collect[d["embodiment"]]
        lines.append(f"| {d['owner']} | {plans[d['owner']].name} | `{ds_id}` | {d['embodiment']} | {d['classification']} "
                     f"| {c['episodes']} | {c['frames']} | {c['kept']}/{c['attempted']} |")
    lines += ["", "Each dataset is encrypted at rest under its owner's key (Parquet modular encryption), "
              "carries a signed manifest, and its ingestion is in the audit log.", ""]
    return lines


def section_training(st: dict, root: Path, has_plot: bool) -> list[str]:
    from genba.model.bundle import read_manifest

    t = st["train"]
    manifest = read_manifest(t["checkpoint"])
    params = manifest.get("weights", {}).get("num_params")
    lines = ["## 2. Governed pretraining", "",
             f"`genba train --governed` as `{st['governance'].get('lineage', {}).get('principal', 'genba-lab/trainer')}` "
             f"at the JP site: preset **{t['preset']}** ({_f(params, '{:,}')} parameters), {t['procs']} process(es), "
             f"budget {t['budget_min']:g} min.", "",
             "| steps | training wall time (s) | samples/s | final loss | checkpoint |", "|---|---|---|---|---|",
             f"| {t['steps']} | {_f(t['elapsed_s'], '{:.0f}')} | {_f(t['samples_per_s'], '{:,.0f}')} "
             f"| {_f(t['loss'], '{:.4f}')} | `{Path(t['checkpoint']).relative_to(root.resolve()) if Path(t['checkpoint']).is_absolute() else t['checkpoint']}` |", ""]
    if has_plot:
        lines += ["![training curve](training_curve.png)", ""]
    return lines


def section_eval(results: dict, expert: dict, has_success: bool, has_tracking: bool) -> list[str]:
    if not results:
        return []
    any_res = next(iter(results.values()))
    cfg = any_res["config"]
    lines = ["## 3. Closed-loop evaluation", "",
             f"{cfg['episodes']} episodes per task and language on evaluation seeds disjoint from the demonstrations"
             + (f" (quick: episodes capped at {cfg['max_steps']} steps, chunks re-planned; a first look, not a "
                "measurement)" if cfg.get("max_steps") else "")
             + ". Expert: the scripted expert's success while collecting (training seeds).", "",
             "| task | embodiment | expert | " + " | ".join(f"model ({lang})" for lang in results)
             + " | tracking error (en) |", "|---|---|---|" + "---|" * len(results) + "---|"]
    for task in any_res["tasks"]:
        emb = next(e["embodiment"] for e in any_res["episodes"] if e["task"] == task)
        cells = [f"{results[lang]['tasks'][task]['success_rate']:.2f}" for lang in results]
        err = results.get("en", any_res)["tasks"][task]["mean_tracking_error"]
        lines.append(f"| {task} | {emb} | {_f(expert.get(task))} | " + " | ".join(cells) + f" | {_f(err, '{:.4f}')} |")
    lines += ["", "| embodiment | " + " | ".join(f"model ({lang})" for lang in results) + " |",
              "|---|" + "---|" * len(results)]
    for emb in any_res["embodiments"]:
        lines.append(f"| {emb} | " + " | ".join(f"{results[lang]['embodiments'][emb]['success_rate']:.2f}"
                                                 for lang in results) + " |")
    lines.append("| **mean over tasks** | " + " | ".join(f"**{results[lang]['mean_task_success']:.3f}**"
                                                         for lang in results) + " |")
    lines.append("")
    if has_success:
        lines += ["![success per task](success.png)", ""]
    if has_tracking:
        lines += ["A drive under the model's control (reference dashed, actual solid):", "", "![tracking trace](tracking.png)", ""]
    return lines


def section_governance(gov: dict) -> list[str]:
    audit, lin = gov["audit"], gov["lineage"]
    lines = ["## 4. Governance at work", "", "| attempt | principal | site | denied by policy | audit entry |",
             "|---|---|---|---|---|"]
    lines += [f"| {d['attempt']} | `{d['principal']}` | {d['site']} | **{d['policy']}** | #{d['audit_index']} |"
              for d in gov["denials"]]
    lines += ["", "Both stopped before reading a byte of data: the audit log holds their refusals and no file read "
              "for their runs.", "",
              f"**Audit log verified**: {audit['tree_size']} entries, Merkle root `{audit['root'][:16]}...`, "
              "signed tree head checked (`genba audit verify`).", "", "![audit summary](audit.png)", "",
              f"**Lineage of the checkpoint** (run `{lin['run_id']}` by `{lin['principal']}` at "
              f"`{lin['site']['id']}` ({lin['site']['jurisdiction']})): owners whose data is inside: "
              f"**{', '.join(lin['owners'])}**. "
              + ("Every cited audit entry is proven included in the log." if not lin["problems"]
                 else f"Lineage problems: {lin['problems']}"), "",
              "| dataset | owner | classification | embodiment | files read | audit entries |", "|---|---|---|---|---|---|"]
    lines += [f"| `{d['dataset_id']}` | {d['owner']} | {d['classification']} | {d['embodiment']} | {d['files']} "
              f"| {d['audit_entries']} |" for d in lin["datasets"]]
    lines += ["", "Model card: [MODEL_CARD.md](MODEL_CARD.md).", ""]
    return lines


def section_serve(sv: dict) -> list[str]:
    lines = ["## 5. Serving: OPC UA bridge through the safety shield", ""]
    if not sv or "skipped" in sv:
        return lines + [f"Skipped: {sv.get('skipped', 'not run')}.", ""]
    iv = sv.get("interventions") or {}
    return lines + [
        f"The policy server answered the bridge over a token-authenticated websocket; the bridge read the simulated "
        f"`{sv['task']}` machine and wrote its setpoints over OPC UA (Basic256Sha256 SignAndEncrypt), every command "
        "passing the safety shield.", "",
        "| cycles | cycle p50 / p99 (ms) | missed deadlines | overruns | machine steps | setpoint violations at the machine | mean tracking error |",
        "|---|---|---|---|---|---|---|",
        f"| {sv['cycles']} | {sv['cycle_ms_p50']:.1f} / {sv['cycle_ms_p99']:.1f} | {sv['missed_deadlines']} "
        f"| {sv['overruns']} | {sv['machine_steps']} | {sv['machine_setpoint_violations']} "
        f"| {_f(sv.get('tracking_error_mean'), '{:.4f}')} |", "",
        "Shield interventions: " + (", ".join(f"{k} {v}" for k, v in iv.items()) if iv else "none") + ".", ""]


def write_report(demo) -> Path:
    """Plots and report.md in the run directory; returns the report's path."""
    from genba.train.monitor import read_metrics

    root, st = demo.root, {k: demo.state.summary(k) for k in demo.state.doc["stages"]}
    results = load_results(root)
    expert = expert_rates(st["collect"])
    has_curve = plot_training(read_metrics(demo.train_dir), root / "training_curve.png")
    has_success = plot_success(results, expert, root / "success.png")
    traces = sorted((root / "eval-en").glob("tracking-*.png"), key=lambda p: "pmsm-current" not in p.name)
    if traces:
        shutil.copyfile(traces[0], root / "tracking.png")
    plot_audit(st["governance"]["audit"]["counts"], root / "audit.png")
    seconds = {k: v.get("seconds") for k, v in demo.state.doc["stages"].items()}
    lines = [f"# genba demo report: `{root.name}`", "",
             f"{'Quick demo' if demo.cfg.quick else 'Demo'} written {time.strftime('%Y-%m-%d %H:%M')}. "
             "Stage wall times (s): " + ", ".join(f"{k} {v}" for k, v in seconds.items() if v is not None) + ".", ""]
    lines += section_consortium(st)
    lines += section_training(st, root, has_curve)
    lines += section_eval(results, expert, has_success, bool(traces))
    lines += section_governance(st["governance"])
    lines += section_serve(st.get("serve", {}))
    path = root / REPORT
    return write_atomic(path, "\n".join(lines))


def print_summary(demo, path: Path) -> None:
    """The short table printed at the end of the demo."""
    from rich.table import Table

    st = {k: demo.state.summary(k) for k in demo.state.doc["stages"]}
    results = load_results(demo.root)
    table = Table(title="genba demo summary")
    table.add_column("embodiment")
    table.add_column("owner")
    for lang in results:
        table.add_column(f"success ({lang})", justify="right")
    owners = {d["embodiment"]: d["owner"] for d in st["ingest"].values()}
    any_res = next(iter(results.values()), {"embodiments": {}})
    for emb in any_res["embodiments"]:
        table.add_row(emb, owners.get(emb, "?"), *[f"{results[l]['embodiments'][emb]['success_rate']:.2f}" for l in results])
    demo.console.print(table)
    gov, t = st["governance"], st["train"]
    demo.console.print(f"training: {t['steps']} steps in {_f(t['elapsed_s'], '{:.0f}')} s, final loss {_f(t['loss'], '{:.4f}')}; "
                       f"denied: {', '.join(d['policy'] for d in gov['denials'])}; audit log verified "
                       f"({gov['audit']['tree_size']} entries); lineage owners: {', '.join(gov['lineage']['owners'])}")
    sv = st.get("serve") or {}
    if sv and "skipped" not in sv:
        demo.console.print(f"OPC UA bridge: {sv['cycles']} cycles, shield interventions {sv.get('interventions') or 'none'}")
    demo.console.print(f"[bold]report: {path}[/bold]")
