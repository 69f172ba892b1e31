"""genba `small` side by side with LeRobot's ACT and Diffusion Policy on the same MT10 demos.

    OMP_NUM_THREADS=1 MUJOCO_GL=disable .venv/bin/python benchmarks/peers/run.py            # ~90 min
    OMP_NUM_THREADS=1 MUJOCO_GL=disable .venv/bin/python benchmarks/peers/run.py --smoke    # ~30 min

Stages, each skipped when its output already exists (an interrupted run resumes):

1. setup    ``setup_lerobot_env.sh``: LeRobot 0.4.4 in ``benchmarks/peers/.venv-lerobot``.
2. collect  ``genba collect --tasks mt10 --episodes D`` into ``work/data/mt10-dD/sawyer`` (reused).
3. interop  genba's reader exports every frame and its stats (``reference.npz``); LeRobot's own
            ``LeRobotDataset`` opens the unmodified genba dataset and checks them (``interop.json``).
4. train    every contestant for the same wall-clock budget, one thread, one after the other,
            on the same demonstrations: genba ``small`` via ``genba train``, LeRobot ACT
            (default, reduced) and Diffusion (reduced) via ``lerobot_side.py train``.
5. eval     genba's closed-loop harness (``genba.eval.rollout``) on the same unseen eval seeds;
            LeRobot policies through ``adapter.py``.
6. latency  batch-1 fresh-chunk latency, p50/p99, per contestant.
7. report   ``results.json``, ``success.png``, ``RESULTS.md`` in the output directory.

Cameras only (LeRobot reads genba's video, a few minutes; ``--camera-frames`` takes real
renders, (N, H, W, 3) uint8 .npy, instead of synthetic moving shapes)::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/peers/run.py --camera-check [--camera-frames F.npy]

writes a small camera dataset with genba's writer, exports the frames as written and as genba
decodes them, and has LeRobot's ``LeRobotDataset`` (torchcodec) decode them: ``camera-interop.json``
with the PSNR figures.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from genba.atomic import write_atomic

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))  # adapter.py, report.py (also for spawned eval workers)

import adapter  # noqa: E402
import report  # noqa: E402

GENBA = [sys.executable, "-m", "genba.cli"]
CONTESTANTS = ("genba-small", "act-default", "act-reduced", "diffusion-reduced")
LATENCY_PER_TASK = 20  # timed fresh chunks per task (10 tasks -> 200 calls)


def log(msg: str) -> None:
    print(f"[peers {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def one_thread_env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
               MUJOCO_GL=os.environ.get("MUJOCO_GL", "disable"))
    return env


def run_cmd(cmd: list[str], *, env: dict | None = None, log_file: Path | None = None) -> str:
    """Run a command, echo its output live (and to ``log_file``), fail loudly on a non-zero exit."""
    log("$ " + " ".join(str(c) for c in cmd))
    out = []
    with subprocess.Popen([str(c) for c in cmd], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env=env or one_thread_env(), cwd=REPO) as proc:
        sink = open(log_file, "a") if log_file else None
        for line in proc.stdout:
            out.append(line)
            if sink:
                sink.write(line)
            if not line.startswith("WARNING: Location"):
                print("    " + line.rstrip(), flush=True)
        if sink:
            sink.close()
    if proc.returncode != 0:
        raise SystemExit(f"command failed with exit code {proc.returncode}: {' '.join(map(str, cmd))}")
    return "".join(out)


# ---- 1-2: environment and data ------------------------------------------------
def stage_setup() -> None:
    if adapter.LEROBOT_PYTHON.exists():
        check = subprocess.run([str(adapter.LEROBOT_PYTHON), "-c", "import lerobot, msgpack, torchcodec"],
                               capture_output=True)
        if check.returncode == 0:
            log(f"setup: reusing {adapter.LEROBOT_PYTHON.parent.parent}")
            return
    run_cmd(["bash", str(HERE / "setup_lerobot_env.sh")])


def stage_collect(data_root: Path, demos: int) -> Path:
    ds = data_root / "sawyer"
    if (ds / "meta" / "info.json").is_file():
        log(f"collect: reusing {ds}")
        return ds
    run_cmd(GENBA + ["collect", "--tasks", "mt10", "--episodes", str(demos), "--out", str(data_root),
                     "--workers", "2"])
    return ds


# ---- 3: the interoperability proof ---------------------------------------------
def export_reference(ds: Path, out: Path, written: dict[str, np.ndarray] | None = None) -> Path:
    """Every frame and the stats as genba's reader sees them, for the LeRobot-side check.

    Camera frames: ``images/<key>/genba`` (genba's decode) and, where given,
    ``images/<key>/written`` (the frames before encoding).
    """
    if out.is_file():
        return out
    from genba.data.dataset import open_dataset

    d = open_dataset(ds)
    arrays = {"observation.state": d.observation, "action": d.action, "episode_index": d.episode_index,
              "frame_index": d.frame_index, "task_index": d.task_index, "index": d.index, "timestamp": d.timestamp,
              "episode_from": np.array([e.start for e in d.episodes]), "episode_to": np.array([e.stop for e in d.episodes]),
              "tasks": np.array([d.instruction(i, "en") for i in range(len(d.tasks))])}
    for feat in ("observation.state", "action"):  # meta/stats.json as genba's reader loads it
        for key, val in d.stats[feat].items():
            arrays[f"stats/{feat}/{key}"] = np.asarray(val)
    for cam in d.spec.cameras:
        arrays[f"images/{cam.feature}/genba"] = d.images[cam.name][:]
        if written is not None:
            arrays[f"images/{cam.feature}/written"] = written[cam.name]
    def savez(path: Path) -> None:
        with open(path, "wb") as f:  # a file object: np.savez(path) would append ".npz" to the temp name
            np.savez(f, **arrays)

    write_atomic(out, savez)
    log(f"interop: genba reader exported {d.num_frames} frames of {d.num_episodes} episodes to {out.name}")
    return out


def stage_interop(ds: Path, data_root: Path, run_dir: Path) -> dict:
    ref = export_reference(ds, data_root / "reference.npz")
    out = run_dir / "interop.json"
    if not out.is_file():
        run_cmd([adapter.LEROBOT_PYTHON, HERE / "lerobot_side.py", "check", "--dataset", ds, "--reference", ref,
                 "--out", out], env=adapter.peer_env())
    result = json.loads(out.read_text())
    log(f"interop: {'PASS' if result['ok'] else 'FAIL'} ({len(result['checks'])} checks)")
    if not result["ok"]:
        raise SystemExit(f"LeRobot rejected or misread the genba dataset; see {out}")
    return result


def camera_check(args: argparse.Namespace) -> int:
    """LeRobot decodes a genba camera dataset: PSNR vs the frames written and vs genba's decode."""
    import dataclasses

    from genba.data.layout import Episode, write_dataset
    from genba.data.spec import CameraSpec, EmbodimentSpec
    from genba.data.video import DEFAULT_VIDEO

    stage_setup()
    root = args.work / "data" / "camera-check"
    shutil.rmtree(root, ignore_errors=True)
    frames = np.load(args.camera_frames) if args.camera_frames else synthetic_frames(240, 64)
    n_eps, size = 4, frames.shape[1]
    per = len(frames) // n_eps
    spec = EmbodimentSpec(
        name="sawyer_pixels", robot_type="sawyer", obs_names=("hand_x", "hand_y", "hand_z", "gripper"),
        obs_units=("m", "m", "m", "1"), obs_low=(-1.0,) * 4, obs_high=(1.0,) * 4,
        action_names=("dx", "dy", "dz", "grip"), action_units=("1",) * 4, action_low=(-1.0,) * 4,
        action_high=(1.0,) * 4, control_period=1 / 80, action_meaning="end-effector delta",
        cameras=(CameraSpec("corner2", size, frames.shape[2], "corner2"),))
    rng = np.random.default_rng(0)
    eps = [Episode(rng.uniform(-1, 1, (per, 4)).astype(np.float32), rng.uniform(-1, 1, (per, 4)).astype(np.float32),
                   0, e, images={"corner2": frames[e * per:(e + 1) * per]}) for e in range(n_eps)]
    write_dataset(root / "sawyer", eps, spec, [("move the hand", "手を動かす")])
    written = {"corner2": np.concatenate([e.images["corner2"] for e in eps])}
    ref = export_reference(root / "sawyer", root / "reference.npz", written)
    out = args.out / "camera-interop.json"
    args.out.mkdir(parents=True, exist_ok=True)
    run_cmd([adapter.LEROBOT_PYTHON, HERE / "lerobot_side.py", "check", "--dataset", root / "sawyer", "--reference",
             ref, "--out", out, "--samples", str(len(written["corner2"]))], env=adapter.peer_env())
    result = json.loads(out.read_text())
    log(f"camera interop: {'PASS' if result['ok'] else 'FAIL'}; codec {dataclasses.asdict(DEFAULT_VIDEO)}; "
        f"frames {'from ' + str(args.camera_frames) if args.camera_frames else 'synthetic'}")
    for key, fig in result.get("cameras", {}).items():
        log(f"  {key}: {fig['frames']} frames; PSNR LeRobot vs written {fig['psnr_vs_written_db']:.2f} dB (worst "
            f"frame {fig['worst_frame_psnr_vs_written_db']:.2f}), vs genba's decode {fig['psnr_vs_genba_decode_db']:.2f}"
            f" dB; genba's decode vs written {fig['genba_decode_vs_written_db']:.2f} dB")
    return 0 if result["ok"] else 1


def synthetic_frames(t: int, size: int) -> np.ndarray:
    """Frames with structure: a smooth gradient, a red disc on a circle, a blue bar sliding right."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    bg = np.stack([80 + 60 * xx / size, 90 + 50 * yy / size, np.full_like(xx, 110)], axis=-1)
    out = np.empty((t, size, size, 3), np.uint8)
    for k in range(t):
        cx, cy = size * (0.5 + 0.3 * np.cos(k / 10)), size * (0.5 + 0.3 * np.sin(k / 13))
        a = np.clip(0.1 * size - np.hypot(xx - cx, yy - cy), 0, 1)[..., None]
        img = bg * (1 - a) + a * np.array([220, 60, 50], np.float32)
        img[(np.abs(xx - (k * 0.7) % (0.8 * size) - 4) < 4) & (np.abs(yy - 0.2 * size) < 3)] = (40, 160, 220)
        out[k] = img.astype(np.uint8)
    return out


# ---- 4: training ------------------------------------------------------------------
def train_genba(ds: Path, run_dir: Path, budget_min: float, precision: str, seed: int) -> dict:
    out = run_dir / "genba-small"
    meta = out / "train.json"
    if meta.is_file():
        return json.loads(meta.read_text())
    t0, load0 = time.perf_counter(), os.getloadavg()[0]
    text = run_cmd(GENBA + ["train", "--preset", "small", "--data", ds, "--out", out, "--minutes", str(budget_min),
                            "--precision", precision, "--seed", str(seed), "--no-progress",
                            "--overwrite"],  # no train.json: an earlier attempt did not finish, start over
                   log_file=run_dir / "genba-small.log")
    wall = time.perf_counter() - t0
    m = re.search(r"trained (\d+) steps, loss ([-\d.naninf]+), ([\d,.]+) samples/s; checkpoint (\S+)", text)
    if not m:
        raise SystemExit("genba train finished but its summary line was not found; see genba-small.log")
    from genba.model.bundle import load_model
    from genba.train.config import get_train_preset

    model, _ = load_model(m.group(4), device="cpu")
    info = {"contestant": "genba-small", "checkpoint": m.group(4), "steps": int(m.group(1)),
            "final_loss": float(m.group(2)), "samples_per_s": float(m.group(3).replace(",", "")),
            "batch_size": get_train_preset("small").batch_size, "precision": precision,
            "params": sum(p.numel() for p in model.parameters()), "budget_min": budget_min,
            "command_wall_s": round(wall, 1), "load_avg_1min": [round(load0, 1), round(os.getloadavg()[0], 1)]}
    meta.write_text(json.dumps(info, indent=2))
    return info


def train_peer(name: str, ds: Path, run_dir: Path, budget_min: float, batch_size: int, seed: int) -> dict:
    out = run_dir / name
    meta = out / "train.json"
    if not meta.is_file():
        load0 = os.getloadavg()[0]
        run_cmd([adapter.LEROBOT_PYTHON, HERE / "lerobot_side.py", "train", "--dataset", ds, "--policy", name,
                 "--minutes", str(budget_min), "--batch-size", str(batch_size), "--seed", str(seed), "--out", out],
                env=adapter.peer_env(), log_file=run_dir / f"{name}.log")
        info = json.loads(meta.read_text())
        info["load_avg_1min"] = [round(load0, 1), round(os.getloadavg()[0], 1)]
        meta.write_text(json.dumps(info, indent=2))
    info = json.loads(meta.read_text())
    info.setdefault("checkpoint", str(out))
    return info


# ---- 5: closed-loop evaluation -------------------------------------------------------
def evaluate(name: str, checkpoint: str, run_dir: Path, episodes: int, workers: int, seed_base: int) -> dict:
    out = run_dir / "eval" / f"{name}.json"
    if out.is_file():
        return json.loads(out.read_text())
    from genba.envs import registry
    from genba.eval.metrics import aggregate
    from genba.eval.rollout import EvalConfig, iter_results

    tasks = tuple(t.id for t in registry.resolve("mt10"))
    cfg = EvalConfig(checkpoint=checkpoint, tasks=tasks, episodes=episodes, workers=workers, seed_base=seed_base)
    results, t0 = [], time.perf_counter()
    stream = iter_results(cfg) if name.startswith("genba") else adapter.iter_peer_results(cfg)
    for chunk in stream:
        results += chunk
        ok = sum(r.success for r in results)
        log(f"eval {name}: {len(results)}/{len(tasks) * episodes} episodes, {ok} successes "
            f"({time.perf_counter() - t0:.0f} s)")
    agg = aggregate(results)
    doc = {"contestant": name, "episodes_per_task": episodes, "seed_base": seed_base,
           "eval_wall_s": round(time.perf_counter() - t0, 1),
           "seeds": {t: [r.seed for r in results if r.task == t] for t in tasks},
           "tasks": {t: s.to_dict() for t, s in agg["tasks"].items()}, "overall": agg["overall"].to_dict(),
           "mean_task_success": agg["mean_task_success"]}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2))
    return doc


# ---- 6: latency ---------------------------------------------------------------------------
def latency_states(ref_path: Path, per_task: int, seed: int = 0) -> list[tuple[str, np.ndarray]]:
    """(instruction, states (per_task, obs_dim)) per task, drawn from the demonstrations."""
    ref = np.load(ref_path)
    rng = np.random.default_rng(seed)
    out = []
    for ti, text in enumerate(ref["tasks"]):
        rows = np.flatnonzero(ref["task_index"] == ti)
        out.append((str(text), ref["observation.state"][rng.choice(rows, per_task + 1, replace=False)]))
    return out


def latency_genba(checkpoint: str, states: list[tuple[str, np.ndarray]]) -> dict:
    """Batch-1 ``Policy.infer_chunk`` (transforms + one model call) per fresh chunk."""
    import torch

    from genba.model.policy import load_policy

    torch.set_num_threads(1)
    policy = load_policy(checkpoint, device="cpu")
    times = []
    for instruction, rows in states:
        policy.reset()
        policy.infer_chunk({"embodiment": "sawyer", "state": rows[0], "instruction": instruction})  # warm, encodes text
        for s in rows[1:]:
            t0 = time.perf_counter()
            policy.infer_chunk({"embodiment": "sawyer", "state": s, "instruction": instruction})
            times.append(time.perf_counter() - t0)
    return summarize_ms(times) | {"chunk": policy.cfg.chunk}


def latency_peer(checkpoint: str, states: list[tuple[str, np.ndarray]], run_dir: Path) -> dict:
    """Fresh-chunk latency measured inside the LeRobot process, plus the pipe's round trip."""
    with adapter.LeRobotPolicy(checkpoint, log=run_dir / "serve.log") as peer:
        times: list[float] = []
        for instruction, rows in states:
            times += peer.chunk_latency(rows, instruction)["times_s"]
        peer.reset()
        instruction, rows = states[0]
        step, ping = [], []
        for s in rows:  # `infer` round trips: mostly queue pops with LeRobot's processors, a fresh chunk every 8th
            t0 = time.perf_counter()
            peer.infer({"embodiment": "sawyer", "state": s, "instruction": instruction})
            step.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            peer.ping()
            ping.append(time.perf_counter() - t0)
        return summarize_ms(times) | {"chunk": peer.info["chunk"], "n_action_steps": peer.info["n_action_steps"],
                                      "infer_roundtrip_p50_ms": float(np.percentile(step, 50) * 1e3),
                                      "pipe_roundtrip_p50_ms": float(np.percentile(ping, 50) * 1e3)}


def summarize_ms(times: list[float]) -> dict:
    t = np.asarray(times) * 1e3
    return {"calls": len(t), "p50_ms": float(np.percentile(t, 50)), "p99_ms": float(np.percentile(t, 99)),
            "mean_ms": float(t.mean())}


def stage_latency(name: str, checkpoint: str, ref: Path, run_dir: Path, per_task: int) -> dict:
    out = run_dir / "latency" / f"{name}.json"
    if out.is_file():
        return json.loads(out.read_text())
    states = latency_states(ref, per_task)
    doc = latency_genba(checkpoint, states) if name.startswith("genba") else latency_peer(checkpoint, states, run_dir)
    log(f"latency {name}: p50 {doc['p50_ms']:.2f} ms, p99 {doc['p99_ms']:.2f} ms per fresh chunk")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2))
    return doc


