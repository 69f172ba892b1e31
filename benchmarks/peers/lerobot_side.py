"""The LeRobot side of the peer benchmark; runs ONLY in ``benchmarks/peers/.venv-lerobot``.

    python lerobot_side.py check --dataset DS --reference REF.npz --out interop.json
    python lerobot_side.py train --dataset DS --policy act-reduced --minutes 15 --out DIR
    python lerobot_side.py serve DIR          # msgpack over stdin/stdout, see adapter.py

Everything LeRobot reads comes through its own ``LeRobotDataset(repo_id, root=DS)``
from the genba-written dataset, unmodified (``HF_HUB_OFFLINE=1``: nothing is
downloaded). ``check`` (code in ``lerobot_check.py``) compares every frame, the
episode table, the task strings and ``meta/stats.json`` with genba's reader.

State-only mapping. ACT and Diffusion Policy need an image or
``observation.environment_state``. Each sample's 39-d Sawyer state is split by
feature name, losslessly, when the sample is read (no derived copy of the
dataset): ``observation.state`` = the robot's own part (hand xyz and gripper,
current and previous frame: 8 values); ``observation.environment_state`` =
everything else (both objects' pose, current and previous frame, and the goal:
31 values) plus a one-hot of the task (10 values). genba's model learns the task
from the instruction; without the one-hot, reach, push and pick-place have the
same observations and no state-only policy could tell them apart.

Choices that differ from LeRobot's defaults, each in the peers' favour (README.md
says why): ENV features normalized like STATE; normalization scales floored at 1% of
each dimension's magnitude (genba's own guard); 8 executed actions per chunk; reduced
Diffusion samples with DDIM in 10 steps.
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

REPO_ID = "genba/sawyer-mt10"  # a label only: root= points at the local dataset
STATE, ENV, ACTION = "observation.state", "observation.environment_state", "action"
STAT_KEYS = ("mean", "std", "min", "max", "q01", "q99")
EXEC_STEPS = 8  # actions executed per predicted chunk (all policies)
POLICIES = ("act-default", "act-reduced", "diffusion-reduced")


def log(msg: str) -> None:
    print(f"[lerobot {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def open_lerobot(root: Path, delta_timestamps: dict | None = None):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    # torchcodec (with the system FFmpeg libraries): LeRobot 0.4.4's pyav backend calls a
    # torchvision API that torchvision 0.29 removed. A camera-less dataset never decodes.
    return LeRobotDataset(REPO_ID, root=root, delta_timestamps=delta_timestamps, video_backend="torchcodec")


# =============================================================================
# the state mapping
# =============================================================================
class StateSplit:
    """genba's flat state -> LeRobot's (robot state, environment state + task one-hot)."""

    def __init__(self, names: list[str], tasks: list[str]) -> None:
        self.names, self.tasks = list(names), list(tasks)
        self.robot = [i for i, n in enumerate(names) if "hand" in n or "gripper" in n]
        self.env = [i for i in range(len(names)) if i not in self.robot]
        if not self.robot or not any("goal" in names[i] for i in self.env):
            raise ValueError(f"state names {names} do not look like the Sawyer layout (hand*, gripper*, obj*, goal*)")
        self.index = {t: i for i, t in enumerate(tasks)}

    @property
    def env_dim(self) -> int:
        return len(self.env) + len(self.tasks)

    def split(self, state: torch.Tensor, task_index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """state (..., 39), task_index (B,) or () -> (..., 8), (..., 41)."""
        onehot = torch.nn.functional.one_hot(task_index.long(), len(self.tasks)).to(state.dtype)
        while onehot.dim() < state.dim():  # (B, K) -> (B, 1, K) for observation histories
            onehot = onehot.unsqueeze(-2)
        onehot = onehot.expand(*state.shape[:-1], len(self.tasks))
        return state[..., self.robot], torch.cat([state[..., self.env], onehot], dim=-1)

    def stats(self, meta_stats: dict, task_counts: np.ndarray) -> dict:
        """LeRobot stats for the split features, from the dataset's own stats.json, floored."""
        src = meta_stats[STATE]
        p = task_counts / task_counts.sum()
        onehot = {"mean": p, "std": np.sqrt(p * (1 - p)), "min": np.zeros_like(p), "max": np.ones_like(p),
                  "q01": (p > 0.99).astype(float), "q99": (p > 0.01).astype(float)}
        out = {STATE: {k: np.asarray(src[k])[self.robot] for k in STAT_KEYS},
               ENV: {k: np.concatenate([np.asarray(src[k])[self.env], onehot[k]]) for k in STAT_KEYS},
               ACTION: {k: np.asarray(meta_stats[ACTION][k]) for k in STAT_KEYS}}
        return {f: floor_stats(s) for f, s in out.items()}

    def to_dict(self) -> dict:
        return {"names": self.names, "tasks": self.tasks}


