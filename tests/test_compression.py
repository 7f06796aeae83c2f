"""Compression evaluation on planted layers: duplicates cost nothing to the methods that see
them, a jointly unmergeable triangle is kept by HodgeCover and not by a pairwise ranking."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from moetopo.checkpoint.experts import ExpertWeights
from moetopo.compression.barriers import BlockMergeBarrier
from moetopo.compression.block import (
    RoutedBlock,
    compare,
    dropped,
    frequency_weighted_merge,
    redirected,
    reduced_output,
)
from moetopo.compression.criteria import selection_load
from moetopo.compression.evaluate import CompressionParams, budgets, evaluate_layer
from moetopo.compression.hodgecover_paper import (
    betti1_filtration,
    pairwise_greedy_ranking,
    paper_hodgecover,
)
from moetopo.routing.rule import RoutingRule, route

HIDDEN, WIDTH = 16, 8


def random_expert(rng) -> ExpertWeights:
    return ExpertWeights(
        gate=rng.normal(size=(WIDTH, HIDDEN)).astype(np.float32),
        up=rng.normal(size=(WIDTH, HIDDEN)).astype(np.float32),
        down=rng.normal(size=(HIDDEN, WIDTH)).astype(np.float32) / 4,
    )


def planted_duplicates(seed: int = 0) -> RoutedBlock:
    """Eight experts; 0-3 are exact copies (weights and router rows)."""
    rng = np.random.default_rng(seed)
    experts = [random_expert(rng) for _ in range(5)]
    experts = [experts[0]] * 3 + experts
    router = rng.normal(size=(8, HIDDEN)).astype(np.float32)
    router[1:4] = router[0]
    rule = RoutingRule("softmax_topk", top_k=2, norm_topk_prob=True)
    return RoutedBlock(router, rule, lambda e: experts[e], "swiglu")


def tokens(n: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, HIDDEN)).astype(np.float32)


def test_three_of_four_duplicates_go_for_free_where_a_method_sees_them():
    block = planted_duplicates()
    table = evaluate_layer(block, tokens(512), CompressionParams(keep_fractions=(5 / 8,))).table
    error = table[table.metric == "relative_error"].groupby("method").value.max()
    assert set(budgets(8, 2, (5 / 8,))) == {5}
    for method in ("pairwise", "hodgecover_paper", "hc_smoe"):
        assert error[method] < 1e-6, method
    assert error["frequency"] > 1e-3  # by load it keeps the copies and drops distinct experts


def test_dropping_routes_again_among_the_survivors_as_the_rule_does():
    block = planted_duplicates()
    x = tokens(64)
    full = block.route(x)
    keep = np.array([0, 4, 5, 6, 7])
    reduced, changed = reduced_output(block, x, dropped(8, keep), full)
    logits = x.astype(np.float64) @ block.router[keep].T.astype(np.float64)
    again = route(logits, block.rule)  # a checkpoint holding only the survivors
    expected = block.output(x, keep[again.experts], again.weights)
    np.testing.assert_allclose(reduced, expected, rtol=1e-6, atol=1e-9)
    assert compare(expected, reduced, changed).relative_error < 1e-12
    assert changed.any() and not changed.all()


def planted_triangle_barrier(n: int = 6, seed: int = 2):
    """Experts 0, 1, 2 merge cheaply in pairs (0.01) but not all three (0.6); other pairs
    cost 0.2-0.4 and their triples the most expensive of their pairs."""
    rng = np.random.default_rng(seed)
    pair = np.triu(rng.uniform(0.2, 0.4, (n, n)), 1)
    pair = pair + pair.T
    for a, b in ((0, 1), (0, 2), (1, 2)):
        pair[a, b] = pair[b, a] = 0.01

    def barrier(members) -> float:
        members = tuple(sorted(members))
        if len(members) == 2:
            return float(pair[members])
        if members == (0, 1, 2):
            return 0.6
        a, b, c = members
        return float(max(pair[a, b], pair[a, c], pair[b, c]))

    return barrier, pair


def test_a_jointly_unmergeable_triangle_is_kept_by_hodgecover_not_by_pairwise():
    barrier, pair = planted_triangle_barrier()
    n, keep = 6, 4
    mean_outputs = np.eye(n)
    flat = np.ones(n)
    cover = paper_hodgecover(barrier, mean_outputs, flat, flat, neighbours=n)
    kept_hc = set(cover.ranking[:keep].tolist())
    kept_pw = set(pairwise_greedy_ranking(pair, flat)[:keep].tolist())
    assert len(kept_hc & {0, 1, 2}) >= 2  # no single survivor serves all three
    assert len(kept_pw & {0, 1, 2}) == 1  # every pair looked cheap, so two of them went
    assert cover.n_critical >= 1


def test_betti1_of_a_filtration_counts_cycles_and_their_fillings():
    # a square 0-1-2-3 with one diagonal: two triangles fill it in two steps
    edges = np.array([[0, 1], [0, 3], [1, 2], [2, 3], [0, 2]])
    triangles = np.array([[0, 1, 2], [0, 2, 3]])
    thresholds, betti = betti1_filtration(4, edges, np.arange(5.0), triangles, [5.0, 6.0])
    assert betti.tolist() == [0, 0, 0, 1, 2, 1, 0]
    assert thresholds.tolist() == [0, 1, 2, 3, 4, 5, 6]


@pytest.mark.parametrize("fraction, expected", [(0.25, [2]), (0.5, [4]), (0.9, [7])])
def test_budgets_keep_at_least_top_k_and_prune_at_least_one(fraction, expected):
    assert budgets(8, 2, (fraction,)) == expected


def test_pairwise_ranking_is_a_permutation_where_pairs_went_unmeasured():
    """Each expert is measured only against its nearest neighbours: once the cheap ones are
    gone, the survivors' costs are all infinite and must still be dropped one by one."""
    matrix = np.full((6, 6), np.inf)
    np.fill_diagonal(matrix, 0.0)
    matrix[0, 1] = matrix[1, 0] = 0.1
    matrix[2, 3] = matrix[3, 2] = 0.2
    ranking = pairwise_greedy_ranking(matrix, np.arange(6.0))
    assert sorted(ranking.tolist()) == list(range(6))
    assert ranking[-1] == 0 and ranking[-2] == 2  # the cheapest merges go first


