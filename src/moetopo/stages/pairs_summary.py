"""Evidence across pairs: pooled shifted fractions per projection, scaffold rate per depth.

Each base/tuned pair is one independent unit, so every interval is a bootstrap that
resamples whole pairs (never single layers of one pair). Layers line up across models
of different depth by relative depth, (layer + 0.5) / n_layers, cut into equal bins.
One pair gives its values with no interval, and the reason column says so.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from moetopo.checkpoint.attention import PROJECTIONS
from moetopo.stats import bootstrap_mean_interval

COLUMNS = [
    "scope",
    "statistic",
    "projection",
    "depth_low",
    "depth_high",
    "estimate",
    "ci_low",
    "ci_high",
    "ci_method",
    "n_pairs",
    "n_values",
    "reason",
]


@dataclass(frozen=True)
class PairTables:
    """One pair's attention_diff and scaffold tables."""

    pair: str
    attention: pd.DataFrame
    scaffold: pd.DataFrame


def pairs_summary(
    pairs: list[PairTables],
    depth_bins: int = 10,
    confidence_level: float = 0.95,
    n_resamples: int = 9999,
    seed: int = 0,
) -> pd.DataFrame:
    """The long summary table (see COLUMNS), sorted by scope, statistic, projection, depth."""
    options = dict(confidence_level=confidence_level, n_resamples=n_resamples, seed=seed)
    attention = pd.concat([_binned(p, p.attention, depth_bins) for p in pairs], ignore_index=True)
    scaffold = pd.concat([_binned(p, p.scaffold, depth_bins) for p in pairs], ignore_index=True)
    rows = []
    for projection in PROJECTIONS:
        mine = attention[attention.projection == projection]
        for statistic in ("shifted_fraction", "relative_change"):
            per_pair = mine.groupby("pair")[statistic].mean()
            result = bootstrap_mean_interval(per_pair.to_numpy(), **options)
            rows.append(_row("projection", statistic, projection, None, depth_bins, result))
        for b, group in mine.groupby("bin"):
            result = bootstrap_mean_interval(group.shifted_fraction, group.pair, **options)
            rows.append(
                _row("projection_depth", "shifted_fraction", projection, b, depth_bins, result)
            )
    for b, group in scaffold.groupby("bin"):
        result = bootstrap_mean_interval(group.is_scaffold.astype(float), group.pair, **options)
        rows.append(_row("depth", "scaffold_fraction", None, b, depth_bins, result))
    frame = pd.DataFrame(rows, columns=COLUMNS)
    return frame.sort_values(["scope", "statistic", "projection", "depth_low"], ignore_index=True)


def _binned(pair: PairTables, table: pd.DataFrame, depth_bins: int) -> pd.DataFrame:
    n_layers = len(pair.scaffold)
    depth = (table.layer.to_numpy() + 0.5) / n_layers
    return table.assign(
        pair=pair.pair, bin=np.minimum(depth_bins - 1, (depth * depth_bins).astype(int))
    )


def _row(scope, statistic, projection, b, depth_bins, result) -> dict:
    return {
        "scope": scope,
        "statistic": statistic,
        "projection": projection,
        "depth_low": None if b is None else b / depth_bins,
        "depth_high": None if b is None else (b + 1) / depth_bins,
        "estimate": result.estimate,
        "ci_low": result.ci_low,
        "ci_high": result.ci_high,
        "ci_method": result.ci_method,
        "n_pairs": result.n_groups,
        "n_values": result.n,
        "reason": result.reason,
    }
