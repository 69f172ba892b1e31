"""`genba collect`: datasets per embodiment, honest failure counts, atomic output."""

from __future__ import annotations

import json
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

from genba.data.dataset import open_dataset
from genba.data.spec import EmbodimentSpec
from genba.envs import collect as C
from genba.envs import registry
from genba.envs.seeds import train_seed

# ---- a toy task: fixed length, success judged at the end, fails for some seeds -------
TOY_SPEC = EmbodimentSpec(
    name="toy", robot_type="toy", obs_names=("x", "t"), obs_units=("m", "s"), obs_low=(-10.0, 0.0),
    obs_high=(10.0, 100.0), action_names=("v", "unused"), action_units=("m/s", "1"), action_low=(-1.0, -1.0), action_high=(1.0, 1.0),
    control_period=0.1, action_meaning="velocity")


class ToyEnv(gym.Env):
    """Drive x to 1; seeds divisible by 3 start where the expert cannot make it in time."""

    def __init__(self, seed: int) -> None:
        self.observation_space = gym.spaces.Box(np.float32([-10, 0]), np.float32([10, 100]))
        self.action_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.seed0, self.x, self.t = seed, 0.0, 0

    def _obs(self):
        return np.float32([self.x, self.t])

    def reset(self, *, seed=None, options=None):
        seed = self.seed0 if seed is None else seed
        self.x, self.t = (-9.0 if seed % 3 == 0 else 0.5), 0
        return self._obs(), {"success": False}

    def step(self, action):
        self.x += 0.1 * float(action[0])
        self.t += 1
        return self._obs(), 0.0, False, self.t >= 8, {"success": abs(self.x - 1.0) < 0.2}


class ToyExpert:
    def reset(self):
        pass

    def act(self, obs):
        return np.float32([np.clip(10 * (1.0 - obs[0]), -1, 1), 0.0])


def _toy_task(name: str) -> registry.Task:
    return registry.Task(id=f"toy/{name}", spec=TOY_SPEC, instruction_en=f"Move to one ({name}).",
                         instruction_ja=f"1 まで動かしてください（{name}）。", max_steps=8,
                         make_env=ToyEnv, make_expert=lambda env: ToyExpert(), groups=("toys",))


@pytest.fixture
def toys(monkeypatch):
    registry.load_all()
    monkeypatch.setattr(registry, "_TASKS", dict(registry._TASKS))  # registered for this test only
    for name in ("a", "b"):
        registry.register(_toy_task(name))
    monkeypatch.setattr(C, "_ENVS", {})
    return "toys"


def _cfg(tmp_path: Path, tasks: str, episodes: int, **kw) -> C.CollectConfig:
    return C.CollectConfig(tasks=tasks, out=tmp_path / "out", episodes=episodes, workers=0, progress=False, **kw)


def test_collect_counts_failures_and_keeps_only_successes(tmp_path, toys):
    paths = C.collect(_cfg(tmp_path, toys, episodes=4, max_attempts_factor=2))
    ds = open_dataset(paths["toy"])
    rep = ds.extra["collection"]
    for tid in ("toy/a", "toy/b"):
        seeds = [train_seed(tid, k) for k in range(8)]
        fails = [s for s in seeds if s % 3 == 0]
        per = rep["tasks"][tid]
        assert per["failed_seeds"] == [s for s in seeds[:per["attempted"]] if s % 3 == 0]
        assert per["kept"] + per["failed"] == per["attempted"] <= 8
        assert per["kept"] == min(4, 8 - len(fails))
        assert all(s % 3 != 0 for s in per["kept_seeds"])
    assert rep["failed"] == sum(p["failed"] for p in rep["tasks"].values())
    assert ds.num_episodes == rep["kept"]
    assert [e.seed for e in ds.episodes] == rep["tasks"]["toy/a"]["kept_seeds"] + rep["tasks"]["toy/b"]["kept_seeds"]
    assert all(e.length == 8 for e in ds.episodes)  # fixed-length task: full episodes
    assert ds.instruction(1, "ja") == "1 まで動かしてください（b）。"


