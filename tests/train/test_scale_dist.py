"""FSDP2, tensor-parallel and expert-parallel ``moe-small`` under torchrun (2 ranks, gloo, CPU).

One torchrun launch (scale_dist_worker.py) trains the three layouts for 20
steps each on the same batches, saves torch.distributed.checkpoint, and loads
each checkpoint into another layout. Here the single-process reference runs
the same loop, and every checkpoint is also loaded into a plain model.

Tolerances: the layouts compute the same sums in other orders (fp32), ~1e-5
apart over 20 steps as measured; 5e-3 leaves room for an occasional top-k
routing flip, while a wrong gradient scale or a misrouted token moves the
curve by far more (and the step-0 gradient norm is checked to 1e-5).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import scale_dist_worker as W
import torch

from genba.model.bundle import load_model
from genba.train import checkpoint as ckpt
from genba.train import trainer as T
from genba.train.expert_parallel import _regroup_index

WORKER = Path(__file__).with_name("scale_dist_worker.py")


def launch(nproc: int, out: Path, toy_data) -> dict:
    """One torchrun of the worker; returns {layout: result}."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GENBA_DEVICE": "cpu"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
           str(WORKER), str(out), *map(str, toy_data)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    print(f"torchrun --nproc_per_node {nproc}: {time.perf_counter() - t0:.1f} s")
    return {l: json.loads((out / l / "result.json").read_text()) for l in W.LAYOUTS}


@pytest.fixture(scope="module")
def scale_runs(toy_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("scale")
    return out, launch(2, out, toy_data)


@pytest.fixture(scope="module")
def data(toy_data):
    return T.build_datasets(W.train_config(), toy_data, model_cfg=W.MODEL_CFG)


@pytest.fixture(scope="module")
def single(data):
    return W.run_layout("single", data, None)


@pytest.mark.distributed
@pytest.mark.parametrize("layout", list(W.LAYOUTS))
def test_layout_tracks_single_process(scale_runs, single, layout):
    res = scale_runs[1][layout]
    assert len(res["losses"]) == len(single["losses"]) == W.STEPS
    np.testing.assert_allclose(res["losses"], single["losses"], atol=5e-3, rtol=0)
    assert res["grad_norms"][0] == pytest.approx(single["grad_norms"][0], rel=1e-5)
    assert res["losses"][-1] < res["losses"][0]  # it learned something


@pytest.mark.distributed
@pytest.mark.parametrize("layout", list(W.LAYOUTS))
def test_checkpoint_reloads_into_other_layouts(scale_runs, data, layout):
    out, results = scale_runs
    res = results[layout]
    # another distributed layout (e.g. saved under EP=2, loaded under FSDP=2) sees the same model
    assert res["reloaded_into"] != layout
    assert res["reloaded_eval"] == pytest.approx(res["eval"], abs=1e-4)
    found = ckpt.latest_checkpoint(out / layout)
    assert len(list((found / "train_state").glob("*.distcp"))) == 2
    # a single process reassembles the sharded model and optimizer state ...
    model, optim, _ = W.build("single", data, W.train_config())
    state, _ = ckpt.load_checkpoint(found, model, optim)
    assert state["layout"] == layout and len(optim.state) == len(list(model.parameters()))
    assert W.eval_loss(model, data, (0, 1)) == pytest.approx(res["eval"], abs=1e-4)
    # ... into exactly the weights rank 0 gathered into model.safetensors
    bundled, _ = load_model(found, preset="moe-small")
    ref = bundled.state_dict()
    for k, v in model.state_dict().items():
        if k in ref:
            torch.testing.assert_close(v, ref[k], msg=k)


@pytest.mark.distributed
@pytest.mark.parametrize("layout", ["tp", "ep"])
def test_trainer_runs_the_layout(scale_runs, layout):
    out, results = scale_runs
    losses = results[layout]["trainer_losses"]
    assert len(losses) == 3 and all(np.isfinite(losses))
    assert ckpt.latest_checkpoint(out / f"trainer-{layout}").name == "step-000003"


@pytest.mark.slow
@pytest.mark.distributed
def test_four_ranks_two_dimensional_meshes(toy_data, single, tmp_path):
    """dp=4; dp=2 x tp=2 (FSDP2 over TP); efsdp=2 x ep=2 (experts sharded both ways). ~2 min on 2 cores."""
    results = launch(4, tmp_path, toy_data)
    for layout, res in results.items():
        np.testing.assert_allclose(res["losses"], single["losses"], atol=5e-3, rtol=0, err_msg=layout)
        assert res["grad_norms"][0] == pytest.approx(single["grad_norms"][0], rel=1e-5)
        assert res["reloaded_eval"] == pytest.approx(res["eval"], abs=1e-4)


def test_regroup_index_orders_rows_by_local_expert():
    # rows arrive [source rank][local expert]: s0e0 [0], s0e1 [1, 2], s1e0 [3, 4, 5], s1e1 []
    recv = torch.tensor([[1, 2], [3, 0]])
    assert _regroup_index(recv).tolist() == [0, 3, 4, 5, 1, 2]
    g = torch.Generator().manual_seed(0)
    recv = torch.randint(0, 4, (3, 5), generator=g)
    perm = _regroup_index(recv)
    assert sorted(perm.tolist()) == list(range(int(recv.sum())))  # a permutation
