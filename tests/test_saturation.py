"""A saturated distance (coactivation's 1 = never chosen together, shared by most pairs)
is where ripser stops; the diagrams must still be those of the whole filtration."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import ripser
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components

from moetopo.topology.persistence import saturation_threshold, vietoris_rips_diagrams


def saturated(n: int, share: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    d = np.ones((n, n))
    i, j = np.triu_indices(n, 1)
    keep = rng.random(i.size) > share
    d[i[keep], j[keep]] = rng.uniform(0.3, 0.9, keep.sum())
    d = np.minimum(d, d.T)
    np.fill_diagonal(d, 0.0)
    return d


def full_filtration(d: np.ndarray) -> pd.DataFrame:
    """The reference: ripser over the whole filtration, no stopping point."""
    frames = []
    for dim, dgm in enumerate(ripser.ripser(d, distance_matrix=True, maxdim=1, coeff=127)["dgms"]):
        frames.append(pd.DataFrame({"dim": dim, "birth": dgm[:, 0], "death": dgm[:, 1]}))
    table = pd.concat(frames, ignore_index=True).astype({"birth": float, "death": float})
    return table.sort_values(["dim", "birth", "death"]).reset_index(drop=True)


@pytest.mark.parametrize("share", [0.5, 0.9])
def test_stopping_below_a_saturated_cap_gives_the_whole_filtrations_diagrams(share):
    d = saturated(40, share=share)
    cap = saturation_threshold(d)
    assert 0.9 < cap < 1.0
    ours = vietoris_rips_diagrams(d, maxdim=1)[["dim", "birth", "death"]]
    ours = ours.sort_values(["dim", "birth", "death"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(ours, full_filtration(d))
    assert np.isinf(ours.death).sum() == 1  # no class outlives the full simplex but H0's one
    graph = csr_matrix(np.triu(d < 1.0, 1))
    components = connected_components(graph, directed=False)[0]
    assert ((ours.dim == 0) & (ours.death == 1.0)).sum() == components - 1


def test_a_square_whose_diagonals_are_its_maximum_keeps_the_h1_death_at_the_diagonal():
    side = np.array([[0, 1, 2, 1], [1, 0, 1, 2], [2, 1, 0, 1], [1, 2, 1, 0]], dtype=float)
    d = np.where(side == 2, np.sqrt(2), side)
    assert saturation_threshold(d) < np.sqrt(2)  # 2 of 6 pairs at the maximum
    h1 = vietoris_rips_diagrams(d, maxdim=1).query("dim == 1")
    assert h1[["birth", "death"]].to_numpy().tolist() == [[1.0, float(np.float32(np.sqrt(2)))]]


def test_ordinary_distances_are_filtered_to_the_end():
    rng = np.random.default_rng(1)
    points = rng.standard_normal((20, 5))
    d = np.linalg.norm(points[:, None] - points[None], axis=2)
    assert saturation_threshold(d) == np.inf
    assert np.isinf(vietoris_rips_diagrams(d, maxdim=1).death).sum() == 1  # only the H0 class
