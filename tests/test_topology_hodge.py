"""The Rips 2-complex, its boundary matrices, b1 and the Hodge decomposition of edge flows."""

from __future__ import annotations

import math

import gudhi
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy.spatial.distance import pdist, squareform

from moetopo.topology.complex import (
    boundary_matrices,
    check_distance_matrix,
    epsilon_at_quantile,
    epsilon_for_density,
    rips_complex,
)
from moetopo.topology.hodge import (
    betti1,
    expected_energies,
    harmonic_critical_edges,
    hodge_decomposition,
    projector_diagonals,
)
from moetopo.topology.persistence import vietoris_rips_diagrams

from _topology_cases import (
    alive_bars,
    brute_force_simplices,
    distance_matrices,
    kernel_dim_l1,
    midpoint_scale,
    rational_betti1,
    scales,
)

SETTINGS = settings(max_examples=40, deadline=None)
SQUARE = squareform(pdist(np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])))


def gudhi_betti(d: np.ndarray, eps: float) -> list[int]:
    tree = gudhi.RipsComplex(distance_matrix=d, max_edge_length=eps).create_simplex_tree(
        max_dimension=2
    )
    tree.compute_persistence(homology_coeff_field=127, persistence_dim_max=True)
    return tree.betti_numbers() + [0, 0]


@SETTINGS
@given(d=distance_matrices(), u=st.floats(0, 1))
def test_complex_lists_exactly_the_cliques_in_lexicographic_order(d, u):
    eps = midpoint_scale(d, u)
    cx = rips_complex(d, eps)
    edges, triangles = brute_force_simplices(d, eps)
    assert [tuple(e) for e in cx.edges] == edges
    assert [tuple(t) for t in cx.triangles] == triangles
    np.testing.assert_array_equal(cx.edge_lengths, [d[i, j] for i, j in edges])


def test_boundary_matrices_use_the_standard_orientation():
    cx = rips_complex(np.ones((3, 3)) - np.eye(3), 1.0)  # one filled triangle
    b1, b2 = boundary_matrices(cx)
    # edges (0,1), (0,2), (1,2); boundary of (i,j) is [j] - [i]
    np.testing.assert_array_equal(b1.toarray(), [[-1, -1, 0], [1, 0, -1], [0, 1, 1]])
    # boundary of (0,1,2) is [12] - [02] + [01]
    np.testing.assert_array_equal(b2.toarray(), [[1], [-1], [1]])


@SETTINGS
@given(d=distance_matrices(), u=scales)
def test_boundary_of_boundary_is_zero(d, u):
    b1, b2 = boundary_matrices(rips_complex(d, midpoint_scale(d, u)))
    assert (b1 @ b2).count_nonzero() == 0


def test_scale_helpers():
    d = squareform(np.arange(1.0, 11.0))  # 5 points, distances 1..10
    assert epsilon_at_quantile(d, 0.3) == pytest.approx(np.quantile(np.arange(1.0, 11.0), 0.3))
    assert epsilon_for_density(d, 0.3) == 3.5  # between the 3rd and 4th distance
    assert rips_complex(d, epsilon_for_density(d, 0.3)).n_edges == 3
    assert rips_complex(d, epsilon_for_density(d, 1.0)).n_edges == 10
    assert rips_complex(d, epsilon_for_density(d, 0.0)).n_edges == 0
    with pytest.raises(ValueError):
        epsilon_at_quantile(d, 1.5)


@pytest.mark.parametrize(
    "bad",
    [np.ones((2, 3)), np.array([[0.0, 1.0], [2.0, 0.0]]), np.array([[1.0, 1.0], [1.0, 0.0]]),
     np.array([[0.0, np.nan], [np.nan, 0.0]]), np.array([[0.0, -1.0], [-1.0, 0.0]])],
)  # fmt: skip
def test_bad_distance_matrices_are_refused(bad):
    with pytest.raises(ValueError):
        check_distance_matrix(bad)


