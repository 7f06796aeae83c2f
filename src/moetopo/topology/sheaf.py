"""A cellular sheaf of expert input subspaces on the graph of a Vietoris-Rips complex.

Vertex stalk R^d at expert i: coordinates in F_i, the (in_dim x d) orthonormal frame of
i's d leading input directions. Edge stalk R^d for e = (i, j), i < j: identified with j's
stalk. Restrictions: identity from j, and from i the orthogonal map T_e nearest to the
change of coordinates F_j^T F_i (orthogonal Procrustes: T_e = U V^T for F_j^T F_i = U S V^T).
Coboundary (delta x)_e = sqrt(w_e) (x_j - T_e x_i), with w_e >= 0 the coactivation rate.
Choosing i's side instead would give sqrt(w_e) (T_e^T x_j - x_i) = -T_e^T (delta x)_e: the
same kernel and Laplacian spectrum.

This is a graph sheaf: h0 = dim ker delta, h1 = dim coker delta. Procrustes maps are not
flat around triangles, so delta would not square to zero against 2-cells; they are left out.
Edges with w_e = 0 are removed (they would add zero rows), so zero weights disconnect.

What h0 measures: a global section gives every expert a d-vector that each restriction
carries to its neighbour's. On a tree any root vector extends, so an acyclic component
gives d; each cycle keeps only the directions its holonomy (the product of the maps round
it) fixes. Ranks therefore count components and cycles plus one bit per cycle (whether
its holonomy fixes a direction): almost no information about the experts. The spectrum
does carry it: the smallest eigenvalues of the normalised Laplacian D^-1/2 L D^-1/2 (D the
block degrees; with orthogonal maps they lie in [0, 2]) measure how far from flat the
subspaces are round the cycles, and move continuously with the frames. The spectral gap
is the smallest of them above the kernel.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import linalg, sparse
from scipy.sparse.csgraph import breadth_first_order, connected_components

from moetopo.topology.complex import RipsComplex


def procrustes_maps(frames: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """(m, d, d) orthogonal maps T_e taking i's frame coordinates to j's, for edges (i, j)."""
    frames = np.asarray(frames, dtype=np.float64)
    n, in_dim, d = frames.shape
    flat = frames.transpose(0, 2, 1).reshape(n * d, in_dim)
    gram = (flat @ flat.T).reshape(n, d, n, d)  # gram[a, :, b, :] = F_a^T F_b
    if not np.allclose(gram[np.arange(n), :, np.arange(n), :], np.eye(d)):
        raise ValueError("frames must have orthonormal columns")
    product = gram[edges[:, 1], :, edges[:, 0], :]  # (m, d, d): F_j^T F_i
    u, _, vt = np.linalg.svd(product)
    return u @ vt


def sheaf_coboundary(
    n: int, edges: np.ndarray, maps: np.ndarray, weights: np.ndarray
) -> sparse.csr_matrix:
    """delta (m*d x n*d): row block e = sqrt(w_e) (+I at column block j, -T_e at block i)."""
    m, d, _ = maps.shape
    root = np.sqrt(np.asarray(weights, dtype=np.float64))
    i, j = edges[:, 0], edges[:, 1]
    p, q = np.meshgrid(np.arange(d), np.arange(d), indexing="ij")
    rows_t = (np.arange(m)[:, None, None] * d + p).ravel()
    cols_t = (i[:, None, None] * d + q).ravel()
    vals_t = (-root[:, None, None] * maps).ravel()
    rows_i = (np.arange(m)[:, None] * d + np.arange(d)).ravel()
    cols_i = (j[:, None] * d + np.arange(d)).ravel()
    vals_i = np.repeat(root, d)
    return sparse.csr_matrix(
        (
            np.concatenate([vals_t, vals_i]),
            (np.concatenate([rows_t, rows_i]), np.concatenate([cols_t, cols_i])),
        ),
        shape=(m * d, n * d),
    )


@dataclass(frozen=True)
class SheafCohomology:
    """Cohomology and spectrum of one sheaf. ``n_edges`` counts edges with w > 0;
    ``eigenvalues`` are the smallest of the Laplacian delta^T delta, ascending."""

    stalk_dim: int
    n_edges: int
    h0: int
    h1: int
    eigenvalues: np.ndarray
    rtol: float
    normalised: np.ndarray = field(default_factory=lambda: np.zeros(0))  # of D^-1/2 L D^-1/2
    spectral_gap: float = float("nan")  # smallest normalised eigenvalue above the kernel


def sheaf_from_maps(
    n: int,
    edges: np.ndarray,
    maps: np.ndarray,
    weights: np.ndarray | None = None,
    *,
    n_eigenvalues: int = 6,
    rtol: float = 1e-8,
) -> SheafCohomology:
    """h0, h1 and the low Laplacian spectrum of the sheaf with orthogonal maps ``maps``.

    h0 is computed exactly through holonomy rather than from a rank of delta, whose small
    singular values depend on the weights: on each connected component (edges w > 0),
    transport the root's stalk along a BFS tree; a global section is a root vector v with
    (G_j - T_e G_i) v = 0 for every non-tree edge, G the tree transports. The directions
    counted as fixed are those where the stacked defects have singular value <= ``rtol``
    (all maps are orthogonal, so 1 is their scale). h1 = m d - n d + h0 (Euler
    characteristic of a graph sheaf, as rank delta = n d - h0).
    """
    edges = np.asarray(edges, dtype=np.int64).reshape(-1, 2)
    maps = np.asarray(maps, dtype=np.float64)
    d = maps.shape[1] if maps.ndim == 3 else 0
    if maps.shape != (len(edges), d, d) or d == 0:
        raise ValueError(f"maps must have shape (m, d, d) with m = {len(edges)}")
    if not np.allclose(maps @ maps.transpose(0, 2, 1), np.eye(d), atol=1e-8):
        raise ValueError("restriction maps must be orthogonal")
    w = np.ones(len(edges)) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != (len(edges),) or np.any(w < 0) or not np.all(np.isfinite(w)):
        raise ValueError("weights must be one finite non-negative value per edge")
    keep = w > 0
    edges, maps, w = edges[keep], maps[keep], w[keep]
    h0 = _global_sections(n, edges, maps, rtol)
    delta = sheaf_coboundary(n, edges, maps, w)
    laplacian = (delta.T @ delta).toarray()
    k = min(n_eigenvalues, n * d)
    eig = linalg.eigh(laplacian, eigvals_only=True, subset_by_index=[0, k - 1]) if k else []
    # degree of each vertex (its stalk's diagonal block is degree x I for orthogonal maps);
    # an isolated vertex keeps its zero block (its d directions are all sections)
    degree = np.bincount(edges.ravel(), np.repeat(w, 2), minlength=n)
    scale = np.repeat(np.where(degree > 0, 1.0 / np.sqrt(np.where(degree > 0, degree, 1)), 0), d)
    normalised_laplacian = scale[:, None] * laplacian * scale[None, :]
    wanted = min(n * d, h0 + n_eigenvalues)
    normalised = (
        linalg.eigh(normalised_laplacian, eigvals_only=True, subset_by_index=[0, wanted - 1])
        if wanted
        else np.zeros(0)
    )
    normalised = np.clip(normalised, 0.0, 2.0)
    gap = float(normalised[h0]) if h0 < normalised.size else float("nan")
    h1 = len(edges) * d - n * d + h0
    return SheafCohomology(d, len(edges), h0, h1, np.asarray(eig), rtol, normalised[:k], gap)


def sheaf_cohomology(
    cx: RipsComplex,
    frames: np.ndarray,
    weights: np.ndarray | None = None,
    *,
    n_eigenvalues: int = 6,
    rtol: float = 1e-8,
) -> SheafCohomology:
    """The Procrustes sheaf of ``frames`` ([n, in_dim, d]) on the graph of ``cx``."""
    if len(frames) != cx.n_vertices:
        raise ValueError(f"need one frame per vertex ({cx.n_vertices}), got {len(frames)}")
    maps = procrustes_maps(frames, cx.edges)
    return sheaf_from_maps(
        cx.n_vertices, cx.edges, maps, weights, n_eigenvalues=n_eigenvalues, rtol=rtol
    )


def _global_sections(n: int, edges: np.ndarray, maps: np.ndarray, rtol: float) -> int:
    """dim ker delta, by holonomy (see :func:`sheaf_from_maps`)."""
    d = maps.shape[1]
    graph = sparse.csr_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(n, n))
    n_comp, labels = connected_components(graph, directed=False)
    index = np.full((n, n), -1, dtype=np.int64)
    index[edges[:, 0], edges[:, 1]] = index[edges[:, 1], edges[:, 0]] = np.arange(len(edges))
    transport = np.zeros((n, d, d))
    tree = np.zeros(len(edges), dtype=bool)
    for c in range(n_comp):
        root = int(np.flatnonzero(labels == c)[0])
        order, parent = breadth_first_order(graph, root, directed=False)
        transport[root] = np.eye(d)
        for v in order[1:]:
            p = parent[v]
            e = index[p, v]
            tree[e] = True
            step = maps[e] if edges[e, 0] == p else maps[e].T
            transport[v] = step @ transport[p]
    rest = ~tree
    i, j = edges[rest, 0], edges[rest, 1]
    defects = transport[j] - maps[rest] @ transport[i]  # (k, d, d)
    comp = labels[i]
    h0 = 0
    for c in range(n_comp):
        stacked = defects[comp == c].reshape(-1, d)
        fixed = d - int((linalg.svdvals(stacked) > rtol).sum()) if len(stacked) else d
        h0 += fixed
    return h0
