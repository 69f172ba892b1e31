"""The golden scenarios: fixed observation sequences through every way a checkpoint becomes actions.

``build(dir)`` writes the frozen inputs (two tiny checkpoints, one MLP
baseline); ``observations()`` draws the fixed observations; ``run(dir, obs)``
plays them through ``Policy.infer`` / ``infer_chunk`` (history, ensembling,
re-planning, an instruction change, a routed task, a machine switch),
``infer_many`` / ``infer_chunk_many`` over four streams, the server backend,
eval's batched policy and the baseline policy. ``make_golden.py`` stores what
``run`` gives; ``test_golden.py`` checks the code still gives it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from genba.data.transforms import RouteInstruction
from tests.fixtures import routed_spec, tiny_checkpoint, toy_spec, toy_stats

SPECS = {"arm": toy_spec("arm", 7, 3), "drive": toy_spec("drive", 4, 2, period=1e-3),
         "belt": toy_spec("belt", 3, 1, period=0.01)}
SPECS["arm__stack"] = routed_spec(SPECS["arm"], "stack")
ROUTES = RouteInstruction({("arm", "stack the blocks"): "arm__stack"})
CHECKPOINTS = {"flow": 1, "l1": 2}  # head -> init seed
BASELINE_TASKS = (("toy/arm-pick", "arm", "pick up the block", "ブロックを持ち上げる"),
                  ("toy/belt-run", "belt", "run the belt", "ベルトを動かす"))

# one stream: (embodiment, instruction) per step
SINGLE = ([("arm", "pick up the block")] * 3 + [("arm", "ブロックを持ち上げる")] * 2
          + [("arm", "stack the blocks")] * 2 + [("drive", "track the current")] * 3)
MODES = {"ensemble": dict(execute="ensemble", ensemble_m=0.1), "ensemble0": dict(execute="ensemble", ensemble_m=0.0),
         "replan": dict(execute="replan", replan_every=3)}
# several streams: (embodiment, execute, instruction); stream 0 becomes a drive at step 5
STREAMS = [("arm", "ensemble", "pick up the block"), ("drive", "replan", "track the current"),
           ("arm", "replan", "stack the blocks"), ("belt", "ensemble", "run the belt")]
MANY_STEPS = 9
LOCKSTEP = [("drive", "track the current"), ("arm", "stack the blocks"), ("belt", "run the belt")]
LOCKSTEP_N, LOCKSTEP_STEPS = 3, 7


def build(root: Path) -> None:
    """The frozen inputs: a flow-head and an l1-head debug checkpoint, and a two-task MLP baseline."""
    stats = toy_stats(SPECS, seed=3)
    stats["arm__stack"] = stats["arm"]
    for head, seed in CHECKPOINTS.items():
        tiny_checkpoint(root / head, SPECS, head=head, seed=seed, stats=stats, routes=ROUTES,
                        lineage={"golden": "tests/golden/make_golden.py"})
    _build_baseline(root / "baseline", stats)


def _build_baseline(out: Path, stats: dict) -> None:
    from genba.model.baseline import TaskMLP
    from genba.train.baseline import BaselineConfig, TaskEntry, save_baseline

    cfg = BaselineConfig(tasks=tuple(t[0] for t in BASELINE_TASKS), target_params=1000, history=2, chunk=4, depth=2)
    entries, results = [], {}
    torch.manual_seed(4)
    for tid, emb, en, ja in BASELINE_TASKS:
        spec = SPECS[emb]
        e = TaskEntry(tid, emb, (("none", 0),), en, ja, cfg.history * spec.obs_dim, cfg.chunk * spec.action_dim, 16)
        mlp = TaskMLP(e.in_dim, e.out_dim, e.width, cfg.depth)
        entries.append(e)
        results[tid] = ({k: v.numpy() for k, v in mlp.state_dict().items()}, {"steps": 0})
    save_baseline(out, cfg, entries, results, SPECS, stats)


def observations() -> dict[str, np.ndarray]:
    """Every scenario's observations, drawn from one seeded generator."""
    rng = np.random.default_rng(2026)
    obs = {}
    for t, (emb, _) in enumerate(SINGLE):
        obs[f"single.{t}"] = rng.normal(size=SPECS[emb].obs_dim).astype(np.float32)
    for t in range(MANY_STEPS):
        for k, (emb, _, _) in enumerate(STREAMS):
            emb = "drive" if k == 0 and t >= 5 else emb
            obs[f"many.{t}.{k}"] = rng.normal(size=SPECS[emb].obs_dim).astype(np.float32)
    for emb, _ in LOCKSTEP:
        for t in range(LOCKSTEP_STEPS):
            obs[f"lockstep.{emb}.{t}"] = rng.normal(size=(LOCKSTEP_N, SPECS[emb].obs_dim)).astype(np.float32)
    return obs


