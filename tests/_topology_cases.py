"""Shared inputs and slow-but-obvious reference computations for the topology tests."""

from __future__ import annotations

import itertools

import numpy as np
from hypothesis import assume
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy.sparse.csgraph import shortest_path
from scipy.spatial.distance import pdist, squareform

from moetopo.topology.complex import RipsComplex, boundary_matrices


def float32s(low: float, high: float) -> st.SearchStrategy[float]:
    """Float32 values in [low, high] (bounds rounded to float32), never subnormal."""
    return st.floats(
        float(np.float32(low)), float(np.float32(high)), width=32, allow_subnormal=False
    )


# Coordinates and weights are float32 values (distances are computed in float64): distinct
# float32 values stay distinct where ripser rounds distances to float32.
coordinates = float32s(-1.0, 1.0)
weights = float32s(0.1, 1.0)


@st.composite
def distance_matrices(draw, min_n: int = 4, max_n: int = 14) -> np.ndarray:
    """Euclidean clouds, graph metrics or bare dissimilarities on ``min_n`` to ``max_n``
    points: symmetric, zero on the diagonal, finite and positive off it (at least 1e-3 of
    the largest distance, so no two points nearly coincide).

    The cloud or the weights are drawn as arrays of distinct entries (unique=True, so
    that hypothesis draws every entry rather than filling most with one value), and a
    failure shrinks to fewer points with simpler coordinates.
    """
    n = draw(st.integers(min_n, max_n))
    kind = draw(st.sampled_from(["euclidean", "graph", "dissimilarity"]))
    if kind == "euclidean":
        dim = draw(st.integers(2, 4))
        points = draw(hnp.arrays(np.float64, (n, dim), elements=coordinates, unique=True))
        d = squareform(pdist(points))
        off = d[np.triu_indices(n, 1)]
        assume(off.min() >= 1e-3 * off.max())
        return d
    w = squareform(draw(hnp.arrays(np.float64, n * (n - 1) // 2, elements=weights, unique=True)))
    # shortest paths of positive weights on the complete graph: a metric
    return shortest_path(w, directed=False) if kind == "graph" else w


scales = st.floats(0.1, 0.6)
"""Positions for :func:`midpoint_scale`, in the range of pairwise distances where H1 lives."""


def midpoint_scale(d: np.ndarray, u: float) -> float:
    """A scale strictly between two consecutive distinct distances (position u in [0, 1]),
    far from every distance compared with float32 rounding."""
    values = np.unique(np.float32(d[np.triu_indices(len(d), 1)]).astype(np.float64))
    k = min(int(u * (len(values) - 1)), len(values) - 2)
    return float((values[k] + values[k + 1]) / 2)


def brute_force_simplices(d: np.ndarray, eps: float) -> tuple[list, list]:
    n = len(d)
    edges = [(i, j) for i, j in itertools.combinations(range(n), 2) if d[i, j] <= eps]
    es = set(edges)
    tris = [
        (i, j, k)
        for i, j, k in itertools.combinations(range(n), 3)
        if {(i, j), (i, k), (j, k)} <= es
    ]
    return edges, tris


def kernel_dim_l1(cx: RipsComplex) -> int:
    """dim ker L1 from the dense eigenvalues of the Hodge Laplacian."""
    b1, b2 = boundary_matrices(cx)
    if cx.n_edges == 0:
        return 0
    l1 = (b1.T @ b1 + b2 @ b2.T).toarray()
    eig = np.linalg.eigvalsh(l1)
    return int((eig <= 1e-9 * max(1.0, eig.max())).sum())


def rational_betti1(cx: RipsComplex) -> int:
    """b1 = m - rank B1 - rank B2, with dense ranks (numpy.linalg.matrix_rank)."""
    b1, b2 = boundary_matrices(cx)
    r1 = np.linalg.matrix_rank(b1.toarray()) if cx.n_edges else 0
    r2 = np.linalg.matrix_rank(b2.toarray()) if cx.n_triangles else 0
    return cx.n_edges - r1 - r2


def alive_bars(diagrams, dim: int, eps: float) -> int:
    rows = diagrams[diagrams["dim"] == dim]
    return int(((rows["birth"] <= eps) & (rows["death"] > eps)).sum())
