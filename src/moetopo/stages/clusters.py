"""The clusters stage: components and hierarchies per layer, source and threshold."""

from __future__ import annotations

import numpy as np
import pandas as pd

from moetopo.artefacts import columns
from moetopo.artefacts.views import distance_matrices
from moetopo.geometry.clusters import (
    Threshold,
    canonical_labels,
    hierarchical_labels,
    redundancy_row,
)


def cluster_tables(
    distances: pd.DataFrame,
    thresholds: list[str | float],
    absolute: dict[str, list[float]],
    linkage: str = "average",
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(clusters, redundancy) for every layer, source and threshold."""
    clusters, redundancy = [], []
    for layer, source, matrix in distance_matrices(distances):
        specs = list(thresholds) + list(absolute.get(source, []))
        for spec in specs:
            threshold = Threshold.resolve(spec, matrix)
            row = redundancy_row(matrix, threshold.value)
            components = canonical_labels(row.pop("labels"))
            hierarchy = canonical_labels(hierarchical_labels(matrix, threshold.value, linkage))
            key = {"layer": layer, "source": source, "threshold_spec": threshold.spec}
            redundancy.append(
                {**key, "threshold": threshold.value, **row, "n_clusters": int(hierarchy.max()) + 1}
            )
            for label, labels in (("components", components), (linkage, hierarchy)):
                clusters.append(
                    pd.DataFrame(
                        {
                            **key,
                            "method": label,
                            "threshold": threshold.value,
                            "expert": np.arange(matrix.shape[0]),
                            "cluster": labels,
                        }
                    )
                )
    empty = pd.DataFrame(columns=columns("clusters"))
    return (
        pd.concat(clusters, ignore_index=True) if clusters else empty,
        pd.DataFrame(redundancy),
    )
