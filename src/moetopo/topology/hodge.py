"""Hodge decomposition of an edge flow on a Vietoris-Rips 2-complex, and its first Betti number.

An edge flow s (one value per edge, positive along the edge's orientation i -> j, i < j)
splits orthogonally as s = gradient + curl + harmonic with gradient in im(B1^T), curl in
im(B2) and harmonic in ker(L1), L1 = B1^T B1 + B2 B2^T. The harmonic part is what no vertex
potential and no triangle explains: flow around the holes of the complex, so it is zero
whenever b1 = dim ker(L1) = 0.

A symmetric edge signal (a distance, a merge barrier) has no orientation, and the split of
any one orientation of it depends on that choice. What does not is the split averaged over
all orientations: with independent random signs the cross terms vanish, so the expected
energy of each part is sum_e s_e^2 P_ee for that part's orthogonal projector P
(:func:`projector_diagonals`, :func:`expected_energies`). P_G's diagonal is the effective
resistance of each edge; P_H's, the edge's share of the harmonic space (it sums to b1).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import ripser
from scipy import linalg, sparse
from scipy.sparse.csgraph import connected_components
from scipy.sparse.linalg import lsqr

from moetopo.topology.complex import (
    RipsComplex,
    boundary_matrices,
    edge_boundary,
    triangle_boundary,
)
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
    if cx.n_edges == 0:
        return np.zeros(cx.n_vertices)
    return _gauge_fixed_inverse(cx, b1) @ (b1 @ s)


@dataclass(frozen=True)
class ProjectorDiagonals:
    """Diagonals of the gradient and harmonic projectors of a complex (the curl's is the rest).

    ``residual`` is the largest entry of |B1 H| or |B2^T H| over the orthonormal harmonic
    basis H the harmonic diagonal comes from: how far that basis is from harmonic.
    ``iterations`` counts its LSQR steps.
    """

    gradient: np.ndarray
    harmonic: np.ndarray
    betti1: int
    residual: float
    iterations: int

    @property
    def curl(self) -> np.ndarray:
        return np.clip(1.0 - self.gradient - self.harmonic, 0.0, None)


def projector_diagonals(
    cx: RipsComplex, *, betti1: int, tol: float = 1e-12, oversample: int = 8
) -> ProjectorDiagonals:
    """(P_G)_ee and (P_H)_ee for every edge of ``cx``.

    P_G = B1^T L0^+ B1, so (P_G)_ee is the effective resistance between e's ends (computed
    with the gauge-fixed Laplacian of :func:`hodge_decomposition`). P_H projects onto the
    b1-dimensional harmonic space: without triangles that is all of ker B1, so P_H = I - P_G;
    otherwise its basis is the span of the harmonic parts of b1 + ``oversample`` Gaussian
    flows (exact, as P_H has rank b1), orthonormalised by an SVD.
    """
    m = cx.n_edges
    if m == 0:
        return ProjectorDiagonals(np.zeros(0), np.zeros(0), 0, 0.0, 0)
    b1 = edge_boundary(cx)  # B2 only where the harmonic part needs it
    inverse = _gauge_fixed_inverse(cx, b1)
    i, j = cx.edges.T
    gradient = inverse[i, i] + inverse[j, j] - inverse[i, j] - inverse[j, i]
    iterations, residual = 0, 0.0
    if betti1 == 0:
        harmonic = np.zeros(m)
    elif cx.n_triangles == 0:
        harmonic = 1.0 - gradient
    else:
        b2 = triangle_boundary(cx)
        rng = np.random.default_rng(0)
        flows = rng.standard_normal((m, betti1 + oversample))
        rest = flows - b1.T @ (inverse @ (b1 @ flows))
        parts = np.empty_like(rest)
        for c in range(rest.shape[1]):
            limit = max(1000, 10 * m)
            result = lsqr(b2, rest[:, c], atol=tol, btol=tol, conlim=1e16, iter_lim=limit)
            parts[:, c] = rest[:, c] - b2 @ result[0]
            iterations += int(result[2])
        basis = linalg.svd(parts, full_matrices=False)[0][:, :betti1]
        harmonic = (basis**2).sum(axis=1)
        residual = float(max(np.abs(b1 @ basis).max(), np.abs(b2.T @ basis).max()))
    gradient = np.clip(gradient, 0.0, 1.0)
    return ProjectorDiagonals(gradient, harmonic, int(betti1), residual, iterations)


def expected_energies(
    diagonals: ProjectorDiagonals, signal: np.ndarray
) -> tuple[float, float, float]:
    """Gradient, curl and harmonic energy of ``signal`` averaged over every orientation of
    its edges: sum_e s_e^2 P_ee per part. They add up to ||s||^2."""
    s2 = np.asarray(signal, dtype=np.float64) ** 2
    grad = float(s2 @ diagonals.gradient)
    harm = float(s2 @ diagonals.harmonic)
    return grad, float(s2.sum()) - grad - harm, harm


def _gauge_fixed_inverse(cx: RipsComplex, b1: sparse.csr_matrix) -> np.ndarray:
    """(B1 B1^T + J)^-1, J all-ones on each connected component's block: on vectors summing
    to zero per component (as B1 s does) it acts as the Laplacian's pseudo-inverse."""
    _, labels = connected_components(abs(b1) @ abs(b1).T, directed=False)
    system = (b1 @ b1.T).toarray() + (labels[:, None] == labels[None, :])
    return linalg.cho_solve(linalg.cho_factor(system), np.eye(cx.n_vertices))


def harmonic_critical_edges(energy: np.ndarray, k: int, *, rtol: float = 1e-9) -> np.ndarray:
    """Indices of the (at most) ``k`` edges with the largest harmonic energy, largest first.

    ``energy`` is one non-negative value per edge (a harmonic part squared, or the expected
    harmonic energy s_e^2 (P_H)_ee). Edges with energy <= rtol * the largest are solver
    noise and never listed; ties keep edge order.
    """
    magnitude = np.abs(np.asarray(energy, dtype=np.float64))
    if magnitude.size == 0 or magnitude.max() == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.argsort(-magnitude, kind="stable")
    order = order[magnitude[order] > rtol * magnitude.max()]
    return order[:k].astype(np.int64)
