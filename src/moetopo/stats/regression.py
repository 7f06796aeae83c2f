"""Does H1 predict the score beyond size? A regression instead of a ratio.

H1 per activated parameter correlates with the score through its denominator alone
whenever size does (on the demo zoo the score's correlation with 1 / activated is
-0.82). So the score is regressed on H1 and log10 activated parameters (plus any
covariates given), and the answer is H1's coefficient: its bootstrap interval resamples
models (whole ones, after a base and its fine-tunes were merged into one), its p-value
permutes the residuals of the model without H1 (Freedman-Lane), on the coefficient's t
statistic.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from moetopo.stats._resampling import is_constant
from moetopo.stats.correlation import (
    CorrelationResult,
    _float_columns,
    _left_out,
    _too_few,
    _undetermined,
    resampled_result,
)

_RANK_RTOL = 1e-10  # a design whose smallest singular value is below this share is singular
_GRAM_RTOL = 1e-12  # the same for a resample's Gram matrix (the squared conditioning)


def regression_test(
    h1: ArrayLike,
    score: ArrayLike,
    covariates: ArrayLike,
    *,
    confidence_level: float = 0.95,
    n_resamples: int = 9999,
    seed: int = 0,
    min_n: int = 5,
    higher_is_better: bool = True,
    names: tuple[str, str] = ("h1", "score"),
) -> CorrelationResult:
    """H1's coefficient in the least-squares fit score ~ 1 + h1 + covariates.

    ``covariates`` is (n, k) (log10 activated parameters first, then any others). With
    ``higher_is_better=False`` the score is negated, so a positive coefficient always
    means more H1 goes with a better score. A resample whose design is singular (H1
    constant, or explained by the covariates) is undefined and counted.
    """
    if not 0.0 < confidence_level < 1.0:
        raise ValueError(f"confidence_level must lie in (0, 1), not {confidence_level}")
    x, y = _float_columns(h1, score)
    z = np.asarray(covariates, dtype=float).reshape(x.size, -1)
    keep = np.isfinite(x) & np.isfinite(y) & np.all(np.isfinite(z), axis=1)
    x, y, z = x[keep], y[keep], z[keep]
    y = y if higher_is_better else -y
    left_out = _left_out(int(np.count_nonzero(~keep)), "models")
    n, k = x.size, z.shape[1]
    problem = _too_few(n, min_n, floor=k + 3, unit="models")
    if not problem and is_constant(x, np.ones(n)):
        problem = f"{names[0]} is constant: its coefficient is undefined"
    design = np.column_stack([np.ones(n), x, z])
    if not problem and _singular(design):
        problem = f"{names[0]} is a linear function of the covariates: nothing left to fit"
    if problem:
        return _undetermined("regression", n, n, problem + left_out)

    def on_weights(w: np.ndarray) -> np.ndarray:
        return _coefficient(design, y, w)

    reduced = np.column_stack([np.ones(n), z])
    fitted = reduced @ np.linalg.lstsq(reduced, y, rcond=None)[0]
    return resampled_result(
        "regression",
        on_weights,
        np.arange(n),
        (lambda r: _t_statistic(design, fitted + r), y - fitted),
        n_groups=n,
        confidence_level=confidence_level,
        n_resamples=n_resamples,
        seed=seed,
        left_out=left_out,
    )


def _singular(design: np.ndarray) -> bool:
    values = np.linalg.svd(design, compute_uv=False)
    return bool(values[-1] <= _RANK_RTOL * values[0])


def _coefficient(design: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """H1's weighted least-squares coefficient (column 1 of ``design``) per weight row;
    NaN where the weighted design is singular."""
    single = np.ndim(w) == 1
    w = np.atleast_2d(w)
    gram = np.einsum("bn,ni,nj->bij", w, design, design)
    moment = np.einsum("bn,ni,n->bi", w, design, y)
    values = np.linalg.svd(gram, compute_uv=False)
    # the Gram squares the design's conditioning; below 1e-12 is rounding noise
    ok = values[:, -1] > _GRAM_RTOL * values[:, 0]
    safe = np.where(ok[:, None, None], gram, np.eye(design.shape[1]))
    coef = (np.linalg.pinv(safe) @ moment[..., None])[..., 1, 0]
    out = np.where(ok, coef, np.nan)
    return out[0] if single else out


def _t_statistic(design: np.ndarray, y: np.ndarray) -> np.ndarray:
    """t statistic of H1's coefficient for each row of ``y`` (..., n) on a fixed design."""
    inverse = np.linalg.pinv(design.T @ design)
    coef = np.einsum("ij,nj,...n->...i", inverse, design, y)
    residual = y - coef @ design.T
    dof = design.shape[0] - design.shape[1]
    scale = np.sqrt((residual**2).sum(-1) / dof * inverse[1, 1])
    with np.errstate(divide="ignore", invalid="ignore"):
        return coef[..., 1] / scale


def covariate_matrix(log_activated: ArrayLike, extra: dict[str, ArrayLike]) -> np.ndarray:
    """Columns: log10 activated parameters, then each extra covariate (numeric as is; text,
    such as a family, as indicator columns without the first level)."""
    columns = [np.asarray(log_activated, dtype=float)]
    for values in extra.values():
        values = np.asarray(values)
        if values.dtype.kind in "iuf":
            columns.append(values.astype(float))
            continue
        levels = sorted(set(values.tolist()))
        columns += [(values == level).astype(float) for level in levels[1:]]
    return np.column_stack(columns)
