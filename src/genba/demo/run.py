"""`genba demo`: a consortium run from raw member data to a governed, evaluated, served model.

    genba demo [--quick] [--budget MIN] [--out runs/demo] [--fresh]

Stages, each recorded in ``OUT/demo-state.json`` when it completes:

1. consortium  three members (automaker: Sawyer arm / MT10, steelworks: electric
               drives, electronics maker: Jaco arm) plus the trainer org
               ``genba-lab``; keys, grants, a JP compute site and a US one.
2. collect     each member's scripted experts write LeRobot v3 datasets.
3. ingest      each member encrypts, registers and audits its datasets.
4. train       ``genba train --governed`` at the JP site on the pooled data,
               within the time budget (DDP over 2 processes for the full run).
5. evaluate    closed loop on unseen seeds, English and Japanese instructions.
6. governance  reads from the US site and by a member without a grant are
               denied and audited; the log verifies; lineage names each owner.
7. serve       the checkpoint drives a simulated PMSM over OPC UA through the
               safety shield (skipped with a note where serving is not installed).
8. report      ``OUT/report.md`` with PNG plots, and a summary table.

Re-running continues where the last run stopped: completed stages are
skipped, a half-finished stage's outputs are discarded and the stage redone,
and training resumes from its latest checkpoint. ``--fresh`` starts over.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from genba.atomic import write_atomic
from genba.data.language import LANGS
from genba.demo.members import MEMBERS, MemberPlan
from genba.errors import CLIError
from genba.train.recipes import get_recipe

STATE_FILE = "demo-state.json"
LAB, TRAINER = "genba-lab", "genba-lab/trainer"
OUTSIDER = "electronics/engineer"  # a member principal with no grant on the automaker's data
JP_SITE, FOREIGN_SITE = "tokyo-1", "us-west-1"
SITES = ((JP_SITE, "JP", "genba lab, Tokyo"), (FOREIGN_SITE, "US", "overseas public cloud"))
PURPOSES = ("pretraining", "evaluation")
RECIPE = {False: "demo", True: "demo-quick"}  # genba.train.recipes: the data, weights, noise and preset trained


@dataclass(frozen=True)
class DemoConfig:
    """Everything that shapes a demo run; a re-run must use the same values (or --fresh)."""

    out: str
    quick: bool
    budget_min: float  # training wall-time budget
    episodes: int  # demonstrations kept per task
    eval_episodes: int  # evaluation episodes per task and language
    preset: str  # train preset
    procs: int  # training processes (DDP when > 1)
    workers: int  # collection / evaluation worker processes
    serve_seconds: float  # OPC UA bridge run time
    eval_max_steps: int | None = None  # quick: cap episodes (a first look, not a measurement)
    eval_execute: str = "auto"  # drives re-planned every step, arms ensembled; quick: "replan" (half chunks)

    def fingerprint(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "budget_min"}


def build_config(args: argparse.Namespace) -> DemoConfig:
    """The quick or the full demo, with the user's overrides."""
    quick = bool(args.quick)
    out = str(args.out or Path("runs") / ("demo-quick" if quick else "demo"))
    budget = args.budget if args.budget is not None else (0.5 if quick else 10.0)
    if not budget > 0:
        raise CLIError(f"--budget must be a positive number of minutes, got {budget}")
    recipe = get_recipe(RECIPE[quick])
    episodes = recipe.collections[0].episodes
    if quick:  # minutes matter more than figures: few episodes, capped and re-planned, evaluated in-process
        return DemoConfig(out=out, quick=True, budget_min=float(budget), episodes=episodes, eval_episodes=2,
                          preset=recipe.preset,
                          procs=args.procs or 1, workers=2, serve_seconds=3.0, eval_max_steps=120,
                          eval_execute="replan")
    return DemoConfig(out=out, quick=False, budget_min=float(budget), episodes=episodes, eval_episodes=20,
                      preset=recipe.preset,
                      procs=args.procs or 2, workers=2, serve_seconds=6.0)


