"""`genba finetune`: new embodiment from a spec file, frozen trunk, LoRA, stats, lineage, refusals."""

from __future__ import annotations

import argparse
import dataclasses
import json

import numpy as np
import pytest
from safetensors.torch import load_file

from genba.data.layout import Episode, write_dataset
from genba.errors import CLIError
from genba.model.bundle import read_manifest
from genba.model.policy import load_policy
from genba.train.checkpoint import resolve_checkpoint
from genba.train.config import get_train_preset
from genba.train.finetune import FinetuneConfig, FinetuneError, default_train_config, finetune, register
from genba.train.trainer import train
from tests.fixtures import plain_spec


def spec_of(name, obs, act, period, low=-10.0):
    return plain_spec(name, obs, act, period, obs_low=low)


def episodes(spec, n, length, seed, shift=0.0):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(spec.obs_dim, spec.action_dim)) / np.sqrt(spec.obs_dim)
    out = []
    for e in range(n):
        obs = (np.clip(np.cumsum(rng.normal(scale=0.3, size=(length, spec.obs_dim)), 0), -8, 8) + shift)
        act = np.tanh(obs @ w + 0.3 * (e % 2))
        out.append(Episode(obs.astype(np.float32), act.astype(np.float32), task_index=e % 2, seed=e))
    return out


TASKS = [{"id": "toy/reach", "en": "reach the goal", "ja": "目標に到達する"},
         {"id": "toy/push", "en": "push the block", "ja": "ブロックを押す"}]
NEW_TASKS = [{"id": "toy/press", "en": "press the button", "ja": "ボタンを押す"},
             {"id": "toy/slide", "en": "slide the plate", "ja": "皿を滑らせる"}]
