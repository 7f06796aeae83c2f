"""The conjecture stage: H1 per activated parameter per model, and whether it tracks the score.

Two H1 metrics per distance source: the number of significant H1 bars
summed over MoE layers, and the persistence of those significant bars summed over MoE
layers (bars the null model calls noise add nothing), each divided by the parameters a
token activates. Correlations with the score come with
bootstrap intervals and permutation p-values (moetopo.stats); the layer-level view
resamples models, not layers. Every p-value also comes adjusted for the number of
tests of its level (Benjamini-Hochberg), since a study runs dozens of them.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from moetopo.errors import MoetopoError
from moetopo.stats import (
    adjusted_verdicts,
    conjecture_table,
    layer_conjecture_table,
    regression_table,
    with_adjusted_p,
)

METRICS = {"h1_count": "h1_significant", "h1_persistence": "h1_significant_persistence"}


def model_tables(
    models: list[dict], summaries: dict[str, dict], layer_summaries: dict[str, pd.DataFrame]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per model x source x metric, per model x layer x source x metric) H1 figures.

    ``models`` rows carry model, score and steps (NaN when unknown); summaries are
    model.json.
    """
    model_rows, layer_rows = [], []
    for row in models:
        name, score = row["model"], row["score"]
        summary = summaries[name]
        active = summary["activated_params"]
        table = layer_summaries[name]
        table = table[table.layer.isin(summary["moe_layers"])]
        for metric, key in METRICS.items():
            values = table[table.metric == key]
            for source, group in values.groupby("source", sort=True):
                total = float(group.value.sum())
                model_rows.append(
                    {
                        "model": name,
                        "source": source,
                        "metric": metric,
                        "score": score,
                        "h1_total": total,
                        "h1_per_active_param": total / active,
                        "activated_params": active,
                        "total_params": summary["total_params"],
                        "n_moe_layers": len(summary["moe_layers"]),
                        "n_experts": summary["n_experts"],
                        "top_k": summary["top_k"],
                        "family": summary["family"],
                        "steps": row.get("steps", np.nan),
                    }
                )
                for layer_row in group.itertuples(index=False):
                    layer_rows.append(
                        {
                            "model": name,
                            "layer": int(layer_row.layer),
                            "source": source,
                            "metric": metric,
                            "score": score,
                            "value": float(layer_row.value),
                            "per_active_param": float(layer_row.value) / active,
                        }
                    )
    return pd.DataFrame(model_rows), pd.DataFrame(layer_rows)


def conjecture_rows(
    models: pd.DataFrame, layers: pd.DataFrame, *, higher_is_better: bool, **options
) -> pd.DataFrame:
    """The tests of the sheet's one score (see :func:`score_tests` for ``options``), with
    adjusted p-values and verdicts."""
    return conjecture_rows_by_score(
        {"score": (models, layers, higher_is_better)}, primary_score="score", **options
    )


def conjecture_rows_by_score(
    by_score: dict[str, tuple[pd.DataFrame, pd.DataFrame, bool]],
    *,
    primary_score: str,
    confidence_level: float,
    primary: dict | None = None,
    **options,
) -> pd.DataFrame:
    """The tests of every score (name -> the models and layers tables carrying it as their
    score column, and whether higher is better), one ``score`` column naming it. The
    primary test is the declared one of ``primary_score``; Benjamini-Hochberg counts the
    tests of every score, since each is another chance of a false discovery."""
    tables = []
    for name, (models, layers, higher_is_better) in by_score.items():
        table = score_tests(
            models,
            layers,
            higher_is_better=higher_is_better,
            confidence_level=confidence_level,
            primary=primary if name == primary_score else None,
            **options,
        )
        tables.append(table.assign(score=name))
    table = pd.concat(tables, ignore_index=True)
    return adjusted_verdicts(with_adjusted_p(table), confidence_level)