# ---- state ----------------------------------------------------------------------------
class DemoState:
    """``demo-state.json``: which stages (and parts of stages) completed, with their summaries."""

    def __init__(self, root: Path, cfg: DemoConfig):
        self.path = root / STATE_FILE
        self.doc = json.loads(self.path.read_text()) if self.path.is_file() else {"config": cfg.fingerprint(),
                                                                                   "stages": {}}
        if self.doc["config"] != cfg.fingerprint():
            diff = {k: (self.doc["config"].get(k), v) for k, v in cfg.fingerprint().items()
                    if self.doc["config"].get(k) != v}
            raise CLIError(f"{root} holds a demo run with other settings {diff}: pass --fresh to start over, "
                           "or choose another --out")
        self._check_specs(root)
        if not self.path.is_file():
            self.save()  # from now on the directory is recognizably a demo run (--fresh may delete it)

    def _check_specs(self, root: Path) -> None:
        """Data, checkpoint and evaluation must agree on every spec: refuse a run made with other specs."""
        from genba.envs.registry import specs

        now = {name: s.to_dict() for name, s in sorted(specs().items())}
        then = self.doc.setdefault("specs", now)
        # machines added to the registry since are no concern of this run; changed or removed ones are
        changed = sorted(n for n in then if now.get(n) != then[n])
        if changed:
            raise CLIError(f"{root} was made with other embodiment specs ({', '.join(changed)} changed since): "
                           "its data and checkpoint no longer fit the simulators; pass --fresh to start over")

    def done(self, stage: str) -> bool:
        return bool(self.doc["stages"].get(stage, {}).get("done"))

    def summary(self, stage: str) -> dict:
        return self.doc["stages"].get(stage, {}).get("summary", {})

    def part_done(self, stage: str, part: str) -> bool:
        return part in self.doc["stages"].get(stage, {}).get("parts", [])

    def mark_part(self, stage: str, part: str) -> None:
        self.doc["stages"].setdefault(stage, {}).setdefault("parts", []).append(part)
        self.save()

    def mark_done(self, stage: str, summary: dict, seconds: float) -> None:
        entry = self.doc["stages"].setdefault(stage, {})
        entry.update(done=True, summary=summary, seconds=round(seconds, 1), finished=time.time())
        self.save()

    def save(self) -> None:
        write_atomic(self.path, json.dumps(self.doc, indent=1, ensure_ascii=False))  # a kill never tears it


# ---- the run ---------------------------------------------------------------------------
class Demo:
    """Paths and shared helpers of one demo run directory."""

    def __init__(self, cfg: DemoConfig, console):
        self.cfg, self.console = cfg, console
        self.root = Path(cfg.out)
        self.home = self.root / "consortium"
        self.raw = self.root / "raw"
        self.governed = self.root / "governed"
        self.train_dir = self.root / "train"
        self.state = DemoState(self.root, cfg)

    def member_datasets(self, member: MemberPlan) -> list[tuple[str, str]]:
        """(embodiment, dataset id) of each dataset the member contributes."""
        from genba.envs.registry import resolve

        embodiments = dict.fromkeys(t.spec.name for t in resolve(member.tasks))
        return [(emb, f"{member.org}-{emb}") for emb in embodiments]

    def datasets(self) -> list[dict]:
        """Every governed dataset of the demo: owner, embodiment, id, paths, task count."""
        from genba.envs.registry import resolve

        out = []
        for m in MEMBERS:
            tasks = resolve(m.tasks)
            for emb, ds_id in self.member_datasets(m):
                out.append({"owner": m.org, "embodiment": emb, "dataset_id": ds_id, "raw": self.raw / emb,
                            "governed": self.governed / ds_id, "classification": m.classification,
                            "tasks": [t.id for t in tasks if t.spec.name == emb]})
        return out

    def task_ids(self) -> list[str]:
        from genba.envs.registry import resolve

        return [t.id for m in MEMBERS for t in resolve(m.tasks)]

    def claim(self, site: str) -> Path:
        """A fresh signed claim for ``site`` (short-lived, so each run issues its own)."""
        from genba.govern import sites
        from genba.govern.consortium import Consortium

        path = self.root / "claims" / f"{site}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(sites.issue_claim(Consortium(self.home), site, ttl_s=4 * 3600), indent=1))
        return path

    def checkpoint(self) -> Path:
        from genba.train.checkpoint import latest_checkpoint

        found = latest_checkpoint(self.train_dir)
        if found is None:
            raise CLIError(f"no checkpoint in {self.train_dir}: the train stage did not complete")
        return found


def discard(*paths: Path) -> None:
    """Remove what a half-finished stage left behind."""
    for p in paths:
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()


