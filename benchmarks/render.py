"""Step+render rate per core of the camera views (target: >= 100/s at 64x64 for Meta-World).

For each machine, camera and size, runs the scripted expert on the pixels view
(``Task.view("pixels", size)``: env step, camera render, expert act on the
state) and prints steps per CPU second of this one process (one core; the
expert's share is printed apart, since a policy replaces it), next to the same
loop without rendering. Also the default MuJoCo visual settings at 64x64 for
one task, to show what the fast settings buy. Print figures; assert nothing.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/render.py [--steps 300] [--sizes 64,96,128]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

from genba.envs import registry

TASKS = ("metaworld/pick-place-v3", "metaworld/drawer-open-v3", "metaworld/door-open-v3", "arm/jaco-push")
TARGET_MW_64 = 100.0


def _loop(task_id: str, size: int | None, steps: int) -> tuple[float, float]:
    """(steps per CPU second of step+render, of step+render+expert) over ``steps`` steps."""
    base = registry.get_task(task_id)
    task = base.view("pixels", size) if size else base
    env = task.make_env(0)
    expert = task.make_expert(env)
    obs, _ = env.reset(seed=0)
    act_cpu = 0.0
    t0 = time.process_time()
    for t in range(steps):
        a0 = time.process_time()
        action = expert.act(obs)
        act_cpu += time.process_time() - a0
        obs, _, terminated, truncated, _ = env.step(action)
        if terminated or truncated or t % 150 == 149:  # fresh layouts, and no time on a finished scene
            expert.reset()
            obs, _ = env.reset(seed=t)
    cpu = time.process_time() - t0
    env.close()
    return steps / (cpu - act_cpu), steps / cpu


def _default_settings(steps: int) -> float:
    """Meta-World at 64x64 through mujoco's defaults (shadows, 4x multisampling): steps per CPU second."""
    import mujoco

    from genba.envs.embodiments.metaworld import SawyerEnv
    from genba.envs.render import gl_context

    gl_context()
    env = SawyerEnv("pick-place-v3", 0)
    env.reset(seed=0)
    scene, cam = mujoco.MjvScene(env.sim.model, maxgeom=2000), mujoco.MjvCamera()
    cam.type, cam.fixedcamid = mujoco.mjtCamera.mjCAMERA_FIXED, env.sim.model.camera("corner2").id
    ctx = mujoco.MjrContext(env.sim.model, mujoco.mjtFontScale.mjFONTSCALE_100)
    mujoco.mjr_setBuffer(mujoco.mjtFramebuffer.mjFB_OFFSCREEN, ctx)
    rect, buf, opt = mujoco.MjrRect(0, 0, 64, 64), np.empty((64, 64, 3), np.uint8), mujoco.MjvOption()
    t0 = time.process_time()
    for _ in range(steps):
        env.step(np.zeros(4, np.float32))
        mujoco.mjv_updateScene(env.sim.model, env.sim.data, opt, None, cam, mujoco.mjtCatBit.mjCAT_ALL, scene)
        mujoco.mjr_render(rect, scene, ctx)
        mujoco.mjr_readPixels(buf, None, rect, ctx)
    rate = steps / (time.process_time() - t0)
    ctx.free()
    return rate


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--sizes", default="64,96,128")
    ap.add_argument("--tasks", default=",".join(TASKS))
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    print(f"load average {os.getloadavg()[0]:.2f} (2 vCPUs shared); rates are steps per CPU second of one process")
    print(f"{'task':28s} {'camera':8s} {'size':>5s} {'step+render/s':>14s} {'+expert/s':>10s} {'step only/s':>12s}")
    mw64 = []
    for task_id in args.tasks.split(","):
        task = registry.get_task(task_id)
        bare, _ = _loop(task_id, None, args.steps)
        for size in sizes:
            cams = ",".join(c.name for c in task.view("pixels", size).spec.cameras)
            rate, with_expert = _loop(task_id, size, args.steps)
            if task_id.startswith("metaworld/") and size == 64:
                mw64.append(rate)
            print(f"{task_id:28s} {cams:8s} {size:5d} {rate:14.0f} {with_expert:10.0f} {bare:12.0f}")
    if mw64:
        worst = min(mw64)
        print(f"Meta-World 64x64: worst {worst:.0f} step+render/s per core "
              f"(target >= {TARGET_MW_64:.0f}: {'PASS' if worst >= TARGET_MW_64 else 'FAIL'})")
    print(f"Meta-World 64x64 with MuJoCo's default visual settings: {_default_settings(40):.1f} step+render/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