def score_tests(
    models: pd.DataFrame,
    layers: pd.DataFrame,
    *,
    higher_is_better: bool,
    confidence_level: float,
    n_resamples: int,
    seed: int,
    min_models: int,
    sources: list[str] | None = None,
    primary: dict | None = None,
    clusters: dict[str, str] | None = None,
    covariates: list[str] | None = None,
) -> pd.DataFrame:
    """Unadjusted tests of one score: model-level and layer-level correlation tests, one row
    per metric, source, statistic; ``primary`` (metric, source, statistic, level) marks the
    test declared before the run, whose verdict the report's lead gives alone. ``clusters``
    maps each fine-tune to its base: a base and its fine-tunes are one model of evidence,
    the mean of their metrics and scores (their layers keep their own metrics, with the
    cluster's mean score). Beside the correlations of the ratio, the 'regression' rows
    regress the score on the H1 total, log10 activated parameters and ``covariates`` (of
    top_k, n_experts, family, steps; steps enter as log10, the scale on which loss falls
    with training)."""
    if sources:
        models = models[models.source.isin(sources)]
        layers = layers[layers.source.isin(sources)]
    options = dict(
        higher_is_better=higher_is_better,
        confidence_level=confidence_level,
        n_resamples=n_resamples,
        seed=seed,
        min_n=min_models,
    )
    wide = _wide(models, ["model"], "h1_per_active_param", ["score", "total_params"])
    metrics = [c for c in wide.columns if ":" in c]
    clusters = clusters or {}

    def unit_of(models: pd.Series) -> pd.Series:  # a fine-tune's unit is its base
        return models.map(lambda m: clusters.get(m, m))

    unit = unit_of(wide.model)
    per_unit = wide.drop(columns="model").groupby(unit.to_numpy(), sort=True).mean()
    model_level = conjecture_table(per_unit.reset_index(names="model"), metrics, **options)
    extra = list(covariates or [])
    totals = _wide(models, ["model"], "h1_total", ["score", "activated_params", *extra])
    if "steps" in extra:
        totals["steps"] = _log10_steps(totals)
    unit = unit_of(totals.model).to_numpy()
    merged = totals.drop(columns="model").groupby(unit, sort=True)
    numeric = merged.mean(numeric_only=True)
    text = [c for c in extra if c not in numeric]
    per_unit_totals = numeric.join(merged[text].first()) if text else numeric
    regression = regression_table(
        per_unit_totals.reset_index(names="model"), metrics, covariates=extra, **options
    )
    layer_wide = _wide(layers, ["model", "layer"], "per_active_param", ["score"])
    layer_wide["model"] = unit_of(layer_wide.model)
    layer_wide["score"] = layer_wide.model.map(per_unit.score)
    layer_level = layer_conjecture_table(layer_wide, metrics, **options)
    table = pd.concat([model_level, regression, layer_level], ignore_index=True)
    table[["metric", "source"]] = table.metric.str.split(":", expand=True)
    table["n_layers"] = table["n_layers"].fillna(0).astype("int64")
    table["primary"] = False
    if primary:
        chosen = (table[list(primary)] == pd.Series(primary)).all(axis=1)
        table["primary"] = chosen
    return table


def _log10_steps(totals: pd.DataFrame) -> pd.Series:
    """log10 training steps; a covariate the sheet does not give for every model is refused
    (dropping those models would change the sample the other tests see)."""
    steps = totals["steps"].astype(float)
    unknown = totals.model[~(steps > 0)].tolist()
    if unknown:
        raise MoetopoError(
            f"conjecture.covariates has 'steps', but the model sheet's steps column is "
            f"empty or not positive for {', '.join(unknown)}; fill it or drop the covariate"
        )
    return np.log10(steps)


def _wide(long: pd.DataFrame, index: list[str], value: str, keep: list[str]) -> pd.DataFrame:
    """One column per metric:source; models without a score keep NaN (the tests drop them
    and say how many)."""
    wide = long.pivot(index=index, columns=["metric", "source"], values=value)
    wide.columns = [f"{metric}_per_active_param:{source}" for metric, source in wide.columns]
    extra = long.drop_duplicates(index).set_index(index)[keep]
    return wide.join(extra).reset_index()
