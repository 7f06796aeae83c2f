"""The gates stage: every router row (and router bias) of every MoE layer."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..model import OpenModel


def gate_rows(model: OpenModel) -> tuple[pd.DataFrame, list[str]]:
    """Rows (layer, expert, weight, bias, selection_bias, norm, finite) and warnings.

    A router with NaN or Inf is kept, flagged per row and reported, so the analysis
    can continue on the layers and experts that are sound.
    """
    layout, reader = model.layout, model.reader
    frames, warnings = [], []
    for layer in layout.moe_layers:
        moe = layout.layers[layer]
        weight = reader.read(moe.router)
        bias = np.full(moe.n_experts, np.nan, dtype=np.float32)
        selection = np.full(moe.n_experts, np.nan, dtype=np.float32)
        finite = np.isfinite(weight).all(axis=1)
        if moe.router_bias is not None:
            values = reader.read(moe.router_bias).reshape(-1)
            (selection if layout.routing["router_bias"] == "selection" else bias)[:] = values
            finite &= np.isfinite(values)
        if not finite.all():
            bad = np.flatnonzero(~finite).tolist()
            warnings.append(
                f"layer {layer}: router {moe.router} has non-finite values (NaN/Inf) in experts "
                f"{bad[:10]}{' ...' if len(bad) > 10 else ''}; they are flagged finite=false"
            )
        with np.errstate(invalid="ignore", over="ignore"):
            norm = np.sqrt(np.sum(weight.astype(np.float64) ** 2, axis=1))
        frames.append(
            pd.DataFrame(
                {
                    "layer": layer,
                    "expert": np.arange(moe.n_experts),
                    "weight": list(weight),
                    "bias": bias,  # NaN (stored as null) where the family has no logit bias
                    "selection_bias": selection,
                    "norm": norm,
                    "finite": finite,
                }
            )
        )
    return pd.concat(frames, ignore_index=True), warnings
