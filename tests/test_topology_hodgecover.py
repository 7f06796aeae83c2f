"""HodgeCover and its baselines: rankings, triplet barriers, and a planted irreducible triple."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from scipy.spatial.distance import pdist, squareform

from moetopo.stages.cohomology import topology_tables
from moetopo.topology.complex import rips_complex
from moetopo.topology.hodgecover import (
    group_representative_ranking,
    hodgecover_ranking,
    load_ranking,
    triplet_barrier,
)
from moetopo.topology.layer import TopologyParams, layer_topology

TRIPLE = (0, 1, 2)


def layer_tables(layer: int, distances, **inputs) -> SimpleNamespace:
    """The cohomology stage's tables of one layer (what these tests read), and its summary."""
    result = layer_topology(distances, **inputs)
    return SimpleNamespace(**topology_tables(layer, result), summary=result.summary)


def planted_layer(n: int = 16, seed: int = 0):
    """Three low-load experts pairwise close, whose merge together costs far more than
    their pairs: every pairwise score calls them redundant, the triple says otherwise."""
    rng = np.random.default_rng(seed)
    points = rng.normal(size=(n, 8)) * 3.0
    points[list(TRIPLE)] = rng.normal(size=(3, 8)) * 0.05
    d = squareform(pdist(points))
    load = np.r_[[0.01, 0.011, 0.012], rng.uniform(0.05, 0.1, n - 3)]

    def merge_barrier(experts: tuple[int, ...]) -> float:
        pairs = [d[a, b] for a in experts for b in experts if a < b]
        return float(np.mean(pairs)) + (10.0 if set(experts) == set(TRIPLE) else 0.0)

    return d, load, merge_barrier


def test_planted_triple_keeps_two_members_where_load_keeps_none():
    d, load, merge_barrier = planted_layer()
    n = len(d)
    params = TopologyParams(keep_fractions=(0.25, 0.5), epsilon_quantiles=(0.3,))
    out = layer_tables(0, {"function": d}, load=load, merge_barrier=merge_barrier, params=params)
    table = out.hodgecover
    for keep in (4, 8):  # 0.25 and 0.5 of 16
        rows = table[(table["keep"] == keep) & table["expert"].isin(TRIPLE)]
        by = {m: rows[rows["method"] == m]["kept"].sum() for m in ("hodgecover", "load")}
        assert by["hodgecover"] >= 2
        assert by["load"] == 0
    order = table[(table["method"] == "hodgecover") & (table["keep"] == 4)].sort_values("rank")
    assert set(order["expert"].iloc[:2]) <= set(TRIPLE)
    assert len(table) == 3 * 2 * n  # three methods, two budgets, every expert


def test_triplet_barrier_is_the_excess_over_the_mean_pair_and_respects_the_cap():
    d = squareform(pdist(np.array([[0.0], [1.0], [3.0], [7.0]])))
    cx = rips_complex(d, 10.0)  # all four triangles
    calls = []

    def merge_barrier(experts):
        calls.append(tuple(experts))
        return float(sum(experts)) if len(experts) == 3 else float(max(experts))

    out = triplet_barrier(merge_barrier, cx.triangles, distances=d, max_triangles=2)
    # smallest diameters: (0,1,2) diameter 3, then (0,1,3) and (1,2,3) tie at 7 (perimeter 14
    # vs 12): (1,2,3) comes second
    expected = {0: 3 - (1 + 2 + 2) / 3, 3: 6 - (2 + 3 + 3) / 3}
    for t, tri in enumerate(cx.triangles):
        if t in expected:
            assert tuple(tri) in {(0, 1, 2), (1, 2, 3)}
            assert out[t] == pytest.approx(expected[t])
        else:
            assert np.isnan(out[t])
    pairs = [c for c in calls if len(c) == 2]
    assert len(pairs) == len(set(pairs)) == 5  # each pair of the two triangles, once
    given_pairs = triplet_barrier(merge_barrier, cx.triangles, np.zeros((4, 4)))
    np.testing.assert_allclose(given_pairs, cx.triangles.sum(axis=1))


def test_hodgecover_first_keeps_both_ends_of_the_harmonic_edge_then_follows_load():
    d = squareform(pdist(np.array([[0.0], [1.0], [2.0], [3.0], [4.0]])))
    cx = rips_complex(d, 1.5)  # a path: edges (0,1) (1,2) (2,3) (3,4), no triangles
    energy = np.array([0.0, 0.0, 9.0, 0.0])  # all on edge (2, 3)
    load = np.array([0.5, 0.1, 0.2, 0.3, 0.4])
    order = hodgecover_ranking(cx, energy, np.zeros(0), load)
    assert list(order) == [3, 2, 0, 4, 1]  # (2,3) by load within the tie, then by load


def test_hodgecover_weighs_edges_and_triangles_equally_whatever_their_units():
    d = squareform(pdist(np.array([[0.0], [1.0], [2.0], [10.0], [11.0]])))
    cx = rips_complex(d, 2.5)  # triangle (0,1,2) and edge (3,4)
    energy = np.where((cx.edges == [3, 4]).all(axis=1), 1e12, 0.0)
    for barrier_scale in (1e-6, 1e6):
        order = hodgecover_ranking(cx, energy, np.array([barrier_scale]), np.arange(5.0))
        # edge (3,4): 1/2 per endpoint; triangle: 1/2 for each of its first two vertices
        assert set(order[:4]) == {3, 4, 1, 2}


def test_load_and_group_rankings():
    load = np.array([0.1, 0.4, 0.4, 0.3, 0.05])
    assert list(load_ranking(load)) == [1, 2, 3, 0, 4]
    groups = np.array([7, 7, 2, 2, 9])
    # representatives: group 7 -> 1, group 2 -> 2 (tie with 1 on load, lower id first),
    # group 9 -> 4; then the rest by load
    assert list(group_representative_ranking(groups, load)) == [1, 2, 4, 3, 0]


def test_rankings_are_permutations_of_the_experts():
    d, load, merge_barrier = planted_layer(n=12, seed=3)
    out = layer_tables(2, {"function": d}, load=load, merge_barrier=merge_barrier)
    for (_, _), rows in out.hodgecover.groupby(["method", "keep"]):
        assert sorted(rows["rank"]) == list(range(12))
        assert sorted(rows["expert"]) == list(range(12))
        assert (rows["kept"] == (rows["rank"] < rows["keep"])).all()
