"""Windows, padding masks, language choice, mixing, resumable sampling, collation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from data_synth import TASKS, coded_episodes, make_spec
from torch.utils.data import DataLoader

from genba.data.dataset import open_dataset
from genba.data.layout import write_dataset
from genba.data.windows import MixedDataset, WindowDataset, collate, mixed_sampler

LENGTHS = [5, 7, 1, 10]  # the toy_dataset fixture


def _code(e: int, t: int) -> float:
    return 1000.0 * e + t


@pytest.fixture
def ds(toy_dataset):
    return open_dataset(toy_dataset[0])


def _frame(g: int) -> tuple[int, int]:
    """(episode, frame) of global row g."""
    starts = np.cumsum([0] + LENGTHS)
    e = int(np.searchsorted(starts, g, side="right") - 1)
    return e, g - int(starts[e])


@pytest.mark.parametrize("history, chunk", [(1, 1), (3, 4), (6, 8)])
def test_windows_and_masks_at_every_frame(ds, history, chunk):
    w = WindowDataset(ds, history=history, chunk=chunk)
    assert len(w) == sum(LENGTHS)
    for g in range(len(w)):
        e, t = _frame(g)
        s = w[g]
        assert s["observation.state"].shape == (history, 3) and s["action"].shape == (chunk, 2)
        want_obs = [_code(e, max(t - history + 1 + k, 0)) for k in range(history)]
        want_pad = [t - history + 1 + k < 0 for k in range(history)]
        assert s["observation.state"][:, 0].tolist() == want_obs
        assert s["observation.state_is_pad"].tolist() == want_pad
        n = LENGTHS[e]
        want_act = [-_code(e, min(t + k, n - 1)) for k in range(chunk)]
        assert s["action"][:, 0].tolist() == want_act
        assert s["action_is_pad"].tolist() == [t + k >= n for k in range(chunk)]
        assert s["task_index"] == e % 2 and s["embodiment"] == "toy"
        assert s["instruction"] == TASKS[e % 2]["en"]
        assert s["observation.state"].dtype == torch.float32 and s["action_is_pad"].dtype == torch.bool


def test_gather_equals_getitem(ds):
    w = WindowDataset(ds, history=3, chunk=5, lang="mix")
    idx = [0, 4, 5, 12, 22, 13]
    batch = w.gather(idx)
    for b, i in enumerate(idx):
        s = w[i]
        for key in ("observation.state", "observation.state_is_pad", "action", "action_is_pad"):
            assert torch.equal(batch[key][b], s[key]), key
        assert batch["instruction"][b] == s["instruction"] and batch["task_index"][b] == s["task_index"]


def test_languages(ds):
    ja = WindowDataset(ds, lang="ja")
    assert ja[0]["instruction"] == TASKS[0]["ja"] and ja[5]["instruction"] == TASKS[1]["ja"]
    mix = WindowDataset(ds, lang="mix", seed=3)
    got = {mix[i]["instruction"] for i in range(len(mix))}
    assert got == {t["en"] for t in TASKS} | {t["ja"] for t in TASKS}
    assert [mix[i]["instruction"] for i in range(len(mix))] == [mix[i]["instruction"] for i in range(len(mix))]
    with pytest.raises(ValueError, match="lang 'fr'"):
        WindowDataset(ds, lang="fr")


def test_out_of_range_index(ds):
    with pytest.raises(IndexError, match="outside dataset"):
        WindowDataset(ds)[len(ds.observation)]


@pytest.fixture
def two_embodiments(tmp_path, ds):
    spec_b = make_spec("drive", obs_dim=5, act_dim=3, period=1e-4)
    root_b = write_dataset(tmp_path / "b", coded_episodes(spec_b, [40, 60], n_tasks=1), spec_b, TASKS[:1])
    return WindowDataset(ds, history=2, chunk=3), WindowDataset(open_dataset(root_b), history=2, chunk=3)


def test_mixing_weights_respected(two_embodiments):
    a, b = two_embodiments
    mixed = MixedDataset([a, b], weights=[0.7, 0.3])
    idx = np.array(list(mixed_sampler(mixed, 20000, seed=0)))
    frac_a = np.mean(idx < len(a))  # binomial std ~0.003
    assert abs(frac_a - 0.7) < 0.02
    # inside a part, draws cover its frames roughly uniformly
    counts_b = np.bincount(idx[idx >= len(a)] - len(a), minlength=len(b))
    assert counts_b.min() > 0 and counts_b.max() < 3 * counts_b.mean()


def test_sampler_deterministic_and_resumable(two_embodiments):
    mixed = MixedDataset(list(two_embodiments), weights=[1, 1])
    full = list(mixed_sampler(mixed, 9000, seed=7))
    assert full == list(mixed_sampler(mixed, 9000, seed=7))
    assert full != list(mixed_sampler(mixed, 9000, seed=8))
    for start in (1, 4095, 4096, 5000, 8999, 9000):
        resumed = mixed_sampler(mixed, 9000, seed=7, start=start)
        assert len(resumed) == 9000 - start
        assert list(resumed) == full[start:]


def test_collate_groups_by_embodiment(two_embodiments):
    a, b = two_embodiments
    mixed = MixedDataset([a, b])
    picks = [0, len(a), 1, len(a) + 5, 2]
    batch = collate([mixed[i] for i in picks])
    assert set(batch) == {"toy", "drive"}
    assert batch["toy"]["observation.state"].shape == (3, 2, 3)
    assert batch["drive"]["action"].shape == (2, 3, 3) and batch["drive"]["action_is_pad"].dtype == torch.bool
    assert batch["toy"]["task_index"].tolist() == [0, 0, 0]
    assert batch["toy"]["instruction"] == [TASKS[0]["en"]] * 3
    assert "embodiment" not in batch["toy"]


def test_dataloader_end_to_end(two_embodiments):
    mixed = MixedDataset(list(two_embodiments), weights=[0.5, 0.5])
    loader = DataLoader(mixed, batch_size=16, sampler=mixed_sampler(mixed, 64, seed=1), collate_fn=collate)
    sizes = [sum(len(g["task_index"]) for g in batch.values()) for batch in loader]
    assert sizes == [16, 16, 16, 16]


def test_bad_mixing_args(two_embodiments):
    with pytest.raises(ValueError, match="2 weights for 1 parts"):
        MixedDataset([two_embodiments[0]], weights=[1, 2])
    with pytest.raises(ValueError, match="weights must be >= 0"):
        MixedDataset(list(two_embodiments), weights=[-1, 2])


def test_endless_sampler_matches_finite(two_embodiments):
    mixed = MixedDataset(list(two_embodiments))
    endless = iter(mixed_sampler(mixed, None, seed=3, start=10))
    assert [next(endless) for _ in range(5000)] == list(mixed_sampler(mixed, 5010, seed=3, start=10))
    with pytest.raises(TypeError, match="no length"):
        len(mixed_sampler(mixed, None))


def test_phrasings_drawn_per_task_and_language(ds):
    """With a phrasings table the sample's instruction is one of its task's wordings (the dataset's own
    sentence among them), drawn per (seed, frame): reproducible, another seed another draw."""
    table = {"toy/reach": {"en": ["go to the goal", "reach it"], "ja": ["目標へ行く"]},
             "toy/push": {"en": ["shove the block"]}}  # no ja: its sentence alone
    pools = {0: {"en": {"reach the goal", "go to the goal", "reach it"}, "ja": {"目標に到達する", "目標へ行く"}},
             1: {"en": {"push the block", "shove the block"}, "ja": {"ブロックを押す"}}}
    w = WindowDataset(ds, lang="mix", seed=1, phrasings=table)
    drawn = {(0, "en"): set(), (0, "ja"): set(), (1, "en"): set(), (1, "ja"): set()}
    for i in range(len(w)):
        s = w[i]
        lang = "ja" if s["instruction"] in pools[s["task_index"]]["ja"] else "en"
        assert s["instruction"] in pools[s["task_index"]][lang]
        drawn[(s["task_index"], lang)].add(s["instruction"])
    assert len(drawn[(0, "en")]) >= 2  # 23 frames: more than one wording of a task is drawn
    again = WindowDataset(ds, lang="mix", seed=1, phrasings=table)
    assert [again[i]["instruction"] for i in range(len(w))] == [w[i]["instruction"] for i in range(len(w))]
    other = WindowDataset(ds, lang="mix", seed=2, phrasings=table)
    assert [other[i]["instruction"] for i in range(len(w))] != [w[i]["instruction"] for i in range(len(w))]
    assert w.gather([0, 3, 9])["instruction"] == [w[i]["instruction"] for i in (0, 3, 9)]
    assert [WindowDataset(ds, lang="en")[i]["instruction"] for i in range(len(w))] == \
        [TASKS[_frame(i)[0] % 2]["en"] for i in range(len(w))]  # no table: the sentence, as before
