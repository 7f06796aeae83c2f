"""Routing rules on hand-computed cases, coactivation, captured logits, probe tokens."""

from __future__ import annotations

import numpy as np
import pytest

from moetopo.artefacts.views import gates_from_rows
from moetopo.checkpoint.captured import load_captured
from moetopo.checkpoint.model import open_model
from moetopo.checkpoint.probes import first_norm, normalised_embeddings, read_rows
from moetopo.errors import MoetopoError
from moetopo.fixtures import random_model, write_family
from moetopo.routing.rule import RoutingRule, coactivation_counts, groups_survive, route
from moetopo.stages.routing import routing_tables

from conftest import gate_rows

LOGITS = np.array([[2.0, 1.0, 0.0, -1.0], [0.0, 3.0, 0.0, 2.9]])


def test_softmax_then_topk_renormalised():
    routed = route(LOGITS, RoutingRule("softmax_topk", 2, norm_topk_prob=True))
    assert routed.experts.tolist() == [[0, 1], [1, 3]]
    e = np.exp([2.0, 1.0])
    np.testing.assert_allclose(routed.weights[0], e / e.sum())
    full = np.exp(LOGITS[0]) / np.exp(LOGITS[0]).sum()
    np.testing.assert_allclose(routed.scores[0], full)


def test_softmax_then_topk_without_renormalisation_keeps_probabilities():
    routed = route(LOGITS, RoutingRule("softmax_topk", 2, norm_topk_prob=False))
    full = np.exp(LOGITS[0]) / np.exp(LOGITS[0]).sum()
    np.testing.assert_allclose(routed.weights[0], full[:2])


def test_topk_then_softmax_with_logit_bias():
    bias = np.array([0.0, 0.0, 5.0, 0.0])  # gpt-oss adds the router bias to the logits
    routed = route(LOGITS, RoutingRule("topk_softmax", 2), bias=bias)
    assert routed.experts.tolist() == [[2, 0], [2, 1]]
    z = np.array([5.0, 2.0])
    np.testing.assert_allclose(routed.weights[0], np.exp(z) / np.exp(z).sum())


def test_llama4_topk_then_sigmoid_top1():
    routed = route(LOGITS, RoutingRule("topk_sigmoid", 1))
    assert routed.experts.tolist() == [[0], [1]]
    np.testing.assert_allclose(routed.weights[:, 0], 1 / (1 + np.exp([-2.0, -3.0])))


def test_switch_top1_and_ties_go_to_lower_index():
    routed = route(np.array([[1.0, 1.0, 0.0]]), RoutingRule("softmax_topk", 1))
    assert routed.experts.tolist() == [[0]]


def test_deepseek_v3_group_limited_selection_by_hand():
    # 8 experts in 4 groups of 2; sigmoid scores s; selection adds the correction bias.
    logits = np.array([[3.0, -3.0, 1.0, 1.0, 2.5, -4.0, 0.0, 0.0]])
    bias = np.array([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.4, 0.4])
    rule = RoutingRule(
        "sigmoid_group_topk",
        2,
        n_group=4,
        topk_group=2,
        norm_topk_prob=True,
        routed_scaling_factor=2.5,
    )
    s = 1 / (1 + np.exp(-logits[0]))
    choice = s + bias
    group_scores = choice.reshape(4, 2).sum(axis=1)
    # groups by top-2 sum: g3 = 2 * 0.9 = 1.8, g1 = 2 * 0.731, g0 = 0.953 + 0.047, g2 ~ 0.94
    assert np.argsort(group_scores)[::-1][:2].tolist() == [3, 1]
    routed = route(logits, rule, selection_bias=bias)
    # experts 0 (score 0.95) and 4 (0.92) lie in groups that lost; within the kept groups the
    # bias lifts 6 and 7 (0.5 + 0.4) over 2 and 3 (0.73): selection follows the biased score
    assert sorted(routed.experts[0].tolist()) == [6, 7]
    # but the weights come from the unbiased scores: 0.5 each, renormalised, times 2.5
    np.testing.assert_allclose(routed.weights[0], [1.25, 1.25])
    without_groups = route(logits, RoutingRule("sigmoid_group_topk", 2), selection_bias=bias)
    assert sorted(without_groups.experts[0].tolist()) == [0, 4]


def test_deepseek_v2_group_limited_greedy_uses_group_max():
    logits = np.array([[1.0, 0.9, 0.95, -5.0]])
    rule = RoutingRule("softmax_group_topk", 2, n_group=2, topk_group=1, norm_topk_prob=False)
    routed = route(logits, rule)
    assert sorted(routed.experts[0].tolist()) == [0, 1]  # group 0 holds the best expert


