"""Hodge decomposition of an edge flow on a Vietoris-Rips 2-complex, and its first Betti number.

An edge flow s (one value per edge, positive along the edge's orientation i -> j, i < j)
splits orthogonally as s = gradient + curl + harmonic with gradient in im(B1^T), curl in
im(B2) and harmonic in ker(L1), L1 = B1^T B1 + B2 B2^T. The harmonic part is what no vertex
potential and no triangle explains: flow around the holes of the complex, so it is zero
whenever b1 = dim ker(L1) = 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import ripser
from scipy import linalg, sparse
from scipy.sparse.csgraph import connected_components
from scipy.sparse.linalg import lsqr

from moetopo.topology.complex import RipsComplex, boundary_matrices
from moetopo.topology.persistence import check_coefficient


def betti1(cx: RipsComplex, *, coeff: int = 127) -> int:
    """First Betti number of the complex over Z/coeff, computed by ripser on the complex itself.

    Every edge of ``cx`` enters at the same filtration value, so the H1 bars that never
    die are exactly the classes of H1(cx). This is the Betti number of the very complex
    the decomposition uses (no float32 rounding of epsilon can move an edge). Over Q the
    Betti number is never larger, and equal unless H1 has coeff-torsion; the tests check
    it against dim ker L1.
    """
    if cx.n_edges == 0:
        return 0
    n = cx.n_vertices
    i, j = cx.edges.T
    graph = sparse.coo_matrix((np.ones(cx.n_edges), (i, j)), shape=(n, n))
    dgms = ripser.ripser(graph, distance_matrix=True, maxdim=1, coeff=check_coefficient(coeff))
    dgms = dgms["dgms"]
    return int(np.isinf(dgms[1][:, 1]).sum())


@dataclass(frozen=True)
class HodgeDecomposition:
    """The three parts of an edge flow (arrays of length m, in the complex's edge order).

    ``orthogonality`` is the largest |<x, y>| over the three pairs of parts divided by
    ||s||^2: the achieved accuracy, so energies add up to ||s||^2 within 6x that.
    ``iterations`` counts LSQR steps (0 when b1 = 0 or there are no triangles, where the
    split is direct).
    """

    gradient: np.ndarray
    curl: np.ndarray
    harmonic: np.ndarray
    betti1: int
    orthogonality: float
    iterations: int

    @property
    def energies(self) -> tuple[float, float, float]:
        """Squared norms (gradient, curl, harmonic)."""
        return tuple(float(x @ x) for x in (self.gradient, self.curl, self.harmonic))


def hodge_decomposition(
    cx: RipsComplex, flow: np.ndarray, *, betti1: int, tol: float = 1e-12
) -> HodgeDecomposition:
    """Split ``flow`` into gradient, curl and harmonic parts on ``cx``.

    gradient = B1^T phi with phi solving the graph-Laplacian normal equations
    (B1 B1^T + J) phi = B1 s, where J adds 1 on each connected component's block: this
    fixes the gauge (phi sums to 0 per component) and keeps the solve dense, exact and
    well conditioned. The remainder r = s - gradient lies in ker B1 = im B2 (+) ker L1.
    If ``betti1`` (from :func:`betti1`, which over Z/p is never below the rational one)
    is 0 the harmonic part is exactly 0 and curl = r; if there are no triangles, curl = 0
    and harmonic = r. Otherwise curl = B2 y with y the LSQR least-squares solution of
    B2 y = r (stopping when ||B2^T(r - B2 y)|| <= tol ||B2|| ||r - B2 y||), and harmonic =
    r - curl, so the three parts always sum to ``flow``.
    """
    s = np.asarray(flow, dtype=np.float64)
    if s.shape != (cx.n_edges,):
        raise ValueError(f"flow must have one value per edge ({cx.n_edges}), got {s.shape}")
    b1, b2 = boundary_matrices(cx)
    gradient = b1.T @ _potential(cx, b1, s)
    rest = s - gradient
    iterations = 0
    if betti1 == 0:
        curl, harmonic = rest, np.zeros_like(s)
    elif cx.n_triangles == 0:
        curl, harmonic = np.zeros_like(s), rest
    else:
        result = lsqr(b2, rest, atol=tol, btol=tol, conlim=1e16, iter_lim=max(1000, 10 * len(s)))
        curl = b2 @ result[0]
        harmonic = rest - curl
        iterations = int(result[2])
    scale = float(s @ s)
    pairs = (gradient @ curl, gradient @ harmonic, curl @ harmonic)
    ortho = max(abs(float(p)) for p in pairs) / scale if scale > 0 else 0.0
    return HodgeDecomposition(gradient, curl, harmonic, int(betti1), ortho, iterations)


def _potential(cx: RipsComplex, b1: sparse.csr_matrix, s: np.ndarray) -> np.ndarray:
    """Vertex potential phi with B1 B1^T phi = B1 s and zero sum on every component."""
    n = cx.n_vertices
    if cx.n_edges == 0:
        return np.zeros(n)
    _, labels = connected_components(abs(b1) @ abs(b1).T, directed=False)
    system = (b1 @ b1.T).toarray() + (labels[:, None] == labels[None, :])
    return linalg.cho_solve(linalg.cho_factor(system), b1 @ s)


def harmonic_critical_edges(
    decomposition: HodgeDecomposition, k: int, *, rtol: float = 1e-9
) -> np.ndarray:
    """Indices of the (at most) ``k`` edges with the largest |harmonic| component, largest first.

    Edges with |harmonic| <= rtol * max |harmonic| are solver noise and never listed;
    ties keep edge order.
    """
    magnitude = np.abs(decomposition.harmonic)
    if magnitude.size == 0 or magnitude.max() == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.argsort(-magnitude, kind="stable")
    order = order[magnitude[order] > rtol * magnitude.max()]
    return order[:k].astype(np.int64)