# ---- stages ------------------------------------------------------------------------------
def stage_consortium(demo: Demo) -> dict:
    from genba.govern import admin
    from genba.govern.consortium import Member, init_consortium

    discard(demo.home, demo.root / "claims")
    members = [Member(m.org, m.name, "JP") for m in MEMBERS] + [Member(LAB, "genba lab (model builder)", "JP")]
    c = init_consortium(demo.home, "genba demo consortium", members, list(SITES))
    for m in MEMBERS:
        for purpose in PURPOSES:
            admin.grant(c, owner=m.org, grantee=LAB, dataset="*", purpose=purpose)
    demo.console.print(f"consortium in {demo.home}: members {', '.join(x.org for x in members)}; "
                       f"sites {JP_SITE} (JP), {FOREIGN_SITE} (US); {LAB} granted {' + '.join(PURPOSES)} by each member")
    return {"members": [asdict(m) for m in members], "sites": [list(s) for s in SITES], "grants": len(c.grants())}


def stage_collect(demo: Demo) -> dict:
    from genba.envs.collect import CollectConfig, collect

    todo = [m for m in MEMBERS if not all((demo.raw / emb / "meta" / "info.json").is_file()
                                          for emb, _ in demo.member_datasets(m))]
    if todo:
        tasks = ",".join(m.tasks for m in todo)
        noise = ",".join(m.noise for m in todo if m.noise) or "0"
        demo.console.print(f"collecting {demo.cfg.episodes} expert episodes per task for "
                           f"{', '.join(m.org for m in todo)} ({demo.cfg.workers} worker processes; "
                           f"DART noise {noise})")
        collect(CollectConfig(tasks=tasks, out=demo.raw, episodes=demo.cfg.episodes, workers=demo.cfg.workers,
                              noise=noise, overwrite=True))
    summary = {}
    for d in demo.datasets():
        report = json.loads((d["raw"] / "meta" / "genba.json").read_text())["collection"]
        info = json.loads((d["raw"] / "meta" / "info.json").read_text())
        summary[d["embodiment"]] = {"owner": d["owner"], "episodes": info["total_episodes"],
                                    "frames": info["total_frames"], "attempted": report["attempted"],
                                    "kept": report["kept"],
                                    "tasks": {t: {"attempted": r["attempted"], "kept": r["kept"],
                                                  "noise": r.get("noise", 0.0)}
                                              for t, r in report["tasks"].items()}}
    return summary


def stage_ingest(demo: Demo) -> dict:
    from genba.govern import admin
    from genba.govern.consortium import Consortium

    c = Consortium(demo.home)
    summary = {}
    for d in demo.datasets():
        dest = d["governed"]
        if d["dataset_id"] not in c.datasets() or not (dest / "meta" / "manifest.json").is_file():
            discard(dest, dest.with_name(dest.name + ".ingest-tmp"))
            admin.ingest(c, d["raw"], dest, owner=d["owner"], dataset_id=d["dataset_id"],
                         classification=d["classification"], purposes=PURPOSES, progress=True)
        manifest = json.loads((dest / "meta" / "manifest.json").read_text())
        body = manifest.get("manifest", manifest)
        summary[d["dataset_id"]] = {"owner": d["owner"], "embodiment": d["embodiment"],
                                    "classification": d["classification"], "files": len(body.get("files", {}))}
        demo.console.print(f"{d['dataset_id']}: encrypted under {d['owner']}'s key, manifest signed, registered")
    return summary


def train_command(demo: Demo, claim: Path) -> list[str]:
    """``genba train --governed ...`` at the JP site, under torchrun when several processes train."""
    args = ["train", "--governed", "--home", str(demo.home), "--principal", TRAINER, "--site-claim", str(claim),
            "--purpose", "pretraining", "--run-id", f"{demo.root.name}-pretrain", "--recipe", RECIPE[demo.cfg.quick],
            "--data-root", str(demo.root), "--minutes", f"{demo.cfg.budget_min:g}", "--out", str(demo.train_dir)]
    if demo.train_dir.is_dir():
        args.append("--resume")  # continues from the latest checkpoint (or starts over if there is none)
    if demo.cfg.procs > 1:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                str(demo.cfg.procs), "-m", "genba.cli", *args, "--dist", "ddp"]
    return [sys.executable, "-m", "genba.cli", *args]


def stage_train(demo: Demo) -> dict:
    from genba.train.monitor import read_metrics

    cmd = train_command(demo, demo.claim(JP_SITE))
    demo.console.print(f"$ genba {' '.join(cmd[cmd.index('train'):])}".replace(str(demo.root) + "/", ""))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MUJOCO_GL": os.environ.get("MUJOCO_GL", "disable")}
    rc = _wait(subprocess.Popen(cmd, env=env))
    if rc != 0:
        raise CLIError(f"training exited with status {rc}; re-run `genba demo` to resume from the latest checkpoint")
    records = read_metrics(demo.train_dir)
    last = records[-1] if records else {}
    ckpt = demo.checkpoint()
    return {"checkpoint": str(ckpt), "steps": last.get("step"), "loss": last.get("loss"),
            "elapsed_s": last.get("elapsed_s"), "samples_per_s": last.get("samples_per_s"),
            "preset": demo.cfg.preset, "procs": demo.cfg.procs, "budget_min": demo.cfg.budget_min}


