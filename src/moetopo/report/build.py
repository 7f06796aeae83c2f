"""Assemble the report from the artefacts and write index.html, report.md, figures and tables.

The figure files and TSV tables are what ``snakemake --report`` picks up; the
HTML embeds the same PNG bytes, so the two never disagree.
"""

from __future__ import annotations

import csv
from pathlib import Path

from moetopo import __version__
from moetopo.report import fmt
from moetopo.report.collaboration import collaboration_blocks
from moetopo.report.compression import compression_blocks, merge_cost
from moetopo.report.conjecture import conjecture_blocks
from moetopo.report.data import ReportData
from moetopo.report.design import design_blocks
from moetopo.report.doc import Block, Bullets, Details, Figure, Heading, Para, Table
from moetopo.report.findings import (
    conjecture_caveats,
    conjecture_verdict,
    model_findings,
    pair_findings,
)
from moetopo.report.html import render_html
from moetopo.report.markdown import render_markdown
from moetopo.report.models import models_blocks
from moetopo.report.pairs import pairs_blocks
from moetopo.report.provenance import provenance_blocks
from moetopo.report.superposition import superposition_blocks

FIGURE_KINDS = (
    "conjecture",
    "redundancy",
    "distances",
    "persistence",
    "scales",
    "hodge",
    "sheaf",
)
FIGURE_KINDS += ("scaffold", "change", "compression", "study", "superposition")
FIGURE_KINDS += ("collaboration",)
EXPORTED_TABLES = (
    "models-summary",
    "findings-models",
    "findings-pairs",
    "conjecture-model",
    "conjecture-layer",
    "pairs-summary",
    "compression-methods",
    "compression-end-to-end",
    "compression-topology",
    "study-seeds",
    "study-effects",
    "collaboration-summary",
)


def findings_blocks(data: ReportData) -> list[Block]:
    blocks: list[Block] = [Heading(2, "What stands out", "findings")]
    blocks += [Para(p, "verdict") for p in conjecture_verdict(data)]
    blocks += [Bullets(conjecture_caveats(data))] if len(data.conjecture) else []
    rows = [[m.name, *model_findings(m, data)] for m in data.models]
    costs = [merge_cost(m, data) for m in data.models]
    if any(costs):  # the measured cost replaces the distance-threshold headline
        rows = [[row[0], cost or row[1], *row[2:]] for row, cost in zip(rows, costs, strict=True)]
    blocks.append(
        Table(
            [
                "model",
                "cost of removing experts" if any(costs) else "redundancy",
                "loops and harmonic flow",
                "HodgeCover",
                "inputs and routing probe",
            ],
            rows,
            anchor="findings-models",
        )
    )
    if data.pairs:
        rows = [[f"{p.base} → {p.tuned}", *pair_findings(p)] for p in data.pairs]
        blocks.append(
            Table(
                ["fine-tune", "attention scaffold", "router and experts"],
                rows,
                anchor="findings-pairs",
            )
        )
    return blocks


def build(data: ReportData) -> list[Block]:
    n_models, n_pairs = len(data.models), len(data.pairs)
    intro = (
        f"{fmt.count(n_models)} model{'s' * (n_models != 1)} and {fmt.count(n_pairs)} "
        f"base/tuned pair{'s' * (n_pairs != 1)}, read from the artefacts by moetopo "
        f"{__version__}. Redundancy headlines use threshold "
        f"{data.settings['threshold_spec']}."
    )
    return [
        Heading(1, "moetopo report"),
        Para(intro),
        *findings_blocks(data),
        *compression_blocks(data),
        *superposition_blocks(data),
        *collaboration_blocks(data),
        *models_blocks(data),
        *pairs_blocks(data),
        *conjecture_blocks(data),
        *design_blocks(data),
        *provenance_blocks(data),
    ]


def walk(blocks: list[Block]):
    for block in blocks:
        yield block
        if isinstance(block, Details):
            yield from walk(block.blocks)


def exported(anchor: str) -> bool:
    """Tables also written as TSV: the fixed ones and each other score's tests."""
    other_score = anchor.startswith("conjecture-") and anchor.endswith("-model")
    return anchor in EXPORTED_TABLES or other_score


def write_tsv(table: Table, path: Path) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
        writer.writerow(table.columns)
        writer.writerows(table.rows)


def write_report(data: ReportData, outdir: str | Path) -> list[Block]:
    """Write index.html, report.md, figures/<kind>/*.png and tables/*.tsv under ``outdir``."""
    outdir = Path(outdir)
    blocks = build(data)
    for kind in FIGURE_KINDS:
        (outdir / "figures" / kind).mkdir(parents=True, exist_ok=True)
    (outdir / "tables").mkdir(parents=True, exist_ok=True)
    for block in walk(blocks):
        if isinstance(block, Figure):
            (outdir / block.path).write_bytes(block.png)
        elif isinstance(block, Table) and exported(block.anchor):
            write_tsv(block, outdir / "tables" / f"{block.anchor}.tsv")
    (outdir / "index.html").write_text(render_html(blocks, "moetopo report"), encoding="utf-8")
    (outdir / "report.md").write_text(render_markdown(blocks), encoding="utf-8")
    return blocks