def test_short_task_is_reported_not_padded(tmp_path, toys):
    seeds = {t: [train_seed(t, k) for k in range(4)] for t in ("toy/a", "toy/b")}
    failing = {t: sum(s % 3 == 0 for s in v) for t, v in seeds.items()}
    assert any(failing.values())  # the seed rule gives this test a failure to report
    path = C.collect(_cfg(tmp_path, toys, episodes=4, max_attempts_factor=1))["toy"]
    rep = open_dataset(path).extra["collection"]
    for t, n_fail in failing.items():
        assert rep["tasks"][t]["short_by"] == n_fail and rep["tasks"][t]["attempted"] == 4
    assert rep["complete"] is False


def test_no_success_at_all_writes_nothing(tmp_path, toys, monkeypatch):
    monkeypatch.setattr(ToyExpert, "act", lambda self, obs: np.float32([-1.0, 0.0]))
    with pytest.raises(RuntimeError, match="no successful episode"):
        C.collect(_cfg(tmp_path, "toy/a", episodes=2))
    assert not (tmp_path / "out" / "toy").exists()


def test_metaworld_collect_two_tasks(tmp_path):
    paths = C.collect(_cfg(tmp_path, "metaworld/reach-v3,metaworld/drawer-close-v3", episodes=2))
    ds = open_dataset(paths["sawyer"])
    rep = json.loads((paths["sawyer"] / "meta" / "genba.json").read_text())["collection"]
    assert set(rep["tasks"]) == {"metaworld/reach-v3", "metaworld/drawer-close-v3"}
    assert rep["failed"] == 0 and rep["kept"] == 4 == ds.num_episodes and rep["complete"]
    assert ds.spec.name == "sawyer" and ds.observation.shape[1] == 39
    assert [t["ja"] for t in ds.tasks][0] == "グリッパーを目標位置まで動かしてください。"
    for e in ds.episodes:  # stopped HOLD_STEPS after the first success, well before 500
        assert e.length < 500
        assert e.seed == train_seed(registry.get_task("reach-v3" if e.task_index == 0 else "drawer-close-v3").id,
                                    e.episode_index % 2)


def test_interrupted_rollouts_leave_no_dataset(tmp_path, toys, monkeypatch):
    calls = {"n": 0}

    def exploding_act(self, obs):
        calls["n"] += 1
        if calls["n"] > 20:
            raise KeyboardInterrupt  # what Ctrl-C raises mid-collection
        return np.float32([1.0, 0.0])

    monkeypatch.setattr(ToyExpert, "act", exploding_act)
    with pytest.raises(KeyboardInterrupt):
        C.collect(_cfg(tmp_path, toys, episodes=4))
    assert calls["n"] == 21
    out = tmp_path / "out"
    assert not out.exists() or not list(out.rglob("info.json"))


def test_interrupted_write_leaves_no_complete_looking_dataset(tmp_path, toys, monkeypatch):
    import genba.data.layout as L

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(L, "_write_tasks", boom)  # after the frames are on disk, before info.json
    with pytest.raises(KeyboardInterrupt):
        C.collect(_cfg(tmp_path, toys, episodes=2))
    out = tmp_path / "out"
    assert not (out / "toy").exists()
    assert not list(out.rglob("info.json")) and not list(out.rglob("*.parquet"))


def test_existing_output_refused_before_rollouts(tmp_path, toys, monkeypatch):
    (tmp_path / "out" / "toy").mkdir(parents=True)
    monkeypatch.setattr(C, "run_rounds", lambda *a, **k: pytest.fail("rolled out before refusing"))
    with pytest.raises(FileExistsError, match="overwrite"):
        C.collect(_cfg(tmp_path, toys, episodes=2))


def test_workers_give_the_same_dataset_as_in_process(tmp_path):
    a = C.collect(_cfg(tmp_path / "a", "metaworld/reach-v3", episodes=3))["sawyer"]
    b = C.collect(C.CollectConfig(tasks="metaworld/reach-v3", out=tmp_path / "b", episodes=3, workers=2,
                                  progress=False))["sawyer"]
    da, db = open_dataset(a), open_dataset(b)
    np.testing.assert_array_equal(da.observation, db.observation)
    np.testing.assert_array_equal(da.action, db.action)


