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
# The sources that read every expert byte (the others need only routers and routing).
EXPERT_WEIGHT_SOURCES = ("weight_l2", "weight_cosine", "function")


def cohomology_reads_expert_weights(merge_barriers: bool, sheaf_stalks: str) -> bool:
    """Whether a cohomology job reads expert weights."""
    return merge_barriers or sheaf_stalks == "weights"
