"""The conjecture stage's tables: one row per metric and statistic, ready for Parquet."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy.stats import false_discovery_control

from moetopo.stats.correlation import (
    CorrelationResult,
    clustered_correlation_test,
    correlation_test,
    partial_correlation_test,
)
from moetopo.stats.regression import covariate_matrix, regression_test

_TEXT, _REAL, _COUNT = "str", "float64", "int64"
MODEL_COLUMNS = {
    "level": _TEXT,
    "metric": _TEXT,
    "statistic": _TEXT,
    "estimate": _REAL,
    "ci_low": _REAL,
    "ci_high": _REAL,
    "ci_method": _TEXT,
    "p_value": _REAL,
    "p_mc_error": _REAL,
    "n_models": _COUNT,
    "n_nonzero": _COUNT,
    "verdict": _TEXT,
    "reason": _TEXT,
}
LAYER_COLUMNS = {**MODEL_COLUMNS, "n_layers": _COUNT}
_STATISTICS = ("pearson", "spearman")


def conjecture_table(
    models: pd.DataFrame,
    metrics: Sequence[str],
    *,
    score_col: str = "score",
    higher_is_better: bool = True,
    size_col: str = "total_params",
    confidence_level: float = 0.95,
    n_resamples: int = 9999,
    seed: int = 0,
    min_n: int = 5,
) -> pd.DataFrame:
    """Model-level test of every metric against the score, raw and controlling for size.

    One row per metric and statistic: pearson, spearman, and partial_pearson /
    partial_spearman controlling for log10 of ``size_col`` (total parameters),
    so that a metric which only tracks model size is not credited with the
    generalization that size buys. Every row uses the same seed, hence the
    same resamples of models. Level is 'model'; rows are sorted.
    """
    _require(models, [score_col, size_col, *metrics], "models")
    score = _column(models, score_col)
    log_size = _log10_column(models, size_col)
    options = dict(
        confidence_level=confidence_level,
        n_resamples=n_resamples,
        seed=seed,
        min_n=min_n,
        higher_is_better=higher_is_better,
    )
    rows = []
    for metric in metrics:
        x = _column(models, metric)
        for statistic in _STATISTICS:
            raw = correlation_test(
                x, score, statistic=statistic, names=(metric, score_col), **options
            )
            partial = partial_correlation_test(
                x,
                score,
                log_size,
                statistic=statistic,
                names=(metric, score_col, f"log10({size_col})"),
                **options,
            )
            nonzero = _nonzero_models(x, score, np.arange(len(x)))
            rows += [_row("model", metric, r, nonzero) for r in (raw, partial)]
    return _typed(rows, MODEL_COLUMNS)


def regression_table(
    models: pd.DataFrame,
    metrics: Sequence[str],
    *,
    covariates: Sequence[str] = (),
    score_col: str = "score",
    active_col: str = "activated_params",
    higher_is_better: bool = True,
    confidence_level: float = 0.95,
    n_resamples: int = 9999,
    seed: int = 0,
    min_n: int = 5,
) -> pd.DataFrame:
    """Model-level regression of the score on each metric's H1 (a total, not a ratio), log10
    activated parameters and ``covariates`` (columns of ``models``): H1's coefficient."""
    _require(models, [score_col, active_col, *metrics, *covariates], "models")
    score = _column(models, score_col)
    log_active = _log10_column(models, active_col)
    design = covariate_matrix(log_active, {c: models[c].to_numpy() for c in covariates})
    rows = []
    for metric in metrics:
        x = _column(models, metric)
        result = regression_test(
            x,
            score,
            design,
            confidence_level=confidence_level,
            n_resamples=n_resamples,
            seed=seed,
            min_n=min_n,
            higher_is_better=higher_is_better,
            names=(metric, score_col),
        )
        rows.append(_row("model", metric, result, _nonzero_models(x, score, np.arange(len(x)))))
    return _typed(rows, MODEL_COLUMNS)


def layer_conjecture_table(
    layers: pd.DataFrame,
    metrics: Sequence[str],
    *,
    model_col: str = "model",
    score_col: str = "score",
    higher_is_better: bool = True,
    confidence_level: float = 0.95,
    n_resamples: int = 9999,
    seed: int = 0,
    min_n: int = 5,
) -> pd.DataFrame:
    """Layer-level view: every layer a point, uncertainty from resampling whole models.

    ``layers`` has one row per (model, layer) with the model's score repeated
    on each of its layers. Columns as :func:`conjecture_table` plus n_layers;
    level is 'layer'. ``min_n`` counts models.
    """
    _require(layers, [model_col, score_col, *metrics], "layers")
    score = _column(layers, score_col)
    groups = layers[model_col].astype(str).to_numpy()
    rows = []
    for metric in metrics:
        for statistic in _STATISTICS:
            result = clustered_correlation_test(
                _column(layers, metric),
                score,
                groups,
                statistic=statistic,
                confidence_level=confidence_level,
                n_resamples=n_resamples,
                seed=seed,
                min_n=min_n,
                higher_is_better=higher_is_better,
                names=(metric, score_col),
            )
            nonzero = _nonzero_models(_column(layers, metric), score, groups)
            rows.append({**_row("layer", metric, result, nonzero), "n_layers": result.n})
    return _typed(rows, LAYER_COLUMNS)


