"""HodgeCover as its paper describes it (arXiv 2605.13997), on barriers measured on the block.

1. Pair barriers: the layer-output cost of merging two experts (``BlockMergeBarrier``),
   for every pair, or each expert's ``neighbours`` nearest by gate-weighted mean output.
2. Candidate triangles: 3-cliques among pairs with barrier at most the median, at most
   ``max_triangles`` of them drawn with a fixed seed; each gets the cost of merging all
   three.
3. A filtration: an edge enters at its pair barrier, a triangle at its triple cost (or its
   last edge); the threshold tau is where beta1 is largest (the first such value).
4. At tau, harmonic-critical edges (orientation-free: barrier^2 times the harmonic
   projector's diagonal) and triplet-critical triangles (not yet filled at tau, weighted by
   triple cost minus the mean of their pair barriers, where positive) are covered greedily
   together with saliency (REAP's), each family scaled to a unit total.
5. Each pruned expert's traffic goes to the survivor it is cheapest to merge with.

Today's ``moetopo.topology.hodgecover`` ranking differs: its complex is the Rips complex of
a distance at one quantile, its triangles are weighted by weight-merge barriers on the
probe or captured rows, it has no saliency term, and its budget drops experts outright.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from moetopo.topology.complex import RipsComplex, boundary_matrices
from moetopo.topology.hodge import projector_diagonals
from moetopo.topology.hodgecover import hodgecover_ranking, load_ranking


@dataclass(frozen=True)
class PaperCover:
    ranking: np.ndarray  # experts, rank 0 kept first
    pair_barrier: np.ndarray  # (n, n), inf where not measured, 0 on the diagonal
    tau: float
    betti1: int
    n_triangles: int  # candidate triangles measured
    n_critical: int  # of them not filled at tau with a positive triplet barrier


def candidate_pairs(mean_outputs: np.ndarray, neighbours: int) -> np.ndarray:
    """(p, 2) pairs i < j: each expert with its ``neighbours`` nearest (all pairs if fewer
    experts), by Euclidean distance between mean outputs."""
    n = len(mean_outputs)
    if neighbours >= n - 1:
        return np.array(np.triu_indices(n, 1)).T.astype(np.int64)
    d = np.linalg.norm(mean_outputs[:, None] - mean_outputs[None], axis=2)
    np.fill_diagonal(d, np.inf)
    near = np.argsort(d, axis=1, kind="stable")[:, :neighbours]
    rows = np.repeat(np.arange(n), neighbours)
    pairs = np.sort(np.column_stack([rows, near.ravel()]), axis=1)
    return np.unique(pairs, axis=0)


def pair_barriers(barrier: Callable, pairs: np.ndarray, n: int) -> np.ndarray:
    matrix = np.full((n, n), np.inf)
    np.fill_diagonal(matrix, 0.0)
    for i, j in pairs:
        matrix[i, j] = matrix[j, i] = barrier((int(i), int(j)))
    return matrix


def candidate_triangles(matrix: np.ndarray, max_triangles: int, seed: int) -> np.ndarray:
    """3-cliques among measured pairs with barrier <= their median; at most
    ``max_triangles``, drawn with ``seed`` when there are more (lexicographic order)."""
    n = len(matrix)
    i, j = np.triu_indices(n, 1)
    measured = np.isfinite(matrix[i, j])
    if not measured.any():
        return np.zeros((0, 3), dtype=np.int64)
    cheap = matrix <= np.median(matrix[i, j][measured])
    np.fill_diagonal(cheap, False)
    found = [
        (a, b, c)
        for a in range(n)
        for b in np.flatnonzero(cheap[a, a + 1 :]) + a + 1
        for c in np.flatnonzero(cheap[a, b + 1 :] & cheap[b, b + 1 :]) + b + 1
    ]
    triangles = np.asarray(found, dtype=np.int64).reshape(-1, 3)
    if len(triangles) > max_triangles:
        pick = np.random.default_rng(seed).choice(len(triangles), max_triangles, replace=False)
        triangles = triangles[np.sort(pick)]
    return triangles


def betti1_filtration(
    n: int, edges: np.ndarray, edge_values: np.ndarray, triangles: np.ndarray, tri_values
) -> tuple[np.ndarray, np.ndarray]:
    """(thresholds, beta1 after each) of the filtration, by union-find for the edges and
    column reduction over GF(2) for the triangles (a triangle whose boundary does not reduce
    to zero fills a cycle)."""
    index = {(int(a), int(b)): k for k, (a, b) in enumerate(edges)}
    events = [(float(v), 1, k) for k, v in enumerate(edge_values)]
    events += [(float(v), 2, t) for t, v in enumerate(tri_values)]
    events.sort()
    parent = list(range(n))

    def root(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    position: dict[int, int] = {}  # edge -> its place in the filtration
    pivots: dict[int, set[int]] = {}
    beta, thresholds, values = 0, [], []
    for value, dim, k in events:
        if dim == 1:
            position[k] = len(position)
            a, b = (root(int(v)) for v in edges[k])
            if a == b:
                beta += 1
            else:
                parent[a] = b
        else:
            a, b, c = (int(v) for v in triangles[k])
            column = {position[index[a, b]], position[index[a, c]], position[index[b, c]]}
            while column and max(column) in pivots:
                column ^= pivots[max(column)]
            if column:
                pivots[max(column)] = column
                beta -= 1
        thresholds.append(value)
        values.append(beta)
    return np.asarray(thresholds), np.asarray(values, dtype=np.int64)


def paper_hodgecover(
    barrier: Callable,
    mean_outputs: np.ndarray,
    saliency: np.ndarray,
    load: np.ndarray,
    *,
    neighbours: int = 8,
    max_triangles: int = 500,
    seed: int = 0,
) -> PaperCover:
    n = len(mean_outputs)
    matrix = pair_barriers(barrier, candidate_pairs(mean_outputs, neighbours), n)
    triangles = candidate_triangles(matrix, max_triangles, seed)
    triple = np.array([barrier(tuple(t)) for t in triangles])
    i, j = np.triu_indices(n, 1)
    measured = np.isfinite(matrix[i, j])
    edges = np.column_stack([i, j])[measured]
    edge_values = matrix[i, j][measured]
    sides = (
        np.column_stack(
            [
                matrix[triangles[:, 0], triangles[:, 1]],
                matrix[triangles[:, 0], triangles[:, 2]],
                matrix[triangles[:, 1], triangles[:, 2]],
            ]
        )  # fmt: skip
        if len(triangles)
        else np.zeros((0, 3))
    )
    tri_values = np.maximum(triple, sides.max(axis=1)) if len(triangles) else triple
    thresholds, betti = betti1_filtration(n, edges, edge_values, triangles, tri_values)
    if len(thresholds) == 0:
        return PaperCover(load_ranking(load), matrix, 0.0, 0, 0, 0)
    # beta1 at a threshold counts every simplex with value <= it: the last event at a value
    last = np.r_[thresholds[1:] != thresholds[:-1], True]
    tau = float(thresholds[last][np.argmax(betti[last])])
    inside = edge_values <= tau
    filled = tri_values <= tau
    cx = RipsComplex(n, tau, edges[inside], triangles[filled], edge_values[inside])
    b1, b2 = boundary_matrices(cx)
    rank = np.linalg.matrix_rank
    betti1 = cx.n_edges - (rank(b1.toarray()) if cx.n_edges else 0)
    betti1 -= rank(b2.toarray()) if cx.n_triangles else 0
    harmonic = projector_diagonals(cx, betti1=int(betti1)).harmonic
    energy = edge_values[inside] ** 2 * harmonic
    triplet = triple - sides.mean(axis=1) if len(triangles) else triple
    critical = ~filled & (triplet > 0)
    cover = RipsComplex(n, tau, cx.edges, triangles[critical], cx.edge_lengths)
    ranking = hodgecover_ranking(cover, energy, triplet[critical], load, saliency=saliency)
    return PaperCover(ranking, matrix, tau, int(betti1), len(triangles), int(critical.sum()))


def pairwise_greedy_ranking(matrix: np.ndarray, load: np.ndarray) -> np.ndarray:
    """The pairwise baseline: drop, one at a time, the expert cheapest to merge into another
    survivor (ties: lower load, then lower id); rank 0 is the last one left."""
    n = len(matrix)
    alive = np.ones(n, dtype=bool)
    removed = []
    for _ in range(n - 1):
        cost = np.where(alive[None, :] & ~np.eye(n, dtype=bool), matrix, np.inf).min(axis=1)
        cost = np.where(alive, cost, np.inf)
        candidates = np.flatnonzero(alive & (cost <= cost[alive].min()))  # inf: none measured
        pick = int(candidates[np.lexsort((candidates, load[candidates]))[0]])
        alive[pick] = False
        removed.append(pick)
    removed.append(int(np.flatnonzero(alive)[0]))
    return np.asarray(removed[::-1], dtype=np.int64)


def redirect_targets(kept: np.ndarray, matrix: np.ndarray, mean_outputs: np.ndarray):
    """Each expert's server: itself if kept, else the kept expert with the least measured
    pair barrier (the nearest mean output where none was measured)."""
    kept = np.asarray(kept, dtype=np.int64)
    target = np.arange(len(matrix))
    distance = np.linalg.norm(mean_outputs[:, None] - mean_outputs[kept][None], axis=2)
    for e in np.setdiff1d(target, kept):
        costs = matrix[e, kept]
        target[e] = (
            kept[np.argmin(costs)] if np.isfinite(costs).any() else kept[np.argmin(distance[e])]
        )
    return target
