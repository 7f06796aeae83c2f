"""Correlation tests for the conjecture, each with a bootstrap interval and a verdict.

Every test returns a :class:`CorrelationResult` and never raises on awkward
data (too few models, constant or missing values): it answers "inconclusive"
with the reason and NaN numbers instead of a number that means nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats

from moetopo.stats._resampling import (
    Interval,
    bootstrap_interval,
    explained,
    is_constant,
    midranks,
    monte_carlo_error,
    partial_pearson,
    pearson,
    permutation_pvalue,
    residualize,
)

Statistic = Literal["pearson", "spearman"]
Verdict = Literal["supported", "contradicted", "inconclusive"]


@dataclass(frozen=True)
class CorrelationResult:
    """One correlation with its uncertainty and what it says about the conjecture.

    ``n`` counts the points correlated (models, or layers in the clustered
    test) and ``n_groups`` the independent units the bootstrap resamples
    (models). ``ci_method`` is 'BCa', 'percentile' (BCa undefined on these
    data) or 'none' (no interval). The verdict is 'supported' when the whole
    interval lies above 0, 'contradicted' when below, else 'inconclusive'.
    """

    statistic: str
    estimate: float
    ci_low: float
    ci_high: float
    p_value: float
    n: int
    n_groups: int
    ci_method: str
    verdict: Verdict
    reason: str
    p_mc_error: float = float("nan")  # Monte Carlo standard error of p_value


def correlation_test(
    x: ArrayLike,
    y: ArrayLike,
    *,
    statistic: Statistic = "pearson",
    confidence_level: float = 0.95,
    n_resamples: int = 9999,
    seed: int = 0,
    min_n: int = 5,
    higher_is_better: bool = True,
    names: tuple[str, str] = ("x", "y"),
) -> CorrelationResult:
    """Correlation of x and y over models: BCa bootstrap interval and permutation p-value.

    With ``higher_is_better=False`` (y is a loss) y is negated first, so a
    positive estimate always means larger x goes with better y. Models with a
    missing or non-finite x or y are left out and counted in the reason.
    """
    _check_options(statistic, confidence_level, n_resamples)
    x, y = _float_columns(x, y)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    y = y if higher_is_better else -y
    left_out = _left_out(int(np.count_nonzero(~keep)), "models")
    n = x.size
    problem = _too_few(n, min_n, floor=3, unit="models") or _constant((x, names[0]), (y, names[1]))
    if problem:
        return _undetermined(statistic, n, n, problem + left_out)

    spearman = statistic == "spearman"

    def on_weights(w: np.ndarray) -> np.ndarray:
        return _correlation(x, y, w, spearman)

    ones = np.ones(n)
    a, b = (stats.rankdata(x), stats.rankdata(y)) if spearman else (x, y)
    return resampled_result(
        statistic,
        on_weights,
        np.arange(n),
        (lambda b_perm: pearson(a, b_perm, ones), b),
        n_groups=n,
        confidence_level=confidence_level,
        n_resamples=n_resamples,
        seed=seed,
        left_out=left_out,
    )


def partial_correlation_test(
    x: ArrayLike,
    y: ArrayLike,
    z: ArrayLike,
    *,
    statistic: Statistic = "pearson",
    confidence_level: float = 0.95,
    n_resamples: int = 9999,
    seed: int = 0,
    min_n: int = 5,
    higher_is_better: bool = True,
    names: tuple[str, str, str] = ("x", "y", "z"),
) -> CorrelationResult:
    """Correlation of x and y with z (e.g. log total parameters) removed from both.

    x and y are each regressed on z with an intercept and the residuals are
    correlated (for Spearman, on ranks). The bootstrap refits the regressions
    inside every resample of models; the p-value permutes the residuals of y
    and refits (Freedman-Lane), which holds its level better than correlating
    permuted residuals directly. A confounder z that drives both x and y
    leaves a partial estimate near 0.
    """
    _check_options(statistic, confidence_level, n_resamples)
    x, y, z = _float_columns(x, y, z)
    keep = np.isfinite(x) & np.isfinite(y) & np.isfinite(z)
    x, y, z = x[keep], y[keep], z[keep]
    y = y if higher_is_better else -y
    left_out = _left_out(int(np.count_nonzero(~keep)), "models")
    label = f"partial_{statistic}"
    n = x.size
    problem = _too_few(n, min_n, floor=4, unit="models") or _constant((x, names[0]), (y, names[1]))
    if problem:
        return _undetermined(label, n, n, problem + left_out)

    spearman = statistic == "spearman"
    if spearman:
        x, y, z = stats.rankdata(x), stats.rankdata(y), stats.rankdata(z)
    ones = np.ones(n)
    rx, ry = residualize(x, z, ones), residualize(y, z, ones)
    for values, residual, name in ((x, rx, names[0]), (y, ry, names[1])):
        if explained(values, residual, ones):
            reason = f"{name} is a linear function of {names[2]}: nothing left to correlate"
            return _undetermined(label, n, n, reason + left_out)

    def on_weights(w: np.ndarray) -> np.ndarray:
        if spearman:
            return partial_pearson(midranks(x, w), midranks(y, w), midranks(z, w), w)
        return partial_pearson(x, y, z, w)

    return resampled_result(
        label,
        on_weights,
        np.arange(n),
        (lambda ry_perm: pearson(rx, residualize(ry_perm, z, ones), ones), ry),
        n_groups=n,
        confidence_level=confidence_level,
        n_resamples=n_resamples,
        seed=seed,
        left_out=left_out,
    )


def clustered_correlation_test(
    x: ArrayLike,
    y: ArrayLike,
    groups: ArrayLike,
    *,
    statistic: Statistic = "pearson",
    confidence_level: float = 0.95,
    n_resamples: int = 9999,
    seed: int = 0,
    min_n: int = 5,
    higher_is_better: bool = True,
    names: tuple[str, str] = ("x", "y"),
) -> CorrelationResult:
    """Layer-level correlation whose uncertainty counts models, not layers.

    Points are layers and ``groups`` their models; y (the model's score) must
    be constant within a model. The estimate is the correlation over all
    layers, but the bootstrap draws whole models with replacement and the
    permutation test shuffles scores between models, so twenty layers of one
    model weigh as one model of evidence: few models cannot fake significance
    with many layers. ``min_n`` counts models.
    """
    _check_options(statistic, confidence_level, n_resamples)
    x, y = _float_columns(x, y)
    labels = np.asarray(groups)
    if labels.shape != x.shape:
        raise ValueError(f"groups has {labels.size} entries for {x.size} points")
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    y = y if higher_is_better else -y
    _, unit = np.unique(labels[keep], return_inverse=True)
    n_units = int(unit.max()) + 1 if unit.size else 0
    unit_y = np.full(n_units, np.nan)
    unit_y[unit] = y
    if not np.array_equal(unit_y[unit], y):
        raise ValueError(f"{names[1]} must be constant within each group (one score per model)")
    left_out = _left_out(int(np.count_nonzero(~keep)), "layers")
    n = x.size
    problem = _too_few(n_units, min_n, floor=3, unit="models") or _constant(
        (x, names[0]), (y, names[1])
    )
    if problem:
        return _undetermined(statistic, n, n_units, problem + left_out)

    spearman = statistic == "spearman"

    def on_weights(w: np.ndarray) -> np.ndarray:
        return _correlation(x, y, w, spearman)

    def on_unit_scores(scores: np.ndarray) -> np.ndarray:
        y_points = scores[..., unit]
        if spearman:
            y_points = stats.rankdata(y_points, axis=-1)
        return pearson(a, y_points, ones)

    ones = np.ones(n)
    a = stats.rankdata(x) if spearman else x
    return resampled_result(
        statistic,
        on_weights,
        unit,
        (on_unit_scores, unit_y),
        n_groups=n_units,
        confidence_level=confidence_level,
        n_resamples=n_resamples,
        seed=seed,
        left_out=left_out,
    )


def resampled_result(
    statistic: str,
    on_weights,
    point_unit: np.ndarray,
    permutation: tuple,
    *,
    n_groups: int,
    confidence_level: float,
    n_resamples: int,
    seed: int,
    left_out: str,
) -> CorrelationResult:
    """The estimate, its bootstrap interval over ``point_unit``'s units and the
    permutation p-value of ``permutation`` = (statistic of permuted values, the values),
    concluded by :func:`_conclude`; both resamplings seeded from ``seed``."""
    rng_boot, rng_perm = np.random.default_rng(seed).spawn(2)
    interval = bootstrap_interval(
        on_weights,
        point_unit,
        confidence_level=confidence_level,
        n_resamples=n_resamples,
        rng=rng_boot,
    )
    permuted_statistic, permuted = permutation
    n = len(point_unit)
    p_value = permutation_pvalue(
        permuted_statistic, permuted, n_points=n, n_resamples=n_resamples, rng=rng_perm
    )
    estimate = float(on_weights(np.ones(n)))
    test = (p_value, monte_carlo_error(p_value, len(permuted), n_resamples))
    return _conclude(statistic, estimate, interval, test, n, n_groups, confidence_level, left_out)


def _correlation(x: np.ndarray, y: np.ndarray, w: np.ndarray, spearman: bool) -> np.ndarray:
    """Pearson, or Pearson of midranks (Spearman), of fixed points under resample weights."""
    if spearman:
        return pearson(midranks(x, w), midranks(y, w), w)
    return pearson(x, y, w)


def _check_options(statistic: str, confidence_level: float, n_resamples: int) -> None:
    """Reject caller mistakes early; data problems are answered, not raised."""
    if statistic not in ("pearson", "spearman"):
        raise ValueError(f"statistic must be 'pearson' or 'spearman', not {statistic!r}")
    if not 0.0 < confidence_level < 1.0:
        raise ValueError(f"confidence_level must lie in (0, 1), not {confidence_level}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be positive, not {n_resamples}")


def _float_columns(*columns: ArrayLike) -> list[np.ndarray]:
    """Equal-length 1-D float arrays (missing values become NaN)."""
    arrays = [np.asarray(c, dtype=float).ravel() for c in columns]
    if len({a.size for a in arrays}) > 1:
        raise ValueError(f"inputs differ in length: {[a.size for a in arrays]}")
    return arrays


def _left_out(count: int, unit: str) -> str:
    return f"; {count} {unit} with missing or non-finite values left out" if count else ""


def _too_few(n: int, min_n: int, *, floor: int, unit: str) -> str:
    """Why n is too small, or '' when it is enough (never below the statistic's own floor)."""
    needed = max(min_n, floor)
    return f"only {n} {unit} with complete values; at least {needed} needed" if n < needed else ""


def _constant(*named: tuple[np.ndarray, str]) -> str:
    for values, name in named:
        if is_constant(values, np.ones(values.size)):
            return f"{name} is constant: correlation undefined"
    return ""


def _undetermined(statistic: str, n: int, n_groups: int, reason: str) -> CorrelationResult:
    nan = float("nan")
    return CorrelationResult(
        statistic, nan, nan, nan, nan, n, n_groups, "none", "inconclusive", reason
    )


def _conclude(
    statistic: str,
    estimate: float,
    interval: Interval,
    test: tuple[float, float],
    n: int,
    n_groups: int,
    confidence_level: float,
    left_out: str,
) -> CorrelationResult:
    """Apply the verdict rule: the interval excludes 0 and the permutation test agrees.

    ``test`` is the permutation p-value and its Monte Carlo error. At a handful of
    models (or heavy ties) a bootstrap interval can exclude 0 while the exact
    permutation test finds nothing; the interval is then not trusted. Nor is one whose
    undefined resamples (dropped, so the interval is conditional on the statistic
    existing) outnumber its tail, since they could lie on either side of 0; nor a p
    within three Monte Carlo errors of the level, which another seed could move across
    it. Each of these answers inconclusive, saying why.
    """
    p_value, error = test
    alpha = 1.0 - confidence_level
    level = f"{100 * confidence_level:g}%"
    span = f"{level} {interval.method} interval [{interval.low:.3g}, {interval.high:.3g}]"
    shown = f"permutation p = {p_value:.3g}" + (f" ± {error:.2g}" if error > 0 else "")
    excludes = interval.low > 0 or interval.high < 0
    unknown = interval.undefined > alpha / 2 * interval.drawn
    verdict: Verdict = "inconclusive"
    if interval.method == "none":
        reason = f"no bootstrap interval: {interval.note}; {shown}"
    elif excludes and p_value > alpha:
        reason = f"{span} excludes 0 but {shown} > {alpha:g}: too little evidence to trust it"
    elif excludes and unknown:
        reason = (
            f"{span} excludes 0, but {interval.undefined} of {interval.drawn} resamples were "
            f"undefined, more than its {alpha / 2:g} tail: it is conditional on the statistic "
            f"existing; {shown}"
        )
    elif excludes and p_value + 3 * error > alpha:
        reason = (
            f"{span} excludes 0, but {shown} is within 3 Monte Carlo errors of {alpha:g}: "
            "too close to call with these resamples"
        )
    elif interval.low > 0:
        verdict, reason = "supported", f"{span} lies entirely above 0; {shown}"
    elif interval.high < 0:
        verdict, reason = "contradicted", f"{span} lies entirely below 0; {shown}"
    else:
        reason = f"{span} contains 0; {shown}"
    said = "resamples were undefined" in reason  # the note would repeat it
    note = interval.note if interval.method != "none" and not said else ""
    return CorrelationResult(
        statistic,
        estimate,
        interval.low,
        interval.high,
        p_value,
        n,
        n_groups,
        interval.method,
        verdict,
        reason + note + left_out,
        error,
    )
