"""Bottleneck distances between base and tuned diagrams, per layer, source and dimension."""

from __future__ import annotations

import numpy as np
import pandas as pd

from moetopo.stages.pair_bottleneck import bottleneck_rows


def diagram(layer, source, dim, bars):
    return pd.DataFrame(
        {
            "layer": layer,
            "source": source,
            "dim": dim,
            "birth": [b for b, _ in bars],
            "death": [d for _, d in bars],
            "significant": True,
        }
    )


def test_identical_diagrams_are_at_distance_zero_and_a_shift_is_measured():
    base = pd.concat(
        [
            diagram(0, "function", 0, [(0, 1.0), (0, np.inf)]),
            diagram(0, "function", 1, [(1.0, 2.0)]),
        ]
    )
    tuned = pd.concat(
        [
            diagram(0, "function", 0, [(0, 1.25), (0, np.inf)]),
            diagram(0, "function", 1, [(1.0, 2.0)]),
        ]
    )
    rows = bottleneck_rows(base, base)
    assert rows.distance.tolist() == [0.0, 0.0]
    rows = bottleneck_rows(base, tuned).set_index("dim")
    assert rows.loc[0, "distance"] == 0.25 and rows.loc[1, "distance"] == 0.0


def test_a_bar_present_in_one_model_only_is_compared_with_the_empty_diagram():
    base = pd.concat(
        [diagram(2, "router_l2", 0, [(0, np.inf)]), diagram(2, "router_l2", 1, [(1.0, 3.0)])]
    )
    tuned = diagram(2, "router_l2", 0, [(0, np.inf)])
    rows = bottleneck_rows(base, tuned).set_index("dim")
    assert rows.loc[1, "distance"] == 1.0  # half the lost bar's length: matched to the diagonal
    assert rows.loc[1, "tuned_bars"] == 0 and rows.loc[1, "base_bars"] == 1