def _wait(proc: subprocess.Popen) -> int:
    """The child's exit status; on Ctrl-C (which the child received too) let it stop cleanly first."""
    try:
        return proc.wait()
    except KeyboardInterrupt:
        try:
            proc.wait(timeout=60)  # the trainer finishes its step and closes its files
        except subprocess.TimeoutExpired:
            proc.terminate()
            proc.wait()
        raise


def stage_evaluate(demo: Demo) -> dict:
    from genba.eval.rollout import EvalConfig, evaluate

    ckpt = str(demo.checkpoint())
    summary = {}
    for lang in LANGS:
        out = demo.root / f"eval-{lang}"
        if not demo.state.part_done("evaluate", lang):
            discard(out)
            demo.console.print(f"closed-loop evaluation, {'English' if lang == 'en' else 'Japanese'} instructions")
            cfg = demo.cfg
            evaluate(EvalConfig(checkpoint=ckpt, tasks=tuple(demo.task_ids()), episodes=cfg.eval_episodes,
                                lang=lang, workers=1 if cfg.quick else cfg.workers, lockstep=cfg.eval_episodes,
                                max_steps=cfg.eval_max_steps, execute=cfg.eval_execute), out)
            demo.state.mark_part("evaluate", lang)
        res = json.loads((out / "results.json").read_text())
        summary[lang] = {"mean_task_success": res["mean_task_success"],
                         "embodiments": {k: v["success_rate"] for k, v in res["embodiments"].items()}}
    return summary


def stage_governance(demo: Demo) -> dict:
    """Attempts that must be refused, then the audit log and the checkpoint's lineage."""
    from genba.demo.report import audit_counts
    from genba.govern import admin
    from genba.govern.access import GovernanceError, governed_access, refusal
    from genba.govern.consortium import Consortium
    from genba.govern.lineage import model_card, read_checkpoint_lineage, verify_lineage

    all_dirs = [d["governed"] for d in demo.datasets()]
    automaker = [d["governed"] for d in demo.datasets() if d["owner"] == "automaker"]
    attempts = [  # (what, principal, site, datasets, run id)
        ("the trainer pretrains from a site outside Japan", TRAINER, FOREIGN_SITE, all_dirs, "denied-offshore"),
        ("a member with no grant reads the automaker's data", OUTSIDER, JP_SITE, automaker, "denied-no-grant"),
    ]
    denials = []
    for what, principal, site, dirs, run_id in attempts:
        try:  # the very pre-flight `genba train --governed` runs before opening any dataset
            governed_access(demo.home, principal, demo.claim(site), "pretraining", run_id, dirs).close()
        except GovernanceError as e:
            why = refusal(e)
            denials.append({"attempt": what, "principal": principal, "site": site, "run_id": run_id, "error": why})
            demo.console.print(f"[red]denied[/red] {what}: {why}")
        else:
            raise CLIError(f"governance failure: {what} was ALLOWED; the consortium policies are not in force")
    c = Consortium(demo.home)
    log = admin.audit_log(c)
    try:
        entries = log.entries()
        for d in denials:  # find each refusal in the log: who, where, which policy, not one byte read
            logged = [e for e in entries if e["event"].get("run_id") == d["run_id"]]
            deny = [e for e in logged if e["event"].get("decision") == "deny"]
            if not deny or any(e["event"].get("file", "").endswith(".parquet") for e in logged):
                raise CLIError(f"the refusal of run {d['run_id']} is missing from the audit log or data was read")
            d.update(audit_index=deny[0]["index"], policy=",".join(deny[0]["event"]["policy_ids"]))
        verified = log.verify()
        head = log.head()
        ckpt = demo.checkpoint()
        lineage = read_checkpoint_lineage(ckpt)
        problems = verify_lineage(lineage, log)
    finally:
        log.close()
    (demo.root / "audit-head.json").write_text(json.dumps(head, indent=1))
    (demo.root / "MODEL_CARD.md").write_text(model_card(lineage, model_name=f"{demo.root.name}/{ckpt.name}"))
    demo.console.print(f"audit log verified: {verified['tree_size']} entries, root {verified['root'][:16]}; "
                       f"lineage owners: {', '.join(lineage['owners'])}"
                       + ("" if not problems else f"; [red]lineage problems: {problems}[/red]"))
    return {"denials": denials, "audit": {"verified": True, "tree_size": verified["tree_size"],
                                          "root": verified["root"], "counts": audit_counts(entries)},
            "lineage": {"owners": lineage["owners"], "run_id": lineage["run_id"], "principal": lineage["principal"],
                        "site": lineage["site"], "problems": problems,
                        "datasets": [{k: d[k] for k in ("dataset_id", "owner", "classification", "embodiment")}
                                     | {"files": len(d["files"]), "audit_entries": len(d["audit_entries"])}
                                     for d in lineage["datasets"]]}}


