"""Bottleneck distance between the persistence diagrams of base and tuned, per layer.

How far the fine-tune moved each layer's expert topology, in the units of the
distance source: 0 means the same bars, and a class gained or lost that never dies
makes the distance infinite.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from moetopo.artefacts import columns
from moetopo.topology.persistence import bottleneck_distance


def bottleneck_rows(base: pd.DataFrame, tuned: pd.DataFrame) -> pd.DataFrame:
    """One row per (layer, source, dim) with bars in either table (none = empty diagram)."""
    keys = ["layer", "source", "dim"]
    rows = []
    shared = base[keys].drop_duplicates().merge(tuned[keys].drop_duplicates(), how="outer")
    base_groups = dict(list(base.groupby(keys)))
    tuned_groups = dict(list(tuned.groupby(keys)))
    empty = base.iloc[:0]
    for layer, source, dim in shared.itertuples(index=False):
        a = base_groups.get((layer, source, dim), empty)
        b = tuned_groups.get((layer, source, dim), empty)
        rows.append(
            {
                "layer": int(layer),
                "source": source,
                "dim": int(dim),
                "distance": bottleneck_distance(
                    a[["birth", "death"]].to_numpy(), b[["birth", "death"]].to_numpy()
                ),
                "base_bars": len(a),
                "tuned_bars": len(b),
                "base_significant": int(a.significant.sum()),
                "tuned_significant": int(b.significant.sum()),
            }
        )
    return pd.DataFrame(rows, columns=columns("bottleneck")).astype({"distance": np.float64})
