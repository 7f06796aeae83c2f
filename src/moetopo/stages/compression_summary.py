"""The compression summary stage: every model's layer-wise evaluation pooled, the winning
method at each budget, and each layer's topology beside its pruning cost."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from moetopo.artefacts import SORT_KEYS, columns
from moetopo.stats.pruning import (
    cost_fraction,
    layer_costs,
    method_frontier,
    topology_association,
)

# Each model's artefacts the summary reads.
INPUTS = ("compression", "hodge", "hodgecover", "layer_summary", "redundancy")


def layer_topology_figures(
    tables: Mapping[str, pd.DataFrame], source: str, threshold_spec: str
) -> pd.DataFrame:
    """(layer, harmonic_fraction, h1_significant, redundancy) of one model on ``source``:
    the Hodge split at the scale HodgeCover used, the null-tested H1 count and the share of
    pairs closer than ``threshold_spec``; NaN where the model has no such figure."""
    cover, hodge = tables["hodgecover"], tables["hodge"]
    quantile = cover["quantile"].iloc[0] if len(cover) else np.nan
    hodge = hodge[(hodge.source == source) & np.isclose(hodge["quantile"], quantile)]
    summary = tables["layer_summary"]
    h1 = summary[(summary.source == source) & (summary.metric == "h1_significant")]
    redundancy = tables["redundancy"]
    redundancy = redundancy[
        (redundancy.source == source) & (redundancy.threshold_spec == threshold_spec)
    ]
    parts = [
        hodge.set_index("layer").harmonic_fraction,
        h1.set_index("layer").value.rename("h1_significant"),
        redundancy.set_index("layer").redundancy,
    ]
    return pd.concat(parts, axis=1).rename_axis("layer").reset_index()


def compression_summary(
    models: Mapping[str, Mapping[str, pd.DataFrame]],
    *,
    source: str,
    threshold_spec: str,
    keep_fractions,
    clusters: Mapping[str, str] | None = None,
    confidence_level: float = 0.95,
    n_resamples: int = 9999,
    seed: int = 0,
) -> dict[str, pd.DataFrame]:
    """``compression_methods``, ``compression_layers`` and ``compression_topology`` from
    each model's tables (compression, hodge, hodgecover, layer_summary, redundancy);
    ``clusters`` maps a fine-tune to its base, with which it is one unit of evidence."""
    compression = pd.concat(
        [t["compression"].assign(model=name) for name, t in models.items()], ignore_index=True
    )
    fraction = cost_fraction(keep_fractions)
    figures = pd.concat(
        [
            layer_topology_figures(t, source, threshold_spec).assign(model=name)
            for name, t in models.items()
        ],
        ignore_index=True,
    )
    layers = layer_costs(compression, fraction).merge(figures, on=["model", "layer"], how="left")
    layers = layers.assign(fraction=fraction, source=source)
    clusters = clusters or {}
    units = layers.model.map(lambda m: clusters.get(m, m))
    association = topology_association(
        layers.assign(unit=units),
        confidence_level=confidence_level,
        n_resamples=n_resamples,
        seed=seed,
    ).assign(fraction=fraction, source=source)
    return {
        name: table[columns(name)].sort_values(SORT_KEYS[name], kind="stable")
        for name, table in (
            ("compression_methods", method_frontier(compression)),
            ("compression_layers", layers),
            ("compression_topology", association),
        )
    }
