"""The Vietoris-Rips 2-complex of a distance matrix at one scale, and its boundary matrices.

Simplices are listed in lexicographic order of their (sorted) vertex tuples, so an edge's
or triangle's index is a deterministic function of the complex. Orientation is the
standard one induced by the vertex order: edge (i, j), i < j, has boundary [j] - [i];
triangle (i, j, k) has boundary [jk] - [ik] + [ij]. Hence B1 @ B2 == 0 exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import sparse


@dataclass(frozen=True)
class RipsComplex:
    """Vertices 0..n-1, edges with D <= epsilon, and the triangles all of whose edges exist."""

    n_vertices: int
    epsilon: float
    edges: np.ndarray  # (m, 2) int64, rows i < j, lexicographic
    triangles: np.ndarray  # (t, 3) int64, rows i < j < k, lexicographic
    edge_lengths: np.ndarray  # (m,) float64, D[i, j]

    @property
    def n_edges(self) -> int:
        return len(self.edges)

    @property
    def n_triangles(self) -> int:
        return len(self.triangles)

    def edge_index(self) -> np.ndarray:
        """(n, n) int64 array: the index of edge {i, j} at [i, j] and [j, i], -1 elsewhere."""
        index = np.full((self.n_vertices, self.n_vertices), -1, dtype=np.int64)
        i, j = self.edges.T
        index[i, j] = index[j, i] = np.arange(self.n_edges)
        return index


def check_distance_matrix(distances: np.ndarray) -> np.ndarray:
    """Return ``distances`` as float64 after checking it is a square, symmetric, finite,
    non-negative matrix with a zero diagonal: every later step relies on all five."""
    d = np.asarray(distances, dtype=np.float64)
    if d.ndim != 2 or d.shape[0] != d.shape[1]:
        raise ValueError(f"distance matrix must be square, got shape {d.shape}")
    if not np.all(np.isfinite(d)):
        raise ValueError("distance matrix has NaN or infinite entries")
    if np.any(d < 0):
        raise ValueError("distance matrix has negative entries")
    if np.any(np.diag(d) != 0):
        raise ValueError("distance matrix has a non-zero diagonal")
    if not np.allclose(d, d.T, rtol=1e-12, atol=0.0):
        raise ValueError("distance matrix is not symmetric")
    return d


def off_diagonal(distances: np.ndarray) -> np.ndarray:
    """The n(n-1)/2 distances D[i, j], i < j, in lexicographic pair order."""
    return distances[np.triu_indices(len(distances), k=1)]


def epsilon_at_quantile(distances: np.ndarray, q: float) -> float:
    """Scale epsilon = the q-quantile (linear interpolation) of the pairwise distances."""
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile must lie in [0, 1], got {q}")
    values = off_diagonal(check_distance_matrix(distances))
    if values.size == 0:
        return 0.0
    return float(np.quantile(values, q))


def epsilon_for_density(distances: np.ndarray, density: float) -> float:
    """Scale whose complex holds round(density * n(n-1)/2) edges (fewer only on tied distances).

    The value is the midpoint between the last distance kept and the first one dropped,
    so a tiny rounding of the distances cannot move an edge across it.
    """
    if not 0.0 <= density <= 1.0:
        raise ValueError(f"edge density must lie in [0, 1], got {density}")
    values = np.sort(off_diagonal(check_distance_matrix(distances)))
    k = int(round(density * values.size))
    if values.size == 0:
        return 0.0
    if k == 0:
        return float(values[0]) / 2.0
    if k == values.size:
        return float(values[-1])
    return float((values[k - 1] + values[k]) / 2.0)


def rips_complex(distances: np.ndarray, epsilon: float) -> RipsComplex:
    """Vietoris-Rips 2-complex at ``epsilon``: edges D[i, j] <= epsilon, and their 3-cliques.

    Triangles are found per vertex i by intersecting neighbourhoods: the pairs (j, k),
    i < j < k, adjacent to i and to each other are the nonzeros of the adjacency matrix
    restricted to i's upper neighbours. Cost is sum_i deg+(i)^2, not n^3.
    """
    d = check_distance_matrix(distances)
    n = len(d)
    upper = np.triu(d <= epsilon, k=1)
    i, j = np.nonzero(upper)
    edges = np.column_stack([i, j]).astype(np.int64)
    blocks = []
    for a in range(n):
        nb = np.flatnonzero(upper[a])
        if nb.size < 2:
            continue
        jj, kk = np.nonzero(upper[np.ix_(nb, nb)])
        if jj.size:
            blocks.append(np.column_stack([np.full(jj.size, a), nb[jj], nb[kk]]))
    triangles = np.concatenate(blocks).astype(np.int64) if blocks else np.zeros((0, 3), np.int64)
    return RipsComplex(n, float(epsilon), edges, triangles, d[i, j])


def boundary_matrices(cx: RipsComplex) -> tuple[sparse.csr_matrix, sparse.csr_matrix]:
    """Oriented boundary matrices B1 (n x m) and B2 (m x t) as CSR, with B1 @ B2 == 0."""
    return edge_boundary(cx), triangle_boundary(cx)


def edge_boundary(cx: RipsComplex) -> sparse.csr_matrix:
    """B1 (n x m) of :func:`boundary_matrices` alone."""
    n, m = cx.n_vertices, cx.n_edges
    cols = np.repeat(np.arange(m), 2)
    rows = cx.edges.ravel()
    vals = np.tile([-1.0, 1.0], m)
    return sparse.csr_matrix((vals, (rows, cols)), shape=(n, m))


def triangle_boundary(cx: RipsComplex) -> sparse.csr_matrix:
    """B2 (m x t) of :func:`boundary_matrices` alone."""
    m, t = cx.n_edges, cx.n_triangles
    index = cx.edge_index()
    i, j, k = cx.triangles.T if t else (np.zeros(0, np.int64),) * 3
    rows = np.column_stack([index[j, k], index[i, k], index[i, j]]).ravel()
    cols = np.repeat(np.arange(t), 3)
    vals = np.tile([1.0, -1.0, 1.0], t)
    return sparse.csr_matrix((vals, (rows, cols)), shape=(m, t))