def with_adjusted_p(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` with ``p_adjusted``: Benjamini-Hochberg over all tests of the same level.

    A study runs dozens of tests (metrics x sources x statistics); at p < 0.05 a few
    come out "significant" by chance alone. The adjusted p-value controls the expected
    share of false discoveries among the tests it calls significant. Tests without a
    p-value (too few models) stay NaN and do not count.
    """
    out = table.copy()
    out["p_adjusted"] = np.nan
    for _, rows in out.groupby("level", sort=False):
        p = rows["p_value"].to_numpy(dtype=float)
        tested = np.isfinite(p)
        if tested.any():
            adjusted = np.full(p.size, np.nan)
            adjusted[tested] = false_discovery_control(p[tested], method="bh")
            out.loc[rows.index, "p_adjusted"] = adjusted
    return out


def adjusted_verdicts(table: pd.DataFrame, confidence_level: float) -> pd.DataFrame:
    """``table`` (with ``p_adjusted``) whose verdicts claim no more than the adjusted
    evidence: a decided test whose Benjamini-Hochberg p exceeds 1 - confidence_level is
    inconclusive, its reason saying how many tests it was counted among."""
    alpha = 1.0 - confidence_level
    out = table.copy()
    out["verdict_unadjusted"] = out["verdict"]
    tests = out.groupby("level")["p_value"].transform(lambda p: int(np.isfinite(p).sum()))
    weak = (out.verdict != "inconclusive") & ~(out.p_adjusted <= alpha)
    for i in out.index[weak]:
        out.loc[i, "reason"] = (
            f"{out.loc[i, 'reason']}; {out.loc[i, 'verdict']} on its own, but not once the "
            f"{int(tests[i])} {out.loc[i, 'level']}-level tests are counted "
            f"(Benjamini-Hochberg adjusted p = {out.loc[i, 'p_adjusted']:.3g} > {alpha:g})"
        )
    out.loc[weak, "verdict"] = "inconclusive"
    return out


def _require(frame: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in dict.fromkeys(columns) if c not in frame.columns]
    if missing:
        raise ValueError(f"{what} table lacks column(s) {missing}; it has {list(frame.columns)}")


def _column(frame: pd.DataFrame, name: str) -> np.ndarray:
    """A numeric column as floats, missing values as NaN."""
    return pd.to_numeric(frame[name]).to_numpy(dtype=float, na_value=np.nan)


def _nonzero_models(x: np.ndarray, score: np.ndarray, models: np.ndarray) -> tuple[int, int]:
    """(models with a nonzero metric, models scored and measured), a model counting as
    nonzero when any of its rows is."""
    measured = np.isfinite(x) & np.isfinite(score)
    return len(set(models[measured & (x != 0)])), len(set(models[measured]))


def _log10_column(frame: pd.DataFrame, name: str) -> np.ndarray:
    """log10 of a positive count column (parameters), NaN where it is not positive."""
    values = _column(frame, name)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(values > 0, np.log10(values), np.nan)


def _row(level: str, metric: str, result: CorrelationResult, nonzero: tuple[int, int]) -> dict:
    """The table row of ``result``; inconclusive whenever fewer than half of the scored
    models have a nonzero metric, since a correlation then rests on those few (with one
    nonzero model, every resample that keeps it "excludes 0")."""
    result_metric, (k, n) = metric, nonzero
    verdict, reason = result.verdict, result.reason
    metric = metric.replace(":", " of ")  # the conjecture stage's metric:source
    if k == 0 and n:
        verdict, reason = "inconclusive", f"no scored model has a nonzero {metric}: not measurable"
    elif 2 * k < n:
        verdict = "inconclusive"
        reason = (
            f"only {k} of {n} scored models have a nonzero {metric}: {result.verdict} on "
            f"those few, not a trend across models; {reason}"
        )
    return {
        "level": level,
        "metric": result_metric,
        "statistic": result.statistic,
        "estimate": result.estimate,
        "ci_low": result.ci_low,
        "ci_high": result.ci_high,
        "ci_method": result.ci_method,
        "p_value": result.p_value,
        "p_mc_error": result.p_mc_error,
        "n_models": result.n_groups,
        "n_nonzero": k,
        "verdict": verdict,
        "reason": reason,
    }


def _typed(rows: list[dict], columns: dict[str, str]) -> pd.DataFrame:
    """Rows in a fixed schema (also when empty), sorted by metric then statistic."""
    table = pd.DataFrame(rows, columns=list(columns)).astype(columns)
    return table.sort_values(["metric", "statistic"], kind="stable").reset_index(drop=True)
