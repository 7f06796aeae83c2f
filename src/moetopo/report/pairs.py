"""The base/tuned pairs: what the fine-tune moved in attention, in the router and the experts."""

from __future__ import annotations

import pandas as pd

from moetopo.report import fmt, study_figures
from moetopo.report.data import PairData, ReportData
from moetopo.report.doc import Block, Bullets, Details, Figure, Heading, Para, Table, anchor
from moetopo.report.findings import pair_findings


def summary_table(summary: pd.DataFrame) -> Table:
    """Pooled over pairs: per projection, and scaffold fraction per depth bin."""
    rows = []
    for r in summary.sort_values(["scope", "statistic", "projection", "depth_low"]).itertuples():
        depth = (
            f"{fmt.fixed(r.depth_low, 2)}–{fmt.fixed(r.depth_high, 2)}"
            if pd.notna(r.depth_low)
            else ""
        )
        rows.append(
            [
                r.scope,
                r.statistic,
                r.projection if isinstance(r.projection, str) else "",
                depth,
                fmt.fixed(r.estimate),
                fmt.interval(r.ci_low, r.ci_high),
                r.ci_method,
                fmt.count(r.n_pairs),
            ]
        )
    columns = ["scope", "statistic", "projection", "relative depth", "estimate", "interval"]
    return Table(
        [*columns, "method", "pairs"],
        rows,
        anchor="pairs-summary",
        caption="Pooled over pairs; intervals resample whole pairs",
    )


def crossref_table(pair: PairData) -> Table:
    rows = [
        [
            str(r.layer),
            fmt.flag(r.is_moe),
            fmt.flag(r.is_scaffold),
            fmt.fixed(r.redundancy),
            fmt.flag(r.routing_dominated),
            fmt.fixed(r.router_change),
            fmt.fixed(r.expert_change),
            fmt.fixed(r.expert_change_max),
            fmt.fixed(r.router_to_expert),
        ]
        for r in pair["crossref"].itertuples()
    ]
    columns = ["layer", "MoE", "scaffold", "redundancy", "routing-dominated"]
    columns += ["router change", "expert change", "expert change (max)", "router / expert"]
    params = pair.meta["crossref"].get("params", {})
    return Table(
        columns,
        rows,
        anchor=anchor("crossref", pair.pair),
        caption=f"Cross-reference: redundancy of the tuned model by {params.get('source')} "
        f"at {params.get('threshold_spec')}, routing-dominated above "
        f"{params.get('min_redundancy')}",
    )


def scaffold_table(pair: PairData) -> Table:
    rows = [
        [str(r.layer)]
        + [fmt.fixed(getattr(r, f"{p}_fraction")) for p in "qkvo"]
        + [fmt.flag(r.is_scaffold)]
        for r in pair["scaffold"].itertuples()
    ]
    return Table(
        ["layer", "q shifted", "k shifted", "v shifted", "o shifted", "scaffold"],
        rows,
        anchor=anchor("scaffold", pair.pair),
    )


def pair_section(pair: PairData) -> Details:
    blocks: list[Block] = [Bullets(pair_findings(pair))]
    if pair.warnings:
        blocks.append(Para("Warnings: " + " | ".join(pair.warnings), "warning"))
    blocks += [
        Figure(
            f"figures/scaffold/{pair.pair}.png",
            study_figures.scaffold(pair),
            "Scaffold map: fraction of rows of each attention projection that the fine-tune "
            "shifted, per layer (★ scaffold layers).",
        ),
        Figure(
            f"figures/change/{pair.pair}.png",
            study_figures.change(pair),
            "Router against expert change per MoE layer: relative Frobenius change of the "
            "router, and the mean (bar) and largest (tick) over experts.",
        ),
        crossref_table(pair),
        scaffold_table(pair),
    ]
    return Details(f"{pair.base} → {pair.tuned}", blocks, anchor=anchor("pair", pair.pair))


def pairs_blocks(data: ReportData) -> list[Block]:
    if not data.pairs:
        return []
    blocks: list[Block] = [Heading(2, "Fine-tunes", "pairs")]
    if data.pairs_summary is not None and len(data.pairs_summary):
        blocks.append(summary_table(data.pairs_summary))
    return blocks + [pair_section(p) for p in data.pairs]
