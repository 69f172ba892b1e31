"""Task-scoped adaptation (`genba finetune --scope tasks`): new tasks get a routed copy of the machine's
stem and head, so old tasks stay bit-identical; routes in Policy, BatchedPolicy, the server and the bundle."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from test_finetune import ARM, NEW_TASKS, TASKS, episodes, quick, world  # noqa: F401 (world: module fixture)

from genba.data.layout import write_dataset
from genba.data.transforms import RouteInstruction, TransformError
from genba.eval.rollout import load_batched_policy
from genba.model.bundle import BundleError, bundle_routes, load_model, read_manifest, save_bundle
from genba.model.policy import Policy, infer_many, load_policy
from genba.train.finetune import FinetuneError, finetune

MORE_TASKS = [{"id": "toy/stack", "en": "stack the cubes", "ja": "キューブを積む"},
              {"id": "toy/open", "en": "open the door", "ja": "ドアを開ける"}]
OLD, NEW = TASKS[0], NEW_TASKS[0]


@pytest.fixture(scope="module")
def scoped(world, tmp_path_factory):
    """One task-scoped fine-tune of the toy parent on two new tasks."""
    res = finetune(world["parent"], [world["arm_new"]], tmp_path_factory.mktemp("sc") / "press", quick(),
                   progress=False)
    return res


def states(n, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(scale=2.0, size=(n, ARM.obs_dim)).astype(np.float32)


def roll(policy, instruction, n=6):
    policy.reset()
    return np.stack([policy.infer({"embodiment": "toyarm", "state": s, "instruction": instruction})
                     for s in states(n)])


def test_scoped_entry_is_a_trained_copy_and_every_parent_tensor_is_unchanged(world, scoped):
    assert scoped.scoped == {"toyarm__press": "toyarm"} and scoped.adapted == ["toyarm"]
    before, after = load_file(str(world["parent"] / "model.safetensors")), load_file(
        str(scoped.checkpoint / "model.safetensors"))
    for k, v in before.items():
        assert torch.equal(v, after[k]), k
    new = sorted(set(after) - set(before))
    assert new and all(".toyarm__press." in k for k in new)
    # the copy trained: at least one of its tensors left the machine's
    assert any(not torch.equal(after[k], before[k.replace("toyarm__press", "toyarm")]) for k in new)
    lin = read_manifest(scoped.checkpoint)["lineage"]["adaptation"]
    assert lin["scope"] == "tasks" and lin["scoped_entries"] == {"toyarm__press": "toyarm"}


def test_old_tasks_bit_identical_new_tasks_routed_in_policy(world, scoped):
    parent, child = load_policy(world["parent"]), load_policy(scoped.checkpoint)
    assert set(child.specs) == {"toyarm"}  # the entry is internal: callers name the machine
    for lang in ("en", "ja"):
        assert np.array_equal(roll(parent, OLD[lang]), roll(child, OLD[lang]))
        assert child._embodiment == "toyarm"
        new = roll(child, NEW[lang])
        assert child._embodiment == "toyarm__press"
        assert not np.allclose(new, roll(parent, NEW[lang]))
    with pytest.raises(ValueError, match="unknown"):
        child.infer({"embodiment": "toyarm__press", "state": states(1)[0], "instruction": NEW["en"]})


def test_batched_policy_routes_like_policy(world, scoped):
    ckpt = str(scoped.checkpoint)
    batched = load_batched_policy(ckpt, "ensemble", None)
    for instruction, entry in ((OLD["en"], "toyarm"), (NEW["en"], "toyarm__press"), (NEW["ja"], "toyarm__press"),
                               (NEW_TASKS[1]["ja"], "toyarm__press"), (OLD["ja"], "toyarm")):
        batched.reset(2, "toyarm", instruction)
        assert batched.embodiment == entry
        single = load_policy(ckpt)
        got = [batched.act(np.stack([s, s])) for s in states(4)]
        want = roll(single, instruction, 4)
        np.testing.assert_allclose(np.stack(got)[:, 0], want, rtol=1e-5, atol=1e-6)
    parent = load_batched_policy(str(world["parent"]), "ensemble", None)
    parent.reset(1, "toyarm", OLD["en"])
    batched.reset(1, "toyarm", OLD["en"])
    for s in states(3):
        assert np.array_equal(parent.act(s[None]), batched.act(s[None]))
    with pytest.raises(ValueError, match="unknown"):
        batched.reset(1, "toyarm__press", NEW["en"])


def test_infer_many_mixes_old_and_new_tasks(scoped):
    child = load_policy(scoped.checkpoint)
    pols = [Policy(child.model, {n: v for n, v in _stats(scoped).items()}, manifest=child.manifest) for _ in range(2)]
    obs = [{"embodiment": "toyarm", "state": states(1)[0], "instruction": i} for i in (OLD["en"], NEW["ja"])]
    many = infer_many(pols, obs)
    for o, a in zip(obs, many):
        alone = Policy(child.model, _stats(scoped), manifest=child.manifest)
        np.testing.assert_allclose(a, alone.infer(o), rtol=1e-5, atol=1e-6)
    assert [p._embodiment for p in pols] == ["toyarm", "toyarm__press"]


def _stats(res):
    from genba.model.bundle import bundle_stats

    return bundle_stats(read_manifest(res.checkpoint))


def test_route_table_survives_save_and_load(scoped, tmp_path):
    routes = bundle_routes(read_manifest(scoped.checkpoint))
    assert routes == scoped.routes
    assert {k: v for k, v in routes.routes.items()} == {("toyarm", t[lang]): "toyarm__press"
                                                        for t in NEW_TASKS for lang in ("en", "ja")}
    assert RouteInstruction.from_dict(routes.to_dict()) == routes
    model, manifest = load_model(scoped.checkpoint)
    out = save_bundle(tmp_path / "again", model, stats=_stats(scoped), routes=routes)
    assert bundle_routes(read_manifest(out)) == routes
    bad = RouteInstruction({("toyarm", "x"): "nowhere"})
    with pytest.raises(BundleError, match="nowhere"):
        save_bundle(tmp_path / "bad", model, stats=_stats(scoped), routes=bad)


def test_route_transform_and_clash():
    r = RouteInstruction({("arm", "a"): "arm__x"})
    assert r({"embodiment": "arm", "instruction": "a"})["embodiment"] == "arm__x"
    assert r({"embodiment": "arm", "instruction": "b"})["embodiment"] == "arm"
    assert r.merge(RouteInstruction({("arm", "b"): "arm__y"})).entry("arm", "b") == "arm__y"
    with pytest.raises(TransformError, match="already routed"):
        r.merge(RouteInstruction({("arm", "a"): "arm__y"}))


def test_second_scoped_finetune_accumulates_routes_and_clash_is_refused(world, scoped, tmp_path):
    more = write_dataset(tmp_path / "more", episodes(ARM, 2, 30, 7), ARM, MORE_TASKS)
    res = finetune(scoped.checkpoint, [more], tmp_path / "press", quick(), progress=False)  # same tag: suffixed
    assert res.scoped == {"toyarm__press-2": "toyarm"}
    assert set(res.routes.entries) == {"toyarm__press", "toyarm__press-2"}
    before, after = load_file(str(scoped.checkpoint / "model.safetensors")), load_file(
        str(res.checkpoint / "model.safetensors"))
    assert all(torch.equal(v, after[k]) for k, v in before.items())
    grand, child = load_policy(res.checkpoint), load_policy(scoped.checkpoint)
    for instruction in (OLD["en"], NEW["ja"]):  # the first fine-tune's tasks too stay bit-identical
        assert np.array_equal(roll(grand, instruction), roll(child, instruction))
    roll(grand, MORE_TASKS[0]["ja"])
    assert grand._embodiment == "toyarm__press-2"
    with pytest.raises(FinetuneError, match="already routed"):
        finetune(scoped.checkpoint, [world["arm_new"]], tmp_path / "again", quick(), progress=False)
    with pytest.raises(FinetuneError, match="already has an entry"):
        finetune(scoped.checkpoint, [more], tmp_path / "x", quick(scope_tag="press"), progress=False)


def test_scope_tasks_refused_with_a_moving_trunk_or_replay(world, tmp_path):
    for mode in ("lora", "full"):
        with pytest.raises(FinetuneError, match="--scope tasks needs --mode frozen-trunk"):
            quick(mode, scope="tasks")
    with pytest.raises(FinetuneError, match="replay"):
        finetune(world["parent"], [world["arm_new"]], tmp_path / "r", quick(), replay=[world["arm"]], progress=False)


def test_lora_default_keeps_embodiment_scope(world, tmp_path):
    res = finetune(world["parent"], [world["arm_new"]], tmp_path / "l", quick("lora", lora_rank=2), progress=False)
    assert res.scoped == {} and "routes" not in read_manifest(res.checkpoint)


def test_scoped_checkpoint_serves(world, scoped):
    from genba.serve.backends import GenbaBackend

    be = GenbaBackend.load(str(scoped.checkpoint))
    assert set(be.specs) == {"toyarm"}
    sessions = [be.new_state() for _ in range(3)]
    obs = [{"embodiment": "toyarm", "state": s, "instruction": i}
           for s, i in zip(states(3), (OLD["en"], NEW["en"], NEW["ja"]))]
    chunks = be.infer_batch(list(zip(sessions, obs)))
    assert all(isinstance(c, np.ndarray) and c.shape == (be.chunk, ARM.action_dim) for c in chunks)
    assert [s._embodiment for s in sessions] == ["toyarm", "toyarm__press", "toyarm__press"]
    parent = load_policy(world["parent"])
    # the old task: the parent's chunk (batched with other sessions: equal up to matmul rounding, as for any model)
    np.testing.assert_allclose(chunks[0], parent.infer_chunk(obs[0]), rtol=1e-5, atol=1e-6)


def test_embodiment_scope_on_routed_data_trains_the_existing_entry(world, scoped, tmp_path):
    res = finetune(scoped.checkpoint, [world["arm_new"]], tmp_path / "more", quick(scope="embodiment"),
                   progress=False)
    assert res.scoped == {} and res.routes == scoped.routes and list(res.stats_decisions) == ["toyarm__press"]
    before, after = load_file(str(scoped.checkpoint / "model.safetensors")), load_file(
        str(res.checkpoint / "model.safetensors"))
    changed = {k for k, v in before.items() if not torch.equal(v, after[k])}
    assert changed and all(".toyarm__press." in k for k in changed)  # the machine's own entry is untouched
