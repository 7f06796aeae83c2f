"""Superposition: known answers of the per-feature measures, the classes and their
thresholds, bases (the wrong width names the file), invariances, and the stage on toy
checkpoints, one of them trained here and checked against numpy on its saved weights."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.numpy import load_file, save_file

from moetopo.artefacts.views import GateLayer, gates_from_rows
from moetopo.checkpoint.experts import expert_output, read_expert, read_expert_inputs
from moetopo.checkpoint.model import open_model
from moetopo.errors import MoetopoError
from moetopo.fixtures.families import FAMILY_RECIPES, family_model, write_family
from moetopo.geometry.basis import file_basis
from moetopo.geometry.superposition import (
    Thresholds,
    expert_features,
    layer_aggregates,
    usage_weights,
)
from moetopo.stages.expert_geometry import layer_distances
from moetopo.stages.routing import routing_tables
from moetopo.stages.superposition import superposition_tables
from moetopo.zoo.toy import ToyPoint, save_point

from conftest import gate_rows


def orthonormal(rows: int, cols: int, seed: int = 0) -> np.ndarray:
    """``rows`` orthonormal vectors of length ``cols`` (rows <= cols)."""
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(cols, rows)))
    return q.T


def test_orthonormal_features_have_dimensionality_one_and_no_superposition():
    found = expert_features(orthonormal(4, 6))
    np.testing.assert_allclose(found.dimensionality, 1.0)
    np.testing.assert_allclose(found.score, 0.0, atol=1e-12)
    assert list(found.kind) == ["dedicated"] * 4
    summary = found.summary()
    assert summary["dims_per_feature"] == pytest.approx(6 / 4)
    assert summary["monosemanticity"] == 1.0


def test_an_antipodal_pair_has_dimensionality_one_half_each():
    v = orthonormal(2, 3)
    found = expert_features(np.stack([v[0], -v[0], v[1]]))
    np.testing.assert_allclose(found.dimensionality, [0.5, 0.5, 1.0])
    np.testing.assert_allclose(found.score, [1.0, 1.0, 0.0], atol=1e-12)
    assert list(found.kind) == ["antipodal", "antipodal", "dedicated"]


def test_superposition_score_uses_unit_vectors_on_both_sides():
    # two features at 60 degrees, one twice as long: the score is cos^2 for both,
    # whatever the norms (the reference's mixed score would give 4 cos^2 and cos^2)
    a = np.array([1.0, 0.0])
    b = 2.0 * np.array([0.5, np.sqrt(3) / 2])
    found = expert_features(np.stack([a, b]))
    np.testing.assert_allclose(found.score, [0.25, 0.25])
    np.testing.assert_allclose(found.dimensionality, [1 / (1 + 4 * 0.25), 4 / (4 + 0.25)])


def test_classes_follow_their_thresholds():
    pentagon = np.stack([[np.cos(t), np.sin(t)] for t in 2 * np.pi * np.arange(5) / 5])
    weak = 0.3 * np.array([[1.0, 0.0]])  # under half the largest norm: ignored
    found = expert_features(np.vstack([pentagon, weak]))
    assert list(found.kind) == ["superimposed"] * 5 + ["ignored"]
    # each pentagon feature interferes with four others: 2 cos^2(72) + 2 cos^2(144)
    np.testing.assert_allclose(found.score[:5], 1.5)
    lenient = expert_features(np.vstack([pentagon, weak]), Thresholds(0.5, 1.6, -0.9))
    assert list(lenient.kind) == ["dedicated"] * 5 + ["ignored"]
    counted = expert_features(np.vstack([pentagon, weak]), Thresholds(0.2, 1.6, -0.9))
    assert counted.kind[-1] != "ignored" and counted.kind[0] == "superimposed"
    near = np.array([[1.0, 0.0], [-0.95, np.sqrt(1 - 0.95**2)]])
    assert list(expert_features(near, Thresholds(antipodal_cosine=-0.9)).kind) == [
        "antipodal",
        "antipodal",
    ]
    assert list(expert_features(near, Thresholds(antipodal_cosine=-0.99)).kind) == [
        "superimposed",
        "superimposed",
    ]


def test_a_zero_expert_ignores_every_feature():
    found = expert_features(np.zeros((3, 2)))
    assert list(found.kind) == ["ignored"] * 3
    np.testing.assert_array_equal(found.dimensionality, 0.0)
    assert np.isnan(found.summary()["monosemanticity"])


def test_layer_monosemanticity_weights_experts_by_load():
    dedicated = expert_features(orthonormal(2, 2))
    mixed = expert_features(np.array([[1.0, 0.0], [0.8, 0.6]]))
    totals = layer_aggregates([dedicated, mixed], usage_weights(np.array([0.75, 0.25])))
    assert totals["layer_monosemanticity"] == pytest.approx(0.75)
    assert usage_weights(np.array([0.0, 0.0])).tolist() == [0.5, 0.5]


@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
def test_a_basis_of_the_wrong_width_names_the_file_layer_and_widths(tmp_path, suffix):
    path = tmp_path / f"sae{suffix}"
    arrays = {"layer_3": np.ones((5, 7), dtype=np.float32)}
    np.savez(path, **arrays) if suffix == ".npz" else save_file(arrays, str(path))
    with pytest.raises(MoetopoError, match=r"sae.*layer 3 basis has width 7.*hidden size is 8"):
        file_basis(path, 3, 8)
    assert file_basis(path, 4, 7) is None  # no array for that layer
    basis = file_basis(path, 3, 7)
    np.testing.assert_allclose(np.linalg.norm(basis.directions, axis=1), 1.0, rtol=1e-6)
    assert basis.name == f"file:sae{suffix}"


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    features=st.integers(2, 9),
    hidden=st.integers(2, 8),
    rows=st.integers(1, 6),
    experts=st.integers(2, 5),
)
def test_measures_ignore_a_rotation_of_the_hidden_space_and_the_experts_order(
    seed, features, hidden, rows, experts
):
    rng = np.random.default_rng(seed)
    basis = rng.normal(size=(features, hidden))
    inputs = rng.normal(size=(experts, rows, hidden))
    rotation = orthonormal(hidden, hidden, seed + 1)
    load = rng.random(experts)
    found = [expert_features(basis @ w.T) for w in inputs]
    rotated = [expert_features((basis @ rotation) @ (w @ rotation).T) for w in inputs]
    for a, b in zip(found, rotated, strict=True):
        np.testing.assert_allclose(a.dimensionality, b.dimensionality, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(a.score, b.score, rtol=1e-9, atol=1e-9)
    order = rng.permutation(experts)
    totals = layer_aggregates(found, usage_weights(load))
    shuffled = layer_aggregates([found[e] for e in order], usage_weights(load[order]))
    np.testing.assert_allclose(
        totals["global_dimensionality"], shuffled["global_dimensionality"], rtol=1e-12
    )
    assert totals["layer_monosemanticity"] == pytest.approx(
        shuffled["layer_monosemanticity"], nan_ok=True
    )


def random_toy(tmp_path, point: ToyPoint, seed: int = 0):
    """A toy checkpoint with random weights (no torch needed) and the model opened."""
    rng = np.random.default_rng(seed)
    e, n, m = point.n_experts, point.n_features, point.n_hidden
    arrays = {
        "W": rng.normal(size=(e, n, m)).astype(np.float32),
        "b": rng.normal(size=(e, n)).astype(np.float32),
        "gate": rng.normal(size=(e, n)).astype(np.float32),
    }
    save_point(point, arrays, tmp_path / point.id)
    return open_model(tmp_path / point.id), arrays


def toy_gates(model) -> dict[int, GateLayer]:
    router = model.layout.layers[0].router
    return {0: GateLayer(model.reader.read(router).astype(np.float64), None, None)}


def test_toy_family_reads_one_matrix_experts_and_computes_their_function(tmp_path):
    model, arrays = random_toy(tmp_path, ToyPoint(0.9, 4, top_k=2, n_features=6, n_hidden=3))
    layout = model.layout
    assert (layout.family, layout.moe_layers, layout.n_experts, layout.top_k) == (
        "toy_moe",
        [0],
        4,
        2,
    )
    assert layout.warnings == []
    x = np.random.default_rng(1).random((5, 6)).astype(np.float32)
    w, b = arrays["W"][2], arrays["b"][2]
    got = expert_output(read_expert(model.reader, layout.layers[0], 2), x, layout.activation)
    np.testing.assert_allclose(got, np.maximum(x @ w @ w.T + b, 0), rtol=1e-5, atol=1e-5)


def test_stages_run_on_a_toy_checkpoint(tmp_path):
    point = ToyPoint(0.9, 4, n_features=8, n_hidden=3)
    model, _ = random_toy(tmp_path, point)
    captured = str(tmp_path / point.id / "router_logits.npz")
    gates = toy_gates(model)
    result = routing_tables(model, gates, 16, 0, captured)
    routing, coactivation, _ = result.tables()
    assert set(routing.source) == {"captured"}
    sources = ["router_l1", "weight_l2", "weight_cosine", "function", "coactivation"]
    matrices, warnings, inputs = layer_distances(
        model, 0, sources, gates, coactivation, captured=captured
    )
    assert sorted(matrices) == sorted(sources) and warnings == []
    assert inputs == {"function": "captured"}
    experts, features = superposition_tables(model, gates, routing).tables()
    assert set(experts.basis) == {"identity"} and len(features) == 8
    assert experts.feature_sparsity.tolist() == [0.9] * 4
    router = superposition_tables(model, gates, routing, basis="router").tables()[0]
    assert set(router.basis) == {"router"} and set(router.n_features) == {4}


def test_a_basis_file_replaces_the_default_where_it_has_the_layer(tmp_path):
    point = ToyPoint(0.9, 2, n_features=6, n_hidden=3)
    model, _ = random_toy(tmp_path, point)
    path = tmp_path / "basis.npz"
    np.savez(path, layer_0=np.eye(6)[:4])
    result = superposition_tables(model, toy_gates(model), routing_stub(2), basis_file=str(path))
    experts, features = result.tables()
    assert set(experts.basis) == {"file:basis.npz"} and features.feature.tolist() == [0, 1, 2, 3]
    np.savez(path, layer_1=np.eye(6))
    result = superposition_tables(model, toy_gates(model), routing_stub(2), basis_file=str(path))
    assert set(result.tables()[0].basis) == {"identity"}
    assert "no array layer_0" in result.warnings[0]


def routing_stub(n_experts: int) -> pd.DataFrame:
    return pd.DataFrame(
        {"layer": 0, "expert": range(n_experts), "load": 1.0 / n_experts, "source": "probe"}
    )


def direct_dimensionality(w: np.ndarray) -> np.ndarray:
    """D_i = |W_i|^2 / sum_j (W_i/|W_i| . W_j)^2, feature by feature."""
    out = []
    for i in range(len(w)):
        unit = w[i] / np.linalg.norm(w[i])
        out.append(w[i] @ w[i] / sum((unit @ w[j]) ** 2 for j in range(len(w))))
    return np.array(out)


def test_a_trained_toy_point_matches_numpy_on_its_saved_weights(tmp_path):
    pytest.importorskip("torch", reason="training a toy model needs torch (the zoo extra)")
    from moetopo.zoo.toy import build_toy

    point = ToyPoint(0.9, 4, n_features=8, n_hidden=3, steps=150, batch=128)
    (record,) = build_toy([point], tmp_path / "toy", tmp_path, log=lambda _: None)
    assert np.isfinite(record["score"])
    assert (tmp_path / "toy" / "models.tsv").read_text().count("toy_moe") == 1
    model = open_model(tmp_path / "toy" / point.id)
    gates = toy_gates(model)
    captured = str(tmp_path / "toy" / point.id / "router_logits.npz")
    routing = routing_tables(model, gates, 16, 0, captured).tables()[0]
    experts, features = superposition_tables(model, gates, routing).tables()
    saved = load_file(str(tmp_path / "toy" / point.id / "model.safetensors"))
    dims = np.stack(
        [direct_dimensionality(saved[f"layers.0.experts.{e}.weight"]) for e in range(4)]
    )
    frobenius = [np.sum(saved[f"layers.0.experts.{e}.weight"] ** 2) for e in range(4)]
    np.testing.assert_allclose(experts.dims_per_feature, 3 / np.array(frobenius), rtol=1e-5)
    np.testing.assert_allclose(experts.mean_dimensionality, dims.mean(axis=1), rtol=1e-5)
    weights = routing.load.to_numpy() / routing.load.sum()
    np.testing.assert_allclose(features.global_dimensionality, weights @ dims, rtol=1e-5)


def report_data(tables: dict[str, pd.DataFrame]):
    """A report over models with only the tables the superposition section reads."""
    from moetopo.report.data import ModelData, ReportData

    models = [ModelData(name, name, {}, t, {}, []) for name, t in tables.items()]
    return ReportData(
        models, [], pd.DataFrame(), pd.DataFrame(), {}, None, {}, {"threshold_spec": "r0.5"}
    )


def test_the_report_section_draws_the_grid_and_names_each_basis(tmp_path):
    from moetopo.report.doc import Details, Figure, Table
    from moetopo.report.superposition import superposition_blocks

    tables = {}
    for sparsity in (0.5, 0.9):
        for experts in (2, 4):
            point = ToyPoint(sparsity, experts, n_features=6, n_hidden=3)
            model, _ = random_toy(tmp_path, point, seed=experts)
            found = superposition_tables(model, toy_gates(model), routing_stub(experts))
            tables[point.id] = {"superposition": found.tables()[0]}
    model, _ = random_toy(tmp_path, ToyPoint(0.5, 2, n_features=6, n_hidden=3), seed=9)
    router = superposition_tables(model, toy_gates(model), routing_stub(2), basis="router")
    tables["llm-like"] = {"superposition": router.tables()[0].assign(feature_sparsity=np.nan)}
    blocks = superposition_blocks(report_data(tables))
    figures = [b for b in blocks if isinstance(b, Figure)]
    assert [f.path for f in figures] == [
        "figures/superposition/phase.png",
        "figures/superposition/models.png",
    ]
    assert "4 models; basis: the input coordinates" in figures[0].caption
    assert "router's rows" in blocks[1].text and "input coordinates" in blocks[1].text
    details = [b for b in blocks if isinstance(b, Details)]
    assert len(details) == 5
    (table,) = details[-1].blocks
    assert isinstance(table, Table) and table.rows[0][1].startswith("the router's rows")
    assert superposition_blocks(report_data({"none": {}})) == []
    real = superposition_blocks(report_data({"llm-like": tables["llm-like"]}))
    assert [b.path for b in real if isinstance(b, Figure)] == ["figures/superposition/models.png"]


@pytest.mark.parametrize("family", sorted(FAMILY_RECIPES))
def test_the_stage_runs_on_every_family_with_its_data_free_basis(family, tmp_path):
    model = open_model(write_family(family_model(family, n_experts=4), family, tmp_path))
    gates = gates_from_rows(gate_rows(model)[0])
    routing = routing_tables(model, gates, 16, 0, None).tables()[0]
    experts, features = superposition_tables(model, gates, routing).tables()
    layout = model.layout
    assert sorted(set(experts.layer)) == layout.moe_layers
    assert set(experts.basis) == {"router"}
    assert len(experts) == sum(layout.layers[m].n_experts for m in layout.moe_layers)
    assert np.isfinite(experts.mean_dimensionality).all() and (experts.frobenius_sq > 0).all()
    for m in layout.moe_layers:  # the rows read are the expert's own (read_expert: oracle-tested)
        whole = read_expert(model.reader, layout.layers[m], 1)
        rows = [w for w in (whole.gate, whole.up) if w is not None]
        np.testing.assert_array_equal(read_expert_inputs(model.reader, layout.layers[m], 1),
                                      np.concatenate(rows))  # fmt: skip
    basis = tmp_path / "sae.npz"
    rng = np.random.default_rng(0)
    np.savez(
        basis, **{f"layer_{m}": rng.normal(size=(6, layout.hidden_size)) for m in layout.moe_layers}
    )
    given, features = superposition_tables(model, gates, routing, basis_file=str(basis)).tables()
    assert set(given.basis) == {"file:sae.npz"} and set(given.n_features) == {6}


def test_monosemanticity_is_drawn_against_redundancy_only_where_redundancy_varies(tmp_path):
    from moetopo.report.superposition import model_figure

    model, _ = random_toy(tmp_path, ToyPoint(0.5, 2, n_features=6, n_hidden=3))
    experts = superposition_tables(model, toy_gates(model), routing_stub(2)).tables()[0]

    def redundancy(value: float) -> pd.DataFrame:
        return pd.DataFrame(
            {"layer": [0], "source": ["weight_cosine"], "threshold_spec": ["r0.5"],
             "redundancy": [value]}
        )  # fmt: skip

    flat = {"a": {"superposition": experts, "redundancy": redundancy(0.0)}}
    flat["b"] = flat["a"]
    _, caption = model_figure(report_data(flat).models, "r0.5")
    assert "is 0 in every layer, so monosemanticity is not drawn against it" in caption
    varied = dict(flat, b={"superposition": experts, "redundancy": redundancy(0.5)})
    _, caption = model_figure(report_data(varied).models, "r0.5")
    assert "and against weight-cosine redundancy per layer" in caption
