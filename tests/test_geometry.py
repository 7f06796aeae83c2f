"""Expert distances: exact Gram distances, permutation (in)variance, planted clusters."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.distance import pdist, squareform

from moetopo.artefacts.views import gates_from_rows
from moetopo.checkpoint.experts import read_expert
from moetopo.checkpoint.model import open_model
from moetopo.checkpoint.probes import layer_inputs
from moetopo.errors import MoetopoError
from moetopo.fixtures import plant_groups, random_model, write_family
from moetopo.geometry.distances import (
    coactivation_distances,
    function_distances,
    pairs_table,
    weight_distances,
)
from moetopo.stages.clusters import cluster_tables
from moetopo.stages.expert_geometry import layer_distances
from moetopo.stages.routing import routing_tables

from conftest import gate_rows


def direct_l2(model, layer) -> np.ndarray:
    """||W_i - W_j|| over concatenated float64 weights, computed the obvious way."""
    moe = model.layout.layers[layer]
    flat = []
    for e in range(moe.n_experts):
        w = read_expert(model.reader, moe, e, dtype=np.float64)
        flat.append(np.concatenate([w.gate.ravel(), w.up.ravel(), w.down.ravel()]))
    return squareform(pdist(np.array(flat)))


CASES = [
    ("mixtral", "hub", "BF16"),
    ("mixtral", "fused", "BF16"),
    ("deepseek_v3", "hub", "F8_E4M3"),
    ("gpt_oss", "mxfp4", "BF16"),
    ("llama4", "text", "BF16"),
]


@pytest.mark.parametrize("family,layout,dtype", CASES)
def test_gram_distances_match_direct_float64(tmp_path, family, layout, dtype):
    tiny = random_model(n_layers=1, n_experts=6, hidden=64, intermediate=32, seed=4)
    plant_groups(tiny.layers[0], [[0, 1], [2, 3]], noise=1e-4, seed=5)  # near-duplicates
    write_family(tiny, family, tmp_path, layout=layout, dtype=dtype)
    model = open_model(tmp_path)
    moe = model.layout.layers[0]
    one_expert = 3 * 32 * 64 * 8
    found = weight_distances(model.reader, moe, chunk_bytes=one_expert // 5)
    expected = direct_l2(model, 0)
    mask = ~np.eye(6, dtype=bool)
    np.testing.assert_allclose(found["weight_l2"][mask], expected[mask], rtol=1e-6)
    assert expected[0, 1] < 1e-2 * expected[0, 4]  # the planted pair is really near


def test_fused_and_per_expert_twins_give_identical_distances(tmp_path):
    tiny = random_model(n_layers=1, n_experts=5, seed=6)
    plant_groups(tiny.layers[0], [[1, 3]], noise=1e-3)
    matrices = []
    for layout in ("hub", "fused"):
        write_family(tiny, "qwen2_moe", tmp_path / layout, layout=layout)
        model = open_model(tmp_path / layout)
        gates = _gates_frame(model)
        m, _, _ = layer_distances(
            model, 0, ["router_l1", "weight_l2", "weight_cosine", "function"], gates, None, 32
        )
        matrices.append(m)
    for source in matrices[0]:
        # weight Grams are float32 products: the two layouts sum the same coordinates in
        # another order, so they agree to float32 rounding, not to the last bit
        rtol = 1e-6 if source.startswith("weight") else 1e-9
        np.testing.assert_allclose(matrices[0][source], matrices[1][source], rtol=rtol, atol=1e-12)


def test_weight_cosine_matches_direct():
    rng = np.random.default_rng(0)
    rows = rng.standard_normal((5, 40))
    rows[1] = rows[0] * 3.0  # same direction: cosine distance 0, L2 distance large
    from moetopo.geometry.distances import CenteredGram

    gram = CenteredGram(5)
    gram.add(rows[:, :17].copy())  # add() centres its chunk in place
    gram.add(rows[:, 17:].copy())
    l2, cosine = gram.distances()
    np.testing.assert_allclose(l2, squareform(pdist(rows)), atol=1e-12)
    np.testing.assert_allclose(cosine, squareform(pdist(rows, "cosine")), atol=1e-12)
    assert cosine[0, 1] < 1e-12 < l2[0, 1]


def test_gram_keeps_near_duplicates_of_upcycled_experts():
    """Experts copied from one dense FFN share a component 1e6 times their differences;
    uncentred, |x_i|^2 + |x_j|^2 - 2 <x_i, x_j> would cancel to noise."""
    from moetopo.geometry.distances import CenteredGram

    rng = np.random.default_rng(1)
    rows = 100.0 * rng.standard_normal(3000) + 1e-4 * rng.standard_normal((6, 3000))
    rows[1] = rows[0] + 1e-7 * rng.standard_normal(3000)
    gram = CenteredGram(6)
    for chunk in np.array_split(rows, 7, axis=1):
        gram.add(chunk.copy())
    l2, _ = gram.distances()
    mask = ~np.eye(6, dtype=bool)
    np.testing.assert_allclose(l2[mask], squareform(pdist(rows))[mask], rtol=1e-6)


def _upcycled(tiny, relative: float, seed: int) -> None:
    """Experts copied from one dense FFN (a shared part 100 times their spread), with
    pairs (0, 1) and (2, 3) differing by ``relative`` of their norm."""
    rng = np.random.default_rng(seed)
    layer = tiny.layers[0]
    for name in ("gate", "up", "down"):
        array = getattr(layer, name)
        array[:] = 100.0 * rng.standard_normal(array.shape[1:]) + array
        for a, b in ((0, 1), (2, 3)):
            array[b] = array[a] * (1.0 + relative * rng.standard_normal(array.shape[1:]))


def test_fast_weight_distances_keep_the_accuracy_contract(tmp_path):
    """Against float64 pdist: near-duplicates (1e-6 relative) exact and separated, every
    other distance within the bound, the cosine too."""
    from moetopo.geometry.distances import VERIFY_BELOW, rounding_bound

    tiny = random_model(n_layers=1, n_experts=8, hidden=64, intermediate=48, seed=11)
    _upcycled(tiny, 1e-6, seed=12)
    write_family(tiny, "qwen3_moe", tmp_path, dtype="F32")
    model = open_model(tmp_path)
    moe = model.layout.layers[0]
    found = weight_distances(model.reader, moe, chunk_bytes=8 * 3 * 48 * 64)
    flat = np.array([_flat(model, moe, e) for e in range(8)])
    l2 = squareform(pdist(flat))
    # 1 - cos of near-duplicates is ~5e-13: float64's 1 - u.v/(|u||v|) loses it, so the
    # oracle is the same formula in x87 extended precision
    wide = flat.astype(np.longdouble)
    norms = np.sqrt((wide * wide).sum(axis=1))
    cosine = (1 - (wide @ wide.T) / np.outer(norms, norms)).astype(np.float64)
    mask = ~np.eye(8, dtype=bool)
    near = np.zeros((8, 8), dtype=bool)
    near[0, 1] = near[1, 0] = near[2, 3] = near[3, 2] = True
    np.testing.assert_allclose(found["weight_l2"][near], l2[near], rtol=1e-9)
    norm = np.linalg.norm(flat[0])
    assert 0.5e-6 * norm < found["weight_l2"][0, 1] < 2e-6 * norm  # separated, not zero
    # the worst case the bound allows for an unverified pair, relative to the distance
    worst = rounding_bound(4096) / (VERIFY_BELOW - rounding_bound(4096))
    assert worst < 2.5e-3
    far = mask & ~near
    assert np.all(np.abs(found["weight_l2"][far] / l2[far] - 1) <= worst / 2)
    np.testing.assert_allclose(found["weight_l2"][far], l2[far], rtol=1e-6)  # measured
    np.testing.assert_allclose(found["weight_cosine"][mask], cosine[mask], rtol=1e-5)


def _flat(model, moe, expert: int) -> np.ndarray:
    w = read_expert(model.reader, moe, expert, dtype=np.float64)
    return np.concatenate([w.gate.ravel(), w.up.ravel(), w.down.ravel()])


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(2, 12),
    width=st.integers(1, 600),
    scale=st.floats(1e-3, 1e3),
    offset=st.floats(0.0, 1e3),
    seed=st.integers(0, 2**32 - 1),
)
def test_float32_gram_stays_within_the_rounding_bound(n, width, scale, offset, seed):
    """The float32 Gram's squared distances err by at most rounding_bound(width) times the
    pair's centred squared norms, whatever the scale and the shared component."""
    from moetopo.geometry.distances import CenteredGram, rounding_bound

    rng = np.random.default_rng(seed)
    rows = (offset * rng.standard_normal(1200) + scale * rng.standard_normal((n, 1200))).astype(
        np.float32
    )
    gram = CenteredGram(n)
    for c0 in range(0, rows.shape[1], width):
        gram.add(rows[:, c0 : c0 + width].copy())
    sq, _, centred_sq = gram.squared()
    exact = squareform(pdist(rows.astype(np.float64), "sqeuclidean"))
    centred = rows.astype(np.float64) - rows.astype(np.float64).mean(axis=0)
    spread = (centred**2).sum(axis=1)
    bound = rounding_bound(width) * (spread[:, None] + spread[None, :])
    assert np.all(np.abs(sq - exact) <= bound + 1e-300)
    np.testing.assert_allclose(centred_sq, spread, rtol=1e-5)


