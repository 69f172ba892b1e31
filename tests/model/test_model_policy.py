import json

import numpy as np
import pytest
import torch

from genba.model.bundle import BundleError, load_model, save_bundle
from genba.model.config import get_preset
from genba.model.policy import Policy, infer_chunk_many, infer_many, load_policy
from genba.model.runtime import ChunkQueue, Execution
from tests.fixtures import build_model, toy_specs, toy_stats


@pytest.fixture
def ckpt(tmp_path, debug_cfg):
    specs = toy_specs()
    model = build_model(debug_cfg, specs)
    save_bundle(tmp_path / "ckpt", model, stats=toy_stats(specs), preset="debug", lineage={"run": "test"})
    return tmp_path / "ckpt", model


def obs(name="arm", dim=7, value=0.3, text="pick up the block"):
    return {"embodiment": name, "state": np.full(dim, value, dtype=np.float32), "instruction": text}


def rollout(policy, n=6):
    policy.reset()
    return np.stack([policy.infer(obs(value=0.1 * i)) for i in range(n)])


def test_round_trip_same_actions(ckpt):
    path, model = ckpt
    manifest = json.loads((path / "checkpoint.json").read_text())
    assert manifest["preset"] == "debug" and set(manifest["specs"]) == {"arm", "drive"}
    assert manifest["lineage"] == {"run": "test"} and manifest["tokenizer"]["max_len"] == model.cfg.max_lang_len
    stats = toy_stats(toy_specs())
    direct = Policy(model, stats, device="cpu")
    loaded = load_policy(path, preset="debug", device="cpu")
    a, b = rollout(direct), rollout(loaded)
    assert a.shape == (6, 3) and a.dtype == np.float32
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(rollout(loaded), b, rtol=1e-5, atol=1e-6)  # reset makes it repeatable
    reloaded, _ = load_model(path)
    assert all(torch.equal(v, reloaded.state_dict()[k]) for k, v in model.state_dict().items())


def test_actions_are_unnormalized(ckpt):
    path, model = ckpt
    stats = toy_stats(toy_specs())
    policy = load_policy(path, device="cpu", execute="replan", replan_every=1)
    chunk = policy.infer_chunk(obs())
    policy.reset()
    policy.infer(obs())
    mean, std = stats["arm"]["action"]["mean"], stats["arm"]["action"]["std"]
    assert chunk.shape == (model.cfg.chunk, 3)
    # a fresh debug model predicts ~0 normalized, i.e. ~mean in machine units
    np.testing.assert_allclose(chunk.mean(0), mean, atol=2 * std.max())


