"""The per-layer topology: the artefacts' columns, consistency between parts, and invariance
under relabelling the experts."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy.spatial.distance import pdist, squareform

from moetopo.stages.cohomology import topology_tables
from moetopo.topology.complex import rips_complex
from moetopo.topology.layer import TopologyParams, layer_topology
from moetopo.topology.sheaf import procrustes_maps

from _topology_cases import coordinates, float32s, kernel_dim_l1


def layer_tables(layer: int, distances, **inputs) -> SimpleNamespace:
    """The cohomology stage's tables of one layer (what these tests read), and its summary."""
    result = layer_topology(distances, **inputs)
    return SimpleNamespace(**topology_tables(layer, result), summary=result.summary)


def random_layer(n: int, seed: int):
    rng = np.random.default_rng(seed)
    points = rng.normal(size=(n, 5))
    sources = {
        "function": squareform(pdist(points)),
        "weight_cosine": squareform(pdist(points + 0.5 * rng.normal(size=points.shape), "cosine")),
    }
    coactivation = np.triu(np.where(rng.random((n, n)) < 0.1, 0.0, rng.uniform(size=(n, n))), 1)
    coactivation += coactivation.T
    frames = np.stack([np.linalg.qr(rng.normal(size=(6, 2)))[0] for _ in range(n)])
    load = rng.dirichlet(np.ones(n))
    return sources, coactivation, load, frames


