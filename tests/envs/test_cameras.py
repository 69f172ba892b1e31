"""Cameras: pixels-mode specs, rendered frames, and `genba collect --obs pixels` (docs/machines.md#cameras)."""

from __future__ import annotations

import numpy as np
import pytest

from genba.data.layout import Episode
from genba.data.spec import EmbodimentSpec
from genba.envs import collect as C
from genba.envs import registry
from genba.envs.embodiments import jaco, metaworld

PX_SPECS = {"sawyer_px": metaworld.build_pixel_spec(32), "jaco_px": jaco.build_pixel_spec(32)}


@pytest.mark.parametrize("name", sorted(PX_SPECS))
def test_pixel_spec_has_cameras_roles_and_no_sim_entries(name):
    spec = PX_SPECS[name]
    assert spec.name == name and spec.obs_mode == "pixels"
    assert len(spec.obs_roles) == spec.obs_dim and "sim" not in spec.obs_roles
    assert not any("obj" in n for n in spec.obs_names), "nothing about objects in a pixels-mode state"
    assert spec.cameras and all(c.shape == (32, 32, 3) for c in spec.cameras)
    assert EmbodimentSpec.from_json(spec.to_json()) == spec
    # the safety limits still point at the end effector
    a, b = spec.safety.ee_obs_slice
    assert spec.obs_names[a:b][0].endswith(("hand_x", "ee.x"))


def test_state_specs_mark_objects_as_sim_and_keep_their_shape():
    for spec, sim_marker in ((metaworld.SPEC, "obj"), (jaco.SPEC, "object")):
        assert spec.obs_mode == "state" and not spec.cameras
        sim = {n for n, r in zip(spec.obs_names, spec.obs_roles) if r == "sim"}
        assert {n for n in spec.obs_names if sim_marker in n} <= sim
    assert metaworld.SPEC.obs_dim == 39 and jaco.SPEC.obs_dim == 30
    assert jaco.SPEC.obs_roles[jaco.GOAL_SLICE[0]] == "command"


def test_view_is_the_state_task_for_state_mode_and_camera_less_machines():
    reach = registry.get_task("metaworld/reach-v3")
    assert reach.view("state") is reach
    drive = registry.resolve("drives")[0]
    assert drive.view("pixels", 64) is drive  # a mixed batch keeps the drives as they are
    px = reach.view("pixels", 48)
    assert px.spec.name == "sawyer_px" and px.spec.cameras[0].height == 48 and px.id == reach.id
    with pytest.raises(ValueError, match="observation mode"):
        reach.view("rgb")


def _run_expert(task_id: str, size: int, steps: int, seed: int = 3):
    task = registry.get_task(task_id).view("pixels", size)
    env = task.make_env(seed)
    expert = task.make_expert(env)
    obs, info = env.reset(seed=seed)
    frames, states = [info["images"]], [obs]
    for _ in range(steps):
        obs, _, _, _, info = env.step(expert.act(obs))
        frames.append(info["images"])
        states.append(obs)
    env.close()
    return task, states, frames


@pytest.mark.parametrize("task_id,camera", [("metaworld/push-v3", "corner2"), ("arm/jaco-push", "front")])
def test_rendered_frames_have_the_spec_shape_and_follow_the_scene(task_id, camera):
    task, states, frames = _run_expert(task_id, 32, 25)
    first, last = frames[0][camera], frames[-1][camera]
    assert first.shape == task.spec.camera(camera).shape and first.dtype == np.uint8
    assert first.std() > 5, "a blank frame: the camera sees nothing"
    assert np.abs(first.astype(int) - last).mean() > 0.5, "the arm moved but the image did not change"
    assert all(s.shape == (task.spec.obs_dim,) for s in states)


def test_frame_changes_when_only_the_object_moves():
    task = registry.get_task("arm/jaco-push").view("pixels", 32)
    env = task.make_env(0)
    env.reset(seed=0)
    before = env.renderer.render(env.data, "front")
    q = env.state_env._obj_qpos
    env.data.qpos[q:q + 2] += (0.0, 0.15)  # slide the box sideways, nothing else
    import mujoco

    mujoco.mj_forward(env.state_env.model, env.data)
    after = env.renderer.render(env.data, "front")
    env.close()
    assert np.abs(before.astype(int) - after).sum() > 0