@pytest.mark.parametrize("eps, expected", [(0.5, 0), (1.2, 1), (1.5, 0)])
def test_square_is_hollow_between_side_and_diagonal_and_filled_after(eps, expected):
    cx = rips_complex(SQUARE, eps)
    assert betti1(cx) == expected
    assert kernel_dim_l1(cx) == expected
    assert rational_betti1(cx) == expected
    assert alive_bars(vietoris_rips_diagrams(SQUARE), 1, eps) == expected
    assert gudhi_betti(SQUARE, eps)[1] == expected


@settings(max_examples=60, deadline=None)
@given(d=distance_matrices(), u=scales)
def test_b1_agrees_across_ripser_hodge_kernel_ranks_filtration_and_gudhi(d, u):
    eps = midpoint_scale(d, u)
    cx = rips_complex(d, eps)
    b1 = betti1(cx)
    assert b1 == kernel_dim_l1(cx)
    assert b1 == rational_betti1(cx)
    assert b1 == alive_bars(vietoris_rips_diagrams(d), 1, eps)
    assert b1 == gudhi_betti(d, eps)[1]


def reference_parts(cx, s):
    """Orthogonal projections with dense pseudo-inverses."""
    b1, b2 = (m.toarray() for m in boundary_matrices(cx))
    grad = b1.T @ np.linalg.pinv(b1.T) @ s if cx.n_edges else np.zeros_like(s)
    curl = b2 @ np.linalg.pinv(b2) @ s if cx.n_triangles else np.zeros_like(s)
    return grad, curl, s - grad - curl


# Edge flows of float32 values (nothing subnormal), so that ||s||^2 never underflows.
flow_values = st.floats(-10.0, 10.0, width=32, allow_subnormal=False)


@SETTINGS
@given(d=distance_matrices(), u=scales, data=st.data())
def test_decomposition_is_orthogonal_sums_to_the_flow_and_matches_projections(d, u, data):
    cx = rips_complex(d, midpoint_scale(d, u))
    s = data.draw(hnp.arrays(np.float64, cx.n_edges, elements=flow_values), label="flow")
    dec = hodge_decomposition(cx, s, betti1=betti1(cx))
    norm2 = s @ s
    np.testing.assert_allclose(dec.gradient + dec.curl + dec.harmonic, s, atol=1e-12)
    assert dec.orthogonality < 1e-10
    for x, y in [(dec.gradient, dec.curl), (dec.gradient, dec.harmonic), (dec.curl, dec.harmonic)]:
        assert abs(x @ y) <= 1e-10 * norm2
    assert sum(dec.energies) == pytest.approx(norm2, rel=1e-9)
    b1m, b2m = boundary_matrices(cx)
    assert np.abs(b1m @ dec.harmonic).max(initial=0) < 1e-9 * max(1, math.sqrt(norm2))
    assert np.abs(b2m.T @ dec.harmonic).max(initial=0) < 1e-9 * max(1, math.sqrt(norm2))
    for mine, ref in zip(
        (dec.gradient, dec.curl, dec.harmonic), reference_parts(cx, s), strict=True
    ):
        np.testing.assert_allclose(mine, ref, atol=1e-8 * max(1, math.sqrt(norm2)))


def test_flow_on_a_hollow_cycle_has_its_mean_circulation_as_harmonic_part():
    n = 8
    angles = 2 * np.pi * np.arange(n) / n
    d = squareform(pdist(np.column_stack([np.cos(angles), np.sin(angles)])))
    cx = rips_complex(d, 1.1 * 2 * math.sin(math.pi / n))  # sides only: no triangles
    assert (cx.n_edges, cx.n_triangles) == (n, 0)
    # orientation of each edge relative to going round 0 -> 1 -> ... -> 7 -> 0
    around = np.array([1.0 if j == i + 1 else -1.0 for i, j in cx.edges])
    s = np.arange(1.0, n + 1)
    dec = hodge_decomposition(cx, s, betti1=betti1(cx))
    circulation = (around * s).sum()
    np.testing.assert_allclose(dec.harmonic, circulation / n * around, atol=1e-12)
    np.testing.assert_allclose(dec.curl, 0.0)
    assert dec.betti1 == 1


