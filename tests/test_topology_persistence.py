"""Known answers and properties of Vietoris-Rips persistence, thresholds and bottleneck."""

from __future__ import annotations

import itertools
import math

import gudhi
import gudhi.hera
import numpy as np
import pandas as pd
import persim
import pytest
import ripser
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy.spatial.distance import pdist, squareform

from moetopo.topology import persistence
from moetopo.topology.persistence import (
    bottleneck_distance,
    check_coefficient,
    last_birth,
    persistent_entropy,
    rips_barcodes,
    summarize,
    vietoris_rips_diagrams,
)

from _topology_cases import distance_matrices

SETTINGS = settings(max_examples=25, deadline=None)


@st.composite
def orthogonal_maps(draw, min_dim: int = 2, max_dim: int = 6) -> np.ndarray:
    """An orthogonal map of R^dim: Q of the QR factorisation of a drawn matrix (Q is
    orthogonal even when the matrix is singular, which hypothesis draws often)."""
    dim = draw(st.integers(min_dim, max_dim))
    return np.linalg.qr(draw(hnp.arrays(np.float64, (dim, dim), elements=st.floats(-1, 1))))[0]


def circle(angles: np.ndarray, radius: float, rotation: np.ndarray) -> np.ndarray:
    """Points on a circle of ``radius``, mapped by ``rotation`` into R^len(rotation)."""
    plane = np.zeros((len(angles), len(rotation)))
    plane[:, 0], plane[:, 1] = radius * np.cos(angles), radius * np.sin(angles)
    return squareform(pdist(plane @ rotation))


def chord(radius: float, n: int, steps: int) -> float:
    return 2 * radius * math.sin(math.pi * steps / n)


@SETTINGS
@given(n=st.integers(4, 40), radius=st.floats(0.1, 100.0), rotation=orthogonal_maps())
def test_regular_polygon_has_one_h1_bar_born_at_the_side_dying_at_the_third_chord(
    n, radius, rotation
):
    # The Rips complex of a regular n-gon joined to its k nearest neighbours on each side is
    # a circle while k/n < 1/3 and has no H1 from k/n >= 1/3 on (Adamaszek-Adams 2017), so
    # the one H1 class is born at the side c(1) and dies at the chord c(ceil(n/3)).
    d = circle(2 * np.pi * np.arange(n) / n, radius, rotation)
    dgm = vietoris_rips_diagrams(d, threshold=0.01 * np.median(d[np.triu_indices(n, 1)]))
    h1 = dgm[(dgm["dim"] == 1) & dgm["significant"]]
    assert len(h1) == 1
    assert h1["birth"].iloc[0] == pytest.approx(chord(radius, n, 1), rel=1e-5)
    assert h1["death"].iloc[0] == pytest.approx(chord(radius, n, math.ceil(n / 3)), rel=1e-5)


@SETTINGS
@given(
    # every point's own jitter (fill=nothing: no run of equal jitters, as a fill would give)
    jitter=hnp.arrays(
        np.float64, st.integers(6, 30), elements=st.floats(-0.1, 0.1), fill=st.nothing()
    ),
    rotation=orthogonal_maps(5, 5),
)
def test_jittered_circle_h1_is_born_when_the_widest_gap_closes(jitter, rotation):
    n = len(jitter)
    angles = 2 * np.pi * (np.arange(n) + jitter) / n
    d = circle(angles, 1.0, rotation)
    dgm = vietoris_rips_diagrams(d, threshold=0.05 * np.median(d[np.triu_indices(n, 1)]))
    h1 = dgm[(dgm["dim"] == 1) & dgm["significant"]]
    gaps = np.array([d[i, (i + 1) % n] for i in range(n)])
    assert len(h1) == 1
    assert h1["birth"].iloc[0] == pytest.approx(gaps.max(), rel=1e-6)


