"""LeRobot-side check that LeRobot reads a genba-written dataset exactly as genba does.

Runs in ``benchmarks/peers/.venv-lerobot`` (``lerobot_side.py check ...``). The
reference is ``reference.npz``, written by ``run.py`` from genba's own reader:
every frame of every column, the episode ranges, the task strings, and
``meta/stats.json`` as genba loads it. LeRobot's ``LeRobotDataset`` opens the
unmodified genba dataset; each check is recorded (name, ok, detail) in the JSON
report, and a refusal to open is itself reported as the first, failed check.

Cameras: where the reference holds ``images/<key>/written`` (the frames genba
was given, before encoding) and ``images/<key>/genba`` (genba's own decode),
LeRobot decodes the checked frames itself (``video_backend="torchcodec"``,
through ``dataset[i]``) and the report gives the PSNR of LeRobot's frames
against both (target >= 35 dB against what was written), and checks that
``meta/stats.json`` image stats load as LeRobot's (3, 1, 1) arrays.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from lerobot_side import ACTION, STATE, log, open_lerobot, task_strings


def run_check(args: argparse.Namespace) -> int:
    import importlib.metadata

    ref = np.load(args.reference)
    checks: list[dict] = []

    def check(name: str, ok: bool, detail: str) -> None:
        checks.append({"name": name, "ok": bool(ok), "detail": detail})
        log(f"check {'ok  ' if ok else 'FAIL'} {name}: {detail}")

    report = {"lerobot_version": importlib.metadata.version("lerobot"), "dataset": str(args.dataset)}
    try:
        ds = open_lerobot(args.dataset)
    except Exception as e:  # the finding itself: LeRobot refused the layout
        check("LeRobotDataset opens the genba dataset", False, f"{type(e).__name__}: {e}")
        return finish_check(args.out, report, checks)
    n = len(ref["index"])
    report.update(num_frames=len(ds), num_episodes=ds.num_episodes)
    check("LeRobotDataset opens the genba dataset", True, f"{len(ds)} frames, {ds.num_episodes} episodes, fps {ds.fps}")
    check("frame count", len(ds) == n and ds.meta.total_frames == n, f"LeRobot {len(ds)} vs genba {n}")
    cols = ds.hf_dataset.with_format("numpy")[:]  # every column of every frame, as LeRobot loaded them
    check_columns(cols, ref, check)
    check_episodes(ds, ref, check)
    check_items(ds, ref, check, args.samples)
    check_chunks(args.dataset, ds.fps, ref, check, args.samples)
    check_stats(ds, cols, ref, check)
    report["cameras"] = check_images(ds, ref, check, args.samples)
    return finish_check(args.out, report, checks)


def camera_keys(ref) -> list[str]:
    return sorted({k.split("/")[1] for k in ref.files if k.startswith("images/")})


def check_images(ds, ref, check, samples: int, min_psnr: float = 35.0) -> dict:
    """LeRobot's decode of every checked frame vs genba's frames as written and as genba decodes them."""
    out = {}
    n = len(ref["index"])
    rng = np.random.default_rng(2)
    rows = np.arange(n) if n <= samples else np.sort(rng.choice(n, samples, replace=False))
    for key in camera_keys(ref):
        mine = ref[f"images/{key}/genba"]
        # a dataset collected elsewhere has no frames "as written": genba's decode stands in
        written = ref[f"images/{key}/written"] if f"images/{key}/written" in ref.files else mine
        got, failed = [], []
        for i in rows:
            try:
                x = ds[int(i)][key]  # (3, H, W) float in [0, 1], decoded by torchcodec
                got.append(np.clip(np.round(x.numpy().transpose(1, 2, 0) * 255), 0, 255).astype(np.uint8))
            except Exception as e:  # one frame LeRobot cannot decode is the finding
                failed.append(f"{int(i)}: {type(e).__name__}: {e}")
        check(f"{key}: LeRobot decodes every checked frame", not failed,
              f"{len(rows) - len(failed)}/{len(rows)} frames" + (f", first failure {failed[0]}" if failed else ""))
        if failed:
            continue
        lr = np.stack(got)
        shape_ok = lr.shape == written[rows].shape
        check(f"{key}: frame shape", shape_ok, f"LeRobot {lr.shape[1:]} vs genba {written.shape[1:]}")
        if not shape_ok:
            continue
        p_written, p_genba = psnr(lr, written[rows]), psnr(lr, mine[rows])
        worst = min(psnr(lr[j], written[rows][j]) for j in range(len(rows)))
        out[key] = {"frames": len(rows), "psnr_vs_written_db": p_written, "psnr_vs_genba_decode_db": p_genba,
                    "worst_frame_psnr_vs_written_db": worst,
                    "genba_decode_vs_written_db": psnr(mine[rows], written[rows])}
        check(f"{key}: PSNR LeRobot decode vs frames genba wrote", p_written >= min_psnr,
              f"{p_written:.2f} dB over {len(rows)} frames (worst frame {worst:.2f} dB; target >= {min_psnr:g})")
        check(f"{key}: PSNR LeRobot decode vs genba's own decode", p_genba >= min_psnr,
              f"{p_genba:.2f} dB (the same decoder would give inf)")
        st = ds.meta.stats.get(key, {})
        shapes = {k: tuple(np.shape(v)) for k, v in st.items()}
        ok = bool(st) and all(v == ((1,) if k == "count" else (3, 1, 1)) for k, v in shapes.items())
        check(f"{key}: image stats load as (3, 1, 1)", ok, f"{shapes}")
    return out


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def finish_check(out: Path, report: dict, checks: list[dict]) -> int:
    report.update(ok=all(c["ok"] for c in checks), checks=checks)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    return 0 if report["ok"] else 1


def check_columns(cols: dict, ref, check) -> None:
    """Every frame of every column, exactly (bitwise for floats)."""
    for key in ("observation.state", "action", "episode_index", "frame_index", "task_index", "index", "timestamp"):
        got = np.asarray(cols[key])
        want = ref[key]
        got = got.reshape(want.shape) if got.size == want.size else got
        same = got.shape == want.shape and got.dtype == want.dtype and np.array_equal(got, want)
        check(f"column {key}", same, f"shape {got.shape} {got.dtype} vs genba {want.shape} {want.dtype}"
              + ("" if same else f", max abs diff {np.max(np.abs(got.astype(float) - want.astype(float))):.3g}"
                 if got.shape == want.shape else ""))


def check_episodes(ds, ref, check) -> None:
    eps = ds.meta.episodes
    frm, to = np.asarray(eps["dataset_from_index"]), np.asarray(eps["dataset_to_index"])
    ok = np.array_equal(frm, ref["episode_from"]) and np.array_equal(to, ref["episode_to"])
    check("episode ranges (meta/episodes)", ok, f"{len(frm)} episodes, from/to indices equal to genba's")
    tasks = task_strings(ds)
    check("task strings (meta/tasks.parquet)", tasks == [str(t) for t in ref["tasks"]], f"{len(tasks)} tasks")


def check_items(ds, ref, check, samples: int) -> None:
    """``dataset[i]`` (LeRobot's per-sample path, with the task string) at random frames."""
    rng = np.random.default_rng(0)
    bad = []
    for i in rng.choice(len(ds), min(samples, len(ds)), replace=False):
        item = ds[int(i)]
        ok = (np.array_equal(item[STATE].numpy(), ref[STATE][i]) and np.array_equal(item[ACTION].numpy(), ref[ACTION][i])
              and item["task"] == str(ref["tasks"][ref["task_index"][i]])
              and int(item["episode_index"]) == int(ref["episode_index"][i]))
        if not ok:
            bad.append(int(i))
    check("dataset[i] (state, action, task string)", not bad, f"{samples} random frames" + (f", mismatches at {bad[:5]}" if bad else ""))


def check_chunks(root: Path, fps: int, ref, check, samples: int, chunk: int = 100) -> None:
    """Action chunks with delta_timestamps (how ACT trains), incl. padding past episode ends."""
    ds = open_lerobot(root, {ACTION: [k / fps for k in range(chunk)], STATE: [-1 / fps, 0.0]})
    rng = np.random.default_rng(1)
    to = ref["episode_to"][ref["episode_index"]]
    frm = ref["episode_from"][ref["episode_index"]]
    # half random frames, half last frames of episodes (chunks that are mostly padding)
    picks = np.concatenate([rng.choice(len(ref["index"]), samples // 2, replace=False), rng.choice(to - 1, samples // 2)])
    bad = []
    for i in picks:
        item = ds[int(i)]
        idx = np.minimum(i + np.arange(chunk), to[i] - 1)
        pad = (i + np.arange(chunk)) >= to[i]
        hist = np.maximum(i + np.array([-1, 0]), frm[i])
        ok = (np.array_equal(item[ACTION].numpy(), ref[ACTION][idx]) and np.array_equal(item[f"{ACTION}_is_pad"].numpy(), pad)
              and np.array_equal(item[STATE].numpy(), ref[STATE][hist]))
        if not ok:
            bad.append(int(i))
    check("delta_timestamps windows (100-action chunks, 2-frame history, padding)", not bad,
          f"{len(picks)} frames ({samples // 2} at episode ends)" + (f", mismatches at {bad[:5]}" if bad else ""))


def check_stats(ds, cols: dict, ref, check) -> None:
    """meta/stats.json as LeRobot loads it == genba's stats, and == stats recomputed from the frames."""
    for feat in (STATE, ACTION):
        keys = [k.split("/")[-1] for k in ref.files if k.startswith(f"stats/{feat}/")]
        got = ds.meta.stats.get(feat, {})
        missing = [k for k in keys if k not in got]
        diff = max((float(np.max(np.abs(np.asarray(got[k], np.float64) - ref[f"stats/{feat}/{k}"])))
                    for k in keys if k not in missing), default=float("inf"))
        check(f"stats.json {feat} as LeRobot loads it", not missing and diff <= 1e-9,
              f"{len(keys)} keys, max abs diff {diff:.2e}" + (f", missing {missing}" if missing else ""))
        x = np.asarray(cols[feat], np.float64)
        mine = {"mean": x.mean(0), "std": x.std(0), "min": x.min(0), "max": x.max(0),
                "q01": np.quantile(x, 0.01, axis=0), "q99": np.quantile(x, 0.99, axis=0)}
        worst = {k: float(np.max(np.abs(np.asarray(got[k], np.float64) - v) / (1e-6 + np.abs(v)))) if k in got
                 else float("inf") for k, v in mine.items()}
        check(f"stats.json {feat} vs stats recomputed from LeRobot's frames", max(worst.values()) < 1e-5,
              "max relative diff " + ", ".join(f"{k} {v:.1e}" for k, v in worst.items()))
