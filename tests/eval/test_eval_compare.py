"""Paired comparison of two evaluations and merging of partial evaluations."""

from __future__ import annotations

import numpy as np
import pytest

from genba.eval.metrics import EpisodeResult, paired_difference
from genba.eval.report import build_results, comparison_markdown, merge_results


def _episodes(rates: dict[str, list[bool]]) -> list[dict]:
    return [{"task": t, "embodiment": "e", "seed": i, "success": s, "length": 1}
            for t, outcomes in rates.items() for i, s in enumerate(outcomes)]


def test_identical_evaluations_differ_by_exactly_zero():
    eps = _episodes({"a": [True, False] * 10, "b": [True] * 20})
    d = paired_difference(eps, eps, resamples=500)
    assert d.diff == 0.0 and d.ci_low == 0.0 and d.ci_high == 0.0 and d.p_not_better == 1.0


def test_difference_is_the_mean_over_tasks_and_pairing_narrows_the_interval():
    rng = np.random.default_rng(1)
    hard = rng.random(50) < 0.5  # seeds hard for both policies
    a = _episodes({"t1": list(~hard), "t2": [True] * 50})
    b_out = ~hard.copy()
    b_out[np.flatnonzero(~hard)[:5]] = False  # B fails 5 more seeds of t1
    b = _episodes({"t1": list(b_out), "t2": [True] * 50})
    d = paired_difference(a, b, resamples=2000)
    assert d.diff == pytest.approx(5 / 50 / 2)
    assert d.a == pytest.approx((np.mean(~hard) + 1) / 2)
    assert 0.0 < d.ci_low < d.diff < d.ci_high  # the pairing cancels the shared hard seeds
    assert d.p_not_better < 0.025 and d.tasks == 2 and d.episodes == 100


def test_unpaired_evaluations_are_refused_with_what_differs():
    a = _episodes({"t1": [True] * 3})
    b = _episodes({"t1": [True] * 2, "t2": [True]})
    with pytest.raises(ValueError, match=r"1 only in A .*1 only in B"):
        paired_difference(a, b)
    with pytest.raises(ValueError, match="twice"):
        paired_difference(a + a[:1], a)
    with pytest.raises(ValueError, match="no episodes"):
        paired_difference([], [])


def _results(rates: dict[str, list[bool]], name: str) -> dict:
    eps = [EpisodeResult(**d) for d in _episodes(rates)]
    return build_results(eps, {"checkpoint": name, "lang": "en"})


def test_merge_results_recomputes_the_summaries_and_refuses_overlap():
    part1, part2 = _results({"t1": [True, False]}, "x"), _results({"t2": [True, True]}, "x")
    merged = merge_results([part1, part2])
    assert merged["mean_task_success"] == pytest.approx(0.75)
    assert list(merged["tasks"]) == ["t1", "t2"] and merged["overall"]["episodes"] == 4
    assert merged["config"]["merged_from"] == 2
    with pytest.raises(ValueError, match="repeats episode"):
        merge_results([part1, part1])
    with pytest.raises(ValueError, match="no results"):
        merge_results([])
    broken = dict(part2, episodes=[dict(part2["episodes"][0], colour="red")])
    with pytest.raises(ValueError, match="part 1 has a malformed episode record"):
        merge_results([part1, broken])


def test_comparison_table_adds_the_paired_line_or_says_why_not():
    a, b = _results({"t1": [True] * 10}, "a"), _results({"t1": [True] * 8 + [False] * 2}, "b")
    table = comparison_markdown({"A": a, "B": b})
    assert "A minus B: +0.200 mean task success, paired bootstrap 95%" in table
    assert "paired" not in comparison_markdown({"A": a})
    other = _results({"t9": [True]}, "c")
    assert "A vs C: no paired figure" in comparison_markdown({"A": a, "C": other})