def floor_stats(s: dict) -> dict:
    """Scales floored at 1% of each dimension's magnitude (genba.data.stats.scale_floor's rule)."""
    lo, hi = np.asarray(s["min"], np.float64), np.asarray(s["max"], np.float64)
    floor = np.maximum(1e-2 * np.maximum(np.maximum(np.abs(lo), np.abs(hi)), hi - lo), 1e-6)
    out = {k: np.asarray(v, np.float64) for k, v in s.items()}
    out["std"] = np.maximum(out["std"], floor)
    for a, b in (("min", "max"), ("q01", "q99")):
        centre, half = (out[a] + out[b]) / 2, np.maximum((out[b] - out[a]) / 2, floor)
        out[a], out[b] = centre - half, centre + half
    return {k: v.astype(np.float32) for k, v in out.items()}


def task_strings(ds) -> list[str]:
    """Task strings in task_index order, from LeRobot's tasks table."""
    tasks = ds.meta.tasks
    return [str(t) for t in tasks.sort_values("task_index").index]


# =============================================================================
# policies
# =============================================================================
def make_config(name: str, split: StateSplit, action_dim: int):
    """The LeRobot config of one contestant, with state-only features."""
    from lerobot.configs.types import FeatureType, NormalizationMode, PolicyFeature

    feats_in = {STATE: PolicyFeature(type=FeatureType.STATE, shape=(len(split.robot),)),
                ENV: PolicyFeature(type=FeatureType.ENV, shape=(split.env_dim,))}
    feats_out = {ACTION: PolicyFeature(type=FeatureType.ACTION, shape=(action_dim,))}
    if name.startswith("act"):
        from lerobot.policies.act.configuration_act import ACTConfig

        size = {} if name == "act-default" else {"dim_model": 256, "dim_feedforward": 1024}
        cfg = ACTConfig(device="cpu", push_to_hub=False, pretrained_backbone_weights=None,
                        n_action_steps=EXEC_STEPS, **size)
        mode = NormalizationMode.MEAN_STD
    elif name == "diffusion-reduced":
        from lerobot.policies.diffusion.configuration_diffusion import DiffusionConfig

        cfg = DiffusionConfig(device="cpu", push_to_hub=False, down_dims=(64, 128, 256),
                              noise_scheduler_type="DDIM", num_inference_steps=10, n_action_steps=EXEC_STEPS)
        mode = NormalizationMode.MIN_MAX
    else:
        raise ValueError(f"unknown policy {name!r}; choose from {POLICIES}")
    cfg.input_features, cfg.output_features = feats_in, feats_out
    cfg.normalization_mapping = {**cfg.normalization_mapping, "ENV": mode}
    return cfg


def policy_class(policy_type: str):
    """ACTPolicy or DiffusionPolicy, by config type."""
    if policy_type == "act":
        from lerobot.policies.act.modeling_act import ACTPolicy

        return ACTPolicy
    from lerobot.policies.diffusion.modeling_diffusion import DiffusionPolicy

    return DiffusionPolicy


def delta_timestamps(cfg, fps: int) -> dict:
    out = {ACTION: [i / fps for i in cfg.action_delta_indices]}
    if cfg.observation_delta_indices is not None:
        out[STATE] = [i / fps for i in cfg.observation_delta_indices]
    return out


class SplitDataset(torch.utils.data.Dataset):
    """LeRobotDataset samples with the state split into robot and environment features."""

    def __init__(self, ds, split: StateSplit) -> None:
        self.ds, self.split = ds, split

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> dict:
        item = self.ds[i]
        item[STATE], item[ENV] = self.split.split(item[STATE], item["task_index"])
        if f"{STATE}_is_pad" in item:
            item[f"{ENV}_is_pad"] = item[f"{STATE}_is_pad"]
        return {k: v for k, v in item.items() if k != "task"}