def test_three_separated_clusters_give_two_finite_and_one_essential_significant_h0_bars():
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0, 0.0], [10.0, 0.0, 0.0], [0.0, 25.0, 0.0]])
    points = np.concatenate([c + 0.1 * rng.normal(size=(7, 3)) for c in centres])
    d = squareform(pdist(points))
    dgm = vietoris_rips_diagrams(d, threshold=1.0)
    h0 = dgm[(dgm["dim"] == 0) & dgm["significant"]]
    assert len(h0) == 3
    assert np.isinf(h0["death"]).sum() == 1
    label = np.repeat(np.arange(3), 7)
    gap = {(a, b): d[np.ix_(label == a, label == b)].min() for a, b in [(0, 1), (0, 2), (1, 2)]}
    expected = sorted(gap.values())[:2]  # the single-linkage merges of three clusters
    finite = np.sort(h0["death"][np.isfinite(h0["death"])].to_numpy())
    np.testing.assert_allclose(finite, expected, rtol=1e-6)
    assert (dgm[(dgm["dim"] == 0) & ~dgm["significant"]]["death"] < 1.0).all()


@SETTINGS
@given(d=distance_matrices(), scale=st.floats(0.01, 100.0))
def test_scaling_distances_scales_every_birth_and_death(d, scale):
    base = vietoris_rips_diagrams(d)
    scaled = vietoris_rips_diagrams(scale * d)
    assert list(base["dim"]) == list(scaled["dim"])
    for col in ("birth", "death"):
        np.testing.assert_allclose(scaled[col], scale * base[col], rtol=1e-6, atol=1e-30)


@SETTINGS
@given(d=distance_matrices(), data=st.data())
def test_relabelling_points_does_not_change_the_diagrams(d, data):
    perm = np.array(data.draw(st.permutations(range(len(d))), label="perm"))
    pd.testing.assert_frame_equal(
        vietoris_rips_diagrams(d), vietoris_rips_diagrams(d[np.ix_(perm, perm)])
    )


@SETTINGS
@given(d=distance_matrices(max_n=10))
def test_diagrams_match_gudhi(d):
    ours = vietoris_rips_diagrams(d, maxdim=2, coeff=11)
    st_ = gudhi.RipsComplex(distance_matrix=d).create_simplex_tree(max_dimension=3)
    st_.compute_persistence(homology_coeff_field=11, min_persistence=0)
    for dim in (0, 1, 2):
        theirs = st_.persistence_intervals_in_dimension(dim)
        theirs = theirs[theirs[:, 1] - theirs[:, 0] > 1e-6] if len(theirs) else theirs
        mine = ours[(ours["dim"] == dim) & (ours["persistence"] > 1e-6)]
        assert bottleneck_distance(mine[["birth", "death"]].to_numpy(), theirs) < 1e-5


def test_thresholds_mark_significance_per_dimension():
    d = np.array([[0.0, 1.0, 2.0], [1.0, 0.0, 4.0], [2.0, 4.0, 0.0]])
    assert vietoris_rips_diagrams(d, threshold=[3.0, 0.0])["significant"].sum() == 1
    dgm = vietoris_rips_diagrams(d, threshold=1.0)
    h0 = dgm[dgm["dim"] == 0]
    # H0 deaths are the MST edges 1 and 2 plus the essential class: only 2 and inf exceed 1.
    assert sorted(h0["death"]) == [1.0, 2.0, np.inf]
    assert h0["significant"].tolist() == [True, True, False]


def test_persistent_entropy_known_values():
    assert persistent_entropy(np.array([])) == 0.0
    assert persistent_entropy(np.array([3.0])) == 0.0
    assert persistent_entropy(np.array([1.0, 1.0])) == pytest.approx(math.log(2))
    assert persistent_entropy(np.array([2.0] * 5 + [np.inf, 0.0])) == pytest.approx(math.log(5))
    p = np.array([1.0, 3.0]) / 4
    assert persistent_entropy(np.array([1.0, 3.0])) == pytest.approx(-(p * np.log(p)).sum())