# ---- main --------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget-min", type=float, default=15.0, help="wall-clock training budget per contestant")
    ap.add_argument("--episodes", type=int, default=10, help="eval episodes per MT10 task (unseen seeds)")
    ap.add_argument("--demos", type=int, default=50, help="demonstrations per task (genba collect)")
    ap.add_argument("--contestants", default=",".join(CONTESTANTS), help="comma-separated subset of " + ", ".join(CONTESTANTS))
    ap.add_argument("--peer-batch-size", type=int, default=8, help="LeRobot batch size (lerobot-train's default)")
    ap.add_argument("--genba-precision", choices=("fp32", "bf16"), default="bf16",
                    help="genba small's autocast (bf16 is its CPU recipe, train preset small-20min)")
    ap.add_argument("--eval-workers", type=int, default=2, help="eval worker processes")
    ap.add_argument("--seed", type=int, default=0, help="training seed (all contestants)")
    ap.add_argument("--eval-seed-base", type=int, default=0, help="base of genba.envs.seeds.eval_seed")
    ap.add_argument("--work", type=Path, default=HERE / "work", help="data and run directories")
    ap.add_argument("--out", type=Path, default=None, help="run directory (default WORK/full or WORK/smoke)")
    ap.add_argument("--smoke", action="store_true", help="quick end-to-end check: --budget-min 2 --episodes 5")
    ap.add_argument("--results-md", type=Path, default=None,
                    help="also copy RESULTS.md here (and success.png beside it)")
    ap.add_argument("--camera-check", action="store_true",
                    help="only check that LeRobot decodes a genba camera dataset (PSNR figures), then exit")
    ap.add_argument("--camera-frames", type=Path, default=None,
                    help="--camera-check: real frames (N, H, W, 3) uint8 .npy instead of synthetic ones")
    ap.add_argument("--report-only", action="store_true",
                    help="only re-render RESULTS.md and success.png from the run directory's results.json")
    args = ap.parse_args(argv)
    if args.smoke:
        args.budget_min, args.episodes = min(args.budget_min, 2.0), min(args.episodes, 5)
    args.out = args.out or args.work / ("smoke" if args.smoke else f"budget{args.budget_min:g}-ep{args.episodes}")
    args.contestants = [c.strip() for c in args.contestants.split(",") if c.strip()]
    unknown = sorted(set(args.contestants) - set(CONTESTANTS))
    if unknown:
        ap.error(f"unknown contestants {unknown}; choose from {', '.join(CONTESTANTS)}")
    if args.budget_min <= 0 or args.episodes < 1 or args.demos < 1:
        ap.error("--budget-min must be > 0, --episodes and --demos >= 1")
    return args


