"""Shared inputs and slow-but-obvious reference computations for the topology tests."""

from __future__ import annotations

import itertools

import numpy as np
from hypothesis import strategies as st
from scipy.sparse.csgraph import shortest_path
from scipy.spatial.distance import pdist, squareform

from moetopo.topology.complex import RipsComplex, boundary_matrices


def euclidean(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    return squareform(pdist(rng.normal(size=(n, dim))))


def graph_metric(rng: np.random.Generator, n: int) -> np.ndarray:
    """Shortest-path metric of random positive weights on the complete graph."""
    w = rng.uniform(0.1, 1.0, size=(n, n))
    return shortest_path(np.triu(w, 1) + np.triu(w, 1).T, directed=False)


def dissimilarity(rng: np.random.Generator, n: int) -> np.ndarray:
    """Symmetric, zero diagonal, no triangle inequality: Rips does not need one."""
    w = np.triu(rng.uniform(0.1, 1.0, size=(n, n)), 1)
    return w + w.T


@st.composite
def distance_matrices(draw, min_n: int = 4, max_n: int = 14) -> np.ndarray:
    """Euclidean clouds, graph metrics or bare dissimilarities. Everything is drawn from one
    seeded generator: hypothesis' own integers crowd at the bounds (n = 4, tiny complexes)."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    n = int(rng.integers(min_n, max_n + 1))
    kind = rng.choice(["euclidean", "graph", "dissimilarity"])
    if kind == "euclidean":
        return euclidean(rng, n, int(rng.integers(2, 5)))
    return graph_metric(rng, n) if kind == "graph" else dissimilarity(rng, n)


scales = st.integers(0, 2**32 - 1).map(lambda s: np.random.default_rng(s).uniform(0.1, 0.6))
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
