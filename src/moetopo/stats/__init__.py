"""Statistics for the conjecture: correlations with honest uncertainty, pooled means, fit bands.

Every interval comes from a bootstrap over the independent units (models, or
base/tuned pairs), every p-value from a permutation test, and all randomness
from a numpy Generator seeded by the caller: the same inputs give the same
outputs.
"""

from moetopo.stats.correlation import (
    CorrelationResult,
    clustered_correlation_test,
    correlation_test,
    partial_correlation_test,
)
from moetopo.stats.intervals import LineBand, MeanResult, bootstrap_mean_interval, fit_line_band
from moetopo.stats.tables import (
    LAYER_COLUMNS,
    MODEL_COLUMNS,
    adjusted_verdicts,
    conjecture_table,
    layer_conjecture_table,
    regression_table,
    with_adjusted_p,
)

__all__ = [
    "LAYER_COLUMNS",
    "MODEL_COLUMNS",
    "CorrelationResult",
    "LineBand",
    "MeanResult",
    "adjusted_verdicts",
    "bootstrap_mean_interval",
    "clustered_correlation_test",
    "conjecture_table",
    "correlation_test",
    "fit_line_band",
    "layer_conjecture_table",
    "partial_correlation_test",
    "regression_table",
    "with_adjusted_p",
]