# =============================================================================
# train
# =============================================================================
def cmd_train(args: argparse.Namespace) -> int:
    from lerobot.datasets.sampler import EpisodeAwareSampler
    from lerobot.policies.factory import make_pre_post_processors

    t0 = time.perf_counter()
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    budget = args.minutes * 60
    meta_ds = open_lerobot(args.dataset)
    split = StateSplit(meta_ds.meta.features[STATE]["names"], task_strings(meta_ds))
    counts = np.bincount(np.asarray(meta_ds.hf_dataset.with_format("numpy")["task_index"]), minlength=len(split.tasks))
    cfg = make_config(args.policy, split, meta_ds.meta.features[ACTION]["shape"][0])
    stats = split.stats(meta_ds.meta.stats, counts)
    ds, policy = open_lerobot(args.dataset, delta_timestamps(cfg, meta_ds.fps)), policy_class(cfg.type)(cfg)
    pre, post = make_pre_post_processors(cfg, dataset_stats=stats)
    params = sum(p.numel() for p in policy.parameters())
    log(f"{args.policy}: {params / 1e6:.2f}M parameters, batch {args.batch_size}, budget {args.minutes:g} min")
    drop = getattr(cfg, "drop_n_last_frames", 0)
    sampler = EpisodeAwareSampler(ds.meta.episodes["dataset_from_index"], ds.meta.episodes["dataset_to_index"],
                                  drop_n_last_frames=drop, shuffle=True)
    loader = torch.utils.data.DataLoader(SplitDataset(ds, split), batch_size=args.batch_size, sampler=sampler,
                                         num_workers=0, drop_last=True)
    optimizer = cfg.get_optimizer_preset().build(policy.get_optim_params())
    grad_clip = cfg.get_optimizer_preset().grad_clip_norm
    sched_cfg = cfg.get_scheduler_preset()
    steps, loss_hist, last_log = 0, [], 0.0
    # Warm-up does not depend on the total; a provisional one serves until step 10.
    scheduler = sched_cfg.build(optimizer, 10**6) if sched_cfg is not None else None
    loop_t0 = time.perf_counter()
    policy.train()
    stop = False
    while not stop:
        for batch in loader:
            batch = pre(batch)
            loss, _ = policy.forward(batch)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(policy.parameters(), grad_clip)
            optimizer.step()
            optimizer.zero_grad()
            steps += 1
            loss_hist.append(loss.item())
            if scheduler is not None:
                scheduler.step()
            if sched_cfg is not None and steps == 10:  # the budget gives a step count once the step time is known
                total = int(steps + (budget - (time.perf_counter() - t0)) / ((time.perf_counter() - loop_t0) / steps))
                scheduler = rebuild_scheduler(sched_cfg, optimizer, max(total, steps + 1), steps)
            elapsed = time.perf_counter() - t0
            if steps % 50 == 0 or elapsed - last_log >= 30:
                last_log = elapsed
                log(f"{args.policy}: step {steps}, loss {np.mean(loss_hist[-50:]):.4f}, "
                    f"{steps * args.batch_size / (time.perf_counter() - loop_t0):.1f} samples/s, {elapsed / 60:.1f}/{args.minutes:g} min")
            if elapsed >= budget:
                stop = True
                break
    loop_s = time.perf_counter() - loop_t0
    save_checkpoint(args.out, policy, pre, post, split, args.policy)
    info = {"contestant": args.policy, "checkpoint": str(args.out), "steps": steps, "batch_size": args.batch_size,
            "samples_per_s": steps * args.batch_size / loop_s, "train_loop_s": round(loop_s, 1),
            "budget_min": args.minutes, "setup_s": round(loop_t0 - t0, 1), "params": params,
            "final_loss": float(np.mean(loss_hist[-50:])), "precision": "fp32",
            "config": {"type": cfg.type, "n_action_steps": cfg.n_action_steps,
                       "chunk": getattr(cfg, "chunk_size", getattr(cfg, "horizon", None))}}
    (args.out / "train.json").write_text(json.dumps(info, indent=2))
    log(f"{args.policy}: {steps} steps in {loop_s:.0f} s ({info['samples_per_s']:.1f} samples/s), saved {args.out}")
    return 0


def rebuild_scheduler(sched_cfg, optimizer, total: int, done: int):
    """The preset schedule over ``total`` steps, advanced past the ``done`` already taken."""
    import warnings

    scheduler = sched_cfg.build(optimizer, total)
    with warnings.catch_warnings():  # the catch-up steps deliberately follow optimizer steps already taken
        warnings.simplefilter("ignore", UserWarning)
        for _ in range(done):
            scheduler.step()
    return scheduler


