"""Evaluation from cameras: a pixels-mode checkpoint is evaluated on the task's pixels view, rendered at the
checkpoint spec's camera size, and every step's frames reach the policy with the state (issue 21, item 3)."""

from __future__ import annotations

import numpy as np
import pytest

from genba.envs.registry import get_task
from genba.eval.rollout import EvalConfig, checkpoint_view, run_lockstep

JACO = "arm/jaco-reach"


class RecordingPolicy:
    """BatchedPolicy's interface; records what it was handed and answers zeros."""

    def __init__(self, action_dim: int) -> None:
        self.action_dim, self.calls, self.began = action_dim, [], None

    def reset(self, n: int, embodiment: str, instruction: str) -> None:
        self.began = (n, embodiment, instruction)

    def act(self, obs, images=None):
        self.calls.append((obs.copy(), None if images is None else {k: v.copy() for k, v in images.items()}))
        return np.zeros((len(obs), self.action_dim), np.float32)


def test_a_pixels_checkpoint_sees_the_pixels_view_at_its_camera_size():
    task = get_task(JACO)
    px = task.pixel_spec(24)
    view = checkpoint_view(task, {px.name: px})
    assert view.spec == px and view.id == task.id
    assert checkpoint_view(task, {task.spec.name: task.spec}) is task  # a state checkpoint: unchanged
    drive = get_task("drive/pmsm-current")
    assert checkpoint_view(drive, {px.name: px, drive.spec.name: drive.spec}) is drive


def test_a_camera_set_the_view_cannot_render_is_refused():
    import dataclasses

    task = get_task(JACO)
    px = task.pixel_spec(24)
    renamed = dataclasses.replace(px, cameras=(dataclasses.replace(px.cameras[0], name="wrist"),))
    with pytest.raises(ValueError, match="wrist"):
        checkpoint_view(task, {px.name: renamed})
    oblong = dataclasses.replace(px, cameras=(dataclasses.replace(px.cameras[0], width=32),))
    with pytest.raises(ValueError, match="square"):
        checkpoint_view(task, {px.name: oblong})


def test_lockstep_rollout_hands_each_steps_frames_to_the_policy():
    task = checkpoint_view(get_task(JACO), {"jaco_px": get_task(JACO).pixel_spec(16)})
    episodes = [(0, 101), (1, 202)]
    envs = [task.make_env(seed) for _, seed in episodes]
    policy = RecordingPolicy(task.spec.action_dim)
    cfg = EvalConfig(checkpoint="stub", tasks=(JACO,), episodes=2, lang="ja", max_steps=3)
    results = run_lockstep(task, envs, policy, episodes, cfg)
    assert policy.began == (2, "jaco_px", task.instruction("ja"))
    assert len(policy.calls) == 3 and [r.length for r in results] == [3, 3]
    for obs, images in policy.calls:
        assert obs.shape == (2, task.spec.obs_dim)
        assert set(images) == {"front"}
        assert images["front"].shape == (2, 16, 16, 3) and images["front"].dtype == np.uint8
    first, last = policy.calls[0][1]["front"], policy.calls[-1][1]["front"]
    assert first.std() > 0 and not np.array_equal(first[0], first[1])  # rendered scenes of two seeds
    assert all(r.embodiment == "jaco_px" for r in results)
    for env in envs:
        env.close()
    assert last.shape == first.shape


def test_genba_eval_of_a_pixels_checkpoint_runs_from_rendered_frames(pixel_checkpoint, tmp_path, capsys):
    """End to end through the CLI: the workers render the checkpoint's camera size, the model sees the frames."""
    from genba.cli import main

    rc = main(["eval", str(pixel_checkpoint), "--tasks", f"{JACO},drive/pmsm-current", "--episodes", "2",
               "--workers", "1", "--lockstep", "2", "--max-steps", "4", "--lang", "ja", "--out", str(tmp_path),
               "--no-progress"])
    assert rc == 0
    import json

    res = json.loads((tmp_path / "results.json").read_text())
    assert set(res["embodiments"]) == {"jaco_px", "pmsm"}
    assert all(e["length"] == 4 for e in res["episodes"] if e["task"] == JACO)


def test_batched_pixels_policy_equals_separate_policies(pixel_checkpoint):
    from genba.eval.rollout import load_batched_policy
    from genba.model.policy import load_policy

    batched = load_batched_policy(str(pixel_checkpoint), "ensemble", None)
    singles = [load_policy(pixel_checkpoint, execute="ensemble", device="cpu") for _ in range(2)]
    spec = singles[0].specs["jaco_px"]
    text = get_task(JACO).instruction("en")
    batched.reset(2, spec.name, text)
    rng = np.random.default_rng(0)
    for _ in range(4):
        obs = rng.normal(size=(2, spec.obs_dim)).astype(np.float32)
        imgs = rng.integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
        got = batched.act(obs, {"front": imgs})
        want = np.stack([p.infer({"embodiment": spec.name, "state": o, "instruction": text, "images": {"front": im}})
                         for p, o, im in zip(singles, obs, imgs)])
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
