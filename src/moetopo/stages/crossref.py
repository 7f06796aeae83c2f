"""The crossref stage: do scaffold layers coincide with redundant experts in the tuned model?

A scaffold layer whose experts are redundant above a threshold (redundancy of the tuned
model's ``source`` distances at ``threshold_spec``, from the clusters stage) is
routing-dominated: with interchangeable experts the fine-tune's change can only act
through which experts the router picks. Beside it, the router's relative change and the
mean relative change of the experts say which of the two the fine-tune actually moved.
Dense layers stay in the table with is_moe = false.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from moetopo.errors import MoetopoError

_RELATIVE = re.compile(r"^([qr])(\d*\.?\d+)$")


def crossref_table(
    scaffold: pd.DataFrame,
    moe_diff: pd.DataFrame,
    redundancy: pd.DataFrame,
    moe_layers: list[int],
    source: str = "router_l1",
    threshold_spec: str | float = "r0.5",
    min_redundancy: float = 0.5,
) -> tuple[pd.DataFrame, list[str]]:
    """One row per layer of ``scaffold``, and warnings.

    A number as ``threshold_spec`` names an absolute threshold, spelt as the clusters
    stage spells it (500 -> "500").
    """
    if not isinstance(threshold_spec, str):
        threshold_spec = f"{float(threshold_spec):g}"
    chosen = _redundancy(redundancy, source, threshold_spec)
    warnings = _unreachable(threshold_spec, min_redundancy)
    frame = scaffold[["layer", "is_scaffold"]].copy()
    frame["is_moe"] = frame.layer.isin(moe_layers)
    frame["redundancy"] = frame.layer.map(chosen).astype(float)
    frame.loc[~frame.is_moe, "redundancy"] = np.nan
    absent = frame.layer[frame.is_moe & frame.redundancy.isna()].tolist()
    if absent:
        warnings.append(f"MoE layers {absent} have no {source} redundancy at {threshold_spec}")
    frame["routing_dominated"] = (
        frame.is_scaffold & frame.is_moe & (frame.redundancy > min_redundancy)
    )
    router = moe_diff[moe_diff.kind == "router"].set_index("layer").relative_change
    experts = moe_diff[moe_diff.kind == "expert"].groupby("layer").relative_change
    frame["router_change"] = frame.layer.map(router).astype(float)
    frame["expert_change"] = frame.layer.map(experts.mean()).astype(float)
    frame["expert_change_max"] = frame.layer.map(experts.max()).astype(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        frame["router_to_expert"] = frame.router_change / frame.expert_change
    return frame, warnings


def _redundancy(redundancy: pd.DataFrame, source: str, spec: str) -> pd.Series:
    rows = redundancy[(redundancy.source == source) & (redundancy.threshold_spec == spec)]
    if rows.empty:
        available = sorted(set(zip(redundancy.source, redundancy.threshold_spec, strict=True)))
        shown = ", ".join(f"{s}@{t}" for s, t in available) or "none"
        raise MoetopoError(
            f"the tuned model's redundancy has no rows for source {source!r} at threshold "
            f"{spec!r} (available: {shown}); set crossref.source / crossref.threshold_spec to "
            "one of them, or add the threshold to clusters"
        )
    return rows.set_index("layer").redundancy


def _unreachable(spec: str, min_redundancy: float) -> list[str]:
    """Warn when the threshold spec cannot produce redundancy above ``min_redundancy``.

    At rF (F <= 1) fewer than half of the pairs lie below F x the median distance,
    and at qF about F of them lie below the F-quantile.
    """
    found = _RELATIVE.match(spec)
    if not found:
        return []
    kind, value = found.group(1), float(found.group(2))
    if (kind == "r" and value <= 1 and min_redundancy >= 0.5) or (
        kind == "q" and value <= min_redundancy
    ):
        return [
            f"redundancy at the relative threshold {spec} cannot exceed {min_redundancy} by "
            "construction, so no layer can be routing-dominated; for the reference rule give "
            "clusters.absolute an absolute threshold for the source and name it in "
            "crossref.threshold_spec"
        ]
    return []