def test_summary_counts_and_finite_persistence():
    table = pd.DataFrame(
        {
            "dim": [0, 1, 1, 1],
            "birth": [0.0, 1.0, 2.0, 3.0],
            "death": [np.inf, 2.0, 2.5, np.inf],
            "persistence": [np.inf, 1.0, 0.5, np.inf],
            "significant": [True, True, False, True],
        }
    )
    s = summarize(table, 1)
    assert (s.n_bars, s.n_essential, s.n_significant) == (3, 1, 2)
    assert (s.total_persistence, s.max_persistence) == (1.5, 1.0)
    assert s.significant_persistence == 1.0  # the 0.5 bar is not significant
    assert s.entropy == pytest.approx(persistent_entropy(np.array([1.0, 0.5])))


diagrams = st.lists(
    st.tuples(st.floats(0, 10), st.floats(0, 5)).map(lambda bl: (bl[0], bl[0] + bl[1])),
    max_size=12,
).map(lambda rows: np.array(rows, dtype=np.float64).reshape(-1, 2))


@SETTINGS
@given(a=diagrams, b=diagrams)
def test_bottleneck_of_finite_diagrams_matches_persim_and_hera(a, b):
    # Hera (through GUDHI) is the reference; GUDHI's own exact mode (e=0) is not: up to
    # 3.13 it can stop augmenting too early (gudhi-devel PR #1367), see the test below.
    ours = bottleneck_distance(a, b)
    assert ours == pytest.approx(gudhi.hera.bottleneck_distance(a, b, 0.0), abs=1e-9)
    if len(a) and len(b):  # persim cannot take an empty diagram
        assert ours == pytest.approx(persim.bottleneck(a, b), abs=1e-9)


def test_bottleneck_of_repeated_bars_is_the_diagonal_matching():
    # Three bars (0, 1) against three bars (0, 3): sending every bar to the diagonal costs
    # max(0.5, 1.5) = 1.5, less than matching them to each other (2). GUDHI 3.13's exact
    # mode answers 2.0 here (found by the property test above).
    a, b = np.tile([0.0, 1.0], (3, 1)), np.tile([0.0, 3.0], (3, 1))
    assert bottleneck_distance(a, b) == 1.5
    assert persim.bottleneck(a, b) == pytest.approx(1.5)


def test_bottleneck_known_answers_and_essential_classes():
    empty = np.zeros((0, 2))
    one = np.array([[1.0, 3.0]])
    assert bottleneck_distance(empty, empty) == 0.0
    assert bottleneck_distance(one, empty) == 1.0  # half its length, to the diagonal
    assert bottleneck_distance(one, np.array([[1.5, 3.0]])) == 0.5
    ess = np.array([[0.0, np.inf], [1.0, 3.0]])
    assert bottleneck_distance(ess, one) == np.inf  # essential counts differ
    assert bottleneck_distance(ess, np.array([[0.25, np.inf], [1.0, 3.0]])) == 0.25
    assert bottleneck_distance(ess, np.array([[0.0, np.inf]])) == 1.0


@pytest.mark.parametrize("coeff", [0, 1, 4, 128, 251, 32749])
def test_coefficients_ripser_cannot_use_are_refused_before_it_aborts(coeff):
    with pytest.raises(ValueError, match="prime"):
        check_coefficient(coeff)
    with pytest.raises(ValueError, match="prime"):
        vietoris_rips_diagrams(np.ones((3, 3)) - np.eye(3), coeff=coeff)


def sorted_bars(dgms) -> list[np.ndarray]:
    """Each dimension's bars as a (k, 2) float64 array in lexicographic order."""
    bars = [np.asarray(g, dtype=np.float64).reshape(-1, 2) for g in dgms]
    return [b[np.lexsort((b[:, 1], b[:, 0]))] for b in bars]


def ripser_bars(d, maxdim, thresh=np.inf, coeff=127) -> list[np.ndarray]:
    dgms = ripser.ripser(d, distance_matrix=True, maxdim=maxdim, coeff=coeff, thresh=thresh)
    return sorted_bars(dgms["dgms"])


