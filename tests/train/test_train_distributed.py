"""torchrun --nproc_per_node 2 on gloo: FSDP2 and DDP track single-process training.

Both ranks together see exactly the single-process batch each step (the rank
split is of the same seeded draws), but the loss is a mean over embodiments
per rank, so a 2-rank loss differs from the 1-rank loss by the grouping only:
close, not equal. FSDP2 and DDP compute the same thing and must agree tightly.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from genba.model.bundle import load_model
from genba.model.config import get_preset
from genba.train import checkpoint as ckpt
from genba.train import trainer as T
from genba.train.config import get_train_preset
from genba.train.monitor import read_metrics

WORKER = Path(__file__).with_name("dist_worker.py")


@pytest.fixture(scope="module")
def dist_runs(toy_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GENBA_DEVICE": "cpu"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(WORKER), str(out), *map(str, toy_data)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=150)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


def _losses(run):
    return np.array([r["loss"] for r in read_metrics(run)])


@pytest.mark.distributed
def test_fsdp_matches_single_process(dist_runs, toy_data, tmp_path):
    cfg = get_train_preset("debug").replace(steps=6, ckpt_every=0, batch_size=16)
    single = _losses(T.train(cfg, toy_data[:1], tmp_path, progress=False).run_dir)
    fsdp = _losses(dist_runs / "fsdp-one")
    assert len(fsdp) == len(single) == 6
    # ranks average their own per-element means: windows near an episode end have padded
    # actions, so per-rank element counts differ a little and so do the losses (~1%)
    np.testing.assert_allclose(fsdp, single, rtol=2e-2)
    assert abs(fsdp.mean() - single.mean()) < 5e-3 * single.mean()


@pytest.mark.distributed
def test_fsdp_and_ddp_agree_on_mixed_embodiments(dist_runs, toy_data, tmp_path):
    """A rank may lack an embodiment in a step: its stem and head must still sync."""
    fsdp, ddp = _losses(dist_runs / "fsdp"), _losses(dist_runs / "ddp")
    assert len(fsdp) == len(ddp) == 6
    np.testing.assert_allclose(fsdp, ddp, rtol=1e-4)  # same math, different collectives
    cfg = get_train_preset("debug").replace(steps=6, ckpt_every=0)
    single = _losses(T.train(cfg, toy_data, tmp_path, progress=False).run_dir)
    assert abs(fsdp.mean() - single.mean()) < 0.05  # loss is a per-rank mean over embodiments: close only


@pytest.mark.distributed
def test_fsdp_checkpoint_loads_in_one_process(dist_runs, toy_data):
    found = ckpt.latest_checkpoint(dist_runs / "fsdp")
    assert found.name == "step-000006"
    assert sorted(p.name for p in (found / "train_state").glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    bundled, _ = load_model(found, preset="debug")
    # the sharded training state (model + optimizer) reassembles in a single process ...
    cfg = get_train_preset("debug")
    data = T.build_datasets(cfg, toy_data)
    model = T.build_model(get_preset("debug"), data.specs, torch.device("cpu"), seed=123)
    optim = T.build_optimizer(model, cfg)
    state, _ = ckpt.load_checkpoint(found, model, optim)
    assert state["step"] == 6 and state["world_size"] == 2
    # ... into exactly the weights rank 0 gathered into model.safetensors
    ref = bundled.state_dict()
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, ref[k], msg=k)
    assert len(optim.state) == len(list(model.parameters()))
    # each rank hashed what it wrote; rank 0 recorded them all (issue 19)
    files = json.loads((found / "train_state" / "trainer.json").read_text())["files"]
    assert {f"train_state/{n}" for n in ("__0_0.distcp", "__1_0.distcp", "rank-00000.pt", "rank-00001.pt",
                                         ".metadata")} | {"model.safetensors", "checkpoint.json"} <= set(files)


@pytest.mark.distributed
def test_a_flipped_byte_in_another_ranks_shard_is_named(dist_runs, toy_data, tmp_path):
    step = tmp_path / "step"
    shutil.copytree(ckpt.latest_checkpoint(dist_runs / "fsdp"), step)
    shard = step / "train_state" / "__1_0.distcp"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01
    shard.write_bytes(bytes(data))
    cfg = get_train_preset("debug")
    model = T.build_model(get_preset("debug"), T.build_datasets(cfg, toy_data).specs, torch.device("cpu"), seed=1)
    with pytest.raises(ckpt.CheckpointError, match=r"__1_0\.distcp: SHA-256"):
        ckpt.load_checkpoint(step, model, T.build_optimizer(model, cfg))


@pytest.mark.distributed
def test_fsdp_weight_average_gathers_into_the_bundle(dist_runs, toy_data):
    from safetensors.torch import load_file

    from genba.train.ema import WeightEMA

    found = ckpt.latest_checkpoint(dist_runs / "fsdp-ema")
    cfg = get_train_preset("debug")
    data = T.build_datasets(cfg, toy_data)
    model = T.build_model(get_preset("debug"), data.specs, torch.device("cpu"), seed=123)
    ema = WeightEMA(model, 0.6)
    ckpt.load_checkpoint(found, model, T.build_optimizer(model, cfg), extra={"ema": ema.state_dict()})
    bundle = load_file(str(found / "model.safetensors"))
    for k, v in ema.shadow.items():  # the sharded averages, reassembled, are what rank 0 exported
        torch.testing.assert_close(bundle[k], v, msg=k)
    raw = model.state_dict()
    assert any(not torch.allclose(raw[k], v) for k, v in ema.shadow.items())
