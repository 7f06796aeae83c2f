"""Compression across models: which method wins at each budget, and whether a layer's
topology predicts what pruning it costs.

Every figure is the held-out relative squared error of the layer's routed output
(``metric == "relative_error"``), the random method first averaged over its draws.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from moetopo.stats._resampling import pearson
from moetopo.stats.correlation import (
    _constant,
    _correlation,
    _too_few,
    _undetermined,
    resampled_result,
)

COST_METRIC = "relative_error"
# Per-layer topology read beside the cost: (name, what it is)
TOPOLOGY_FIGURES = {
    "harmonic_fraction": "harmonic share of the Hodge signal at the cover scale",
    "h1_significant": "significant H1 bars against the null",
    "redundancy": "fraction of expert pairs closer than the report's threshold",
}


def layer_errors(compression: pd.DataFrame) -> pd.DataFrame:
    """(model, layer, fraction, keep, method, error): one error per layer, method and budget,
    random's averaged over its draws."""
    rows = compression[compression.metric == COST_METRIC]
    keys = ["model", "layer", "fraction", "keep", "method"]
    return rows.groupby(keys, sort=True).value.mean().rename("error").reset_index()


def method_frontier(compression: pd.DataFrame) -> pd.DataFrame:
    """Per configured fraction and method: mean and median error over every layer of every
    model, the layers measured, and in how many of them the method had the least error
    (ties count for each); ``best`` marks the least mean error at the fraction."""
    errors = layer_errors(compression)
    least = errors.groupby(["model", "layer", "fraction"]).error.transform("min")
    errors = errors.assign(win=errors.error <= least * (1 + 1e-9) + 1e-15)
    table = (
        errors.groupby(["fraction", "method"])
        .agg(
            mean_error=("error", "mean"),
            median_error=("error", "median"),
            n_layers=("error", "size"),
            wins=("win", "sum"),
        )
        .reset_index()
    )
    lowest = table.groupby("fraction").mean_error.transform("min")
    table["best"] = table.mean_error <= lowest
    table["wins"] = table.wins.astype(np.int64)
    return table


def cost_fraction(fractions) -> float:
    """The budget at which a layer's pruning cost is read: the middle configured fraction."""
    values = sorted(set(float(f) for f in fractions))
    return values[(len(values) - 1) // 2]


def layer_costs(compression: pd.DataFrame, fraction: float) -> pd.DataFrame:
    """(model, layer, cost, cost_method): the least error any method reaches at ``fraction``."""
    errors = layer_errors(compression)
    errors = errors[np.isclose(errors.fraction, fraction)]
    best = errors.sort_values(["model", "layer", "error", "method"]).drop_duplicates(
        ["model", "layer"]
    )
    return best.rename(columns={"error": "cost", "method": "cost_method"})[
        ["model", "layer", "cost", "cost_method"]
    ].reset_index(drop=True)


def topology_association(
    layers: pd.DataFrame,
    *,
    confidence_level: float = 0.95,
    n_resamples: int = 9999,
    seed: int = 0,
    min_models: int = 3,
) -> pd.DataFrame:
    """Spearman rank correlation, across the layers of all models, of each topology figure
    with the layer's pruning cost. The interval resamples whole models (their layers are
    not independent; a ``unit`` column, where given, groups a base with its fine-tunes);
    the permutation p shuffles costs across layers. Inconclusive, with the reason, where
    too few models or a constant figure leave it undefined."""
    rows = []
    for figure in TOPOLOGY_FIGURES:
        data = layers.dropna(subset=[figure, "cost"])
        x, y = data[figure].to_numpy(float), data.cost.to_numpy(float)
        groups = data.unit if "unit" in data else data.model
        _, unit = np.unique(groups.to_numpy(), return_inverse=True)
        n_units = int(unit.max()) + 1 if unit.size else 0
        problem = _too_few(n_units, min_models, floor=3, unit="models") or _constant(
            (x, figure), (y, "cost")
        )
        if problem:
            result = _undetermined("spearman", len(x), n_units, problem)
        else:
            ranked_x = stats.rankdata(x)
            result = resampled_result(
                "spearman",
                lambda w, x=x, y=y: _correlation(x, y, w, True),
                unit,
                (lambda p, r=ranked_x: pearson(r, p, np.ones(r.size)), stats.rankdata(y)),
                n_groups=n_units,
                confidence_level=confidence_level,
                n_resamples=n_resamples,
                seed=seed,
                left_out="",
            )
        rows.append(
            {
                "figure": figure,
                "statistic": "spearman",
                "estimate": result.estimate,
                "ci_low": result.ci_low,
                "ci_high": result.ci_high,
                "p_value": result.p_value,
                "n_layers": result.n,
                "n_models": result.n_groups,
                "reason": result.reason,
            }
        )
    return pd.DataFrame(rows)
