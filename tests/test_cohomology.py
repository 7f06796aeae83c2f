"""The cohomology stage on planted checkpoints: merge barriers, stalks, HodgeCover end to end."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from moetopo.artefacts.views import gates_from_rows
from moetopo.checkpoint.experts import read_expert
from moetopo.checkpoint.model import open_model
from moetopo.fixtures import random_model, write_family
from moetopo.geometry.distances import pairs_table
from moetopo.geometry.merging import WeightMergeBarrier
from moetopo.geometry.stalks import expert_frames, router_frames
from moetopo.stages.cohomology import CohomologySettings, layer_cohomology, summary_rows
from moetopo.stages.expert_geometry import layer_distances
from moetopo.stages.routing import routing_tables
from moetopo.topology.layer import TopologyParams

from conftest import gate_rows

TRIPLE = (5, 6, 7)


def planted_triple_model(tmp_path):
    """Experts 5, 6, 7 compute one function with hidden units in three orders, and are rarely
    routed to; experts 0..4 are distinct and popular."""
    tiny = random_model(n_layers=1, n_experts=8, hidden=32, intermediate=16, seed=21)
    layer = tiny.layers[0]
    rng = np.random.default_rng(22)
    for e in TRIPLE[1:]:
        perm = rng.permutation(tiny.intermediate)
        layer.gate[e], layer.up[e] = layer.gate[TRIPLE[0]][perm], layer.up[TRIPLE[0]][perm]
        layer.down[e] = layer.down[TRIPLE[0]][:, perm]
    layer.router[:5] *= 3.0  # decisive logits for the popular experts
    layer.router[list(TRIPLE)] *= 0.01  # near-zero logits: chosen only when few others score

    write_family(tiny, "mixtral", tmp_path, dtype="F32")
    return open_model(tmp_path)


def gates_frame(model):
    return gates_from_rows(gate_rows(model)[0])


def test_weight_merge_barrier_sees_what_function_distance_cannot(tmp_path):
    model = planted_triple_model(tmp_path)
    moe = model.layout.layers[0]
    x = np.random.default_rng(1).standard_normal((128, 32)).astype(np.float32)
    barrier = WeightMergeBarrier(lambda e: read_expert(model.reader, moe, e), x, "swiglu")
    assert barrier((5,)) == pytest.approx(0.0, abs=1e-12)  # merging one expert changes nothing
    triple = barrier(TRIPLE)
    pair = barrier((5, 6))
    assert triple > pair > 0.1  # averaging permuted hidden units destroys the function
    assert barrier((5, 6, 7)) == barrier((7, 5, 6))  # a set function


def test_hodgecover_keeps_the_irreducible_triple_that_load_drops(tmp_path):
    model = planted_triple_model(tmp_path)
    gates = gates_frame(model)
    routing, coactivation, _ = routing_tables(model, gates, 512, 0).tables()
    load = routing.sort_values("expert").load.to_numpy()
    assert load[list(TRIPLE)].max() < load[:5].min()  # the triple is the least used
    matrices, _, _ = layer_distances(
        model, 0, ["function", "router_l2", "coactivation"], gates, coactivation, 128
    )
    assert max(matrices["function"][a, b] for a in TRIPLE for b in TRIPLE) < 1e-6
    distances = pd.DataFrame(pairs_table(0, matrices))
    params = TopologyParams(epsilon_quantiles=(0.3,), keep_fractions=(0.5,), max_triangles=200)
    tables = layer_cohomology(
        model,
        0,
        distances,
        coactivation=coactivation,
        routing=routing,
        gates=gates,
        clusters=None,
        params=params,
        settings=CohomologySettings(function_tokens=128),
    )
    cover = tables["hodgecover"][tables["hodgecover"].keep == 4]
    kept = {m: set(g[g.kept].expert) for m, g in cover.groupby("method")}
    assert len(kept["hodgecover"] & set(TRIPLE)) >= 2
    assert len(kept["load"] & set(TRIPLE)) <= 1
    assert set(tables["hodge"].source) == {"function", "router_l2", "coactivation"}
    assert (tables["sheaf"].stalk_dim == 2).all()


def test_expert_frames_are_orthonormal_input_directions(tmp_path):
    tiny = random_model(n_layers=1, n_experts=3, hidden=32, intermediate=8, seed=2)
    tiny.layers[0].gate[1] = np.outer(np.ones(8), np.eye(32)[3])  # every row along e_3
    tiny.layers[0].up[1] = np.outer(np.arange(1, 9), np.eye(32)[3])
    write_family(tiny, "mixtral", tmp_path, dtype="F32")
    frames = expert_frames(open_model(tmp_path), 0, 2, max_rows=8, seed=0)
    assert frames.shape == (3, 32, 2)
    for f in frames:
        np.testing.assert_allclose(f.T @ f, np.eye(2), atol=1e-6)
    assert abs(frames[1][3, 0]) == pytest.approx(1.0, abs=1e-6)  # the only input direction used


def test_router_frames_contain_each_router_row():
    w = np.random.default_rng(3).standard_normal((5, 16))
    frames = router_frames(w, 2)
    for e in range(5):
        np.testing.assert_allclose(frames[e].T @ frames[e], np.eye(2), atol=1e-10)
        unit = w[e] / np.linalg.norm(w[e])
        assert np.linalg.norm(frames[e] @ (frames[e].T @ unit)) == pytest.approx(1.0)


def test_router_frames_of_a_zero_or_dependent_row_are_still_orthonormal():
    w = np.random.default_rng(4).standard_normal((5, 16))
    w[0] = 0.0  # a pruned expert
    w[1] = w[2] + w[3]  # inside the span of the shared directions' rows
    frames = router_frames(w, 3)
    for e in range(5):
        np.testing.assert_allclose(frames[e].T @ frames[e], np.eye(3), atol=1e-10)


def test_summary_rows_split_source_metric_and_scale():
    rows = summary_rows(3, {"n_experts": 8, "function.b1@0.3": 2, "router_l1.h1_significant": 1})
    assert rows.values.tolist() == [
        [3, "function", "b1@0.3", 2.0],
        [3, "", "n_experts", 8.0],
        [3, "router_l1", "h1_significant", 1.0],
    ]


def test_the_rules_params_split_into_topology_parameters_and_stage_settings():
    """From the schema's cohomology and probe defaults the split gives the code defaults,
    every field taken by its name (a list arrives as the tuple the dataclass holds)."""
    import yaml

    from conftest import REPO

    schema = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())
    sections = schema["properties"]
    values = {k: v["default"] for k, v in sections["cohomology"]["properties"].items()}
    values |= {
        k: sections["probe"]["properties"][k]["default"] for k in ("function_tokens", "seed")
    }
    values |= {"path": "m", "family": ""}  # params the dataclasses do not take
    params, settings = CohomologySettings.split(values, 256 << 20)
    assert params == TopologyParams() and settings == CohomologySettings()
    changed, _ = CohomologySettings.split(
        values | {"epsilon_quantiles": [0.2, 0.4], "cover_quantile": 0.4}, 1
    )
    assert changed.epsilon_quantiles == (0.2, 0.4)
