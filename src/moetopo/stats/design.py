"""What a designed study (one factor at a time, seeds per configuration) can say that an
observational zoo cannot.

- Seed variance: is a figure a property of the configuration or of the seed? The share of
  its variance between configurations, with the one-way ANOVA p-value.
- Within a factor (the base point and that factor's other values): does the figure move
  with the factor (Spearman with the factor's value), does the score, and within
  configurations (seed to seed, where the design holds everything else fixed) does more
  H1 go with a better score?
- Power: the smallest correlation a test on ``n`` independent models could have detected.
"""

from __future__ import annotations

from dataclasses import asdict

import numpy as np
import pandas as pd
from scipy import stats

from moetopo.stats.correlation import correlation_test

DESIGN_COLUMNS = ("configuration", "factor", "seed")  # and a column per factor


def seed_variance(models: pd.DataFrame, figure: str) -> dict:
    """``figure`` of ``models`` (one row per model, with ``configuration``): the share of
    its variance between configurations (an intraclass correlation from the one-way
    ANOVA mean squares), the ANOVA p-value, and the mean within-configuration SD."""
    groups = [g[figure].to_numpy(float) for _, g in models.groupby("configuration")]
    groups = [g[np.isfinite(g)] for g in groups]
    groups = [g for g in groups if g.size]
    values = np.concatenate(groups) if groups else np.array([])
    out = {"figure": figure, "n_models": int(values.size), "n_configurations": len(groups)}
    within_sd = [float(np.std(g, ddof=1)) for g in groups if g.size > 1]
    out["seed_sd"] = float(np.mean(within_sd)) if within_sd else np.nan
    out["mean"] = float(values.mean()) if values.size else np.nan
    if len(groups) < 2 or values.size <= len(groups) or np.ptp(values) == 0:
        why = (
            "constant across every model"
            if values.size and np.ptp(values) == 0
            else ("fewer than two configurations with a repeated seed")
        )
        return out | {"between_share": np.nan, "p_value": np.nan, "reason": why}
    k, n = len(groups), values.size
    grand = values.mean()
    between = sum(g.size * (g.mean() - grand) ** 2 for g in groups) / (k - 1)
    within = sum(((g - g.mean()) ** 2).sum() for g in groups) / (n - k)
    n0 = (n - sum(g.size**2 for g in groups) / n) / (k - 1)  # mean group size, unbalanced
    share = (between - within) / (between + (n0 - 1) * within) if between + within else 0.0
    p = float(stats.f_oneway(*groups).pvalue) if within > 0 else 0.0
    return out | {"between_share": float(max(share, 0.0)), "p_value": p, "reason": ""}


def within_configuration(models: pd.DataFrame, column: str) -> np.ndarray:
    """``column`` minus its configuration's mean: the seed-to-seed part the design leaves."""
    return (models[column] - models.groupby("configuration")[column].transform("mean")).to_numpy()


def factor_series(models: pd.DataFrame, factor: str) -> pd.DataFrame:
    """The base point's models and those of ``factor``'s other values; ``value`` is each
    model's value of that factor (the sheet has a column per factor)."""
    rows = models[models.factor.isin(["base", factor])]
    return rows.assign(value=rows[factor].astype(float))


def effect_rows(
    models: pd.DataFrame,
    figure: str,
    *,
    higher_is_better: bool,
    confidence_level: float,
    n_resamples: int,
    seed: int,
    min_models: int,
) -> list[dict]:
    """Per factor: Spearman of the figure with the factor's value, of the score with it,
    and the within-configuration correlation of figure and score; then the same
    within-configuration correlation over every model of the study."""
    options = dict(confidence_level=confidence_level, n_resamples=n_resamples, seed=seed,
                   min_n=min_models)  # fmt: skip
    rows = []

    def add(factor: str, test: str, n_configurations: int, result) -> None:
        rows.append({"factor": factor, "figure": figure, "test": test,
                     "n_configurations": n_configurations} | asdict(result))  # fmt: skip

    factors = sorted(set(models.factor) - {"base"})
    for factor in factors:
        series = factor_series(models, factor)
        k = int(series.configuration.nunique())
        add(factor, "figure_with_factor", k, correlation_test(
            series.value, series[figure], statistic="spearman", names=("factor", figure),
            **options))  # fmt: skip
        add(factor, "score_with_factor", k, correlation_test(
            series.value, series.score, statistic="spearman", higher_is_better=higher_is_better,
            names=("factor", "score"), **options))  # fmt: skip
        add(factor, "figure_with_score_within", k, correlation_test(
            within_configuration(series, figure), within_configuration(series, "score"),
            higher_is_better=higher_is_better, names=(figure, "score"), **options))  # fmt: skip
    k = int(models.configuration.nunique())
    add("all", "figure_with_score_within", k, correlation_test(
        within_configuration(models, figure), within_configuration(models, "score"),
        higher_is_better=higher_is_better, names=(figure, "score"), **options))  # fmt: skip
    return rows


def detectable_correlation(
    n: int, *, alpha: float = 0.05, power: float = 0.8, lost: int = 0
) -> float:
    """The smallest |Pearson r| a two-sided test at ``alpha`` on ``n`` independent points
    finds with probability ``power`` (Fisher's z; ``lost``: degrees of freedom spent on
    covariates or configuration means)."""
    df = n - 3 - lost
    if df < 1:
        return float("nan")
    z = stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power)
    return float(np.tanh(z / np.sqrt(df)))
