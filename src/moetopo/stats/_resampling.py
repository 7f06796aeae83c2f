"""Resampling machinery shared by every test in :mod:`moetopo.stats`.

A bootstrap resample of units (models, or whole models for layer-level data) is
represented by *weights*: how many times each point was drawn. Weighted
statistics on the original points then equal the plain statistics on the
expanded resample, so one vectorized code path serves models, clusters of
layers and jackknife samples alike, and the original data is the all-ones case.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
from scipy import stats

# Below this share of variance left after removing z, a variable counts as explained by z.
_EXPLAINED_RTOL = 1e-10
# Elements per vectorized batch: keeps resample x point arrays near 16 MB.
_BATCH_ELEMENTS = 2_000_000

WeightedStatistic = Callable[[np.ndarray], np.ndarray]


def is_constant(a: np.ndarray, w: np.ndarray) -> np.ndarray:
    """True where every point with positive weight has the same value (exact, no tolerance)."""
    support = w > 0
    return np.where(support, a, -np.inf).max(-1) == np.where(support, a, np.inf).min(-1)


def center(a: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Subtract the weighted mean along the last axis."""
    return a - (a * w).sum(-1, keepdims=True) / w.sum(-1, keepdims=True)


def pearson(a: np.ndarray, b: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Weighted Pearson r along the last axis; NaN where either side has no variance.

    r = s_ab / sqrt(s_aa s_bb) keeps a == b exactly at 1 (IEEE sqrt(s*s) == s).
    """
    da, db = center(a, w), center(b, w)
    s_ab = (w * da * db).sum(-1)
    s_aa = (w * da * da).sum(-1)
    s_bb = (w * db * db).sum(-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.clip(s_ab / np.sqrt(s_aa * s_bb), -1.0, 1.0)
    return np.where(is_constant(a, w) | is_constant(b, w), np.nan, r)


def midranks(a: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Ranks of fixed values ``a`` (n,) in resamples with counts ``w`` (..., n).

    Tied values share the mean of the positions they occupy in the expanded
    resample, i.e. ``scipy.stats.rankdata(method='average')`` of that resample.
    """
    _, inverse, tie_counts = np.unique(a, return_inverse=True, return_counts=True)
    order = np.argsort(inverse, kind="stable")
    starts = np.concatenate(([0], np.cumsum(tie_counts)[:-1]))
    w_sorted = np.broadcast_to(w, np.broadcast_shapes(w.shape, a.shape))[..., order]
    drawn = np.add.reduceat(w_sorted, starts, axis=-1)
    below = np.cumsum(drawn, axis=-1) - drawn
    return (below + (drawn + 1.0) / 2.0)[..., inverse]


def residualize(a: np.ndarray, z: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Residuals of a weighted least-squares fit of ``a`` on ``z`` with intercept.

    Where z has no variance the fit is the intercept alone, as the minimum-norm
    least-squares solution would give.
    """
    da, dz = center(a, w), center(z, w)
    s_zz = (w * dz * dz).sum(-1, keepdims=True)
    s_az = (w * da * dz).sum(-1, keepdims=True)
    flat_z = is_constant(z, w)[..., None]
    with np.errstate(divide="ignore", invalid="ignore"):
        slope = np.where(flat_z, 0.0, s_az / np.where(flat_z, 1.0, s_zz))
    return da - slope * dz


def explained(a: np.ndarray, residual: np.ndarray, w: np.ndarray) -> np.ndarray:
    """True where ``a`` is constant or (to rounding) an affine function of z."""
    total = (w * center(a, w) ** 2).sum(-1)
    left = (w * residual**2).sum(-1)
    return is_constant(a, w) | (left <= _EXPLAINED_RTOL * total)


def partial_pearson(a: np.ndarray, b: np.ndarray, z: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Weighted correlation of a and b after removing z from both; NaN if z explains either."""
    ra, rb = residualize(a, z, w), residualize(b, z, w)
    r = pearson(ra, rb, w)
    return np.where(explained(a, ra, w) | explained(b, rb, w), np.nan, r)


def _counts(units: np.ndarray, n_units: int) -> np.ndarray:
    """How often each unit occurs in each index array: (..., k) -> (..., n_units) floats."""
    units = np.asarray(units).astype(np.intp)
    flat = units.reshape(-1, units.shape[-1])
    offsets = np.arange(flat.shape[0])[:, None] * n_units
    counts = np.bincount((flat + offsets).ravel(), minlength=flat.shape[0] * n_units)
    return counts.reshape(*units.shape[:-1], n_units).astype(float)


@dataclass(frozen=True)
class Interval:
    """A bootstrap interval and how it was obtained (method 'none' when there is none)."""

    low: float
    high: float
    method: str
    note: str
    undefined: int = 0  # resamples whose statistic did not exist
    drawn: int = 0  # resamples drawn


def bootstrap_interval(
    statistic: WeightedStatistic,
    point_unit: np.ndarray,
    *,
    confidence_level: float,
    n_resamples: int,
    rng: np.random.Generator,
) -> Interval:
    """BCa interval of ``statistic`` resampling units, percentile where BCa is undefined.

    ``point_unit[i]`` is the unit (model) of point i; a resample draws units with
    replacement and passes per-point counts to ``statistic``. Resamples whose
    statistic is undefined (e.g. constant x) are dropped, so the interval is
    conditional on the statistic existing; it counts them (``undefined``) so that a
    verdict can refuse an interval with more unknown than its tail. With more than
    half dropped there is no interval. BCa needs a finite bias correction and a finite jackknife
    acceleration; where either fails (all resamples equal, a leave-one-out
    sample with no variance) the percentile interval is used and the method
    says so.
    """
    n_units = int(point_unit.max()) + 1

    def on_units(units: np.ndarray, axis: int = -1) -> np.ndarray:  # scipy passes axis=-1
        return statistic(_counts(units, n_units)[..., point_unit])

    data = (np.arange(n_units),)
    options = dict(
        vectorized=True,
        confidence_level=confidence_level,
        batch=max(1, _BATCH_ELEMENTS // point_unit.size),
        rng=rng,
    )
    with warnings.catch_warnings():  # its interval is unused: NaN resamples are dropped first
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)
        drawn = stats.bootstrap(
            data, on_units, n_resamples=n_resamples, method="percentile", **options
        )
    values = drawn.bootstrap_distribution
    kept = values[np.isfinite(values)]
    dropped = values.size - kept.size
    note = f"; {dropped} of {values.size} resamples undefined and dropped" if dropped else ""
    counted = dict(undefined=int(dropped), drawn=int(values.size))
    if kept.size < values.size / 2:
        note = f"{dropped} of {values.size} resamples undefined"
        return Interval(np.nan, np.nan, "none", note, **counted)

    reuse = dict(n_resamples=0, bootstrap_result=SimpleNamespace(bootstrap_distribution=kept))
    estimate = on_units(data[0])
    # BCa's bias correction is ndtri(below): infinite when no resample lies on one side.
    below = (np.count_nonzero(kept < estimate) + np.count_nonzero(kept <= estimate)) / (
        2 * kept.size
    )
    if 0.0 < below < 1.0 and np.ptp(kept) > 0:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            bca = stats.bootstrap(data, on_units, method="BCa", **reuse, **options)
        low, high = bca.confidence_interval
        failed = any(issubclass(c.category, RuntimeWarning) for c in caught)
        if np.isfinite(low) and np.isfinite(high) and not failed:
            return Interval(float(low), float(high), "BCa", note, **counted)
    pct = stats.bootstrap(data, on_units, method="percentile", **reuse, **options)
    low, high = pct.confidence_interval
    return Interval(float(low), float(high), "percentile", note, **counted)


def monte_carlo_error(p_value: float, n_permuted: int, n_resamples: int) -> float:
    """Standard error of a permutation p-value from ``n_resamples`` random permutations
    (0 when the test enumerates all n! orders, as :func:`permutation_pvalue` does then)."""
    if not np.isfinite(p_value) or math.factorial(n_permuted) <= n_resamples:
        return 0.0 if np.isfinite(p_value) else np.nan
    return float(np.sqrt(p_value * (1.0 - p_value) / n_resamples))


def permutation_pvalue(
    statistic: Callable[[np.ndarray], np.ndarray],
    permuted: np.ndarray,
    *,
    n_points: int,
    n_resamples: int,
    rng: np.random.Generator,
) -> float:
    """Two-sided permutation p-value, permuting the entries of ``permuted`` only.

    ``statistic`` receives permuted copies (..., n) and may expand them to
    ``n_points`` values each; the test is exact over all n! orders when
    n! <= n_resamples, otherwise Monte Carlo with scipy's +1 correction.
    """
    result = stats.permutation_test(
        (permuted,),
        lambda p, axis=-1: statistic(p),
        permutation_type="pairings",
        vectorized=True,
        n_resamples=n_resamples,
        alternative="two-sided",
        batch=max(1, _BATCH_ELEMENTS // n_points),
        rng=rng,
    )
    return float(result.pvalue)