@st.composite
def drawn_layers(draw, min_n: int = 5, max_n: int = 14):
    """What :func:`random_layer` returns, drawn as arrays (hypothesis.extra.numpy) so that
    a failure shrinks.

    Entries are distinct (unique=True), as random values are: a tie lets an arbitrary
    order decide which experts a cover keeps, and frames with repeated entries (standard
    basis vectors, copies of one frame) give rank-deficient F_j^T F_i, whose nearest
    rotation is not unique (see the known failure below).
    """
    n = draw(st.integers(min_n, max_n))

    def distinct(*shape, elements=coordinates):
        return draw(hnp.arrays(np.float64, shape, elements=elements, unique=True))

    points, noise = distinct(n, 5), distinct(n, 5)
    function = squareform(pdist(points))
    off = function[np.triu_indices(n, 1)]
    assume(off.min() >= 1e-3 * off.max())  # no two experts (nearly) coincide
    tilted = points + 0.5 * noise
    assume(np.linalg.norm(tilted, axis=1).min() >= 1e-3)  # cosine needs non-zero rows
    sources = {"function": function, "weight_cosine": squareform(pdist(tilted, "cosine"))}
    upper = squareform(distinct(n * (n - 1) // 2, elements=float32s(1e-3, 1.0)))
    absent = squareform(draw(hnp.arrays(bool, n * (n - 1) // 2)))  # pairs never co-routed
    coactivation = np.where(absent, 0.0, upper)
    frames = np.linalg.qr(distinct(n, 6, 2))[0]
    load = distinct(n, elements=float32s(1e-3, 1.0))
    return sources, coactivation, load / load.sum(), frames


def barrier_of(d: np.ndarray):
    def merge_barrier(experts: tuple[int, ...]) -> float:
        idx = np.array(experts)
        return float(d[np.ix_(idx, idx)].sum() ** 1.5)

    return merge_barrier


PARAMS = TopologyParams(
    epsilon_quantiles=(0.3, 0.6), n_critical_edges=10_000, maxdim=2, bootstrap_draws=10
)


def run(sources, coactivation, load, frames, params=PARAMS):
    return layer_tables(
        5,
        sources,
        coactivation=coactivation,
        load=load,
        frames=frames,
        merge_barrier=barrier_of(sources["function"]),
        params=params,
    )


@settings(max_examples=12, deadline=None)
@given(layer=drawn_layers(), data=st.data())
def test_relabelling_experts_relabels_rows_and_changes_nothing_else(layer, data):
    sources, coactivation, load, frames = layer
    n = len(load)
    perm = np.array(data.draw(st.permutations(range(n)), label="perm"))  # new a is old perm[a]
    base = run(sources, coactivation, load, frames)
    moved = run(
        {k: d[np.ix_(perm, perm)] for k, d in sources.items()},
        coactivation[np.ix_(perm, perm)],
        load[perm],
        frames[perm],
    )
    pd.testing.assert_frame_equal(base.persistence, moved.persistence)
    pd.testing.assert_frame_equal(
        base.hodge.drop(columns=["residual", "iterations"]),
        moved.hodge.drop(columns=["residual", "iterations"]),
        rtol=1e-8,
        atol=1e-9,
    )
    a, b = base.sheaf, moved.sheaf
    pd.testing.assert_frame_equal(a.drop(columns="eigenvalues"), b.drop(columns="eigenvalues"))
    np.testing.assert_allclose(np.stack(a["eigenvalues"]), np.stack(b["eigenvalues"]), atol=1e-9)
    assert base.summary.keys() == moved.summary.keys()
    for key, value in base.summary.items():
        assert moved.summary[key] == pytest.approx(value, rel=1e-8, abs=1e-9), key

    def critical(table, labels):
        a, b = labels[table["expert_a"]], labels[table["expert_b"]]
        t = table.assign(expert_a=np.minimum(a, b), expert_b=np.maximum(a, b))
        return t.drop(columns="rank").sort_values(["source", "quantile", "expert_a", "expert_b"])

    pd.testing.assert_frame_equal(
        critical(base.hodge_edges, np.arange(n)).reset_index(drop=True),
        critical(moved.hodge_edges, perm).reset_index(drop=True),
        rtol=1e-7,
        atol=1e-9,
    )
    cover = moved.hodgecover.assign(expert=perm[moved.hodgecover["expert"]])
    key = ["method", "keep", "expert"]
    pd.testing.assert_frame_equal(
        base.hodgecover.sort_values(key).reset_index(drop=True),
        cover.sort_values(key).reset_index(drop=True),
    )


@pytest.mark.xfail(
    strict=True,
    reason="procrustes_maps takes the polar factor of F_j^T F_i from an SVD; when that "
    "product is rank-deficient the factor is not unique, and reversing the edge (as "
    "relabelling the experts can) yields another map than the transpose",
)
def test_reversing_an_edge_transposes_its_procrustes_map_for_rank_deficient_frames():
    """Found by the relabelling property on drawn frames. F_0 = [e1, e2] and F_1 = [e3,
    cos(t) e1 + sin(t) e2] make F_1^T F_0 of rank 1; which angles t give a rotation one
    way and a reflection the other depends on the LAPACK SVD (here three of these eight
    angles do), so one angle per octant is tried."""
    e = np.eye(6)
    for t in np.deg2rad(np.arange(8) * 45 + 8):
        tilted = np.cos(t) * e[:, 0] + np.sin(t) * e[:, 1]
        frames = np.stack([e[:, [0, 1]], np.column_stack([e[:, 2], tilted])])
        forward = procrustes_maps(frames, np.array([[0, 1]]))[0]
        backward = procrustes_maps(frames, np.array([[1, 0]]))[0]
        np.testing.assert_allclose(backward, forward.T, atol=1e-12, err_msg=f"t = {t}")


def test_tables_have_the_design_columns_and_consistent_figures():
    sources, coactivation, load, frames = random_layer(12, 0)
    out = run(sources, coactivation, load, frames)
    design = {
        "persistence": ["layer", "source", "dim", "birth", "death", "persistence", "significant"],
        "sheaf": ["layer", "source", "epsilon", "stalk_dim", "h0", "h1", "eigenvalues", "rtol"],
        "hodge": ["layer", "source", "epsilon", "gradient_energy", "curl_energy",
                  "harmonic_energy", "betti1", "n_edges", "n_triangles"],
        "hodgecover": ["layer", "keep", "expert", "kept", "rank", "method"],
    }  # fmt: skip
    for name, columns in design.items():
        table = getattr(out, name)
        assert set(columns) <= set(table.columns), name
        assert (table["layer"] == 5).all()
    assert set(out.persistence["dim"]) == {0, 1, 2}
    assert len(out.hodge) == len(out.sheaf) == 2 * 2  # sources x scales
    for row in out.hodge.itertuples():
        d = sources[row.source]
        cx = rips_complex(d, row.epsilon)
        assert (row.n_edges, row.n_triangles) == (cx.n_edges, cx.n_triangles)
        assert row.betti1 == kernel_dim_l1(cx)
        assert out.summary[f"{row.source}.b1@{row.quantile}"] == row.betti1
        assert row.residual < 1e-9
    for source in sources:
        h1 = out.persistence[(out.persistence["source"] == source) & (out.persistence["dim"] == 1)]
        assert out.summary[f"{source}.h1_significant"] == h1["significant"].sum()
        assert out.summary[f"{source}.h1_total_persistence"] == pytest.approx(
            h1["persistence"].sum()
        )
    assert set(out.hodgecover["method"]) == {"hodgecover", "load", "groups"}


def test_without_optional_inputs_the_layer_still_answers_what_it_can():
    sources, *_ = random_layer(9, 1)
    out = layer_tables(0, {"weight_cosine": sources["weight_cosine"]})
    assert out.sheaf.empty  # no frames: no stalks
    assert set(out.hodgecover["method"]) == {"hodgecover"}  # baselines need load
    assert (out.hodge["signal_source"] == "weight_cosine").all()  # fallback signal


def test_two_experts():
    d = np.array([[0.0, 2.0], [2.0, 0.0]])
    out = layer_tables(1, {"function": d}, load=np.array([0.3, 0.7]))
    h0 = out.persistence[out.persistence["dim"] == 0]
    assert sorted(h0["death"]) == [2.0, np.inf]
    assert out.hodge["betti1"].tolist() == [0] * 5  # one complex per default scale
    cover = out.hodgecover[out.hodgecover["method"] == "load"]
    assert cover[cover["rank"] == 0]["expert"].tolist() == [1] * cover["keep"].nunique()


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError):
        layer_tables(0, {})
    with pytest.raises(ValueError):
        layer_tables(0, {"a": np.zeros((3, 3)), "b": np.zeros((4, 4))})
    sources, coactivation, load, frames = random_layer(6, 2)
    with pytest.raises(ValueError):
        run(sources, coactivation, load, frames[:, :, :1])
    with pytest.raises(ValueError):
        run(sources, np.triu(coactivation), load, frames)


@pytest.mark.parametrize(
    "bad",
    [{"maxdim": 3}, {"coeff": 4}, {"epsilon_quantiles": (1.5,)}, {"keep_fractions": (0.0,)},
     {"stalk_dim": 0}, {"rtol": -1.0}],
)  # fmt: skip
def test_bad_parameters_are_refused(bad):
    with pytest.raises(ValueError):
        TopologyParams(**bad)


def test_a_top1_layer_without_coactivation_gets_an_unweighted_sheaf_and_says_so():
    sources, _, load, frames = random_layer(8, 4)
    silent = np.zeros((8, 8))  # top-1 routing: no two experts are ever chosen together
    out = layer_tables(0, sources, coactivation=silent, load=load, frames=frames)
    assert (out.sheaf["n_edges"] > 0).all()
    assert set(out.sheaf["weighting"]) == {"unweighted (no coactivation on any edge)"}
    weighted = layer_tables(0, sources, coactivation=silent + 0.1 - 0.1 * np.eye(8), frames=frames)
    assert set(weighted.sheaf["weighting"]) == {"coactivation"}
    for row in out.sheaf.itertuples():
        gap = (
            row.normalised_eigenvalues[row.h0] if row.h0 < len(row.normalised_eigenvalues) else None
        )
        assert gap is None or row.spectral_gap == pytest.approx(gap)
