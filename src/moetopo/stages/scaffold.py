"""The scaffold stage: layers whose queries and outputs moved while their keys stayed.

The reference rule: a layer is a scaffold layer when the shifted fraction of its q rows
and of its o rows exceed their thresholds and that of its k rows stays below its own.
A layer without one of q, k, o (a state-space or convolution layer) is never one.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def scaffold_table(
    attention: pd.DataFrame,
    n_layers: int,
    q_min: float = 0.5,
    o_min: float = 0.5,
    k_max: float = 0.5,
) -> pd.DataFrame:
    """One row per layer 0..n_layers-1: shifted fractions of q, k, v, o and is_scaffold."""
    wide = attention.pivot(index="layer", columns="projection", values="shifted_fraction")
    change = attention.pivot(index="layer", columns="projection", values="relative_change")
    layers = np.arange(n_layers)
    wide, change = wide.reindex(layers), change.reindex(layers)

    def column(table: pd.DataFrame, projection: str) -> np.ndarray:
        if projection not in table:
            return np.full(n_layers, np.nan)
        return table[projection].to_numpy(dtype=float)

    q, k, v, o = (column(wide, p) for p in "qkvo")
    with np.errstate(invalid="ignore"):
        is_scaffold = (q > q_min) & (o > o_min) & (k < k_max)
    return pd.DataFrame(
        {
            "layer": layers,
            "q_fraction": q,
            "k_fraction": k,
            "o_fraction": o,
            "is_scaffold": is_scaffold,
            "v_fraction": v,
            "relative_depth": (layers + 0.5) / n_layers,
            **{f"{p}_change": column(change, p) for p in "qkvo"},
        }
    )
