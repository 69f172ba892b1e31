"""Adaptation benchmark: sample-efficiency curves (fine-tune vs scratch) and forgetting.

1. Pretrain on a mixture (MT10 + drives + arms, with one embodiment held out),
   or reuse ``--pretrained CKPT`` (it must not contain the held-out embodiment).
2. New tasks: Meta-World MT50 tasks outside MT10. For each number of
   demonstrations per task (``--demos``), fine-tune the pretrained checkpoint
   (``--mode``) and train the same architecture from scratch with the same data,
   batch size and number of steps; success over ``--eval-episodes`` unseen seeds
   per task, with 95% Wilson intervals (pooled over tasks: every task has the
   same number of episodes, so the pooled rate is the mean task success).
3. New embodiment: the held-out machine (``--holdout dc``: DC-motor current and
   speed control; ``--holdout exdc``: the externally excited DC motor, in no
   pretraining group, so any standard checkpoint can be ``--pretrained``)
   learned from a few episodes per task, each ``--emb-modes`` entry vs scratch;
   ``MODE+warm`` also warm-starts the new stem and head from a known machine
   (``--emb-init-from``, ``--emb-channel-map``; exdc: from dc, ``i_a=i,u_a=u``).
   Mean tracking error with a 95% normal interval over episodes, and success.
   This stage runs first.
4. Forgetting: the pretrained tasks' success before and after adaptation to
   the new tasks (``--forget-demos`` demonstrations, each ``--forget-modes``
   entry ``mode/scope``). Task-scoped frozen-trunk adaptation (the default for
   new tasks, ``genba finetune --scope tasks``) trains a routed copy of the
   machine's stem and head and leaves every pretrained tensor bit-identical
   (checked, like frozen-trunk adaptation to a new embodiment), so old tasks
   run exactly the parent's computation.

New tasks are learned with ``--mode`` (default frozen-trunk) and ``--scope``
(auto: task-scoped with frozen-trunk, the machine's own stem/head otherwise).

Writes ``OUT/adaptation.md`` (tables), ``OUT/adaptation.png`` and ``OUT/results.json``.
Datasets and the pretrained run are cached under OUT and reused on a rerun.

    # smoke (a few minutes; figures are NOT meaningful):
    OMP_NUM_THREADS=1 MUJOCO_GL=disable .venv/bin/python benchmarks/adaptation.py --quick --out runs/bench-adapt-quick
    # full:
    OMP_NUM_THREADS=1 MUJOCO_GL=disable .venv/bin/python benchmarks/adaptation.py --out runs/bench-adapt
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np

# Outside MT10, but built from skills MT10 teaches (push, pick-place) and hard enough that 10 demonstrations
# from scratch do not already saturate success (handle-press or plate-slide do, even for the debug model).
NEW_TASKS = ("push-wall-v3", "push-back-v3", "coffee-push-v3", "sweep-into-v3", "pick-place-wall-v3")
# exdc (externally excited DC motor: 2 currents, 2 voltages) is in no pretraining group, so any checkpoint of
# the standard mixture can serve as --pretrained; dc and jaco need a pretraining run without them.
HOLDOUT_TASKS = {"dc": ("drive/dc-current", "drive/dc-speed"), "jaco": ("arm/jaco-reach", "arm/jaco-push"),
                 "exdc": ("drive/exdc-current",), "exdc-speed": ("drive/exdc-speed",)}
# the embodiment a --holdout names (exdc-speed: the exdc machine, measured on its speed task alone; its
# tracking errors are ~10x smaller than the current task's, so pooling the two would hide it)
HOLDOUT_EMBODIMENT = {"exdc-speed": "exdc"}
STAGES = ("embodiment", "new-tasks", "forgetting")
# ``MODE+warm`` embodiment runs start the held-out machine's stem and head from a known machine's
# (``genba finetune --init-from``): the excited DC motor's armature is the permanent-magnet DC motor's
WARM_START = {"exdc": ("dc", "i_a=i,u_a=u"), "exdc-speed": ("dc", "i_a=i,u_a=u")}
Z95 = 1.959963984540054


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated subset of {', '.join(STAGES)}")
    ap.add_argument("--quick", action="store_true", help="smoke run: tiny model, few tasks/demos/episodes")
    ap.add_argument("--out", type=Path, default=Path("runs/bench-adapt"))
    ap.add_argument("--pretrained", type=Path, default=None, help="reuse this checkpoint instead of pretraining")
    ap.add_argument("--preset", default=None, help="train preset of the pretraining run (default small; quick: debug)")
    ap.add_argument("--pretrain-minutes", type=float, default=None, help="pretraining wall budget (default 30)")
    ap.add_argument("--pretrain-episodes", type=int, default=None, help="demonstrations per pretraining task (50)")
    ap.add_argument("--holdout", choices=sorted(HOLDOUT_TASKS), default="dc", help="embodiment kept out of pretraining")
    ap.add_argument("--new-tasks", default=None, help="comma-separated MT50 task names (default: five outside MT10)")
    ap.add_argument("--demos", default=None, help="demonstrations per new task, comma-separated (1,3,10,30)")
    ap.add_argument("--emb-demos", default=None, help="episodes per held-out-machine task (1,3,10)")
    ap.add_argument("--forget-demos", type=int, default=None, help="demos of the run whose forgetting is measured (10)")
    ap.add_argument("--mode", choices=("frozen-trunk", "lora", "full"), default="frozen-trunk",
                    help="fine-tuning mode of the curves")
    ap.add_argument("--scope", choices=("auto", "tasks", "embodiment"), default="auto",
                    help="new tasks: a routed copy of the stem/head (tasks) or the machine's own (embodiment); "
                         "auto: tasks with frozen-trunk")
    ap.add_argument("--forget-modes", default="frozen-trunk/tasks,lora/embodiment",
                    help="MODE/SCOPE runs whose forgetting is measured, comma-separated")
    ap.add_argument("--emb-init-from", default=None,
                    help="known machine that MODE+warm entries warm-start the held-out one from (exdc: dc)")
    ap.add_argument("--emb-channel-map", default=None, help="NEW=SOURCE renames for the warm start (exdc: i_a=i,u_a=u)")
    ap.add_argument("--emb-modes", default="frozen-trunk,lora,full",
                    help="fine-tuning modes compared with scratch on the held-out machine, comma-separated")
    ap.add_argument("--steps", type=int, default=None, help="fine-tune (and scratch) steps per run (1000)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--eval-episodes", type=int, default=None, help="evaluation episodes per task (50)")
    ap.add_argument("--max-steps", type=int, default=None, help="cap evaluation episodes (quick: 200)")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    q = args.quick
    fill = {"preset": "debug" if q else "small", "pretrain_minutes": 1.0 if q else 30.0,
            "pretrain_episodes": 4 if q else 50,
            "new_tasks": "plate-slide-v3,handle-press-v3" if q else ",".join(NEW_TASKS),
            "demos": "1,3" if q else "1,3,10,30", "emb_demos": "1,3" if q else "1,3,10",
            "forget_demos": 3 if q else 10, "steps": 60 if q else 1000, "eval_episodes": 3 if q else 50,
            "max_steps": 200 if q else None}
    for k, v in fill.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    args.demos = [int(x) for x in str(args.demos).split(",")]
    args.emb_demos = [int(x) for x in str(args.emb_demos).split(",")]
    args.stages = [x for x in args.stages.split(",") if x]
    if not args.stages or set(args.stages) - set(STAGES):
        ap.error(f"--stages {args.stages}: expected a subset of {', '.join(STAGES)}")
    args.emb_modes = [m for m in args.emb_modes.split(",") if m]
    bad = sorted({m.removesuffix("+warm") for m in args.emb_modes} - {"frozen-trunk", "lora", "full"})
    if bad or not args.emb_modes:
        ap.error(f"--emb-modes {args.emb_modes}: expected a subset of frozen-trunk, lora, full, each optionally "
                 "with +warm (warm start from --emb-init-from)")
    warm = WARM_START.get(args.holdout, (None, None))
    args.emb_init_from = args.emb_init_from or warm[0]
    args.emb_channel_map = args.emb_channel_map if args.emb_channel_map is not None else warm[1]
    if any(m.endswith("+warm") for m in args.emb_modes) and not args.emb_init_from:
        ap.error(f"--emb-modes {args.emb_modes}: +warm needs --emb-init-from (no default for {args.holdout})")
    args.new_tasks = [f"metaworld/{t}" if "/" not in t else t for t in args.new_tasks.split(",")]
    args.forget_modes = [tuple(m.split("/")) for m in args.forget_modes.split(",") if m]
    bad = [m for m in args.forget_modes if len(m) != 2 or m[0] not in ("frozen-trunk", "lora", "full")
           or m[1] not in ("tasks", "embodiment")]
    if bad or not args.forget_modes:
        ap.error(f"--forget-modes {args.forget_modes}: expected MODE/SCOPE entries, e.g. frozen-trunk/tasks")
    return args


def scope_of(mode: str, scope: str) -> str:
    """``tasks`` or ``embodiment``: what ``genba finetune`` resolves ``--scope`` to for ``mode``."""
    from genba.train.finetune import FinetuneConfig

    return "tasks" if FinetuneConfig(mode=mode, scope=scope).task_scoped else "embodiment"


def run_name(tag: str, n: int, mode: str, scope: str) -> str:
    """Unscoped runs keep their old names, so a rerun reuses them."""
    return f"{tag}-{n}-pretrained-{mode}" + ("-scoped" if scope == "tasks" else "")


def log(msg: str) -> None:
    print(f"[adaptation {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---- data ---------------------------------------------------------------------------
def pretrain_tasks(args) -> str:
    from genba.envs.registry import resolve

    held = set(HOLDOUT_TASKS[args.holdout])
    if args.quick:
        ids = ["metaworld/reach-v3", "metaworld/push-v3", "metaworld/drawer-close-v3", "drive/pmsm-current",
               "drive/dc-current", "arm/jaco-reach"]
    else:
        ids = [t.id for t in resolve("mt10,drives,arms")]
    return ",".join(t for t in ids if t not in held)


def collect_cached(tasks: str, out: Path, episodes: int, workers: int) -> list[Path]:
    """One dataset per embodiment under ``out``; reused when already there."""
    from genba.envs.collect import CollectConfig, collect
    from genba.envs.registry import resolve

    names = sorted({t.spec.name for t in resolve(tasks)})
    if all((out / n / "meta" / "info.json").is_file() for n in names):
        log(f"reusing datasets {[str(out / n) for n in names]}")
        return [out / n for n in names]
    log(f"collecting {episodes} expert episodes per task of {tasks}")
    paths = collect(CollectConfig(tasks=tasks, out=out, episodes=episodes, workers=workers, overwrite=True))
    return [paths[n] for n in names]


def subset(src: Path, n: int, out: Path) -> Path:
    """The first ``n`` episodes of every task of dataset ``src``, as a dataset of its own."""
    from genba.data.dataset import open_dataset
    from genba.data.layout import Episode, write_dataset

    if (out / "meta" / "info.json").is_file():
        return out
    ds = open_dataset(src)
    taken: dict[int, int] = {}
    eps = []
    for r in ds.episodes:
        if taken.get(r.task_index, 0) < n:
            taken[r.task_index] = taken.get(r.task_index, 0) + 1
            eps.append(Episode(ds.observation[r.start:r.stop], ds.action[r.start:r.stop], r.task_index, r.seed))
    short = {ds.tasks[t]["id"]: k for t, k in taken.items() if k < n}
    if short:
        log(f"warning: {src} has fewer than {n} episodes for {short}")
    return write_dataset(out, eps, ds.spec, ds.tasks, overwrite=True)


# ---- train and evaluate -----------------------------------------------------------------
def pretrain(args, data: list[Path]) -> Path:
    from genba.train.checkpoint import latest_checkpoint
    from genba.train.config import get_train_preset
    from genba.train.trainer import train

    if args.pretrained is not None:
        return args.pretrained
    run = args.out / "pretrain"
    found = latest_checkpoint(run) if (run / "checkpoints").is_dir() else None
    if found is not None:
        log(f"reusing pretrained checkpoint {found}")
        return found
    cfg = get_train_preset(args.preset).replace(minutes=args.pretrain_minutes, ckpt_every=0)
    log(f"pretraining preset {args.preset} for {args.pretrain_minutes} min on {[p.name for p in data]}")
    res = train(cfg, data, run, overwrite=True)  # no checkpoint yet: a killed attempt starts over
    log(f"pretrained {res.step} steps, loss {res.loss:.4f}: {res.checkpoint}")
    return res.checkpoint


def adapt(args, parent: Path, data: Path, run: Path, mode: str, init: str, scope: str = "embodiment"):
    from genba.train.checkpoint import latest_checkpoint
    from genba.train.finetune import FinetuneConfig, default_train_config, finetune

    found = latest_checkpoint(run) if (run / "checkpoints").is_dir() else None
    if found is not None:
        return found
    from genba.train.transfer import parse_channel_map

    tc = default_train_config().replace(steps=args.steps, batch_size=args.batch_size,
                                        log_every=max(1, args.steps // 10))
    mode, warm = mode.removesuffix("+warm"), mode.endswith("+warm") and init == "pretrained"
    cfg = FinetuneConfig(mode=mode, init=init, scope=scope if init == "pretrained" else "embodiment",
                         init_from=args.emb_init_from if warm else None,
                         channel_map=parse_channel_map(args.emb_channel_map) if warm else (),
                         tensorboard=False, train=tc)
    t0 = time.perf_counter()
    res = finetune(parent, [data], run, cfg, overwrite=True, progress=False)  # no checkpoint: start over
    log(f"  {run.name}: {init} {mode if init == 'pretrained' else 'full'} {res.step} steps, loss {res.loss:.4f}, "
        f"scoped entries {res.scoped or 'none'}, "
        f"{res.trainable_params:,} trainable params, {time.perf_counter() - t0:.0f} s")
    return res.checkpoint


def evaluate(args, ckpt: Path, tasks: list[str]) -> dict:
    from genba.eval.rollout import EvalConfig
    from genba.eval.rollout import evaluate as run_eval

    # 10 kHz drives track better re-planned every step than with temporal ensembling (measured 1.6-1.7x)
    drives_only = all(t.startswith("drive/") for t in tasks)
    cfg = EvalConfig(checkpoint=str(ckpt), tasks=tuple(tasks), episodes=args.eval_episodes,
                     workers=min(args.workers, len(tasks) * math.ceil(args.eval_episodes / 10)),
                     max_steps=args.max_steps, trace_drives=False,
                     execute="replan" if drives_only else "ensemble", replan_every=1 if drives_only else None)
    return run_eval(cfg, None, progress=True)


def evaluated(args, ckpt: Path, tasks: list[str]) -> dict:
    """``summary(evaluate(...))``, cached under OUT/evals so a rerun (e.g. with more modes) re-evaluates nothing."""
    import hashlib

    key = json.dumps([str(Path(ckpt).resolve()), list(tasks), args.eval_episodes, args.max_steps])
    path = args.out / "evals" / f"{hashlib.sha1(key.encode()).hexdigest()[:16]}.json"
    if path.is_file():
        return json.loads(path.read_text())["summary"]
    out = summary(evaluate(args, ckpt, tasks))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"key": json.loads(key), "summary": out}, indent=1))
    return out


def summary(res: dict) -> dict:
    """Pooled success with its Wilson interval, per-task rates, tracking error with a normal interval."""
    from genba.eval.metrics import wilson_interval

    o = res["overall"]
    o = o if isinstance(o, dict) else o.to_dict()
    lo, hi = wilson_interval(o["successes"], o["episodes"])
    errs = [e["tracking_error"] for e in res.get("episodes", []) if e.get("tracking_error") is not None]
    out = {"success": o["successes"] / max(1, o["episodes"]), "ci": [lo, hi], "episodes": o["episodes"],
           "tasks": {t: (s if isinstance(s, dict) else s.to_dict())["success_rate"] for t, s in res["tasks"].items()}}
    if errs:
        m, sd = float(np.mean(errs)), float(np.std(errs, ddof=1)) if len(errs) > 1 else float("nan")
        out["tracking_error"] = m
        out["tracking_ci"] = [m - Z95 * sd / math.sqrt(len(errs)), m + Z95 * sd / math.sqrt(len(errs))]
    return out


# ---- stages -------------------------------------------------------------------------------
def curves(args, parent: Path, full_data: Path, tasks: list[str], tag: str, mode: str, ns: list[int],
           scope: str = "embodiment") -> dict:
    out = {}
    for n in ns:
        data = subset(full_data, n, args.out / "data" / f"{tag}-{n}")
        row = {}
        for init in ("pretrained", "scratch"):
            # scratch trains the whole model whatever the mode: one run serves every mode
            name = run_name(tag, n, mode, scope) if init == "pretrained" else f"{tag}-{n}-scratch"
            ckpt = adapt(args, parent, data, args.out / "runs" / name, mode, init, scope)
            row[init] = {**evaluated(args, ckpt, tasks), "checkpoint": str(ckpt)}
        log(f"{tag} n={n}: fine-tune ({mode}, scope {scope}) {fmt(row['pretrained'])} | scratch {fmt(row['scratch'])}")
        out[n] = row
    return out


def forgetting(args, parent: Path, sawyer_new: Path, pre_tasks: list[str], before: dict) -> dict:
    out = {"before": before}
    data = subset(sawyer_new, args.forget_demos, args.out / "data" / f"new-tasks-{args.forget_demos}")
    for mode, scope in dict.fromkeys(args.forget_modes):
        scope = scope_of(mode, scope)
        ckpt = adapt(args, parent, data, args.out / "runs" / run_name("new-tasks", args.forget_demos, mode, scope),
                     mode, "pretrained", scope)
        key = f"{mode} (scope {scope})"
        out[key] = {**evaluated(args, ckpt, pre_tasks), "identical": frozen_identical(parent, ckpt)}
        log(f"forgetting after {key} on new tasks: pretrained tasks {fmt(before)} -> {fmt(out[key])}; every "
            f"pretrained tensor bit-identical: {out[key]['identical']}")
    return out


def frozen_identical(parent: Path, child: Path) -> bool:
    from safetensors.torch import load_file

    a, b = load_file(str(parent / "model.safetensors")), load_file(str(child / "model.safetensors"))
    return all(k in b and bool((a[k] == b[k]).all()) for k in a)


def fmt(s: dict) -> str:
    txt = f"{s['success']:.2f} [{s['ci'][0]:.2f}, {s['ci'][1]:.2f}]"
    if "tracking_error" in s:
        txt += f", err {s['tracking_error']:.4f} [{s['tracking_ci'][0]:.4f}, {s['tracking_ci'][1]:.4f}]"
    return txt


# ---- report -------------------------------------------------------------------------------
def markdown(args, r: dict) -> str:
    """The report: one section per stage that ran."""
    lines = [f"# Adaptation benchmark{' (SMOKE RUN: --quick, figures not meaningful)' if args.quick else ''}", "",
             f"Pretrained: `{r['pretrained']}`; held out: `{args.holdout}` "
             f"({', '.join(HOLDOUT_TASKS[args.holdout])}); fine-tune mode `{args.mode}` "
             f"(new tasks: scope `{scope_of(args.mode, args.scope)}`); "
             f"{args.steps} steps at batch {args.batch_size} for fine-tuning and scratch alike; "
             f"{args.eval_episodes} eval episodes per task; 95% intervals (Wilson for success, normal for error)."]
    if "curves" in r:
        lines += md_new_tasks(r)
    if "embodiment" in r:
        lines += md_embodiment(args, r)
    if "forgetting" in r:
        lines += md_forgetting(args, r["forgetting"])
    if "holdout_frozen_identical" in r:
        lines += ["", f"Frozen-trunk adaptation to `{args.holdout}`: every pretrained tensor bit-identical: "
                  f"**{r['holdout_frozen_identical']}** (so its forgetting is exactly 0)."]
    return "\n".join(lines + ["", f"Wall time: {r['wall_s'] / 60:.1f} min.", ""])


def md_new_tasks(r: dict) -> list[str]:
    lines = ["", f"## New tasks ({', '.join(t.split('/')[-1] for t in r['new_tasks'])})", "",
             "| demos/task | fine-tune success | scratch success | fine-tune better beyond CIs |", "|---|---|---|---|"]
    for n, row in r["curves"].items():
        ft, sc = row["pretrained"], row["scratch"]
        lines.append(f"| {n} | {fmt(ft)} | {fmt(sc)} | {'yes' if ft['ci'][0] > sc['ci'][1] else 'no'} |")
    names = [t.split("/")[-1] for t in r["new_tasks"]]
    lines += ["", "Per task (fine-tune / scratch):", "", "| demos | " + " | ".join(names) + " |",
              "|---|" + "---|" * len(names)]
    for n, row in r["curves"].items():
        cells = [f"{row['pretrained']['tasks'].get(t, 0):.2f} / {row['scratch']['tasks'].get(t, 0):.2f}"
                 for t in r["new_tasks"]]
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    return lines


def md_embodiment(args, r: dict) -> list[str]:
    modes = list(r["embodiment"])
    lines = ["", f"## New embodiment `{args.holdout}` (success, then mean tracking error with its 95% interval)", "",
             "| episodes/task | scratch | " + " | ".join(f"fine-tune `{m}`" for m in modes) + " |",
             "|---|---|" + "---|" * len(modes)]
    for n in r["embodiment"][modes[0]]:
        cells = [fmt(r["embodiment"][m][n]["pretrained"]) for m in modes]
        lines.append(f"| {n} | {fmt(r['embodiment'][modes[0]][n]['scratch'])} | " + " | ".join(cells) + " |")
    if any(m.endswith("+warm") for m in modes):
        lines += ["", f"`+warm`: the new stem and head start from `{args.emb_init_from}`'s "
                  f"(`genba finetune --init-from {args.emb_init_from} --channel-map {args.emb_channel_map}`)."]
    return lines


def md_forgetting(args, f: dict) -> list[str]:
    lines = ["", f"## Forgetting (pretrained tasks, after new-task adaptation with {args.forget_demos} demos)", "",
             "| model | pretrained-task success | change (points) | pretrained tensors bit-identical |",
             "|---|---|---|---|", f"| pretrained | {fmt(f['before'])} | | |"]
    for mode in (m for m in f if m != "before"):
        lines.append(f"| after {mode} | {fmt(f[mode])} | {100 * (f[mode]['success'] - f['before']['success']):+.1f} "
                     f"| {f[mode].get('identical', '')} |")
    return lines


def _curve(ax, lines, metric: str, title: str) -> None:
    """One line per (label, {demos: result}) with its 95% interval, on a log x axis of demonstrations."""
    for label, rows in lines:
        ns = list(rows)
        m = metric if all(metric in x for x in rows.values()) else "success"
        ci = "ci" if m == "success" else "tracking_ci"
        y = np.array([rows[n][m] for n in ns])
        err = np.abs(np.array([rows[n][ci] for n in ns]).T - y)
        ax.errorbar([int(n) for n in ns], y, yerr=err, marker="o", capsize=3, label=label)
        ax.set_ylabel(m.replace("_", " "))
    ticks = [int(n) for n in lines[0][1]]
    ax.set_xscale("log")
    ax.set_xticks(ticks, [str(n) for n in ticks])
    ax.minorticks_off()
    ax.set_xlabel("demonstrations per task")
    ax.set_title(title)
    ax.legend()


def plot(args, r: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [k for k in ("curves", "embodiment", "forgetting") if k in r]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.2), squeeze=False)
    axes = dict(zip(panels, axes[0]))
    if "curves" in r:  # scratch first, then the fine-tuning mode
        new = [("scratch", {n: row["scratch"] for n, row in r["curves"].items()}),
               (f"fine-tuned ({args.mode}, {scope_of(args.mode, args.scope)})",
                {n: row["pretrained"] for n, row in r["curves"].items()})]
        _curve(axes["curves"], new, "success", "new MT50 tasks: success")
    if "embodiment" in r:
        first = next(iter(r["embodiment"].values()))
        emb = [("scratch", {n: row["scratch"] for n, row in first.items()})]
        emb += [(f"fine-tuned ({m})", {n: row["pretrained"] for n, row in rows.items()})
                for m, rows in r["embodiment"].items()]
        _curve(axes["embodiment"], emb, "tracking_error", f"new embodiment {args.holdout}: tracking error")
    if "forgetting" in r:
        f, ax = r["forgetting"], axes["forgetting"]
        names = list(f)
        y = np.array([f[k]["success"] for k in names])
        err = np.abs(np.array([f[k]["ci"] for k in names]).T - y)
        ax.bar([k.replace(" (", "\n(") for k in names], y, yerr=err, capsize=4,
               color=["gray"] + ["tab:green"] * (len(names) - 1))
        ax.set_ylim(0, 1)
        ax.tick_params(axis="x", labelsize=8)
        ax.set_title("pretrained tasks: before / after adaptation")
    fig.suptitle("genba adaptation" + (" (smoke run, not meaningful)" if args.quick else ""))
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    args = parse_args()
    t0 = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    pre_task_ids = pretrain_tasks(args)
    pre_data = [] if args.pretrained else collect_cached(pre_task_ids, args.out / "data" / "pretrain",
                                                          args.pretrain_episodes, args.workers)
    parent = pretrain(args, pre_data)
    from genba.model.bundle import read_manifest

    held_emb = HOLDOUT_EMBODIMENT.get(args.holdout, args.holdout)
    if held_emb in read_manifest(parent)["specs"]:
        raise SystemExit(f"--pretrained {parent} already knows the held-out embodiment {held_emb!r}")
    r = {"pretrained": str(parent), "new_tasks": args.new_tasks,
         "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}}
    if "embodiment" in args.stages:
        held_tasks = list(HOLDOUT_TASKS[args.holdout])[:1 if args.quick else None]
        held_data = collect_cached(",".join(held_tasks), args.out / "data" / f"holdout-{args.holdout}",
                                   max(args.emb_demos), args.workers)[0]
        log(f"stage 2: new embodiment {args.holdout}, {' / '.join(args.emb_modes)} vs scratch")
        r["embodiment"] = {mode: curves(args, parent, held_data, held_tasks, args.holdout, mode, args.emb_demos)
                           for mode in args.emb_modes}
        if "frozen-trunk" in r["embodiment"]:
            largest = r["embodiment"]["frozen-trunk"][args.emb_demos[-1]]["pretrained"]["checkpoint"]
            r["holdout_frozen_identical"] = frozen_identical(parent, Path(largest))
    if {"new-tasks", "forgetting"} & set(args.stages):
        new_data = collect_cached(",".join(args.new_tasks), args.out / "data" / "new-tasks-all", max(args.demos),
                                  args.workers)[0]
    if "new-tasks" in args.stages:
        log("stage 3: new tasks, fine-tune vs scratch")
        r["curves"] = curves(args, parent, new_data, args.new_tasks, "new-tasks", args.mode, args.demos,
                             scope_of(args.mode, args.scope))
    if "forgetting" in args.stages:
        log("stage 4: forgetting")
        before = evaluated(args, parent, pre_task_ids.split(","))
        r["forgetting"] = forgetting(args, parent, new_data, pre_task_ids.split(","), before)
    r["wall_s"] = time.perf_counter() - t0
    (args.out / "results.json").write_text(json.dumps(r, indent=1, default=str))
    md = markdown(args, r)
    (args.out / "adaptation.md").write_text(md)
    plot(args, r, args.out / "adaptation.png")
    print(md)
    log(f"wrote {args.out / 'adaptation.md'}, {args.out / 'adaptation.png'}, {args.out / 'results.json'} "
        f"in {r['wall_s'] / 60:.1f} min")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