def rerender(args: argparse.Namespace) -> int:
    """Rewrite RESULTS.md and success.png from an earlier run's results.json (no measuring)."""
    src = args.out / "results.json"
    if not src.is_file():
        raise SystemExit(f"--report-only: no {src}; run the benchmark first")
    doc = json.loads(src.read_text())
    report.write_all(args.out, doc["rows"], doc["meta"])
    copy_results(args)
    log(f"re-rendered {args.out / 'RESULTS.md'} from {src.name}")
    return 0


def copy_results(args: argparse.Namespace) -> None:
    if args.results_md:  # e.g. benchmarks/peers/RESULTS.md, with its chart beside it
        args.results_md.write_text((args.out / "RESULTS.md").read_text())
        shutil.copyfile(args.out / "success.png", args.results_md.parent / "success.png")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.report_only:
        return rerender(args)
    if args.camera_check:
        return camera_check(args)
    t_start = time.time()
    args.out.mkdir(parents=True, exist_ok=True)
    data_root = args.work / "data" / f"mt10-d{args.demos}"
    command = "OMP_NUM_THREADS=1 MUJOCO_GL=disable .venv/bin/python benchmarks/peers/run.py " + " ".join(
        sys.argv[1:] if argv is None else argv)
    log(f"run directory {args.out}; budget {args.budget_min:g} min per contestant, {args.episodes} eval "
        f"episodes per task, contestants {', '.join(args.contestants)}")
    stage_setup()
    ds = stage_collect(data_root, args.demos)
    interop = stage_interop(ds, data_root, args.out)
    rows = {}
    for name in args.contestants:
        log(f"train {name}: {args.budget_min:g} min budget")
        if name == "genba-small":
            rows[name] = {"train": train_genba(ds, args.out, args.budget_min, args.genba_precision, args.seed)}
        else:
            rows[name] = {"train": train_peer(name, ds, args.out, args.budget_min, args.peer_batch_size, args.seed)}
    for name, row in rows.items():
        row["eval"] = evaluate(name, row["train"]["checkpoint"], args.out, args.episodes, args.eval_workers,
                               args.eval_seed_base)
        row["latency"] = stage_latency(name, row["train"]["checkpoint"], data_root / "reference.npz", args.out,
                                       LATENCY_PER_TASK)
    meta = {"date": dt.datetime.now().astimezone().isoformat(timespec="seconds"), "command": command,
            "smoke": args.smoke, "budget_min": args.budget_min, "episodes": args.episodes, "demos": args.demos,
            "dataset": os.path.relpath(ds, REPO), "interop": interop, "wall_min": round((time.time() - t_start) / 60, 1),
            "machine": report.machine_line()}
    doc = report.write_all(args.out, rows, meta)
    copy_results(args)
    log(f"done in {meta['wall_min']} min: {args.out / 'RESULTS.md'}, {args.out / 'success.png'}")
    print(doc["summary_text"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