def test_function_distance_ignores_hidden_unit_order_weight_distance_does_not(tmp_path):
    tiny = random_model(n_layers=1, n_experts=4, seed=7)
    layer = tiny.layers[0]
    layer.gate[1], layer.up[1], layer.down[1] = layer.gate[0], layer.up[0], layer.down[0]
    perm = np.random.default_rng(8).permutation(tiny.intermediate)
    layer.gate[1], layer.up[1] = layer.gate[1][perm], layer.up[1][perm]
    layer.down[1] = layer.down[1][:, perm]
    write_family(tiny, "mixtral", tmp_path, dtype="F32")
    model = open_model(tmp_path)
    moe = model.layout.layers[0]
    x = np.random.default_rng(9).standard_normal((64, tiny.hidden)).astype(np.float32)
    func = function_distances(lambda e: read_expert(model.reader, moe, e), 4, x, "swiglu")
    weight = weight_distances(model.reader, moe)["weight_l2"]
    assert func[0, 1] < 1e-10  # same function, hidden units reordered
    assert func[0, 2] > 0.5
    assert weight[0, 1] > 0.5 * weight[0, 2]  # weights see two different experts


def test_function_distance_definition():
    """d = mean ||f_i - f_j||^2 / mean of the two mean squared norms, on a hand example."""
    from moetopo.checkpoint.experts import ExpertWeights

    eye = np.eye(2, dtype=np.float32)
    a = ExpertWeights(up=eye, down=eye)
    b = ExpertWeights(up=2 * eye, down=eye)
    x = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    d = function_distances(lambda e: (a, b)[e], 2, x, "relu")
    # f_a = x, f_b = 2x: mean ||f_a - f_b||^2 = 1, mean norms 1 and 4
    np.testing.assert_allclose(d[0, 1], 1.0 / 2.5)