def test_filled_complex_has_no_harmonic_part_and_pure_gradient_stays_gradient():
    cx = rips_complex(SQUARE, 1.5)
    phi = np.array([0.0, 2.0, -1.0, 5.0])
    gradient = phi[cx.edges[:, 1]] - phi[cx.edges[:, 0]]
    dec = hodge_decomposition(cx, gradient, betti1=betti1(cx))
    np.testing.assert_allclose(dec.gradient, gradient, atol=1e-12)
    np.testing.assert_allclose(dec.curl, 0.0, atol=1e-12)
    assert not dec.harmonic.any()  # b1 = 0: exactly zero, not merely small


def test_harmonic_critical_edges_are_the_largest_harmonic_components():
    # two hollow squares and a filled triangle: harmonic flow only on the squares' edges
    square = np.array([[0, 0], [2, 0], [2, 2], [0, 2]], float)
    triangle = np.array([[20, 0], [21, 0], [20.5, 0.8]])
    points = np.concatenate([square, square + [10, 0], triangle])
    d = squareform(pdist(points))
    cx = rips_complex(d, 2.1)
    s = np.random.default_rng(1).normal(size=cx.n_edges)
    dec = hodge_decomposition(cx, s, betti1=betti1(cx))
    assert dec.betti1 == 2
    top = harmonic_critical_edges(dec.harmonic**2, 3)
    magnitude = np.abs(dec.harmonic)
    assert list(top) == list(np.argsort(-magnitude, kind="stable")[:3])
    assert len(harmonic_critical_edges(dec.harmonic**2, 100)) == 8  # the squares' edges
    shares = projector_diagonals(cx, betti1=2).harmonic
    np.testing.assert_allclose(np.sort(shares)[-8:], 0.25)  # each square: 4 edges share 1
    assert len(harmonic_critical_edges(s**2 * shares, 100)) == 8


@SETTINGS
@given(d=distance_matrices(max_n=8), u=scales, data=st.data())
def test_expected_energies_are_the_mean_split_over_every_orientation(d, u, data):
    # The known answer: average the oriented decomposition over all 2^m sign choices.
    cx = rips_complex(d, midpoint_scale(d, u))
    if not 0 < cx.n_edges <= 10:
        return
    s = data.draw(hnp.arrays(np.float64, cx.n_edges, elements=st.floats(0.1, 10.0)))
    b1 = betti1(cx)
    signs = np.array(np.meshgrid(*[[-1.0, 1.0]] * cx.n_edges)).reshape(cx.n_edges, -1).T
    mean = np.mean([hodge_decomposition(cx, g * s, betti1=b1).energies for g in signs], axis=0)
    diagonals = projector_diagonals(cx, betti1=b1)
    np.testing.assert_allclose(expected_energies(diagonals, s), mean, rtol=1e-8, atol=1e-9)
    # traces: rank B1 = n - components, dim of the harmonic space = b1
    components = cx.n_vertices - np.linalg.matrix_rank(boundary_matrices(cx)[0].toarray())
    assert diagonals.gradient.sum() == pytest.approx(cx.n_vertices - components, abs=1e-8)
    assert diagonals.harmonic.sum() == pytest.approx(b1, abs=1e-8)
    assert diagonals.residual < 1e-9


@SETTINGS
@given(d=distance_matrices(max_n=10), u=scales, data=st.data())
def test_flipping_any_half_of_the_edges_changes_no_expected_energy(d, u, data):
    cx = rips_complex(d, midpoint_scale(d, u))
    s = d[cx.edges[:, 0], cx.edges[:, 1]]
    flip = data.draw(hnp.arrays(bool, cx.n_edges))
    diagonals = projector_diagonals(cx, betti1=betti1(cx))
    np.testing.assert_array_equal(
        expected_energies(diagonals, s), expected_energies(diagonals, np.where(flip, -s, s))
    )