@SETTINGS
@given(
    d=distance_matrices(min_n=3, max_n=30),
    maxdim=st.sampled_from([0, 1, 2]),
    cut=st.none() | st.floats(0.0, 1.0),
)
def test_rips_barcodes_are_exactly_the_bars_ripser_gives(d, maxdim, cut):
    thresh = np.inf if cut is None else float(np.quantile(d[np.triu_indices(len(d), 1)], cut))
    ours = sorted_bars(rips_barcodes(d, maxdim=maxdim, coeff=127, thresh=thresh))
    theirs = ripser_bars(d, maxdim, thresh)
    assert len(ours) == len(theirs)
    for mine, reference in zip(ours, theirs, strict=True):
        np.testing.assert_array_equal(mine, reference)


def spy_on_ripser(monkeypatch) -> list[float]:
    """The thresholds of the ripser runs rips_barcodes makes, in order."""
    calls, run = [], persistence._ripser_dgms

    def spy(d, maxdim, coeff, thresh):
        calls.append(thresh)
        return run(d, maxdim, coeff, thresh)

    monkeypatch.setattr(persistence, "_ripser_dgms", spy)
    return calls


def test_a_shapeless_cloud_is_one_ripser_run_stopped_early_with_every_bar(monkeypatch):
    rng = np.random.default_rng(0)
    d = squareform(pdist(rng.normal(size=(150, 16))))
    calls = spy_on_ripser(monkeypatch)
    ours = sorted_bars(rips_barcodes(d, maxdim=1, coeff=127))
    enclosing = np.float32(d).max(axis=1).min()  # where ripser's own run stops
    assert len(calls) == 1 and calls[0] < enclosing
    assert len(ours[1]) > 10  # a cloud has many short H1 bars
    for mine, reference in zip(ours, ripser_bars(d, 1), strict=True):
        np.testing.assert_array_equal(mine, reference)


def test_a_class_alive_at_the_early_stop_makes_the_whole_run(monkeypatch):
    # a ring of 40 points inside a cloud of 150 in R^4: some H1 class lives on past the
    # early stop, which only the whole run can end
    rng = np.random.default_rng(1)
    angles = 2 * np.pi * np.arange(40) / 40
    ring = np.column_stack([np.cos(angles), np.sin(angles), np.zeros((40, 2))])
    d = squareform(pdist(np.concatenate([ring, rng.normal(size=(150, 4))])))
    calls = spy_on_ripser(monkeypatch)
    ours = sorted_bars(rips_barcodes(d, maxdim=1, coeff=127))
    assert len(calls) == 2 and calls[1] == np.inf
    birth, death = ours[1].T
    assert np.any((birth <= calls[0]) & (death > calls[0]))
    for mine, reference in zip(ours, ripser_bars(d, 1), strict=True):
        np.testing.assert_array_equal(mine, reference)


def test_last_birth_of_a_square_is_its_side():
    # sides 1 have no vertex closer to both ends; each diagonal sqrt(2) has two
    d = squareform(pdist(np.array([[0, 0], [1, 0], [1, 1], [0, 1]], dtype=np.float64)))
    f = d.astype(np.float32)
    assert last_birth(f, np.float32(0.5), np.float32(2.0)) == np.float32(1.0)
    assert last_birth(f, np.float32(1.0), np.float32(2.0)) == np.float32(1.0)  # the guess
    assert last_birth(f, np.float32(0.5), np.float32(0.9)) == np.float32(0.5)  # nothing in


@SETTINGS
@given(d=distance_matrices(min_n=3, max_n=20), low=st.floats(0, 1), high=st.floats(0, 1))
def test_last_birth_is_the_longest_edge_without_a_witness(d, low, high):
    f = d.astype(np.float32)
    values = np.sort(f[np.triu_indices(len(f), 1)])
    guess = values[int(low * (values.size - 1))]
    end = values[int(high * (values.size - 1))]
    expected = guess
    for u, v in itertools.combinations(range(len(f)), 2):
        r = f[u, v]
        if guess < r <= end and not np.any((f[u] < r) & (f[v] < r)):
            expected = max(expected, r)
    assert last_birth(f, guess, end) == expected