def stage_serve(demo: Demo) -> dict:
    """Serve the checkpoint; the OPC UA bridge drives a simulated PMSM through it and the shield."""
    import asyncio

    try:
        import genba.serve.bridge  # noqa: F401  (serving is an optional layer of the stack)
    except ImportError as e:
        demo.console.print(f"[yellow]serving is not available ({e}); stage skipped[/yellow]")
        return {"skipped": str(e)}
    from genba.demo.serve import serve_and_bridge

    out = demo.root / "serve"
    discard(out)
    return asyncio.run(serve_and_bridge(demo.checkpoint(), out, demo.cfg.serve_seconds, demo.console))


def stage_report(demo: Demo) -> dict:
    from genba.demo.report import print_summary, write_report

    path = write_report(demo)
    print_summary(demo, path)
    return {"report": str(path)}


STAGES: tuple[tuple[str, str, Callable[[Demo], dict]], ...] = (
    ("consortium", "set up the consortium: members, keys, grants, sites", stage_consortium),
    ("collect", "members collect expert demonstrations", stage_collect),
    ("ingest", "members encrypt, register and audit their datasets", stage_ingest),
    ("train", "pretrain the generalist through the governed loader", stage_train),
    ("evaluate", "closed-loop evaluation on unseen seeds (en + ja)", stage_evaluate),
    ("governance", "governance at work: refusals, audit verification, lineage", stage_governance),
    ("serve", "serve the checkpoint; drive a simulated PMSM over OPC UA through the shield", stage_serve),
    ("report", "write the report", stage_report),
)


def run_stages(demo: Demo, stages=STAGES) -> None:
    """Run every stage not yet recorded as done; each completion is saved before the next starts."""
    n = len(stages)
    for i, (name, title, fn) in enumerate(stages, 1):
        if demo.state.done(name) and name != "report":
            demo.console.print(f"[dim][{i}/{n}] {name}: done in an earlier run, skipped[/dim]")
            continue
        demo.console.rule(f"[bold][{i}/{n}] {title}")
        t0 = time.perf_counter()
        summary = fn(demo)
        demo.state.mark_done(name, summary, time.perf_counter() - t0)


# ---- CLI -------------------------------------------------------------------------------------
def register(subparsers) -> None:
    p = subparsers.add_parser("demo", help="the whole product in one run: consortium, governed training, eval, serving",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a first look in about 3 minutes (few episodes, tiny model)")
    p.add_argument("--budget", type=float, default=None, help="training wall-time budget in minutes "
                   "(default 10; 0.5 with --quick)")
    p.add_argument("--out", type=Path, default=None, help="run directory (default runs/demo or runs/demo-quick)")
    p.add_argument("--fresh", action="store_true", help="discard an earlier run in --out and start over")
    p.add_argument("--procs", type=int, default=None, help="training processes (default 2 = DDP; 1 with --quick)")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    from rich.console import Console

    cfg = build_config(args)
    root = Path(cfg.out)
    if args.fresh and root.exists():
        if any(root.iterdir()) and not (root / STATE_FILE).is_file():
            raise CLIError(f"--fresh: {root} is not a demo run directory (no {STATE_FILE}); refusing to delete it")
        shutil.rmtree(root)
    root.mkdir(parents=True, exist_ok=True)
    console = Console()
    demo = Demo(cfg, console)
    kind = "quick demo" if cfg.quick else "demo"
    console.print(f"[bold]genba {kind}[/bold] in {root} (training budget {cfg.budget_min:g} min, "
                  f"preset {cfg.preset}, {cfg.procs} training process(es)); interrupt any time and re-run to continue")
    t0 = time.perf_counter()
    run_stages(demo)  # a GovernanceError is a UserError: genba prints it in one line, exit 2
    console.print(f"{kind} finished in {time.perf_counter() - t0:.0f} s (this session)")
    return 0
