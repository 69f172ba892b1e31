"""Normalization (all modes, numpy and torch), guards, tokenizer, JSON round trip."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from genba.data import stats as S
from genba.data.dataset import open_dataset
from genba.data.transforms import (
    VOCAB_SIZE,
    Normalize,
    TokenizeInstruction,
    TransformError,
    Unnormalize,
    compose,
    stats_by_embodiment,
)
from genba.data.windows import WindowDataset


def _stats(x: np.ndarray) -> dict:
    return S.feature_stats(x)


@pytest.fixture
def emb_stats():
    rng = np.random.default_rng(1)
    obs = rng.normal(3.0, 2.0, size=(500, 4)).astype(np.float32)
    act = rng.uniform(-0.5, 1.5, size=(500, 2)).astype(np.float32)
    return {"arm": {"observation.state": _stats(obs), "action": _stats(act)}}, obs, act


@pytest.mark.parametrize("mode", ["mean_std", "min_max", "quantile"])
@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_normalize_unnormalize_inverse(emb_stats, mode, kind):
    stats, obs, act = emb_stats
    x = {"embodiment": "arm", "observation.state": obs[:8], "action": act[:8]}
    if kind == "torch":
        x = {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in x.items()}
    norm = Normalize(stats, mode=mode)
    back = Unnormalize(stats, keys=("observation.state", "action"), mode=mode)(norm(x))
    for key in ("observation.state", "action"):
        assert type(back[key]) is type(x[key])
        np.testing.assert_allclose(np.asarray(back[key]), np.asarray(x[key]), atol=1e-5)
        assert not np.allclose(np.asarray(norm(x)[key]), np.asarray(x[key]))


def test_modes_ranges(emb_stats):
    stats, obs, act = emb_stats
    x = {"embodiment": "arm", "observation.state": obs, "action": act}
    z = Normalize(stats)(x)["observation.state"]
    np.testing.assert_allclose(z.mean(0), 0, atol=1e-4)
    np.testing.assert_allclose(z.std(0), 1, atol=1e-3)
    m = Normalize(stats, mode="min_max")(x)["action"]
    np.testing.assert_allclose(m.min(0), -1, atol=1e-5)
    np.testing.assert_allclose(m.max(0), 1, atol=1e-5)
    q = Normalize(stats, mode="quantile")(x)["action"]
    assert np.mean(np.abs(q) <= 1 + 1e-5) == pytest.approx(0.98, abs=0.01)


def test_works_with_history_and_batch_dims(emb_stats):
    stats, obs, _ = emb_stats
    x = torch.from_numpy(obs[:24]).reshape(2, 3, 4, 4)[..., :4]  # (B, H, ..., obs_dim)
    out = Normalize(stats, keys=("observation.state",))({"embodiment": "arm", "observation.state": x})
    assert out["observation.state"].shape == x.shape


def test_near_zero_std_guarded():
    const = np.full((100, 3), 5.0, np.float32)
    const[:, 1] = 0.0
    const[:50, 2] = 5.0 + 1e-7  # tiny jitter around 5
    st = {"bot": {"observation.state": _stats(const), "action": _stats(const[:, :1])}}
    ns = S.normalization_stats(st["bot"]["observation.state"])
    assert np.all(ns["std"] >= S.ABS_SCALE_FLOOR)
    assert ns["std"][0] == pytest.approx(0.05, rel=1e-5) and ns["q99"][0] - ns["q01"][0] == pytest.approx(0.1, rel=1e-5)
    for mode in ("mean_std", "min_max", "quantile"):
        z = Normalize(st, mode=mode)({"embodiment": "bot", "observation.state": const})["observation.state"]
        assert np.all(np.isfinite(z)) and np.abs(z).max() < 1.0, mode


def test_unknown_embodiment_and_wrong_shape(emb_stats):
    stats, obs, _ = emb_stats
    with pytest.raises(TransformError, match="embodiment 'pmsm'"):
        Normalize(stats)({"embodiment": "pmsm", "observation.state": obs[:2]})
    with pytest.raises(TransformError, match="last dim 3, stats have 4"):
        Normalize(stats)({"embodiment": "arm", "observation.state": obs[:2, :3]})
    with pytest.raises(TransformError, match="mode 'zscore'"):
        Normalize(stats, mode="zscore")
    with pytest.raises(TransformError, match="lack feature 'action'"):
        Normalize({"arm": {"observation.state": stats["arm"]["observation.state"]}})


def test_stats_json_round_trip(emb_stats):
    stats, obs, act = emb_stats
    norm = Normalize(stats, mode="quantile")
    again = Normalize.from_dict(json.loads(json.dumps(norm.to_dict())))
    x = {"embodiment": "arm", "observation.state": obs[:5], "action": act[:5]}
    np.testing.assert_allclose(again(x)["action"], norm(x)["action"], rtol=1e-6)
    assert again.mode == "quantile"
    un = Unnormalize.from_dict(json.loads(json.dumps(Unnormalize(stats).to_dict())))
    assert un.keys == ("action",)


@pytest.mark.parametrize("text", ["pick up the red block", "赤いブロックを持ち上げる", "mix 混ぜる ✓"])
def test_tokenizer_round_trip(text):
    tok = TokenizeInstruction(max_len=64)
    out = tok({"instruction": text})
    assert out["lang_tokens"].dtype == torch.int64 and out["lang_mask"].dtype == torch.bool
    assert out["lang_tokens"].shape == out["lang_mask"].shape == (64,)
    n = len(text.encode("utf-8"))
    assert out["lang_mask"].sum() == n and torch.all(out["lang_tokens"][n:] == 0)
    assert int(out["lang_tokens"].max()) < VOCAB_SIZE and int(out["lang_tokens"][:n].min()) >= 1
    assert tok.decode(out["lang_tokens"]) == text


def test_tokenizer_truncates_at_character_boundary():
    text = "目標に到達する"  # 3 bytes per character
    for max_len in (1, 2, 3, 7, 8, 9):
        ids = TokenizeInstruction(max_len=max_len).encode(text)
        assert len(ids) == 3 * (max_len // 3)
        assert TokenizeInstruction.decode(ids) == text[: max_len // 3]
    assert TokenizeInstruction(5).decode(TokenizeInstruction(5).encode("hello world")) == "hello"


def test_chain_on_dataset_samples(toy_dataset):
    ds = open_dataset(toy_dataset[0])
    chain = compose(Normalize(stats_by_embodiment([ds])), TokenizeInstruction(32))
    w = WindowDataset(ds, history=2, chunk=3, lang="ja", transforms=chain)
    s = w[4]
    assert set(s) >= {"lang_tokens", "lang_mask", "observation.state", "action_is_pad"}
    assert TokenizeInstruction.decode(s["lang_tokens"]) == ds.tasks[0]["ja"]
    raw = WindowDataset(ds, history=2, chunk=3)[4]
    back = Unnormalize(stats_by_embodiment([ds]))(s)
    torch.testing.assert_close(back["action"], raw["action"], atol=1e-4, rtol=1e-5)


def test_aggregate_stats_pools_exactly():
    rng = np.random.default_rng(2)
    a, b = rng.normal(0, 1, (300, 3)), rng.normal(2, 3, (100, 3))
    agg = S.aggregate_stats([{"x": _stats(a)}, {"x": _stats(b)}])["x"]
    both = _stats(np.concatenate([a, b]))
    for key in ("min", "max", "mean", "std", "count"):
        np.testing.assert_allclose(agg[key], both[key], rtol=1e-10, err_msg=key)
    assert list(agg) == list(S.STAT_KEYS)


def test_tokenizer_batch_matches_single():
    tok = TokenizeInstruction(max_len=12)
    texts = ["reach", "目標に到達する", ""]
    tokens, mask = tok.batch(texts)
    assert tokens.shape == mask.shape == (3, 12)
    for i, text in enumerate(texts):
        one = tok({"instruction": text})
        assert torch.equal(tokens[i], one["lang_tokens"]) and torch.equal(mask[i], one["lang_mask"])
