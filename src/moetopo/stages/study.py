"""The study stage: what a designed study says about H1 and generalization.

Reads the conjecture stage's per-model H1 figures and the model sheet's design columns
(configuration, factor, seed and a column per factor). Writes the seed variance of every
per-model figure (H1 of every source and metric, every score) and, for the primary
metric and source, each factor's effect on H1 and on each score and the
within-configuration correlation of H1 and score, with Benjamini-Hochberg adjusted
verdicts and the smallest correlation each test could have detected.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from moetopo.artefacts import columns
from moetopo.errors import MoetopoError
from moetopo.stats import adjusted_verdicts, with_adjusted_p
from moetopo.stats.design import (
    DESIGN_COLUMNS,
    detectable_correlation,
    effect_rows,
    factor_series,
    seed_variance,
)

# How a decided factor test reads: the conjecture's words only fit H1 against a score.
DIRECTIONS = {
    "figure_with_factor": {"supported": "rises with it", "contradicted": "falls with it"},
    "score_with_factor": {"supported": "better as it grows", "contradicted": "worse as it grows"},
}


def study_tables(
    stats_models: pd.DataFrame,
    design: pd.DataFrame,
    scores: dict[str, bool],
    *,
    metric: str,
    source: str,
    confidence_level: float,
    n_resamples: int,
    seed: int,
    min_models: int,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(seed variance, the plotted points: each factor's series with H1 and every score,
    effects). ``design``: one row per model with ``model``, the design
    columns and each score's column; ``scores``: score column -> higher is better;
    ``metric``/``source``: the conjecture's primary H1 figure (its sum over layers)."""
    missing = [c for c in ("model", *DESIGN_COLUMNS) if c not in design.columns]
    if missing:
        raise MoetopoError(f"the model sheet has no {', '.join(missing)} column: no design")
    figures = stats_models.pivot_table(
        index="model", columns=["metric", "source"], values="h1_total", aggfunc="first"
    )
    figures.columns = [f"{m}:{s}" for m, s in figures.columns]
    models = design.set_index("model").join(figures, how="inner").reset_index()
    for column in scores:
        models[column] = pd.to_numeric(models[column], errors="coerce")
    seeds = pd.DataFrame(
        [seed_variance(models, f) for f in [*figures.columns, *scores]],
        columns=columns("study_seeds"),
    )
    primary = f"{metric.removesuffix('_per_active_param')}:{source}"
    if primary not in models:
        raise MoetopoError(f"no H1 figure {primary} among {', '.join(figures.columns)}")
    options = dict(confidence_level=confidence_level, n_resamples=n_resamples, seed=seed,
                   min_models=min_models)  # fmt: skip
    points = []
    for factor in sorted(set(models.factor) - {"base"}):
        series = factor_series(models, factor)
        for score in scores:
            points.append(series.assign(factor=factor, h1=series[primary], score=score,
                                        score_value=series[score]))  # fmt: skip
    plotted = pd.concat(points, ignore_index=True) if points else pd.DataFrame()
    plotted = plotted.reindex(columns=columns("study_models"))
    rows = []
    for score, higher in scores.items():
        scored = models.assign(score=models[score]).dropna(subset=["score"])
        for row in effect_rows(scored, primary, higher_is_better=higher, **options):
            lost = row["n_configurations"] if row["test"].endswith("_within") else 0
            rows.append(row | {"score": score, "detectable": detectable_correlation(
                row["n"], alpha=1 - confidence_level, lost=lost)})  # fmt: skip
    effects = pd.DataFrame(rows).assign(level="study")
    effects = adjusted_verdicts(with_adjusted_p(effects), confidence_level)
    for test, words in DIRECTIONS.items():  # a factor's effect is a direction, not a verdict
        rows_of = effects.test == test
        for column in ("verdict", "verdict_unadjusted"):
            effects.loc[rows_of, column] = effects.loc[rows_of, column].replace(words)
    return seeds, plotted, effects[columns("study_effects")].reset_index(drop=True)


def design_rows(sheet: dict[str, list[str]]) -> pd.DataFrame:
    """The sheet's columns (as the rule passes them) as a table of numbers where numeric."""
    table = pd.DataFrame(sheet)
    for column in table.columns:
        if column not in ("model", "configuration", "factor"):
            table[column] = pd.to_numeric(table[column].replace("", np.nan), errors="coerce")
    return table
