"""Expert selection: HodgeCover (cover harmonic edges and triplet-barrier triangles), and the
two baselines a report compares it with (by load; one representative per redundancy group).

Every ranking is a permutation of the experts, rank 0 kept first, so the experts kept at a
budget of k are the first k of it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from moetopo.topology.complex import RipsComplex

MergeBarrier = Callable[[tuple[int, ...]], float]
TIE = 1e-12  # gains are fractions of unit totals; closer than this counts as a tie


def triplet_barrier(
    merge_barrier: MergeBarrier,
    triangles: np.ndarray,
    pair_barrier: np.ndarray | None = None,
    *,
    distances: np.ndarray | None = None,
    max_triangles: int | None = None,
) -> np.ndarray:
    """Triplet barrier per triangle: merge_barrier((i, j, k)) - mean of its three pair barriers.

    Positive means merging the three together costs more than their pairs suggest: the
    obstruction no pairwise score sees. ``merge_barrier`` gets sorted expert ids and must
    depend only on the set (so relabelling experts changes nothing). ``pair_barrier`` is an
    (n x n) matrix; when None the pairs are measured with ``merge_barrier`` too (each
    once). Each call may be a forward pass, so at most ``max_triangles`` triangles are
    evaluated: with ``distances`` given, those of smallest diameter (then smallest
    perimeter), else the first ones. Triangles not evaluated get NaN.
    """
    triangles = np.asarray(triangles, dtype=np.int64).reshape(-1, 3)
    out = np.full(len(triangles), np.nan)
    order = np.arange(len(triangles))
    if distances is not None and len(triangles):
        i, j, k = triangles.T
        diameter = np.maximum(np.maximum(distances[i, j], distances[i, k]), distances[j, k])
        if max_triangles is not None and max_triangles < len(triangles):
            # the first max_triangles all lie within the max_triangles-th smallest diameter:
            # sort those only
            cut = np.partition(diameter, max_triangles - 1)[max_triangles - 1]
            order = np.flatnonzero(diameter <= cut)
        i, j, k = triangles[order].T
        sides = np.column_stack([distances[i, j], distances[i, k], distances[j, k]])
        order = order[np.lexsort((order, sides.sum(axis=1), diameter[order]))]
    if max_triangles is not None:
        order = order[:max_triangles]
    cache: dict[tuple[int, int], float] = {}

    def pair(a: int, b: int) -> float:
        if pair_barrier is not None:
            return float(pair_barrier[a, b])
        if (a, b) not in cache:
            cache[a, b] = float(merge_barrier((a, b)))
        return cache[a, b]

    for t in order:
        a, b, c = (int(x) for x in triangles[t])
        pairs = (pair(a, b), pair(a, c), pair(b, c))
        out[t] = float(merge_barrier((a, b, c))) - sum(pairs) / 3.0
    return out


def hodgecover_ranking(
    cx: RipsComplex,
    harmonic_energy: np.ndarray,
    barrier: np.ndarray,
    load: np.ndarray | None = None,
    saliency: np.ndarray | None = None,
) -> np.ndarray:
    """Greedy HodgeCover order of the experts (array of expert ids, rank 0 first).

    Items: each edge weighted by its harmonic energy (``harmonic_energy``, one non-negative
    value per edge: the expected s_e^2 (P_H)_ee of the layer's signal), each triangle by its
    positive triplet barrier (NaN or negative: 0). Each family is scaled to total 1 so
    neither dominates by its units. A kept vertex covers half of each incident edge and
    half of each triangle it is in, up to two kept vertices per triangle: an edge is fully
    covered with both endpoints kept and a triangle with two of three. The half credit
    lets the greedy start an item it cannot finish in one step (counting only completed
    items would give every first pick zero gain). Each step keeps the expert adding the
    most coverage, ties (within 1e-12) broken by higher load, then lower id; once all
    weight is covered, the rest follow by load. ``saliency`` (one non-negative value per
    expert, as the paper's variant adds) is a third unit-total family a vertex earns whole.
    """
    n = cx.n_vertices
    load = np.zeros(n) if load is None else np.asarray(load, dtype=np.float64)
    w_edge = _unit_total(np.asarray(harmonic_energy, dtype=np.float64))
    w_tri = _unit_total(np.nan_to_num(np.asarray(barrier, dtype=np.float64), nan=0.0))
    if w_edge.shape != (cx.n_edges,) or w_tri.shape != (cx.n_triangles,) or load.shape != (n,):
        raise ValueError("need one harmonic energy per edge, barrier per triangle, load per expert")
    edge_gain = np.bincount(cx.edges.ravel(), np.repeat(w_edge / 2, 2), minlength=n)
    if saliency is not None:
        edge_gain = edge_gain + _unit_total(np.asarray(saliency, dtype=np.float64))
    live = w_tri > 0
    tri, w_tri = cx.triangles[live], w_tri[live]
    covered = np.zeros(len(tri), dtype=np.int64)  # kept vertices per triangle
    kept = np.zeros(n, dtype=bool)
    order = np.empty(n, dtype=np.int64)
    for step in range(n):
        open_ = covered < 2
        tri_gain = np.bincount(tri[open_].ravel(), np.repeat(w_tri[open_] / 2, 3), minlength=n)
        gain = np.where(kept, -np.inf, edge_gain + tri_gain)
        tied = np.flatnonzero(gain >= gain.max() - TIE)
        pick = int(tied[np.argmax(load[tied])])
        kept[pick] = True
        order[step] = pick
        covered += (tri == pick).any(axis=1)
    return order


def load_ranking(load: np.ndarray) -> np.ndarray:
    """Experts by load, highest first (ties: lower id first)."""
    load = np.asarray(load, dtype=np.float64)
    return np.lexsort((np.arange(len(load)), -load)).astype(np.int64)


def group_representative_ranking(
    groups: Sequence[int] | np.ndarray, load: np.ndarray
) -> np.ndarray:
    """One representative per redundancy group (its highest-load member), groups ordered by
    their representative's load, highest first; then every other expert by load."""
    groups = np.asarray(groups)
    by_load = load_ranking(load)
    _, first = np.unique(groups[by_load], return_index=True)
    is_rep = np.zeros(len(by_load), dtype=bool)
    is_rep[first] = True
    return np.concatenate([by_load[is_rep], by_load[~is_rep]])


def _unit_total(weights: np.ndarray) -> np.ndarray:
    positive = np.clip(weights, 0.0, None)
    total = positive.sum()
    return positive / total if total > 0 else positive