def test_coactivation_distance():
    counts = np.array([[10, 10, 0], [10, 10, 0], [0, 0, 5]])
    d = coactivation_distances(counts)
    np.testing.assert_allclose(d, [[0, 0, 1], [0, 0, 1], [1, 1, 0]])


def _gates_frame(model):
    return gates_from_rows(gate_rows(model)[0])


def test_planted_clusters_recovered_and_distinct_layer_has_no_redundancy(tmp_path):
    tiny = random_model(n_layers=2, n_experts=10, hidden=64, intermediate=32, seed=11)
    groups = [[0, 4, 7], [1, 2], [3, 8, 9]]
    plant_groups(tiny.layers[0], groups, noise=1e-3, seed=12)
    write_family(tiny, "mixtral", tmp_path)
    model = open_model(tmp_path)
    gates = _gates_frame(model)
    routing, coactivation, _ = routing_tables(model, gates, 128, 0).tables()
    sources = ["router_l1", "router_cosine", "router_l2", "weight_l2", "weight_cosine", "function"]
    tables = []
    for layer in (0, 1):
        matrices, warnings, _ = layer_distances(
            model, layer, sources + ["coactivation"], gates, coactivation, 64
        )
        assert not warnings and set(matrices) == set(sources) | {"coactivation"}
        tables.append(pd.DataFrame(pairs_table(layer, matrices)))
    clusters, redundancy = cluster_tables(pd.concat(tables), ["r0.25"], {}, "average")
    expected = {frozenset(g) for g in groups} | {frozenset([5]), frozenset([6])}
    for source in sources:
        for method in ("components", "average"):
            rows = clusters[
                (clusters.layer == 0) & (clusters.source == source) & (clusters.method == method)
            ]
            found = {frozenset(g.expert) for _, g in rows.groupby("cluster")}
            assert found == expected, (source, method)
        row = redundancy[(redundancy.layer == 0) & (redundancy.source == source)].iloc[0]
        assert row.redundant_pairs == 3 + 1 + 3 and row.n_groups == 3 and row.largest_group == 3
        distinct = redundancy[(redundancy.layer == 1) & (redundancy.source == source)].iloc[0]
        assert distinct.redundant_pairs == 0 and distinct.n_groups == 0, source


