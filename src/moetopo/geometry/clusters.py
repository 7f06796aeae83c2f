"""Expert clustering: threshold-graph components (the reference's redundancy) and
hierarchical clustering, at absolute or quantile thresholds."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial.distance import squareform


@dataclass(frozen=True)
class Threshold:
    """A distance threshold as configured and as resolved on one layer's distances.

    ``r0.25`` is a quarter of the layer's median distance (scale-free, and zero
    redundancy when no pair stands out from the rest), ``q0.1`` the layer's 10%
    quantile (always flags about 10% of pairs), a number an absolute distance.
    """

    spec: str
    value: float

    @classmethod
    def resolve(cls, spec: str | float, distances: np.ndarray) -> Threshold:
        condensed = squareform(distances, checks=False)
        if isinstance(spec, str) and spec[:1] in ("q", "r"):
            fraction = float(spec[1:])
            if spec[0] == "q":
                return cls(spec, float(np.quantile(condensed, fraction)) if condensed.size else 0.0)
            median = float(np.median(condensed)) if condensed.size else 0.0
            return cls(spec, fraction * median)
        return cls(f"{float(spec):g}", float(spec))


def threshold_components(distances: np.ndarray, threshold: float) -> tuple[np.ndarray, int]:
    """Connected components of the graph with an edge wherever distance < threshold."""
    n = distances.shape[0]
    i, j = np.triu_indices(n, k=1)
    below = distances[i, j] < threshold
    graph = csr_matrix((np.ones(below.sum()), (i[below], j[below])), shape=(n, n))
    n_components, labels = connected_components(graph, directed=False)
    return labels, int(below.sum())


def redundancy_row(distances: np.ndarray, threshold: float) -> dict:
    """Pairs below threshold, groups of size > 1, as the reference ``cluster_experts`` counts."""
    n = distances.shape[0]
    labels, redundant = threshold_components(distances, threshold)
    sizes = np.bincount(labels)
    total = n * (n - 1) // 2
    return {
        "n_experts": n,
        "redundant_pairs": redundant,
        "total_pairs": total,
        "redundancy": redundant / total if total else 0.0,
        "n_groups": int((sizes > 1).sum()),
        "largest_group": int(sizes.max()) if n else 0,
        "mean_distance": float(squareform(distances, checks=False).mean()) if n > 1 else 0.0,
        "labels": labels,
    }


def hierarchical_labels(distances: np.ndarray, threshold: float, method: str) -> np.ndarray:
    """Flat clusters of a hierarchy cut at ``threshold`` (0-based labels)."""
    if distances.shape[0] < 2:
        return np.zeros(distances.shape[0], dtype=np.int64)
    tree = linkage(squareform(distances, checks=False), method=method)
    return fcluster(tree, t=threshold, criterion="distance").astype(np.int64) - 1


def canonical_labels(labels: np.ndarray) -> np.ndarray:
    """Relabel clusters in order of their smallest member, so labels are comparable."""
    _, first = np.unique(labels, return_index=True)
    order = np.argsort(first)
    mapping = np.empty(order.size, dtype=np.int64)
    mapping[order] = np.arange(order.size)
    return mapping[np.unique(labels, return_inverse=True)[1]]