def run(root: Path, obs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every scenario's outputs ``{name: array}`` for the stored inputs under ``root``."""
    out: dict[str, np.ndarray] = {}
    for head in CHECKPOINTS:
        out.update(_single(root / head, head, obs))
        out.update(_many(root / head, head, obs))
        out.update(_backend(root / head, head, obs))
        out.update(_lockstep_model(root / head, head, obs))
    out.update(_lockstep_baseline(root / "baseline", obs))
    return out


def _obs(emb: str, state: np.ndarray, text: str) -> dict:
    return {"embodiment": emb, "state": state, "instruction": text}


def _single(ckpt: Path, head: str, obs: dict) -> dict:
    from genba.model.policy import load_policy

    out = {}
    for mode, kw in MODES.items():
        policy = load_policy(ckpt, device="cpu", seed=7, **kw)
        for rep in range(2):  # reset makes it repeat
            policy.reset()
            acts = [policy.infer(_obs(e, obs[f"single.{t}"], s)) for t, (e, s) in enumerate(SINGLE)]
            out[f"{head}.single.{mode}.{rep}"] = np.concatenate(acts)
        policy.reset()
        chunks = [policy.infer_chunk(_obs(e, obs[f"single.{t}"], s)) for t, (e, s) in enumerate(SINGLE[:5])]
        out[f"{head}.single_chunk.{mode}"] = np.concatenate(chunks)
    return out


def _many_obs(obs: dict, t: int) -> list[dict]:
    return [_obs("drive" if k == 0 and t >= 5 else e, obs[f"many.{t}.{k}"], "track the current" if k == 0 and t >= 5
                 else s) for k, (e, _, s) in enumerate(STREAMS)]


def _many(ckpt: Path, head: str, obs: dict) -> dict:
    from genba.model.bundle import bundle_stats
    from genba.model.policy import Policy, infer_chunk_many, infer_many, load_policy

    base = load_policy(ckpt, device="cpu")
    stats = bundle_stats(base.manifest)
    out = {}
    for name, fn in (("infer_many", infer_many), ("infer_chunk_many", infer_chunk_many)):
        pols = [Policy(base.model, stats, device="cpu", manifest=base.manifest, execute=ex,
                       replan_every=2, seed=10 + k) for k, (_, ex, _) in enumerate(STREAMS)]
        for t in range(MANY_STEPS):
            for k, a in enumerate(fn(pols, _many_obs(obs, t))):
                out[f"{head}.{name}.{t}.{k}"] = a
    return out


def _backend(ckpt: Path, head: str, obs: dict) -> dict:
    from genba.serve.backends import load_backend

    backend = load_backend(str(ckpt), seed=5)
    sessions = [backend.new_state() for _ in STREAMS]
    out = {}
    for t in range(4):
        got = backend.infer_batch(list(zip(sessions, _many_obs(obs, t))))
        for k, a in enumerate(got):
            out[f"{head}.backend.{t}.{k}"] = np.asarray(a)
    return out


def _lockstep_model(ckpt: Path, head: str, obs: dict) -> dict:
    from genba.eval.rollout import load_batched_policy

    out = {}
    for ex, k in (("ensemble", None), ("replan", None), ("replan", 1)):
        policy = load_batched_policy(str(ckpt), ex, k)
        for emb, text in LOCKSTEP:
            policy.reset(LOCKSTEP_N, emb, text)
            acts = [policy.act(obs[f"lockstep.{emb}.{t}"]) for t in range(LOCKSTEP_STEPS)]
            out[f"{head}.lockstep.{ex}{k or ''}.{emb}"] = np.stack(acts)
    return out


def _lockstep_baseline(directory: Path, obs: dict) -> dict:
    from genba.eval.baselines import load_baseline_policy

    out = {}
    for ex in ("ensemble", "replan"):
        policy = load_baseline_policy(directory, ex, None)
        for tid, emb, en, ja in BASELINE_TASKS:
            for text in (en, ja):
                policy.reset(LOCKSTEP_N, emb, text)
                acts = [policy.act(obs[f"lockstep.{emb}.{t}"]) for t in range(LOCKSTEP_STEPS)]
                out[f"baseline.{ex}.{tid}.{text == ja}"] = np.stack(acts)
    return out