def test_wrong_preset_is_refused(ckpt):
    path, _ = ckpt
    with pytest.raises(BundleError, match="preset 'debug', not the requested 'small'"):
        load_policy(path, preset="small")
    manifest = json.loads((path / "checkpoint.json").read_text())
    manifest["config"] = get_preset("tiny").to_dict()  # weights of debug, config of tiny
    (path / "checkpoint.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="do not match the config"):
        load_policy(path)


def test_truncated_weights_are_refused(ckpt):
    path, _ = ckpt
    weights = path / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(BundleError, match="model.safetensors.*truncated"):
        load_policy(path)
    manifest = json.loads((path / "checkpoint.json").read_text())
    del manifest["weights"]  # no recorded size: the safetensors reader must still catch it
    (path / "checkpoint.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="truncated or corrupt"):
        load_policy(path)


def test_missing_checkpoint_is_clear(tmp_path):
    with pytest.raises(BundleError, match="checkpoint.json: not found"):
        load_policy(tmp_path)


@pytest.mark.parametrize("bad,match", [
    ({"embodiment": "robot"}, r"obs\['embodiment'\] 'robot' is unknown"),
    ({"state": np.zeros(5)}, r"obs\['state'\] has shape \(5,\), expected \(7,\)"),
    ({"state": np.array([0, 0, np.nan, 0, 0, 0, 0])}, r"obs\['state'\] holds non-finite values \(arm_o2=nan\)"),
    ({"state": np.array([0, 0, 0, 0, 0, 0, np.inf])}, r"obs\['state'\] holds non-finite"),
    ({"instruction": None}, r"obs\['instruction'\] must be a str"),
])
def test_bad_observations_name_the_field(ckpt, bad, match):
    policy = load_policy(ckpt[0], device="cpu")
    with pytest.raises(ValueError, match=match):
        policy.infer({**obs(), **bad})
    with pytest.raises(ValueError, match="lacks 'state'"):
        policy.infer({"embodiment": "arm", "instruction": "x"})


def test_replan_plays_the_chunk_open_loop(ckpt):
    policy = load_policy(ckpt[0], device="cpu", execute="replan", replan_every=2)
    calls = []
    original = policy.runtime.predict
    policy.runtime.predict = lambda groups: calls.append(1) or original(groups)
    for i in range(5):
        policy.infer(obs(value=0.1 * i))
    assert len(calls) == 3  # steps 0, 2, 4


def test_ensemble_averages_overlapping_chunks():
    queue = ChunkQueue(Execution.make("ensemble", None, 0.0, chunk=4), chunk=4)
    for t in range(3):
        queue.push(t, np.full((4, 3), float(t)))
    assert np.allclose(queue.action(0), 0.0) and np.allclose(queue.action(1), 0.5)  # chunk0[1], chunk1[0]
    assert np.allclose(queue.action(2), 1.0)
    weighted = ChunkQueue(Execution.make("ensemble", None, 1.0, chunk=4), chunk=4)
    weighted.push(0, np.zeros((2, 4, 3)))  # a lockstep group of two streams
    weighted.push(1, np.ones((2, 4, 3)))
    w_new, w_old = 1.0, np.exp(-1.0)  # age 0 for the newest chunk weighs most
    np.testing.assert_allclose(weighted.action(1), np.full((2, 3), w_new / (w_new + w_old)), rtol=1e-6)


@pytest.mark.parametrize("execute,k,m", [("sometimes", None, 0.1), ("replan", 5, 0.1), ("replan", 0, 0.1),
                                         ("ensemble", None, -1.0), ("ensemble", None, float("nan"))])
def test_bad_execution_is_refused(ckpt, execute, k, m):
    with pytest.raises(ValueError, match="execute|replan_every|ensemble_m"):
        load_policy(ckpt[0], device="cpu", execute=execute, replan_every=k, ensemble_m=m)


def test_history_and_instruction_cache(ckpt):
    policy = load_policy(ckpt[0], device="cpu")
    policy.infer(obs())
    summary = policy.stream.lang
    policy.infer(obs(value=1.0))
    assert policy.stream.lang is summary and len(policy.stream.history) == policy.cfg.history
    policy.infer(obs(text="ブロックを持ち上げる"))
    assert policy.stream.lang is not summary
    policy.infer(obs(text="pick up the block"))
    assert policy.stream.lang is summary  # cached per instruction
    policy.infer(obs("drive", 4))  # another machine: a fresh episode
    assert len(policy.stream.history) == 1 and policy.entry == "drive"


def test_save_refuses_a_state_dict_of_another_shape(tmp_path, debug_cfg):
    specs = toy_specs()
    model = build_model(debug_cfg, specs)
    sd = model.state_dict()
    sd["trunk.norm.weight"] = torch.ones(3)
    with pytest.raises(BundleError, match="trunk.norm.weight"):
        save_bundle(tmp_path / "c", model, stats=toy_stats(specs), state_dict=sd)
    assert not (tmp_path / "c" / "genba.json").exists()
    with pytest.raises(BundleError, match="no normalization stats"):
        save_bundle(tmp_path / "d", model, stats={})


# ---- several streams, one model call -------------------------------------------------------
STREAMS = [("arm", 7, "ensemble", "pick up the block"), ("drive", 4, "replan", "track the current"),
           ("arm", 7, "replan", "ブロックを持ち上げる"), ("drive", 4, "ensemble", "track the current")]


def stream_policies(model, stats):
    return [Policy(model, stats, device="cpu", execute=ex, replan_every=2, seed=10 + k)
            for k, (_, _, ex, _) in enumerate(STREAMS)]


def stream_obs(rng, step):
    out = []
    for k, (name, dim, _, text) in enumerate(STREAMS):
        if k == 0 and step == 5:  # stream 0 switches machine mid-run: a new episode on that stream only
            name, dim = "drive", 4
        elif k == 0 and step > 5:
            name, dim = "drive", 4
        out.append({"embodiment": name, "state": rng.normal(size=dim).astype(np.float32), "instruction": text})
    return out


@pytest.mark.parametrize("chunks", [False, True], ids=["infer", "infer_chunk"])
def test_batched_streams_equal_one_by_one(debug_cfg, chunks):
    specs = toy_specs()
    model, stats = build_model(debug_cfg, specs), toy_stats(specs)
    batched, singles = stream_policies(model, stats), stream_policies(model, stats)
    calls = []
    readouts = model.readouts
    model.readouts = lambda batch: calls.append(sorted(batch)) or readouts(batch)
    rng = np.random.default_rng(0)
    for step in range(9):  # longer than the debug chunk: ensembles, replans and a machine switch
        obs = stream_obs(rng, step)
        calls.clear()
        if chunks:
            got = infer_chunk_many(batched, obs)
            assert len(calls) == 1  # one trunk pass for four streams of two embodiments
            want = [p.infer_chunk(o) for p, o in zip(singles, obs)]
        else:
            got = infer_many(batched, obs)
            assert len(calls) <= 1
            want = [p.infer(o) for p, o in zip(singles, obs)]
        for g, w in zip(got, want):
            assert g.shape == w.shape and g.dtype == np.float32
            np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)
    for b, s in zip(batched, singles):  # the streams' state matches too: the next single step agrees
        assert b.stream.step == s.stream.step and len(b.stream.queue.items) == len(s.stream.queue.items) \
            and b.entry == s.entry


def test_batched_refuses_bad_input_before_any_stream_advances(debug_cfg):
    specs = toy_specs()
    model, stats = build_model(debug_cfg, specs), toy_stats(specs)
    pols = stream_policies(model, stats)
    obs = stream_obs(np.random.default_rng(0), 0)
    infer_many(pols, obs)
    before = [p.stream.step for p in pols]
    bad = [*obs[:2], {**obs[2], "state": np.zeros(3)}, obs[3]]
    with pytest.raises(ValueError, match=r"observations\[2\]: obs\['state'\] has shape \(3,\)"):
        infer_many(pols, bad)
    assert [p.stream.step for p in pols] == before
    with pytest.raises(ValueError, match="same Policy appears twice"):
        infer_chunk_many([pols[0], pols[0]], obs[:2])
    with pytest.raises(ValueError, match="share one model"):
        infer_many([pols[0], Policy(build_model(debug_cfg, specs), stats, device="cpu")], obs[:2])
    with pytest.raises(ValueError, match="2 policies but 1 observations"):
        infer_many(pols[:2], obs[:1])
    assert infer_many([], []) == []