def _captured_with_inputs(path, layers, rows, hidden, **extra):
    """A captured file with logits for ``layers`` and router inputs ([rows, hidden] each)."""
    rng = np.random.default_rng(3)
    arrays = {
        f"layer_{layer}": rng.normal(size=(rows * 2, 4)).astype(np.float16) for layer in layers
    }
    arrays |= {
        f"inputs_{layer}": rng.normal(size=(rows, hidden)).astype(np.float16) for layer in layers
    }
    arrays["input_positions"] = np.arange(rows) * 2
    arrays |= extra
    np.savez(path, **arrays)
    return path


def test_function_distance_uses_the_captured_inputs_of_its_layer_and_says_so(tmp_path):
    tiny = random_model(n_layers=2, n_experts=4, hidden=16, intermediate=8, seed=21)
    write_family(tiny, "mixtral", tmp_path / "m")
    model = open_model(tmp_path / "m")
    gates = _gates_frame(model)
    captured = _captured_with_inputs(tmp_path / "r.npz", [1], rows=40, hidden=16)
    rows, *_, origin = layer_inputs(model, 1, 32, 0, str(captured))
    assert origin == "captured" and rows.shape == (32, 16)
    stored = np.load(captured)["inputs_1"].astype(np.float32)
    assert all((stored == row).all(axis=1).any() for row in rows)  # 32 of the 40 rows
    np.testing.assert_array_equal(rows, layer_inputs(model, 1, 32, 0, str(captured))[0])
    expected = function_distances(
        lambda e: read_expert(model.reader, model.layout.layers[1], e),
        4,
        rows,
        model.layout.activation,
    )
    for layer, origin in ((1, "captured"), (0, "probe")):  # layer 0 has no inputs captured
        m, _, inputs = layer_distances(model, layer, ["function"], gates, None, 32, 0,
                                       captured=str(captured))  # fmt: skip
        assert inputs == {"function": origin}
        table = pairs_table(layer, m, inputs)
        assert set(table["inputs"]) == {origin}
    m, _, _ = layer_distances(model, 1, ["function"], gates, None, 32, 0, captured=str(captured))
    np.testing.assert_allclose(m["function"], expected, rtol=1e-9)


@pytest.mark.parametrize(
    "extra, hidden, message",
    [
        ({}, 12, "router inputs have width 12, but the model's hidden size is 16"),
        ({"input_positions": np.arange(7)}, 16, "do not match 7 input_positions"),
        ({"inputs_9": np.zeros((40, 16), np.float16)}, 16, "layers \\[9\\], which have no logits"),
    ],
)
def test_bad_captured_inputs_are_refused_naming_the_file(tmp_path, extra, hidden, message):
    tiny = random_model(n_layers=2, n_experts=4, hidden=16, intermediate=8, seed=21)
    write_family(tiny, "mixtral", tmp_path / "m")
    model = open_model(tmp_path / "m")
    captured = _captured_with_inputs(tmp_path / "r.npz", [1], 40, hidden, **extra)
    with pytest.raises(MoetopoError, match=message) as error:
        layer_inputs(model, 1, 32, 0, str(captured))
    assert str(captured) in str(error.value)
