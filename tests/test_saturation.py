"""A saturated distance (coactivation's 1 = never chosen together) is a cap, not a scale:
the filtration stops below it, so pairs without evidence never connect experts."""

from __future__ import annotations

import numpy as np
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


def test_filtration_stops_below_a_saturated_cap():
    d = saturated(40, share=0.9)
    cap = saturation_threshold(d)
    assert cap < 1.0 and cap > 0.9
    dgm = vietoris_rips_diagrams(d, maxdim=1)
    finite = dgm.death[np.isfinite(dgm.death)]
    assert (finite < 1.0).all()  # nothing dies by joining pairs that were never coactivated
    graph = csr_matrix(np.triu(d < 1.0, 1))
    components = connected_components(graph, directed=False)[0]
    h0 = dgm[dgm.dim == 0]
    assert np.isinf(h0.death).sum() == components  # one essential class per evidence component


def test_ordinary_distances_are_filtered_to_the_end():
    rng = np.random.default_rng(1)
    points = rng.standard_normal((20, 5))
    d = np.linalg.norm(points[:, None] - points[None], axis=2)
    assert saturation_threshold(d) == np.inf
    assert np.isinf(vietoris_rips_diagrams(d, maxdim=1).death).sum() == 1  # only the H0 class
