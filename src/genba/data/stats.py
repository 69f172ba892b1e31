"""Feature statistics, in the shape LeRobot v3 stores them.

Every feature gets ``min, max, mean, std, count, q01, q10, q50, q90, q99``
(the keys LeRobot 0.4.4 writes into ``meta/stats.json`` and, per episode, into
``meta/episodes/*.parquet`` as ``stats/<feature>/<key>`` columns). Integer
features keep integer ``min``/``max``; everything else is float64.

Two deliberate choices:

- Global quantiles are computed exactly over all frames. LeRobot aggregates
  per-episode quantiles by a count-weighted mean (its ``aggregate_stats``),
  which is only an approximation of the dataset quantile; the keys and shapes
  are the same, only the values are closer to the truth.
- :func:`normalization_stats` floors the scale used for normalization. A
  feature that barely moves (a constant gripper command, a goal coordinate that
  is fixed for a task, ``q01 == q99``) would otherwise be divided by ~0 and
  turn float noise into huge normalized values. openpi hit exactly this
  (https://github.com/Physical-Intelligence/openpi/issues/814: an action
  dimension with q01=1.5686, q99=1.5697 normalized a 0 command to -3200 and the
  loss exploded); a fixed epsilon such as openpi's 1e-6 does not help at that
  scale. The floor is 1% of the feature's magnitude (``max(|min|, |max|,
  max - min)``), so it works for volts and metres alike: the frames of such a
  dimension normalize to within about +-1 instead of amplifying float noise,
  and an off-distribution value is scaled by at most 100 / its magnitude.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

#: The quantiles LeRobot 0.4.4 stores, as (key, fraction).
QUANTILES: tuple[tuple[str, float], ...] = (
    ("q01", 0.01), ("q10", 0.10), ("q50", 0.50), ("q90", 0.90), ("q99", 0.99),
)
#: Key order LeRobot uses in the episodes parquet (``stats/<feature>/<key>``).
STAT_KEYS: tuple[str, ...] = ("min", "max", "mean", "std", "count") + tuple(k for k, _ in QUANTILES)

Stats = dict[str, dict[str, np.ndarray]]


class StatsError(ValueError):
    """Statistics that are missing, malformed or do not fit the data."""


def feature_stats(values: np.ndarray) -> dict[str, np.ndarray]:
    """Statistics of one feature over frames: ``values`` is ``(N,)`` or ``(N, D)``.

    Returns 1-D arrays of length ``D`` (``D = 1`` for scalar features, as
    LeRobot stores them); ``count`` is ``[N]``.
    """
    x = np.asarray(values)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2 or x.shape[0] == 0:
        raise StatsError(f"feature_stats needs (N, D) values with N > 0, got shape {x.shape}")
    xf = x.astype(np.float64)
    xs = np.sort(np.ascontiguousarray(xf.T), axis=1).T  # one sort: min, max, quantiles
    n = xs.shape[0]
    out: dict[str, np.ndarray] = {
        "min": xs[0], "max": xs[-1],
        "mean": xf.mean(axis=0),
        "std": xf.std(axis=0),  # population std, as LeRobot (np.std, ddof=0)
        "count": np.array([n], dtype=np.int64),
    }
    if np.issubdtype(x.dtype, np.integer):
        out["min"], out["max"] = x.min(axis=0).astype(np.int64), x.max(axis=0).astype(np.int64)
    for key, q in QUANTILES:  # numpy's default "linear" method
        pos = q * (n - 1)
        lo = int(np.floor(pos))
        hi = min(lo + 1, n - 1)
        out[key] = xs[lo] + (pos - lo) * (xs[hi] - xs[lo])
    return {k: out[k] for k in STAT_KEYS}


def compute_stats(columns: Mapping[str, np.ndarray]) -> Stats:
    """Statistics of every column (feature name -> ``(N,)``/``(N, D)`` array)."""
    return {name: feature_stats(col) for name, col in columns.items()}


def aggregate_stats(parts: Sequence[Mapping[str, Mapping[str, Any]]]) -> Stats:
    """Stats of the union of several datasets' frames (same features and dims).

    ``count``, ``min``, ``max``, ``mean`` and ``std`` are exact (pooled
    variance); quantiles are the count-weighted mean of the parts' quantiles,
    as LeRobot's ``aggregate_stats`` does: an approximation, fine for scaling.
    """
    if not parts:
        raise StatsError("aggregate_stats needs at least one set of statistics")
    if len(parts) == 1:  # nothing to pool: the stats as they are (the exact values a lone dataset trains with)
        return {feat: dict(d) for feat, d in parts[0].items()}
    out: Stats = {}
    for feat in parts[0]:
        if any(feat not in p for p in parts):
            raise StatsError(f"aggregate_stats: feature {feat!r} missing from some statistics")
        ps = [{k: np.asarray(v) if k in ("min", "max", "count") else np.asarray(v, np.float64)
               for k, v in p[feat].items()} for p in parts]
        if len({p["mean"].shape for p in ps}) != 1:
            raise StatsError(f"aggregate_stats: feature {feat!r} has different shapes across datasets")
        w = np.array([float(p["count"][0]) for p in ps])  # (P,)
        frac = (w / w.sum())[:, None]
        mean = np.sum(frac * np.stack([p["mean"] for p in ps]), axis=0)
        second = np.sum(frac * np.stack([p["std"] ** 2 + (p["mean"] - mean) ** 2 for p in ps]), axis=0)
        agg = {"min": np.min(np.stack([p["min"] for p in ps]), axis=0),
               "max": np.max(np.stack([p["max"] for p in ps]), axis=0),
               "mean": mean, "std": np.sqrt(second), "count": np.array([int(w.sum())], dtype=np.int64)}
        for key, _ in QUANTILES:
            agg[key] = np.sum(frac * np.stack([p[key] for p in ps]), axis=0)
        out[feat] = {k: agg[k] for k in STAT_KEYS}
    return out


# ---- JSON form (stats.json, checkpoints) -----------------------------------
def stats_to_json(stats: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, list]]:
    """Nested lists of plain ints/floats, as ``meta/stats.json`` holds them."""
    return {f: {k: np.asarray(v).tolist() for k, v in d.items()} for f, d in stats.items()}


def stats_from_json(d: Mapping[str, Any], source: str = "stats") -> Stats:
    """Inverse of :func:`stats_to_json`; ``source`` names the input in errors."""
    if not isinstance(d, Mapping):
        raise StatsError(f"{source}: expected an object of features, got {type(d).__name__}")
    out: Stats = {}
    for feat, entry in d.items():
        if not isinstance(entry, Mapping):
            raise StatsError(f"{source}: stats of {feat!r} must be an object, got {type(entry).__name__}")
        try:
            out[feat] = {k: np.asarray(v) for k, v in entry.items()}
        except (TypeError, ValueError) as e:
            raise StatsError(f"{source}: stats of {feat!r} are malformed: {e}") from None
    return out


def check_stats(stats: Mapping[str, Mapping[str, Any]], shapes: Mapping[str, int], source: str = "stats") -> None:
    """Every feature in ``shapes`` has every stat key with ``shapes[f]`` finite entries."""
    for feat, dim in shapes.items():
        if feat not in stats:
            raise StatsError(f"{source}: no statistics for feature {feat!r}")
        for key in STAT_KEYS:
            if key not in stats[feat]:
                raise StatsError(f"{source}: statistics of {feat!r} lack {key!r}")
            v = np.asarray(stats[feat][key], dtype=np.float64)
            want = 1 if key == "count" else dim
            if v.shape != (want,):
                raise StatsError(f"{source}: {feat}/{key} has shape {v.shape}, expected ({want},)")
            if not np.all(np.isfinite(v)):
                raise StatsError(f"{source}: {feat}/{key} holds non-finite values")


# ---- normalization ------------------------------------------------------------
#: Relative floor on a normalization scale (see module docstring).
REL_SCALE_FLOOR = 1e-2
#: Absolute floor, for features that are ~0 everywhere.
ABS_SCALE_FLOOR = 1e-6


def scale_floor(stats: Mapping[str, Any]) -> np.ndarray:
    """Smallest scale allowed per dimension: 1% of the feature's magnitude.

    The magnitude is ``max(|min|, |max|, max - min)`` so a constant feature far
    from zero gets a floor proportional to its value, and a feature that is 0
    everywhere gets :data:`ABS_SCALE_FLOOR`.
    """
    lo = np.asarray(stats["min"], dtype=np.float64)
    hi = np.asarray(stats["max"], dtype=np.float64)
    magnitude = np.maximum(np.maximum(np.abs(lo), np.abs(hi)), hi - lo)
    return np.maximum(REL_SCALE_FLOOR * magnitude, ABS_SCALE_FLOOR)


def normalization_stats(stats: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Guarded normalization constants of one feature, float32.

    Returns ``mean``, ``std`` (floored), ``min``/``max`` (widened around their
    centre so ``max - min`` is at least twice the floor) and ``q01``/``q99``
    (same guard). Every transform divides only by these.
    """
    for key in ("mean", "std", "min", "max", "q01", "q99"):
        if key not in stats:
            raise StatsError(f"normalization needs {key!r} in the statistics, have {sorted(stats)}")
    floor = scale_floor(stats)
    out = {"mean": np.asarray(stats["mean"], dtype=np.float64),
           "std": np.maximum(np.asarray(stats["std"], dtype=np.float64), floor)}
    for lo_key, hi_key in (("min", "max"), ("q01", "q99")):
        lo = np.asarray(stats[lo_key], dtype=np.float64)
        hi = np.asarray(stats[hi_key], dtype=np.float64)
        centre, half = (lo + hi) / 2, np.maximum((hi - lo) / 2, floor)
        out[lo_key], out[hi_key] = centre - half, centre + half
    return {k: v.astype(np.float32) for k, v in out.items()}
