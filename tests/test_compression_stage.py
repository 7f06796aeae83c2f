"""The compression stage on zoo checkpoints and its summary over models: tables that say
which inputs they used, selections that serve every expert's traffic, the winning method
and the topology-cost association read off planted data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from moetopo.artefacts import columns
from moetopo.checkpoint.model import open_model
from moetopo.compression.evaluate import METHODS, CompressionParams
from moetopo.stages.compression import hodgecover_order, layer_compression
from moetopo.stats.pruning import cost_fraction, layer_costs, method_frontier
from moetopo.stats.pruning import topology_association as association

from conftest import REPO

ZOO = REPO / "resources" / "zoo"


@pytest.fixture(scope="module")
def dsv3():
    return open_model(ZOO / "dsv3-e16k4-h64-s1")


def test_the_stage_measures_every_method_on_captured_inputs_and_says_so(dsv3):
    layer = dsv3.layout.moe_layers[0]
    captured = ZOO / "dsv3-e16k4-h64-s1" / "router_logits.npz"
    params = CompressionParams(random_draws=2)
    tables = layer_compression(dsv3, layer, params, captured=str(captured))
    table, chosen = tables["compression"], tables["compression_selections"]
    assert list(table.columns) == columns("compression")
    assert set(table.inputs) == {"captured"}
    assert set(table.method) == set(METHODS) - {"hodgecover"}  # no cohomology ranking given
    assert sorted(table.keep.unique()) == [4, 8, 12]  # 16 experts at 0.25, 0.5, 0.75
    assert (table[table.method == "random"].draw.unique() == [0, 1]).all()
    error = table[table.metric == "relative_error"]
    assert (error.value >= 0).all() and error.value.max() < 10
    cosine = table[table.metric == "cosine"].value
    assert ((cosine >= -1) & (cosine <= 1 + 1e-12)).all()
    for (method, _, keep), rows in chosen.groupby(["method", "draw", "keep"]):
        assert rows.kept.sum() == keep, method
        served = rows.target.to_numpy()
        if method in ("frequency", "random", "reap", "weights_only"):
            assert ((served == -1) == ~rows.kept.to_numpy()).all()
        else:  # every expert's tokens go to a survivor
            assert rows.kept.to_numpy()[served].all(), method


def test_without_captured_inputs_the_probe_is_used_and_recorded(dsv3):
    layer = dsv3.layout.moe_layers[0]
    params = CompressionParams(methods=("frequency",), tokens=64, keep_fractions=(0.5,))
    table = layer_compression(dsv3, layer, params)["compression"]
    assert set(table.inputs) == {"probe"}


def test_hodgecover_order_reads_the_cohomology_ranking():
    rows = pd.DataFrame(
        {
            "layer": 3,
            "method": "hodgecover",
            "keep": [2] * 4 + [3] * 4,
            "expert": [0, 1, 2, 3] * 2,
            "rank": [2, 0, 3, 1] * 2,
        }
    )
    assert hodgecover_order(rows, 3).tolist() == [1, 3, 0, 2]
    assert hodgecover_order(rows, 4) is None


def planted_compression() -> pd.DataFrame:
    """Two models, two layers each; 'good' always beats 'bad', random draws average."""
    rows = []
    for model in ("a", "b"):
        for layer in (1, 2):
            for fraction, keep in ((0.25, 2), (0.5, 4)):
                base = 1 - fraction + layer / 10
                values = {"good": base / 2, "bad": base, "random": None}
                for method, value in values.items():
                    draws = [(0, 0.6), (1, 0.8)] if method == "random" else [(0, value)]
                    for draw, v in draws:
                        rows.append((model, layer, fraction, keep, method, draw, v))
    table = pd.DataFrame(
        rows, columns=["model", "layer", "fraction", "keep", "method", "draw"] + ["value"]
    )
    return table.assign(metric="relative_error")


def test_the_frontier_names_the_method_with_least_error_and_counts_its_wins():
    frontier = method_frontier(planted_compression())
    for fraction, rows in frontier.groupby("fraction"):
        best = rows[rows.best]
        assert best.method.tolist() == ["good"], fraction
        assert best.wins.iloc[0] == 4 and best.n_layers.iloc[0] == 4
        random = rows[rows.method == "random"].mean_error.iloc[0]
        assert random == pytest.approx(0.7)  # draws averaged first


def test_layer_cost_is_the_least_error_at_the_middle_budget():
    assert cost_fraction([0.75, 0.25, 0.5]) == 0.5
    costs = layer_costs(planted_compression(), 0.5)
    assert costs.cost_method.unique().tolist() == ["good"]
    expected = [(0.5 + layer / 10) / 2 for layer in (1, 2)] * 2
    np.testing.assert_allclose(costs.cost, expected)


def test_a_planted_topology_cost_association_is_found_and_noise_is_not():
    rng = np.random.default_rng(3)
    rows = []
    for model in range(10):
        for layer in range(3):
            h = rng.uniform()
            rows.append(
                {
                    "model": f"m{model}",
                    "layer": layer,
                    "harmonic_fraction": h,
                    "h1_significant": float(rng.integers(0, 4)),
                    "redundancy": 0.5,  # constant: undefined
                    "cost": h + 0.05 * rng.normal(),
                }
            )
    found = association(pd.DataFrame(rows), n_resamples=999).set_index("figure")
    assert found.at["harmonic_fraction", "ci_low"] > 0.5
    assert found.at["h1_significant", "ci_low"] < 0 < found.at["h1_significant", "ci_high"]
    assert np.isnan(found.at["redundancy", "estimate"])
    assert "constant" in found.at["redundancy", "reason"]
    assert (found.n_models == 10).all() and (found.n_layers == 30).all()


def test_too_few_models_is_inconclusive_not_a_number():
    rows = pd.DataFrame(
        {
            "model": ["a", "a", "b", "b"],
            "layer": [0, 1, 0, 1],
            "harmonic_fraction": [0.1, 0.2, 0.3, 0.4],
            "h1_significant": [0.0, 1.0, 0.0, 2.0],
            "redundancy": [0.1, 0.2, 0.3, 0.5],
            "cost": [0.1, 0.2, 0.3, 0.4],
        }
    )
    found = association(rows, n_resamples=99)
    assert found.estimate.isna().all()
    assert found.reason.str.contains("only 2 models").all()


def test_a_fine_tune_resamples_with_its_base():
    rng = np.random.default_rng(4)
    rows = pd.DataFrame(
        {
            "model": np.repeat([f"m{k}" for k in range(6)], 2),
            "layer": np.tile([0, 1], 6),
            "harmonic_fraction": rng.uniform(size=12),
            "h1_significant": rng.uniform(size=12),
            "redundancy": rng.uniform(size=12),
            "cost": rng.uniform(size=12),
        }
    )
    units = rows.model.replace({"m1": "m0", "m3": "m2"})  # two fine-tunes of two bases
    found = association(rows.assign(unit=units), n_resamples=99)
    assert (found.n_models == 4).all()


def test_three_groups_of_near_duplicates_are_the_cheapest_layer_to_merge(tmp_path):
    """The case a distance threshold gets wrong: a layer of three groups of four
    near-duplicates beside a layer of distinct experts. Merging each group costs almost
    nothing, dropping the distinct experts costs much, and the summary says which."""
    from moetopo.fixtures import random_model, write_family
    from moetopo.fixtures.model import plant_groups
    from moetopo.stages.compression_summary import compression_summary

    tiny = random_model(n_layers=2, n_experts=12, hidden=32, intermediate=16, seed=5)
    plant_groups(tiny.layers[0], [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]], noise=1e-4)
    model = open_model(write_family(tiny, "mixtral", tmp_path / "m", dtype="F32"))
    params = CompressionParams(tokens=1024, random_draws=2)
    tables = {layer: layer_compression(model, layer, params) for layer in (0, 1)}
    error = {
        layer: t["compression"]
        .query("metric == 'relative_error' and fraction == 0.25")
        .set_index("method")
        .value
        for layer, t in tables.items()
    }
    assert error[0]["hc_smoe"] < 1e-4  # three merged experts serve their groups
    assert error[1]["hc_smoe"] > 0.1
    assert error[0]["frequency"] > 100 * error[0]["hc_smoe"]  # load cannot see copies
    empty = pd.DataFrame(columns=["layer", "source", "quantile", "metric", "value"])
    model_tables = {
        "compression": pd.concat([t["compression"] for t in tables.values()]),
        "hodge": empty.assign(harmonic_fraction=[]),
        "hodgecover": empty,
        "layer_summary": empty,
        "redundancy": empty.assign(threshold_spec=[], redundancy=[]),
    }
    summary = compression_summary(
        {"m": model_tables}, source="function", threshold_spec="r0.5", keep_fractions=(0.25,)
    )
    layers = summary["compression_layers"].sort_values("cost")
    assert layers.layer.tolist() == [0, 1] and layers.cost.iloc[0] < 1e-4
