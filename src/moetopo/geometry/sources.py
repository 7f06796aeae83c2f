"""The distance sources, and which jobs read expert weights.

The stages and the workflow's resource requests (at parse time, for every Snakemake
call) share these rules, so this module imports nothing.
"""

from __future__ import annotations

SOURCES = (
    "router_l1",
    "router_cosine",
    "router_l2",
    "weight_l2",
    "weight_cosine",
    "function",
    "coactivation",
)
# What each source's distance is, for its null model (moetopo.topology.null): a metric,
# a squared Euclidean distance (function: a normalised mean squared discrepancy), or
# 1 - cosine of vectors (coactivation: of the experts' token indicator vectors).
NULL_KINDS = {
    "router_l1": "metric",
    "router_cosine": "cosine",
    "router_l2": "metric",
    "weight_l2": "metric",
    "weight_cosine": "cosine",
    "function": "squared",
    "coactivation": "cosine",
}
# The sources that read every expert byte (the others need only routers and routing).
EXPERT_WEIGHT_SOURCES = ("weight_l2", "weight_cosine", "function")


def cohomology_reads_expert_weights(merge_barriers: bool, sheaf_stalks: str) -> bool:
    """Whether a cohomology job reads expert weights."""
    return merge_barriers or sheaf_stalks == "weights"