ARM = spec_of("toyarm", 5, 3, 0.0125)
NEW = spec_of("toynew", 4, 2, 0.002)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A pretrained debug checkpoint on `toyarm` and datasets to adapt it with."""
    root = tmp_path_factory.mktemp("ft")
    arm = write_dataset(root / "arm", episodes(ARM, 6, 30, 0), ARM, TASKS)
    new_tasks = write_dataset(root / "arm-new", episodes(ARM, 4, 30, 5), ARM, NEW_TASKS)
    new_emb = write_dataset(root / "new", episodes(NEW, 4, 30, 1), NEW, TASKS)
    cfg = get_train_preset("debug").replace(steps=6, ckpt_every=0)
    res = train(cfg, [arm], root / "pre", progress=False)
    return {"root": root, "parent": res.checkpoint, "arm": arm, "arm_new": new_tasks, "new": new_emb}


def quick(mode="frozen-trunk", **kw):
    return FinetuneConfig(mode=mode, tensorboard=False, train=default_train_config().replace(
        steps=4, batch_size=8, log_every=2, warmup_steps=1), **kw)


def cli_main(argv):
    """`genba finetune ...` through its own parser (other layers' verbs cannot break these tests)."""
    parser = argparse.ArgumentParser(prog="genba")
    register(parser.add_subparsers(dest="verb"))
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except CLIError:
        return 2


def tensors(ckpt):
    return load_file(str(ckpt / "model.safetensors"))


def obs_for(spec, instruction="reach the goal"):
    return {"embodiment": spec.name, "state": np.zeros(spec.obs_dim, np.float32), "instruction": instruction}


def test_new_embodiment_from_spec_file_alone_via_cli(world, tmp_path):
    spec_file = tmp_path / "toynew.json"
    spec_file.write_text(NEW.to_json())
    # the dataset's own genba.json spec is dropped: only the file describes the machine
    data = tmp_path / "bare"
    write_dataset(data, episodes(dataclasses.replace(NEW, name="unnamed"), 3, 20, 2),
                  dataclasses.replace(NEW, name="unnamed"), TASKS)
    out = tmp_path / "run"
    rc = cli_main(["finetune", str(world["parent"]), "--data", str(data), "--spec", str(spec_file), "--out", str(out),
                   "--mode", "frozen-trunk", "--steps", "3", "--batch-size", "8", "--no-progress"])
    assert rc == 0
    policy = load_policy(resolve_checkpoint(out))  # what `genba eval RUN` and the server resolve
    assert set(policy.specs) == {"toyarm", "toynew"}
    a = policy.infer(obs_for(NEW))
    assert a.shape == (2,) and np.all(np.isfinite(a))
    assert policy.infer(obs_for(ARM)).shape == (3,)  # the pretrained machine still serves


def test_frozen_trunk_really_unchanged(world, tmp_path):
    res = finetune(world["parent"], [world["new"]], tmp_path / "run", quick("frozen-trunk"), progress=False)
    before, after = tensors(world["parent"]), tensors(res.checkpoint)
    assert res.added == ["toynew"] and res.adapted == []
    for k, v in before.items():  # trunk, language, rate, and the old machine's stem/head: bit-identical
        assert k in after and np.array_equal(v.numpy(), after[k].numpy()), k
    new_keys = set(after) - set(before)
    assert new_keys and all(".toynew." in k for k in new_keys)
    assert res.step == 4 and np.isfinite(res.loss)


def test_lora_on_new_tasks_changes_trunk_by_low_rank_and_serves(world, tmp_path):
    res = finetune(world["parent"], [world["arm_new"]], tmp_path / "run", quick("lora", lora_rank=2),
                   progress=False)
    before, after = tensors(world["parent"]), tensors(res.checkpoint)
    assert set(before) == set(after)  # adapters folded in: a plain checkpoint
    wq = "trunk.layers.0.attn.wq.weight"
    delta = (after[wq] - before[wq]).double()
    assert delta.abs().max() > 0 and np.linalg.matrix_rank(delta.numpy(), tol=1e-6) <= 2
    assert np.array_equal(before["lang.embed"].numpy(), after["lang.embed"].numpy())
    assert res.adapted == ["toyarm"] and "keep parent" in res.stats_decisions["toyarm"]
    a = load_policy(res.checkpoint).infer(obs_for(ARM, "press the button"))
    assert a.shape == (3,) and np.all(np.isfinite(a))


def test_lineage_includes_parent(world, tmp_path):
    import hashlib

    res = finetune(world["parent"], [world["new"]], tmp_path / "run", quick("full"), progress=False)
    lin = read_manifest(res.checkpoint)["lineage"]
    parent_sha = hashlib.sha256((world["parent"] / "model.safetensors").read_bytes()).hexdigest()
    assert lin["parent"]["weights_sha256"] == parent_sha
    assert lin["parent"]["lineage"] == read_manifest(world["parent"])["lineage"]
    assert lin["ancestry"][0]["weights_sha256"] == parent_sha
    assert [d["root"] for d in lin["datasets"]] == [str(world["new"])]
    assert lin["adaptation"]["mode"] == "full" and lin["adaptation"]["added_embodiments"] == ["toynew"]
    # a grandchild carries the whole chain
    res2 = finetune(res.checkpoint, [world["arm_new"]], tmp_path / "run2", quick("lora"), progress=False)
    chain = [a["weights_sha256"] for a in read_manifest(res2.checkpoint)["lineage"]["ancestry"]]
    assert chain[1] == parent_sha and len(chain) == 2


def test_stats_kept_in_range_pooled_out_of_range(world, tmp_path):
    # every frame at 9.5: inside the spec's limits, far outside what the parent was trained on
    far = write_dataset(tmp_path / "far", [Episode(np.full((20, 5), 9.5, np.float32), np.zeros((20, 3), np.float32),
                                                   0, 0)], ARM, NEW_TASKS)
    res = finetune(world["parent"], [far], tmp_path / "run", quick(scope="embodiment"), progress=False)
    assert res.stats_decisions["toyarm"].startswith("pooled")
    parent_mean = np.asarray(read_manifest(world["parent"])["stats"]["toyarm"]["observation.state"]["mean"])
    mean = np.asarray(read_manifest(res.checkpoint)["stats"]["toyarm"]["observation.state"]["mean"])
    assert np.all(mean > parent_mean)  # pulled towards 9.5
    with pytest.raises(FinetuneError, match="stats"):
        FinetuneConfig(stats="bogus")


@pytest.mark.parametrize("bad, match", [
    (dataclasses.replace(NEW, obs_names=NEW.obs_names + ("o9",), obs_units=NEW.obs_units + ("m",),
                         obs_low=NEW.obs_low + (-1.0,), obs_high=NEW.obs_high + (1.0,)), "has 5 observation.state"),
    (dataclasses.replace(NEW, action_low=(-0.1, -0.1), action_high=(0.1, 0.1)), "outside the spec's limits"),
    (dataclasses.replace(NEW, action_names=("x", "a1")), "calls it 'a0'"),
])
def test_inconsistent_spec_refused(world, tmp_path, bad, match):
    with pytest.raises(FinetuneError, match=match):
        finetune(world["parent"], [world["new"]], tmp_path / "run", quick(), spec=bad, progress=False)


def test_invalid_spec_file_and_changed_known_spec_refused(world, tmp_path):
    d = json.loads(NEW.to_json())
    d["action_low"] = [1.0, -1.0]  # low >= high on a0
    (tmp_path / "bad.json").write_text(json.dumps(d))
    rc = cli_main(["finetune", str(world["parent"]), "--data", str(world["new"]), "--spec", str(tmp_path / "bad.json"),
                   "--out", str(tmp_path / "x"), "--steps", "1", "--no-progress"])
    assert rc == 2 and not (tmp_path / "x").exists()
    changed = dataclasses.replace(ARM, control_period=0.02)
    with pytest.raises(FinetuneError, match="control_period"):
        finetune(world["parent"], [world["arm_new"]], tmp_path / "run", quick(), spec=changed, progress=False)


def test_scoped_stats_pool_into_the_entry_only(world, tmp_path):
    far = write_dataset(tmp_path / "far", [Episode(np.full((20, 5), 9.5, np.float32), np.zeros((20, 3), np.float32),
                                                   0, 0)], ARM, NEW_TASKS)
    res = finetune(world["parent"], [far], tmp_path / "run", quick(), progress=False)  # auto: task-scoped
    assert res.scoped == {"toyarm__run": "toyarm"} and res.stats_decisions["toyarm__run"].startswith("pooled")
    parent, child = read_manifest(world["parent"])["stats"], read_manifest(res.checkpoint)["stats"]
    assert child["toyarm"] == parent["toyarm"]  # the machine's own stats: untouched
    assert np.all(np.asarray(child["toyarm__run"]["observation.state"]["mean"])
                  > np.asarray(parent["toyarm"]["observation.state"]["mean"]))


def test_from_scratch_baseline_has_only_the_data_embodiments(world, tmp_path):
    res = finetune(world["parent"], [world["new"]], tmp_path / "run", quick(init="scratch"), progress=False)
    m = read_manifest(res.checkpoint)
    assert set(m["specs"]) == {"toynew"} and m["lineage"]["adaptation"]["init"] == "scratch"
    assert load_policy(res.checkpoint).infer(obs_for(NEW)).shape == (2,)


def test_cli_declares_finetune_purpose_for_governed_reads(world):
    parser = argparse.ArgumentParser(prog="genba")
    register(parser.add_subparsers(dest="verb"))
    args = parser.parse_args(["finetune", str(world["parent"]), "--data", str(world["new"]), "--out", "x"])
    assert args.purpose == "finetune" and args.mode == "lora" and args.replay == () and args.scope == "auto"
