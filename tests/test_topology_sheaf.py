"""Known answers of the Procrustes sheaf: constant, twisted, curved and disconnected."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.distance import pdist, squareform
from scipy.stats import ortho_group

from moetopo.geometry.stalks import leading_input_directions
from moetopo.topology.complex import rips_complex
from moetopo.topology.sheaf import (
    procrustes_maps,
    sheaf_coboundary,
    sheaf_cohomology,
    sheaf_from_maps,
)

from _topology_cases import distance_matrices, midpoint_scale, scales

SETTINGS = settings(max_examples=30, deadline=None)


def cycle_edges(n: int) -> np.ndarray:
    return np.array([(i, i + 1) for i in range(n - 1)] + [(0, n - 1)])


def rotation(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s], [s, c]])


@pytest.mark.parametrize("n, d", [(3, 1), (5, 2), (9, 3)])
def test_constant_sheaf_on_a_cycle_has_h0_equal_h1_equal_d(n, d):
    maps = np.broadcast_to(np.eye(d), (n, d, d))
    sh = sheaf_from_maps(n, cycle_edges(n), maps, n_eigenvalues=3 * d)
    assert (sh.h0, sh.h1) == (d, d)
    # spectrum: the cycle's graph Laplacian (0, then 2 - 2 cos(2 pi / n) twice), each d times
    gap = 2 - 2 * math.cos(2 * math.pi / n)
    np.testing.assert_allclose(sh.eigenvalues, [0.0] * d + [gap] * 2 * d, atol=1e-12)


def test_constant_sheaf_from_frames_of_one_subspace_in_any_gauge():
    n, d = 7, 2
    rng = np.random.default_rng(0)
    plane = np.linalg.qr(rng.normal(size=(10, d)))[0]
    frames = np.stack([plane @ ortho_group.rvs(d, random_state=i) for i in range(n)])
    angles = 2 * np.pi * np.arange(n) / n
    dist = squareform(pdist(np.column_stack([np.cos(angles), np.sin(angles)])))
    cx = rips_complex(dist, 1.1 * 2 * math.sin(math.pi / n))  # the n-cycle
    sh = sheaf_cohomology(cx, frames)
    assert (sh.h0, sh.h1) == (d, d)


@pytest.mark.parametrize("d, twist", [(1, -np.eye(1)), (2, rotation(0.3)), (2, rotation(np.pi))])
def test_a_twist_without_fixed_vectors_kills_global_sections(d, twist):
    n = 6
    maps = np.stack([np.eye(d)] * (n - 1) + [twist])
    sh = sheaf_from_maps(n, cycle_edges(n), maps)
    assert (sh.h0, sh.h1) == (0, 0)
    assert sh.eigenvalues[0] > 1e-6


def test_a_twist_fixing_one_direction_leaves_one_section():
    reflection = np.diag([1.0, -1.0])
    sh = sheaf_from_maps(5, cycle_edges(5), np.stack([np.eye(2)] * 4 + [reflection]))
    assert (sh.h0, sh.h1) == (1, 1)


@pytest.mark.parametrize("polar", [math.pi / 4, math.pi / 3, math.pi / 2])
def test_tangent_planes_round_a_latitude_have_the_holonomy_of_the_sphere(polar):
    # Procrustes transport of tangent planes approximates parallel transport, whose
    # holonomy round a latitude is a rotation by the enclosed solid angle 2 pi (1 - cos).
    n = 64
    phi = 2 * np.pi * np.arange(n) / n
    ring = np.ones(n)
    points = np.column_stack(
        [math.sin(polar) * np.cos(phi), math.sin(polar) * np.sin(phi), math.cos(polar) * ring]
    )
    e_phi = np.column_stack([-np.sin(phi), np.cos(phi), 0 * ring])
    e_theta = np.column_stack(
        [math.cos(polar) * np.cos(phi), math.cos(polar) * np.sin(phi), -math.sin(polar) * ring]
    )
    frames = np.stack([e_phi, e_theta], axis=2)
    cx = rips_complex(squareform(pdist(points)), 1.5 * np.linalg.norm(points[1] - points[0]))
    assert cx.n_edges == n and cx.n_triangles == 0
    maps = procrustes_maps(frames, cx.edges)
    holonomy = np.eye(2)
    for (i, j), t in zip(cx.edges, maps, strict=True):
        holonomy = (t if j == i + 1 else t.T) @ holonomy
    angle = abs(math.atan2(holonomy[1, 0], holonomy[0, 0]))
    solid = 2 * math.pi * (1 - math.cos(polar))
    assert angle == pytest.approx(math.pi - abs(math.pi - solid), abs=0.01)
    sh = sheaf_cohomology(cx, frames)
    expected = 2 if polar == math.pi / 2 else 0  # the equator is a geodesic: no holonomy
    assert (sh.h0, sh.h1) == (expected, expected)


def test_zero_weights_disconnect_and_h0_adds_over_components():
    n, d = 8, 2
    # two 4-cycles, 0-1-2-3 and 4-5-6-7, bridged by edges (3, 4) and (0, 7)
    edges = np.array([(0, 1), (1, 2), (2, 3), (0, 3), (4, 5), (5, 6), (6, 7), (4, 7), (3, 4),
                      (0, 7)])  # fmt: skip
    maps = np.broadcast_to(np.eye(d), (len(edges), d, d))
    bridged = sheaf_from_maps(n, edges, maps, np.ones(len(edges)))
    cut = sheaf_from_maps(n, edges, maps, np.r_[np.ones(8), 0.0, 0.0])
    assert (bridged.h0, bridged.h1) == (d, 3 * d)
    assert (cut.h0, cut.h1, cut.n_edges) == (2 * d, 2 * d, 8)
    assert np.allclose(cut.eigenvalues[: 2 * d], 0.0)


@SETTINGS
@given(d=distance_matrices(), u=scales, seed=st.integers(0, 10_000))
def test_h0_and_h1_equal_the_kernel_and_cokernel_of_the_coboundary(d, u, seed):
    rng = np.random.default_rng(seed)
    cx = rips_complex(d, midpoint_scale(d, u))
    n, m, k = len(d), cx.n_edges, int(rng.integers(1, 4))
    gauge = ortho_group.rvs(k, size=n, random_state=seed).reshape(n, k, k)
    maps = gauge[cx.edges[:, 1]] @ gauge[cx.edges[:, 0]].transpose(0, 2, 1)  # flat
    twisted = rng.random(m) < 0.2
    maps[twisted] = ortho_group.rvs(k, size=max(2, twisted.sum()), random_state=seed)[
        : twisted.sum()
    ].reshape(-1, k, k)
    weights = np.where(rng.random(m) < 0.2, 0.0, rng.uniform(0.1, 1.0, m))
    sh = sheaf_from_maps(n, cx.edges, maps, weights, n_eigenvalues=n * k)
    delta = sheaf_coboundary(n, cx.edges, maps, weights).toarray()
    rank = np.linalg.matrix_rank(delta) if m else 0
    assert sh.h0 == n * k - rank
    assert sh.h1 == (weights > 0).sum() * k - rank
    assert (sh.eigenvalues <= 1e-9).sum() == sh.h0


def test_coboundary_follows_its_definition():
    rng = np.random.default_rng(3)
    edges = np.array([(0, 2), (1, 2)])
    maps = ortho_group.rvs(2, size=2, random_state=3)
    weights = np.array([4.0, 0.25])
    x = rng.normal(size=(3, 2))
    out = (sheaf_coboundary(3, edges, maps, weights) @ x.ravel()).reshape(2, 2)
    for e, (i, j) in enumerate(edges):
        np.testing.assert_allclose(out[e], math.sqrt(weights[e]) * (x[j] - maps[e] @ x[i]))


@pytest.mark.parametrize("rows, in_dim", [(12, 30), (300, 200)])  # dense SVD, then ARPACK
def test_leading_input_directions_span_the_top_right_singular_vectors(rows, in_dim):
    rng = np.random.default_rng(0)
    u = np.linalg.qr(rng.normal(size=(rows, 12)))[0]
    v = np.linalg.qr(rng.normal(size=(in_dim, 12)))[0]
    w = u @ np.diag(np.geomspace(100, 1, 12)) @ v.T
    frame = leading_input_directions(w, 3)
    np.testing.assert_allclose(frame.T @ frame, np.eye(3), atol=1e-10)
    np.testing.assert_allclose(frame @ frame.T, v[:, :3] @ v[:, :3].T, atol=1e-8)


def test_procrustes_maps_are_the_nearest_rotation_and_respect_gauge():
    rng = np.random.default_rng(5)
    frames = np.stack([np.linalg.qr(rng.normal(size=(6, 2)))[0] for _ in range(2)])
    t = procrustes_maps(frames, np.array([[0, 1]]))[0]
    np.testing.assert_allclose(t @ t.T, np.eye(2), atol=1e-12)
    product = frames[1].T @ frames[0]
    for _ in range(200):  # no orthogonal map is closer to F_1^T F_0
        q = ortho_group.rvs(2, random_state=rng)
        assert np.linalg.norm(product - t) <= np.linalg.norm(product - q) + 1e-12
    g = ortho_group.rvs(2, size=2, random_state=6)
    regauged = procrustes_maps(frames @ g, np.array([[0, 1]]))[0]
    np.testing.assert_allclose(regauged, g[1].T @ t @ g[0], atol=1e-12)


def test_non_orthonormal_frames_and_maps_are_refused():
    with pytest.raises(ValueError):
        procrustes_maps(np.ones((2, 4, 2)), np.array([[0, 1]]))
    with pytest.raises(ValueError):
        sheaf_from_maps(2, np.array([[0, 1]]), 2 * np.eye(2)[None])


def test_normalised_spectrum_known_answers_and_gap():
    # constant sheaf (identity maps) on a 4-cycle: the normalised Laplacian is the cycle's
    # normalised graph Laplacian (eigenvalues 0, 1, 1, 2) repeated d times
    d, n = 2, 4
    edges = np.array([[0, 1], [1, 2], [2, 3], [0, 3]])
    sh = sheaf_from_maps(n, edges, np.tile(np.eye(d), (4, 1, 1)), n_eigenvalues=8)
    np.testing.assert_allclose(sh.normalised, [0, 0, 1, 1, 1, 1, 2, 2], atol=1e-12)
    assert sh.h0 == 2 and sh.spectral_gap == pytest.approx(1.0)


def test_normalised_spectrum_moves_continuously_with_the_maps():
    # a twist by angle t round a 4-cycle: the gap opens continuously from 0 as t grows
    edges = np.array([[0, 1], [1, 2], [2, 3], [0, 3]])

    def spectrum(t):
        maps = np.tile(np.eye(2), (4, 1, 1))
        maps[3] = [[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]]
        return sheaf_from_maps(4, edges, maps, n_eigenvalues=8).normalised

    previous = spectrum(0.0)
    for t in np.linspace(0.01, 1.0, 25):
        current = spectrum(t)
        assert np.abs(current - previous).max() < 0.05  # a small step moves it a little
        previous = current
    assert spectrum(1.0)[0] > 1e-3  # twisted: no global section, the bottom lifted off 0