def test_lfm2_sigmoid_with_selection_bias():
    routed = route(
        np.array([[0.0, 1.0, 0.5]]),
        RoutingRule("sigmoid_topk", 1, norm_topk_prob=True),
        selection_bias=np.array([2.0, 0.0, 0.0]),
    )
    assert routed.experts.tolist() == [[0]]
    np.testing.assert_allclose(routed.weights, [[1.0]])


def test_coactivation_symmetric_diagonal_is_load():
    rng = np.random.default_rng(0)
    routed = route(rng.standard_normal((500, 6)), RoutingRule("softmax_topk", 2))
    counts = coactivation_counts(routed.experts, 6)
    np.testing.assert_array_equal(counts, counts.T)
    np.testing.assert_array_equal(np.diag(counts), np.bincount(routed.experts.ravel(), minlength=6))
    assert np.diag(counts).sum() == 500 * 2
    assert (
        counts.sum() - np.trace(counts) == 500 * 2
    )  # each token adds one off-diagonal pair, twice


def test_top1_has_no_off_diagonal_coactivation():
    rng = np.random.default_rng(1)
    routed = route(rng.standard_normal((300, 5)), RoutingRule("softmax_topk", 1))
    counts = coactivation_counts(routed.experts, 5)
    assert (counts - np.diag(np.diag(counts)) == 0).all()


@pytest.fixture
def mixtral(tmp_path):
    model = random_model(n_layers=2, n_experts=6, top_k=2, seed=3)
    write_family(model, "mixtral", tmp_path / "m")
    return model, open_model(tmp_path / "m")


def test_probe_tokens_are_normalised_embeddings(mixtral):
    tiny, model = mixtral
    ids = np.array([5, 0, 17, 16])
    rows = read_rows(model, "model.embed_tokens.weight", ids)
    reference = tiny.embed[ids]
    np.testing.assert_allclose(rows, reference, rtol=1e-2, atol=1e-2)  # BF16 storage
    assert first_norm(model.layout)[0] == "model.layers.0.input_layernorm.weight"
    x = normalised_embeddings(model, ids).astype(np.float64)
    stored = rows.astype(np.float64)
    rms = np.sqrt((stored**2).mean(axis=1, keepdims=True) + 1e-6)
    weight = model.reader.read("model.layers.0.input_layernorm.weight")
    np.testing.assert_allclose(x, stored / rms * weight, rtol=1e-5)


def _capture(tmp_path, model, tiny, tokens=40):
    """Logits a real forward would give if hidden states were the normalised embeddings."""
    ids = np.arange(tokens) % tiny.vocab
    x = normalised_embeddings(model, ids)
    gates, _ = gate_rows(model)
    arrays = {}
    for layer in model.layout.moe_layers:
        w = gates["weight"][gates["layer"] == layer]
        arrays[f"layer_{layer}"] = (x @ w.T).astype(np.float32)
    path = tmp_path / "logits.npz"
    np.savez_compressed(path, token_ids=ids, meta=np.array('{"source": "test"}'), **arrays)
    return path, arrays


def test_captured_logits_give_the_direct_load(tmp_path, mixtral):
    tiny, model = mixtral
    path, arrays = _capture(tmp_path, model, tiny)
    gates = gates_from_rows(gate_rows(model)[0])
    result = routing_tables(model, gates, probe_tokens=64, seed=0, captured=str(path))
    routing, coactivation, agreement = result.tables()
    assert set(routing.source) == {"captured"}
    for layer in (0, 1):
        logits = arrays[f"layer_{layer}"].astype(np.float64)
        top2 = np.argsort(-logits, axis=1, kind="stable")[:, :2]  # softmax preserves order
        expected = np.bincount(top2.ravel(), minlength=6) / len(logits)
        got = routing[routing.layer == layer].sort_values("expert").load.to_numpy()
        np.testing.assert_allclose(got, expected)
    # the probe applied to the very tokens captured reproduces the capture exactly here
    assert agreement.topk_overlap.tolist() == [1.0, 1.0]
    assert agreement.same_tokens.all()


def test_captured_file_errors_are_clear(tmp_path, mixtral):
    tiny, model = mixtral
    gates = gates_from_rows(gate_rows(model)[0])
    bad = tmp_path / "bad.npz"
    np.savez(bad, layer_0=np.zeros((4, 5), np.float32))
    with pytest.raises(
        MoetopoError, match=r"layer 0 logits have shape \[4, 5\], expected \[tokens, 6\]"
    ):
        routing_tables(model, gates, 16, 0, captured=str(bad))
    np.savez(bad, layer_7=np.zeros((4, 6), np.float32))
    with pytest.raises(MoetopoError, match="not MoE layers"):
        routing_tables(model, gates, 16, 0, captured=str(bad))
    with pytest.raises(MoetopoError, match="does not exist"):
        load_captured(tmp_path / "missing.npz")