def larger_block(memo_slots: float, reads: list | None = None, seed: int = 3) -> RoutedBlock:
    """Twelve distinct experts, top-3, an expert cache of four; ``reads`` logs each read."""
    rng = np.random.default_rng(seed)
    experts = [random_expert(rng) for _ in range(12)]
    router = rng.normal(size=(12, HIDDEN)).astype(np.float32)

    def read(e: int) -> ExpertWeights:
        if reads is not None:
            reads.append(e)
        return experts[e]

    rule = RoutingRule("softmax_topk", top_k=3, norm_topk_prob=True)
    return RoutedBlock(
        router, rule, read, "swiglu", cache_bytes=4 * experts[0].nbytes, memo_slots=memo_slots
    )


@pytest.mark.parametrize("slots", [1.2, 8.0])  # full before the end; all it is given
def test_compression_memo_gives_the_direct_computation_and_reads_fewer_experts(slots):
    """The block's memo of expert outputs on the held-out tokens, reused by every reduction
    (drops routed again, redirects, merges), gives the numbers computed without it, and
    the same array changed in place is computed afresh."""
    x = tokens(300)
    params = CompressionParams(keep_fractions=(0.25, 0.5, 0.75), random_draws=2)
    memo_reads, direct_reads = [], []
    memo = evaluate_layer(larger_block(slots, memo_reads), x, params)
    direct = evaluate_layer(larger_block(0, direct_reads), x, params)
    pd.testing.assert_frame_equal(memo.selections, direct.selections)
    pd.testing.assert_frame_equal(memo.table, direct.table, rtol=1e-6, atol=1e-12)
    assert len(memo_reads) < len(direct_reads)

    block = larger_block(slots)
    held_out = x[150:]
    full = block.route(held_out)
    reference = block.output(held_out, full.experts, full.weights)
    plain = larger_block(0)
    for reduction in (dropped(12, [0, 2, 3, 5, 7, 11]), redirected(np.r_[0, 0, 2:12])):
        got, changed = reduced_output(block, held_out, reduction, full)
        want, same = reduced_output(plain, held_out, reduction, full)
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-9)
        assert np.array_equal(changed, same)
    np.testing.assert_allclose(
        reference, plain.output(held_out, full.experts, full.weights), rtol=1e-6, atol=1e-9
    )
    held_out[0] *= 2  # changed in place: the memo must not serve the old rows
    np.testing.assert_allclose(
        block.output(held_out, full.experts, full.weights),
        plain.output(held_out, full.experts, full.weights),
        rtol=1e-6,
        atol=1e-9,
    )
    assert not np.allclose(block.output(held_out, full.experts, full.weights)[0], reference[0])


def test_compression_barrier_is_the_merged_block_against_the_full_one():
    """barrier(S) = the relative error of serving S's traffic by S's merge, by the block."""
    block = larger_block(0)
    x = tokens(200)
    routed = block.route(x)
    load = selection_load(routed, 12)
    barrier = BlockMergeBarrier(block, x, routed, load)
    reference = block.output(x, routed.experts, routed.weights)
    for members in ((0, 1), (2, 5, 9), (4, 7)):
        target = np.arange(12)
        target[list(members)] = members[0]
        merged = {members[0]: frequency_weighted_merge(block, members, load)}
        reduced = block.output(x, target[routed.experts], routed.weights, merged)
        want = compare(reference, reduced, np.zeros(len(x), dtype=bool)).relative_error
        assert barrier(members) == pytest.approx(want, rel=1e-6)


def test_compression_merge_is_the_stacked_load_weighted_mean():
    """Within the cache the merge is the stacked tensordot bit for bit; a cluster larger
    than the cache, summed one member at a time, is within a float32 unit in the last place."""
    rng = np.random.default_rng(4)
    experts = [random_expert(rng) for _ in range(6)]
    load = np.array([37.0, 55.0, 0.0, 120.0, 131.0, 9.0])
    for cache, ulps in ((1 << 30, 0), (1, 1)):
        block = RoutedBlock(np.zeros((6, HIDDEN)), planted_duplicates().rule,
                            lambda e: experts[e], "swiglu", cache_bytes=cache)  # fmt: skip
        for members in ((0, 1), (1, 3, 4), tuple(range(6))):
            merged = frequency_weighted_merge(block, members, load)
            w = load[list(members)] / load[list(members)].sum()
            for name in ("gate", "up", "down"):
                stacked = np.stack([vars(experts[m])[name] for m in members])
                want = np.tensordot(w, stacked, axes=1).astype(np.float32)
                got = vars(merged)[name]
                assert got.dtype == np.float32 and got.shape == want.shape
                assert np.abs(got.view(np.int32) - want.view(np.int32)).max() <= ulps