def test_cli_collect_rejects_bad_input(tmp_path, capsys):
    from genba.cli import main

    assert main(["collect", "--tasks", "mt11", "--episodes", "1", "--out", str(tmp_path)]) == 2
    assert "mt10" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["collect", "--tasks", "mt10", "--episodes", "0", "--out", str(tmp_path)])


# ---- DART: noisy execution, clean labels ---------------------------------------------
def test_noise_records_clean_labels_on_perturbed_states(tmp_path):
    from genba.envs.embodiments.jaco import JacoExpert

    clean = open_dataset(C.collect(_cfg(tmp_path / "c", "arm/jaco-reach", episodes=2))["jaco"])
    noisy = open_dataset(C.collect(_cfg(tmp_path / "n", "arm/jaco-reach", episodes=2, noise=0.2))["jaco"])
    assert noisy.extra["collection"]["noise"] == 0.2
    expert = JacoExpert("reach")
    for ep in noisy.episodes:
        c = clean.episodes[ep.episode_index]
        assert ep.seed == c.seed  # same layouts, different trajectories
        obs = noisy.observation[ep.start:ep.start + ep.length]
        act = noisy.action[ep.start:ep.start + ep.length]
        assert not np.allclose(obs[:20], clean.observation[c.start:c.start + 20], atol=1e-3)
        expert.reset()  # each label is what the (stateful) expert says on the recorded states
        np.testing.assert_allclose(np.stack([expert.act(o) for o in obs]), act, atol=1e-6)


def test_noise_is_reproducible_and_per_selection(tmp_path, toys):
    a = open_dataset(C.collect(_cfg(tmp_path / "a", toys, episodes=2, noise="toy/a=0.5"))["toy"])
    b = open_dataset(C.collect(_cfg(tmp_path / "b", toys, episodes=2, noise="toy/a=0.5"))["toy"])
    plain = open_dataset(C.collect(_cfg(tmp_path / "p", toys, episodes=2))["toy"])
    np.testing.assert_array_equal(a.observation, b.observation)
    rep = a.extra["collection"]["tasks"]
    assert rep["toy/a"]["noise"] == 0.5 and rep["toy/b"]["noise"] == 0.0
    on_a = [e for e in a.episodes if e.task_index == 0]
    on_b = [e for e in a.episodes if e.task_index == 1]
    rows = lambda ds, eps: np.concatenate([ds.observation[e.start:e.start + e.length] for e in eps])  # noqa: E731
    assert not np.array_equal(rows(a, on_a), rows(plain, on_a))  # toy/a perturbed
    np.testing.assert_array_equal(rows(a, on_b), rows(plain, on_b))  # toy/b untouched


@pytest.mark.parametrize("bad, message", [
    ("-0.1", "outside"), ("1.5", "outside"), ("x", "not a number"), ("=0.1", "no task selection"),
    ("0.1,toy/a=0.2", "every part"), ("arms=0.1", "none of the collected"), ("toy/a=0.1,toys=0.2", "both"),
    ("nosuch=0.1", "unknown task"),
])
def test_bad_noise_is_refused_before_rollouts(tmp_path, toys, monkeypatch, bad, message):
    monkeypatch.setattr(C, "run_rounds", lambda *a, **k: pytest.fail("rolled out before refusing"))
    with pytest.raises(ValueError, match=message):
        C.collect(_cfg(tmp_path, toys, episodes=1, noise=bad))


def test_cli_collect_rejects_bad_noise(tmp_path, capsys):
    from genba.cli import main

    assert main(["collect", "--tasks", "arm/jaco-reach", "--episodes", "1", "--out", str(tmp_path),
                 "--noise", "2"]) == 2
    assert "noise" in capsys.readouterr().err


def test_cli_collect_with_no_success_is_a_clear_error(tmp_path, toys, monkeypatch, capsys):
    from genba.cli import main

    monkeypatch.setattr(ToyExpert, "act", lambda self, obs: np.float32([-1.0, 0.0]))
    assert main(["collect", "--tasks", "toy/a", "--episodes", "1", "--out", str(tmp_path), "--workers", "0"]) == 2
    assert "no successful episode" in capsys.readouterr().err
    assert not (tmp_path / "toy").exists()