def save_checkpoint(out: Path, policy, pre, post, split: StateSplit, name: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    policy.save_pretrained(out)
    pre.save_pretrained(out)
    post.save_pretrained(out)
    (out / "peers.json").write_text(json.dumps({"contestant": name, "embodiment": "sawyer", **split.to_dict()}, indent=2))


# =============================================================================
# serve: the policy process behind adapter.py
# =============================================================================
class Served:
    """A loaded LeRobot policy + processors + state split, batched over lockstep envs."""

    def __init__(self, ckpt: Path) -> None:
        from lerobot.configs.policies import PreTrainedConfig
        from lerobot.policies.factory import make_pre_post_processors

        torch.set_num_threads(1)
        meta = json.loads((ckpt / "peers.json").read_text())
        self.split = StateSplit(meta["names"], meta["tasks"])
        self.embodiment = meta["embodiment"]
        cfg = PreTrainedConfig.from_pretrained(ckpt)
        cfg.device = "cpu"
        self.policy = policy_class(cfg.type).from_pretrained(ckpt, config=cfg).eval()
        self.pre, self.post = make_pre_post_processors(cfg, pretrained_path=str(ckpt))
        self.cfg = cfg

    def info(self) -> dict:
        return {"embodiment": self.embodiment, "obs_dim": len(self.split.names), "instructions": self.split.tasks,
                "chunk": getattr(self.cfg, "chunk_size", getattr(self.cfg, "horizon", None)),
                "n_action_steps": self.cfg.n_action_steps, "policy": self.cfg.type,
                "params": sum(p.numel() for p in self.policy.parameters())}

    def task_index(self, instruction: str) -> int:
        if instruction not in self.split.index:
            raise ValueError(f"instruction {instruction!r} is not one of the {len(self.split.tasks)} trained tasks")
        return self.split.index[instruction]

    @torch.inference_mode()
    def act(self, states: np.ndarray, instruction: str) -> np.ndarray:
        """(N, obs) -> (N, A) through LeRobot's preprocessor, select_action and postprocessor."""
        x = torch.from_numpy(states)
        robot, env = self.split.split(x, torch.full((len(x),), self.task_index(instruction)))
        batch = self.pre({STATE: robot, ENV: env})
        return self.post(self.policy.select_action(batch)).numpy().astype(np.float32)

    def latency(self, states: np.ndarray, instruction: str) -> list[float]:
        """Seconds per fresh chunk at batch 1: reset (empty queue), then one full select_action."""
        times = []
        for k, s in enumerate(states):
            self.policy.reset()
            t0 = time.perf_counter()
            self.act(s[None], instruction)
            if k > 0:  # the first call warms up
                times.append(time.perf_counter() - t0)
        self.policy.reset()
        return times


_LEN = struct.Struct(">I")


def cmd_serve(args: argparse.Namespace) -> int:
    import msgpack

    wire_in, wire_out = sys.stdin.buffer, os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # anything LeRobot prints goes to stderr, never into the protocol
    sys.stdout = sys.stderr
    served = Served(args.checkpoint)
    log(f"serving {args.checkpoint} ({served.cfg.type})")

    def reply(obj: dict) -> None:
        data = msgpack.packb(obj, use_bin_type=True)
        wire_out.write(_LEN.pack(len(data)) + data)
        wire_out.flush()

    rows = lambda buf: np.frombuffer(buf, np.float32).reshape(-1, len(served.split.names)).copy()  # noqa: E731
    handlers = {
        "ping": lambda m: {},  # the pipe's own round trip, for the report
        "info": lambda m: served.info(),
        "reset": lambda m: served.policy.reset() or {},
        "infer": lambda m: {"action": served.act(rows(m["state"]), m["instruction"]).tobytes()},
        "latency": lambda m: {"times_s": served.latency(rows(m["states"]), m["instruction"])},
    }
    while True:
        head = wire_in.read(_LEN.size)
        if len(head) < _LEN.size:
            return 0  # parent closed the pipe
        msg = msgpack.unpackb(wire_in.read(_LEN.unpack(head)[0]), raw=False)
        op = msg.get("op")
        if op == "close":
            reply({"ok": True})
            return 0
        try:
            if op not in handlers:
                raise ValueError(f"unknown op {op!r}; known: close, {', '.join(handlers)}")
            reply({"ok": True, **handlers[op](msg)})
        except Exception as e:  # the parent re-raises it with this message
            reply({"ok": False, "error": f"{type(e).__name__}: {e}"})


def cmd_check(args: argparse.Namespace) -> int:
    from lerobot_check import run_check  # the interop check lives beside this file

    return run_check(args)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="verb", required=True)
    p = sub.add_parser("check", help="load the genba dataset with LeRobotDataset and compare with genba's export")
    p.add_argument("--dataset", type=Path, required=True)
    p.add_argument("--reference", type=Path, required=True, help="reference.npz written by run.py (genba reader)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--samples", type=int, default=200, help="frames checked through dataset[i] and chunk windows")
    p.set_defaults(func=cmd_check)
    p = sub.add_parser("train", help="train one LeRobot policy for a wall-clock budget")
    p.add_argument("--dataset", type=Path, required=True)
    p.add_argument("--policy", choices=POLICIES, required=True)
    p.add_argument("--minutes", type=float, required=True)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("serve", help="serve a trained policy over stdin/stdout (adapter.py)")
    p.add_argument("checkpoint", type=Path)
    p.set_defaults(func=cmd_serve)
    args = ap.parse_args()
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