def test_sawyer_goal_is_a_command_only_where_the_task_hands_it_over():
    _, reach_states, _ = _run_expert("metaworld/reach-v3", 16, 0)
    _, door_states, _ = _run_expert("metaworld/door-open-v3", 16, 0)
    assert reach_states[0][7] == 1.0 and door_states[0][7] == 0.0
    assert np.allclose(door_states[0][4:7], metaworld._GOAL_MID)  # no pose leaks through the goal


def test_collect_pixels_records_frames_per_step(tmp_path):
    cfg = C.CollectConfig(tasks="metaworld/reach-v3,arm/jaco-reach", out=tmp_path, episodes=1, workers=0,
                          progress=False, obs="pixels", camera_size=24)
    tasks = [t.view(*cfg.view) for t in registry.resolve(cfg.tasks)]
    ledgers = C.run_rounds(tasks, cfg)
    by_name = C._by_embodiment(ledgers)
    assert sorted(by_name) == ["jaco_px", "sawyer_px"]
    for group in by_name.values():
        eps = list(C.episodes_of(group, Episode))
        assert len(eps) == 1
        ep, spec = eps[0], group[0].task.spec
        assert ep.observation.shape[1] == spec.obs_dim
        (cam,) = spec.cameras
        assert ep.images[cam.name].shape == (len(ep.observation), 24, 24, 3)
        assert ep.images[cam.name].dtype == np.uint8
    report = C.collection_report(cfg, ledgers, wall_s=1.0, cpu_s=1.0)
    assert report["obs"] == "pixels" and report["camera_size"] == 24


def test_collect_config_refuses_a_bad_view(tmp_path):
    with pytest.raises(ValueError, match="obs must be"):
        C.CollectConfig(tasks="mt10", out=tmp_path, obs="rgb")
    with pytest.raises(ValueError, match="camera_size"):
        C.CollectConfig(tasks="mt10", out=tmp_path, obs="pixels", camera_size=4)


def test_collect_pixels_renders_in_worker_processes(tmp_path):
    cfg = C.CollectConfig(tasks="metaworld/reach-v3,drive/dc-current", out=tmp_path, episodes=1, workers=2,
                          progress=False, obs="pixels", camera_size=16)
    tasks = [t.view(*cfg.view) for t in registry.resolve(cfg.tasks)]
    ledgers = {led.task.spec.name: led for led in C.run_rounds(tasks, cfg)}
    sawyer, dc = ledgers["sawyer_px"].kept[0], ledgers["dc"].kept[0]
    assert sawyer.images["corner2"].shape == (sawyer.steps, 16, 16, 3)
    assert dc.images is None and dc.observation.shape[1] == registry.get_task("drive/dc-current").spec.obs_dim


def test_cli_collect_obs_pixels_writes_a_camera_dataset_that_reads_back(tmp_path, capsys):
    from genba.cli import main
    from genba.data.dataset import open_dataset

    rc = main(["collect", "--tasks", "metaworld/reach-v3", "--episodes", "2", "--workers", "0", "--obs", "pixels",
               "--camera-size", "32", "--out", str(tmp_path)])
    assert rc == 0 and "sawyer_px" in capsys.readouterr().out
    ds = open_dataset(tmp_path / "sawyer_px", cache_dir=None)
    assert ds.spec.obs_mode == "pixels" and ds.spec == metaworld.build_pixel_spec(32)
    frames = ds.images["corner2"].take(np.arange(ds.num_frames))
    assert frames.shape == (ds.num_frames, 32, 32, 3) and frames.dtype == np.uint8
    # the same episode again, rendered now: the stored video decodes to what the camera saw
    task = registry.get_task("metaworld/reach-v3").view("pixels", 32)
    seed = ds.extra["collection"]["tasks"]["metaworld/reach-v3"]["kept_seeds"][0]
    env = task.make_env(seed)
    _, info = env.reset(seed=seed)
    env.close()
    err = np.mean((frames[0].astype(float) - info["images"]["corner2"]) ** 2)
    assert 10 * np.log10(255**2 / max(err, 1e-9)) >= 35