@pytest.mark.parametrize("content", ["pickled", "not a zip"])
def test_a_captured_file_with_pickles_or_garbage_is_a_clear_error(tmp_path, content):
    from moetopo.checkpoint.captured import load_captured
    from moetopo.errors import MoetopoError

    path = tmp_path / "logits.npz"
    if content == "pickled":
        np.savez(path, layer_0=np.array([{"a": 1}], dtype=object))
    else:
        path.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(MoetopoError, match=f"{path}: cannot read captured router logits"):
        load_captured(path)


def test_captured_logits_already_hold_the_router_bias(tmp_path):
    """gpt-oss's router is a linear with a bias: what the capture records includes it, so
    routing adds it once, as the model does, not a second time."""
    tiny = random_model(n_layers=2, n_experts=6, top_k=2, seed=4)
    model = open_model(write_family(tiny, "gpt_oss", tmp_path / "m"))
    gates = gates_from_rows(gate_rows(model)[0])
    ids = np.arange(64) % tiny.vocab
    x = normalised_embeddings(model, ids).astype(np.float64)
    arrays, expected = {}, {}
    rng = np.random.default_rng(0)
    for layer in model.layout.moe_layers:
        assert gates[layer].bias is not None  # the family's router has a logit bias
        bias = rng.normal(0.0, 2.0, 6)  # large enough to decide which experts win
        gate = gates[layer] = type(gates[layer])(gates[layer].weight, bias, None)
        logits = x @ gate.weight.T + gate.bias  # the router linear's output
        arrays[f"layer_{layer}"] = logits.astype(np.float32)
        rule = RoutingRule.from_summary(model.layout.routing, top_k=2)
        routed = route(arrays[f"layer_{layer}"].astype(np.float64), rule, None, None)
        expected[layer] = np.bincount(routed.experts.ravel(), minlength=6) / len(ids)
    path = tmp_path / "logits.npz"
    np.savez(path, token_ids=ids, **arrays)
    routing, _, _ = routing_tables(model, gates, 64, 0, captured=str(path)).tables()
    for layer, load in expected.items():
        got = routing[routing.layer == layer].sort_values("expert").load.to_numpy()
        np.testing.assert_allclose(got, load)


def test_pruning_that_breaks_the_groups_routes_without_them_never_to_a_dropped_expert():
    """DeepSeek-V3 keeping experts {2, 4} of 4 groups of 2: no group keeps two experts, so
    the top-2 group score cannot be formed and the pruned model routes without groups."""
    rule = RoutingRule("sigmoid_group_topk", top_k=2, n_group=4, topk_group=2)
    rule = RoutingRule(**{**vars(rule), "norm_topk_prob": True, "routed_scaling_factor": 2.5})
    logits = np.random.default_rng(0).normal(size=(64, 8))
    allowed = np.isin(np.arange(8), [2, 4])
    routed = route(logits, rule, allowed=allowed)
    assert set(np.unique(routed.experts)) == {2, 4}
    np.testing.assert_allclose(routed.weights.sum(axis=1), 2.5)
    ungrouped = RoutingRule(**{**vars(rule), "n_group": 1, "topk_group": 1})
    again = route(logits[:, [2, 4]], ungrouped)
    np.testing.assert_array_equal(np.array([2, 4])[again.experts], routed.experts)


def test_pruning_that_keeps_equal_groups_keeps_the_group_limit():
    rule = RoutingRule("sigmoid_group_topk", top_k=2, n_group=4, topk_group=1)
    keep = np.array([0, 1, 3, 4, 6, 7, 8, 9, 10, 12, 13, 15])  # 3 of each group of 4
    logits = np.random.default_rng(1).normal(size=(256, 16))
    routed = route(logits, rule, allowed=np.isin(np.arange(16), keep))
    again = route(logits[:, keep], rule)  # the pruned checkpoint, groups of 3
    np.testing.assert_array_equal(keep[again.experts], routed.experts)
    assert (routed.experts // 4 == routed.experts[:, :1] // 4).all()  # one group per token
    assert groups_survive(np.isin(np.arange(16), keep), rule)
    assert not groups_survive(np.isin(np.arange(16), [0, 1, 2, 4, 5, 8, 9, 12, 13]), rule)
    two_each = np.isin(np.arange(16), [0, 1, 4, 5, 8, 9, 12, 13])
    assert groups_survive(two_each, rule)
    assert not groups_survive(two_each, RoutingRule(**{**vars(rule), "top_k": 3}))  # 1 x 2 < 3
