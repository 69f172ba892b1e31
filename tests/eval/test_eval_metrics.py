"""Wilson intervals and aggregation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from genba.eval.metrics import EpisodeResult, aggregate, count_violations, wilson_interval


def test_wilson_matches_the_published_value_for_zero_successes():
    # Brown, Cai & DasGupta (2001): 0/10 at 95% -> [0, 0.2775]
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-4)


@pytest.mark.parametrize("k,n", [(0, 1), (1, 1), (3, 7), (49, 50), (50, 50), (25, 50)])
def test_wilson_contains_the_rate_and_stays_in_unit_interval(k, n):
    lo, hi = wilson_interval(k, n)
    assert 0.0 <= lo <= k / n <= hi <= 1.0


def test_wilson_is_symmetric_and_narrows_with_more_episodes():
    lo, hi = wilson_interval(3, 10)
    lo2, hi2 = wilson_interval(7, 10)
    assert lo == pytest.approx(1 - hi2) and hi == pytest.approx(1 - lo2)
    assert np.diff(wilson_interval(30, 100)) < np.diff(wilson_interval(3, 10))


def test_wilson_rejects_impossible_counts():
    with pytest.raises(ValueError):
        wilson_interval(5, 3)


def _ep(task, emb, ok, length=10, err=None, viol=0):
    return EpisodeResult(task=task, embodiment=emb, seed=0, success=ok, length=length, tracking_error=err,
                         violations=viol)


def test_aggregate_per_task_embodiment_and_overall():
    eps = [_ep("a/x", "arm", True), _ep("a/x", "arm", False), _ep("a/y", "arm", True, 20),
           _ep("d/z", "drive", True, 300, 0.02, 3), _ep("d/z", "drive", True, 300, 0.04, 1)]
    agg = aggregate(eps)
    assert list(agg["tasks"]) == ["a/x", "a/y", "d/z"]
    assert agg["tasks"]["a/x"].success_rate == 0.5
    assert agg["embodiments"]["arm"].successes == 2 and agg["embodiments"]["arm"].episodes == 3
    assert agg["embodiments"]["drive"].mean_tracking_error == pytest.approx(0.03)
    assert agg["embodiments"]["drive"].violations == 4 and agg["embodiments"]["arm"].mean_tracking_error is None
    assert agg["mean_task_success"] == pytest.approx((0.5 + 1 + 1) / 3)
    assert agg["overall"].success_rate == pytest.approx(4 / 5)


def test_count_violations_counts_components_outside_limits_and_nan():
    lo, hi = np.array([-1.0, -1.0, 0.0]), np.array([1.0, 1.0, 2.0])
    assert count_violations(np.array([0.0, 1.0, 2.0]), lo, hi) == 0
    assert count_violations(np.array([1.5, -1.01, math.nan]), lo, hi) == 3
