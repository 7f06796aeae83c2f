"""Pooled means across independent units, and the fitted line drawn in the report."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from moetopo.stats._resampling import bootstrap_interval, center, is_constant


@dataclass(frozen=True)
class MeanResult:
    """A pooled mean with a bootstrap interval over units ('none' when there is none)."""

    estimate: float
    ci_low: float
    ci_high: float
    ci_method: str
    n: int
    n_groups: int
    reason: str


@dataclass(frozen=True)
class LineBand:
    """Least-squares line of y on x and its pointwise bootstrap band over ``x``.

    ``fit``, ``low`` and ``high`` are the line and band at each grid point;
    all NaN when no line (or no band) can be drawn, as ``reason`` says.
    """

    slope: float
    intercept: float
    x: np.ndarray
    fit: np.ndarray
    low: np.ndarray
    high: np.ndarray
    n: int
    reason: str


def bootstrap_mean_interval(
    values: ArrayLike,
    groups: ArrayLike | None = None,
    *,
    confidence_level: float = 0.95,
    n_resamples: int = 9999,
    seed: int = 0,
    unit: str = "pair",
) -> MeanResult:
    """Mean of all values with an interval that resamples whole groups (units).

    Used to pool evidence across units such as base/tuned pairs: values from
    one unit are not independent, so the bootstrap draws units, never single
    values. Without ``groups`` every value is its own unit. With one unit the
    mean is reported with a NaN interval and the reason "one <unit>".
    """
    if not 0.0 < confidence_level < 1.0:
        raise ValueError(f"confidence_level must lie in (0, 1), not {confidence_level}")
    v = np.asarray(values, dtype=float).ravel()
    labels = np.arange(v.size) if groups is None else np.asarray(groups).ravel()
    if labels.size != v.size:
        raise ValueError(f"groups has {labels.size} entries for {v.size} values")
    keep = np.isfinite(v)
    v = v[keep]
    _, point_unit = np.unique(labels[keep], return_inverse=True)
    n_units = int(point_unit.max()) + 1 if v.size else 0
    nan = float("nan")
    if n_units == 0:
        return MeanResult(nan, nan, nan, "none", 0, 0, f"no {unit} has a finite value")
    estimate = float(v.mean())
    if n_units == 1:
        return MeanResult(estimate, nan, nan, "none", v.size, 1, f"one {unit}: no interval")

    def on_weights(w: np.ndarray) -> np.ndarray:
        return (v * w).sum(-1) / w.sum(-1)

    interval = bootstrap_interval(
        on_weights,
        point_unit,
        confidence_level=confidence_level,
        n_resamples=n_resamples,
        rng=np.random.default_rng(seed),
    )
    level = f"{100 * confidence_level:g}%"
    reason = f"{level} {interval.method} interval resampling {n_units} {unit}s{interval.note}"
    return MeanResult(
        estimate, interval.low, interval.high, interval.method, v.size, n_units, reason
    )


def fit_line_band(
    x: ArrayLike,
    y: ArrayLike,
    *,
    grid: ArrayLike | None = None,
    n_grid: int = 50,
    confidence_level: float = 0.95,
    n_resamples: int = 9999,
    seed: int = 0,
) -> LineBand:
    """Least-squares line and a pointwise percentile bootstrap band for a scatter plot.

    The band resamples (x, y) pairs, refits the line and takes the
    ``confidence_level`` percentile interval of the fitted value at each grid
    point (default: ``n_grid`` points spanning the observed x). Resamples with
    a single x value have no line and are skipped. It shows the spread of the
    line, not a test: the verdict comes from the correlation tests.
    """
    xs, ys = (np.asarray(a, dtype=float).ravel() for a in (x, y))
    if xs.size != ys.size:
        raise ValueError(f"x has {xs.size} values and y {ys.size}")
    keep = np.isfinite(xs) & np.isfinite(ys)
    xs, ys = xs[keep], ys[keep]
    n = xs.size
    if grid is not None:
        at = np.asarray(grid, dtype=float).ravel()
    elif n:
        at = np.linspace(xs.min(), xs.max(), n_grid)
    else:
        at = np.empty(0)
    blank = np.full(at.size, np.nan)
    if n < 2 or is_constant(xs, np.ones(n)):
        reason = "fewer than 2 points" if n < 2 else "x is constant"
        return LineBand(np.nan, np.nan, at, blank, blank, blank, n, f"{reason}: no line")

    slope, intercept = (float(v) for v in _line(xs, ys, np.ones(n)))
    fit = intercept + slope * at
    if n < 3:
        return LineBand(slope, intercept, at, fit, blank, blank, n, "2 points: no band")
    counts = np.random.default_rng(seed).multinomial(n, np.full(n, 1.0 / n), size=n_resamples)
    counts = counts[~is_constant(xs, counts)].astype(float)
    slopes, intercepts = _line(xs, ys, counts)
    lines = intercepts[:, None] + slopes[:, None] * at
    alpha = (1.0 - confidence_level) / 2
    low, high = np.quantile(lines, [alpha, 1.0 - alpha], axis=0)
    level = f"{100 * confidence_level:g}%"
    reason = f"{level} pointwise percentile band from {counts.shape[0]} resamples of {n} points"
    return LineBand(slope, intercept, at, fit, low, high, n, reason)


def _line(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Weighted least-squares slope and intercept along the last axis of ``w``."""
    dx, dy = center(x, w), center(y, w)
    slope = (w * dx * dy).sum(-1) / (w * dx * dx).sum(-1)
    intercept = ((w * y).sum(-1) - slope * (w * x).sum(-1)) / w.sum(-1)
    return slope, intercept
