"""The weights' moving average: its recursion, its export into the bundle, exact resume."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from genba.model.bundle import load_model
from genba.model.config import get_preset
from genba.train import checkpoint as ckpt
from genba.train import trainer as T
from genba.train.config import TrainConfigError, get_train_preset
from genba.train.ema import WeightEMA, state_key

DEBUG = get_train_preset("debug").replace(steps=6, ckpt_every=3, keep_last=5, ema_decay=0.6)


def test_update_follows_the_warmed_up_recursion():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    ema = WeightEMA(net, decay=0.9)
    ref = {k: v.clone() for k, v in ema.shadow.items()}
    assert set(ref) == {n for n, _ in net.named_parameters()}  # parameters only, not BatchNorm's buffers
    for step in range(1, 30):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn_like(p))
        ema.update(step)
        d = min(0.9, (1 + step) / (10 + step))
        for n, p in net.named_parameters():
            ref[n] = d * ref[n] + (1 - d) * p.detach()
    assert ema.rate(1) == pytest.approx(2 / 11) and ema.rate(10**6) == 0.9
    for n in ref:
        torch.testing.assert_close(ema.shadow[n], ref[n], msg=n)
        assert not torch.equal(ema.shadow[n], dict(net.named_parameters())[n])


def test_full_state_replaces_parameters_and_keeps_buffers():
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    ema = WeightEMA(net, decay=0.5)
    for t in ema.shadow.values():
        t.fill_(7.0)
    full = ema.full_state({k: v.clone() for k, v in net.state_dict().items()})
    assert set(full) == set(net.state_dict())
    assert torch.all(full["0.weight"] == 7.0) and torch.equal(full["1.running_var"], net[1].running_var)
    with pytest.raises(KeyError, match="not in the model state dict"):
        ema.full_state({"other": torch.zeros(1)})


def test_wrapper_segments_are_removed_and_bad_decays_refused():
    assert state_key("blocks.0._checkpoint_wrapped_module.attn.wq.weight") == "blocks.0.attn.wq.weight"
    assert state_key("blocks.1._orig_mod.mlp.w1.weight") == "blocks.1.mlp.w1.weight"
    for bad in (0.0, 1.0, -0.1):
        with pytest.raises(ValueError, match="ema decay"):
            WeightEMA(nn.Linear(2, 2), bad)
    with pytest.raises(TrainConfigError, match="ema_decay"):
        DEBUG.replace(ema_decay=1.0)


@pytest.fixture(scope="module")
def straight(toy_data, tmp_path_factory):
    return T.train(DEBUG, toy_data, tmp_path_factory.mktemp("ema-straight"), progress=False)


def _raw_weights(checkpoint, toy_data, ema: bool = True):
    """The raw (trained) weights and the EMA shadow as the distributed checkpoint holds them."""
    data = T.build_datasets(DEBUG, toy_data)
    model = T.build_model(get_preset("debug"), data.specs, torch.device("cpu"), seed=123)
    shadow = WeightEMA(model, DEBUG.ema_decay)
    ckpt.load_checkpoint(checkpoint, model, T.build_optimizer(model, DEBUG), extra={"ema": shadow.state_dict()})
    return model.state_dict(), shadow.shadow


def test_the_bundle_holds_the_average_and_the_train_state_both(straight, toy_data):
    bundle = load_file(str(straight.checkpoint / "model.safetensors"))
    raw, shadow = _raw_weights(straight.checkpoint, toy_data)
    assert set(shadow) and set(shadow) <= set(bundle)
    for k, v in shadow.items():
        torch.testing.assert_close(bundle[k], v, msg=k)
    assert any(not torch.allclose(raw[k], shadow[k]) for k in shadow)  # the average is not the raw weights
    load_model(straight.checkpoint, preset="debug")  # and it loads as a model


def test_resume_continues_the_average_exactly(straight, toy_data, tmp_path):
    T.train(DEBUG, toy_data, tmp_path, stop_at=3, progress=False)
    done = T.train(DEBUG, toy_data, tmp_path, resume=True, progress=False)
    a = load_file(str(straight.checkpoint / "model.safetensors"))
    b = load_file(str(done.checkpoint / "model.safetensors"))
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6, msg=k)


def test_resume_refuses_to_switch_the_average(toy_data, tmp_path):
    T.train(DEBUG.replace(steps=1), toy_data, tmp_path, progress=False)
    with pytest.raises(TrainConfigError, match="ema_decay"):
        T.train(DEBUG.replace(ema_decay=0.0), toy_data, tmp_path, resume=True, progress=False)
