"""Warm-starting a new machine from a known one (`genba finetune --init-from`, genba.train.transfer)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_finetune import ARM, NEW, quick, world  # noqa: F401 (world: module fixture)

from genba.data.spec import EmbodimentSpec
from genba.data.stats import compute_stats
from genba.data.transforms import Normalize
from genba.model.bundle import read_manifest, save_bundle
from genba.model.config import get_preset
from genba.model.generalist import build_model
from genba.model.policy import load_policy
from genba.train.finetune import FinetuneConfig, FinetuneError, finetune
from genba.train.transfer import match_channels, parse_channel_map, warm_start


def build(cfg, specs):
    """A materialized model whose linear observation paths are random too (they start at zero)."""
    model = build_model(cfg, specs, "cpu", seed=0)
    with torch.no_grad():
        for head in model.heads.values():
            head.obs_linear.fc.weight.normal_(std=0.05)
            head.obs_linear.fc.bias.normal_(std=0.05)
    return model


def drive_spec(name, obs, act, units=None):
    units = units or {}
    return EmbodimentSpec(name=name, robot_type="synthetic", obs_names=obs,
                          obs_units=tuple(units.get(o, "A") for o in obs), obs_low=(-50.0,) * len(obs),
                          obs_high=(50.0,) * len(obs), action_names=act, action_units=("V",) * len(act),
                          action_low=(-50.0,) * len(act), action_high=(50.0,) * len(act), control_period=1e-4,
                          action_meaning="voltage")


# a one-current machine and a two-current one that shares its armature channels under other names
DC = drive_spec("dc", ("omega", "i", "u_sup", "ref_i", "err_i"), ("u",))
EXDC = drive_spec("exdc", ("omega", "i_a", "i_e", "u_sup", "ref_i_a", "ref_i_e", "err_i_a", "err_i_e"), ("u_a", "u_e"))
RENAMES = (("i_a", "i"), ("u_a", "u"))


def stats_for(spec, seed, loc, scale):
    rng = np.random.default_rng(seed)
    return compute_stats({"observation.state": rng.normal(loc, scale, (300, spec.obs_dim)).astype(np.float32),
                          "action": rng.normal(loc / 2, scale, (300, spec.action_dim)).astype(np.float32)})


def test_match_channels_by_name_with_renames():
    m = match_channels(EXDC, DC, RENAMES)
    assert dict(m.obs) == {"omega": "omega", "i_a": "i", "u_sup": "u_sup", "ref_i_a": "ref_i", "err_i_a": "err_i"}
    assert dict(m.action) == {"u_a": "u"}
    assert m.unmatched_obs == ("i_e", "ref_i_e", "err_i_e") and m.unmatched_action == ("u_e",)
    assert parse_channel_map(" i_a=i, u_a=u ,") == RENAMES


@pytest.mark.parametrize("mode", ["mean_std", "quantile"])
def test_warm_started_machine_computes_the_source_controller_on_raw_values(tmp_path, mode):
    cfg = get_preset("debug")
    assert cfg.obs_linear and cfg.head == "l1"
    model = build(cfg, {"dc": DC, "exdc": EXDC})
    # different stats per machine: a plain weight copy would feed the trunk shifted, rescaled features
    stats = {"dc": stats_for(DC, 0, 1.0, 2.0), "exdc": stats_for(EXDC, 1, -3.0, 7.0)}
    warm_start(model, match_channels(EXDC, DC, RENAMES), Normalize(stats, mode=mode))
    policy = load_policy(save_bundle(tmp_path / "b", model, stats=stats, normalization=mode))
    rng = np.random.default_rng(3)
    policy.reset()
    src_actions, tgt_actions = [], []
    frames = rng.uniform(-20, 20, (4, EXDC.obs_dim)).astype(np.float32)
    for f in frames:  # several steps: history frames and chunk ensembling go through the same mapping
        src = np.array([f[EXDC.obs_names.index(n)] for n in ("omega", "i_a", "u_sup", "ref_i_a", "err_i_a")],
                       np.float32)
        src_actions.append(policy.infer({"embodiment": "dc", "state": src, "instruction": "track the current"}))
    policy.reset()
    for f in frames:
        tgt_actions.append(policy.infer({"embodiment": "exdc", "state": f, "instruction": "track the current"}))
    src_actions, tgt_actions = np.array(src_actions), np.array(tgt_actions)
    np.testing.assert_allclose(tgt_actions[:, 0], src_actions[:, 0], rtol=1e-4, atol=1e-3)
    # the field voltage has no source: its rows start at zero, i.e. the normalized mean
    shift, _ = Normalize(stats, mode=mode).affine("exdc", "action")
    np.testing.assert_allclose(tgt_actions[:, 1], shift[1], rtol=1e-4, atol=1e-4)


def test_refusals_name_the_channel_or_machine():
    with pytest.raises(FinetuneError, match="'i_a' of 'exdc' is in 'V' but 'dc''s 'i' is in 'A'"):
        match_channels(drive_spec("exdc", ("i_a",), ("u_a",), {"i_a": "V"}), DC, RENAMES)
    with pytest.raises(FinetuneError, match="--channel-map i_x"):
        match_channels(EXDC, DC, RENAMES + (("i_x", "i"),))
    with pytest.raises(FinetuneError, match="none of 'exdc''s actions"):
        match_channels(EXDC, DC)
    with pytest.raises(FinetuneError, match="NEW=SOURCE"):
        parse_channel_map("i_a")
    with pytest.raises(FinetuneError, match="--from-scratch"):
        FinetuneConfig(init="scratch", init_from="dc")
    with pytest.raises(FinetuneError, match="--init-from MACHINE too"):
        FinetuneConfig(channel_map=RENAMES)


def test_finetune_init_from_records_the_match_and_serves(world, tmp_path):
    res = finetune(world["parent"], [world["new"]], tmp_path / "run", quick(init_from=ARM.name), progress=False)
    warm = read_manifest(res.checkpoint)["lineage"]["adaptation"]["warm_start"]
    assert warm == [{"source": "toyarm", "target": "toynew", "obs": {f"o{i}": f"o{i}" for i in range(4)},
                     "action": {"a0": "a0", "a1": "a1"}, "unmatched_obs": [], "unmatched_action": []}]
    a = load_policy(res.checkpoint).infer({"embodiment": NEW.name, "state": np.zeros(NEW.obs_dim, np.float32),
                                           "instruction": "reach the goal"})
    assert a.shape == (2,) and np.all(np.isfinite(a))
    with pytest.raises(FinetuneError, match="no such embodiment"):
        finetune(world["parent"], [world["new"]], tmp_path / "r2", quick(init_from="nope"), progress=False)
    with pytest.raises(FinetuneError, match="adds no new embodiment"):
        finetune(world["parent"], [world["arm"]], tmp_path / "r3", quick(init_from=ARM.name), progress=False)
