"""The per-model part of the report: a summary table of all models, then one section each."""

from __future__ import annotations

import pandas as pd

from moetopo.report import figures, fmt
from moetopo.report.data import ModelData, ReportData
from moetopo.report.doc import Block, Bullets, Details, Figure, Heading, Para, Table, anchor
from moetopo.report.findings import kept_sets, model_findings, threshold_words


def score_of(model: ModelData, data: ReportData) -> float | None:
    rows = data.stats_models[data.stats_models.model == model.name]
    return float(rows.score.iloc[0]) if len(rows) else None


def dtypes(summary: dict) -> str:
    return ", ".join(f"{k} ({fmt.count(v)})" for k, v in sorted(summary.get("dtypes", {}).items()))


def summary_table(data: ReportData) -> Table:
    rows = []
    for model in data.models:
        s = model.summary
        rows.append(
            [
                model.name,
                s.get("family", ""),
                fmt.count(s.get("n_layers")),
                fmt.count(len(s.get("moe_layers", []))),
                fmt.count(s.get("n_experts")),
                fmt.count(s.get("top_k")),
                fmt.count(s.get("n_shared_experts", 0)),
                fmt.count(s.get("total_params")),
                fmt.count(s.get("activated_params")),
                ", ".join(sorted(s.get("dtypes", {}))),
                fmt.sig(score_of(model, data), 6),
            ]
        )
    columns = ["model", "family", "layers", "MoE layers", "experts", "top-k", "shared"]
    columns += ["total params", "activated params", "dtypes", "score"]
    return Table(columns, rows, anchor="models-summary")


def facts(model: ModelData, data: ReportData) -> Table:
    s = model.summary
    routing = s.get("routing", {})
    rows = [
        ["family", f"{s.get('family', '')} ({s.get('detected_by', '')})"],
        ["architecture", str(s.get("architecture", ""))],
        ["layers", fmt.count(s.get("n_layers"))],
        ["MoE layers", fmt.listing(s.get("moe_layers", []))],
        ["dense layers", fmt.listing(s.get("dense_layers", []))],
        ["experts per MoE layer", fmt.count(s.get("n_experts"))],
        ["top-k", fmt.count(s.get("top_k"))],
        ["shared experts", fmt.count(s.get("n_shared_experts", 0))],
        ["routing rule", str(routing.get("rule", ""))],
        ["hidden size", fmt.count(s.get("hidden_size"))],
        ["total parameters", fmt.count(s.get("total_params"))],
        ["activated parameters", fmt.count(s.get("activated_params"))],
        ["expert parameters", fmt.count(s.get("expert_params"))],
        ["dtypes (parameters)", dtypes(s)],
        ["score", fmt.sig(score_of(model, data), 6)],
    ]
    return Table(["", model.name], rows, anchor=anchor("facts", model.name))


def redundancy_table(model: ModelData, spec: str) -> Table:
    table = model["redundancy"]
    table = table[table.threshold_spec == spec]
    wide = table.pivot(index="layer", columns="source", values="redundancy")
    sources = figures.ordered_sources(wide.columns)
    rows = [[str(layer)] + [fmt.fixed(wide.at[layer, s]) for s in sources] for layer in wide.index]
    return Table(
        ["layer", *sources],
        rows,
        anchor=anchor("redundancy", model.name),
        caption=f"Fraction of expert pairs closer than {threshold_words(spec)} ({spec})",
    )


def scale_text(model: ModelData) -> str:
    scale = figures.cover_scale(model)
    return "no complexes" if scale is None else f"the {scale:g} distance quantile"


def sheaf_table(model: ModelData) -> Table:
    table = figures.at_cover_scale(model, model["sheaf"])
    sources = figures.ordered_sources(table.source.unique())
    cells = {
        (r.layer, r.source): f"{r.h0} / {r.h1}, gap {fmt.sig(r.spectral_gap)}"
        for r in table.itertuples()
    }
    layers = sorted(table.layer.unique())
    rows = [[str(la)] + [cells.get((la, s), fmt.MISSING) for s in sources] for la in layers]
    return Table(
        ["layer", *sources],
        rows,
        anchor=anchor("sheaf", model.name),
        caption=(
            f"Sheaf cohomology h0 / h1 and the normalised Laplacian's spectral gap at "
            f"{scale_text(model)}; edges weighted by "
            f"{', '.join(sorted(set(table.weighting))) if len(table) else 'coactivation'}. "
            "h0 only counts components and cycles; the gap says how far from flat the "
            "experts' input subspaces are round them"
        ),
    )


def harmonic_table(model: ModelData) -> Table:
    table = model["hodge"]
    table = table[table.betti1 > 0].sort_values(["layer", "source"])
    rows = [
        [
            str(r.layer),
            r.source,
            fmt.sig(r.epsilon),
            fmt.sig(r.gradient_energy),
            fmt.sig(r.curl_energy),
            fmt.sig(r.harmonic_energy),
            fmt.fixed(r.harmonic_fraction),
            str(r.betti1),
        ]
        for r in table.itertuples()
    ]
    columns = ["layer", "complex", "epsilon", "gradient", "curl", "harmonic"]
    return Table(
        [*columns, "harmonic fraction", "betti1"],
        rows,
        anchor=anchor("harmonic", model.name),
        caption="Complexes with harmonic flow (betti1 > 0): energies of the edge signal",
    )


def ranking(cover: pd.DataFrame, layer: int, method: str) -> str:
    rows = cover[(cover.layer == layer) & (cover.method == method)]
    rows = rows[rows.keep == rows.keep.min()].sort_values("rank")
    return " ".join(str(int(e)) for e in rows.expert)


def hodgecover_tables(model: ModelData) -> list[Table]:
    cover = model["hodgecover"]
    if cover.empty:
        return []
    methods = [m for m in ("hodgecover", "load", "groups") if m in set(cover.method)]
    layers = sorted(cover.layer.unique())
    order = Table(
        ["layer"] + [f"{m} ranking" for m in methods],
        [[str(la)] + [ranking(cover, la, m) for m in methods] for la in layers],
        anchor=anchor("ranking", model.name),
        caption="Experts in the order each method keeps them (first = kept first)",
    )
    sets = kept_sets(model)
    kept = Table(
        ["layer", "keep"] + [f"{m} keeps" for m in methods],
        [
            [str(r["layer"]), str(r["keep"])]
            + [
                " ".join(map(str, r[m])) if isinstance(r[m], tuple) else fmt.MISSING
                for m in methods
            ]
            for _, r in sets.iterrows()
        ],
        anchor=anchor("kept", model.name),
        caption="Experts kept at each budget",
    )
    return [order, kept]


def agreement_table(model: ModelData) -> Table:
    rows = [
        [
            str(r.layer),
            fmt.count(r.n_tokens),
            fmt.fixed(r.load_spearman),
            fmt.fixed(r.topk_overlap),
            fmt.flag(r.same_tokens),
        ]
        for r in model["routing_agreement"].itertuples()
    ]
    return Table(
        ["layer", "tokens", "load rank correlation", "top-k overlap", "same tokens"],
        rows,
        anchor=anchor("agreement", model.name),
        caption="Probe routing against captured routing",
    )


def model_section(model: ModelData, data: ReportData) -> Details:
    spec = data.settings["threshold_spec"]
    method = data.config.get("clusters", {}).get("linkage", "average")
    chosen = figures.choose_layers(model, spec, int(data.settings["heatmap_layers"]))
    name = model.name
    s = model.summary
    blocks: list[Block] = [facts(model, data), Bullets(model_findings(model, data))]
    if model.warnings:
        blocks.append(Para("Warnings: " + " | ".join(model.warnings), "warning"))
    blocks += [
        Heading(4, "Redundancy"),
        Figure(
            f"figures/redundancy/{name}.png",
            figures.redundancy(model),
            "Fraction of expert pairs below each distance threshold, per MoE layer and source.",
        ),
        redundancy_table(model, spec),
        Figure(
            f"figures/distances/{name}.png",
            figures.distance_heatmaps(model, chosen, method),
            f"Expert distances of layers {fmt.listing(chosen)} (the most and least redundant "
            f"at {spec}), experts in {method}-linkage cluster order.",
        ),
        Heading(4, "Topology"),
        Figure(
            f"figures/persistence/{name}.png",
            figures.persistence(model),
            "Persistence diagrams (Vietoris-Rips), all MoE layers pooled; filled points are "
            "bars longer than shapeless layers of the same spread show (the null model), "
            "hollow ones are not; ∞ marks essential classes.",
        ),
        Figure(
            f"figures/scales/{name}.png",
            figures.scales(model),
            "β1 (independent harmonic flows) of each layer's complex at every scale: a "
            "conclusion holds where it holds across scales. Hollow points: complexes with "
            "fewer than 4 edges, which cannot hold a cycle (β1 = 0 there says nothing).",
        ),
        Figure(
            f"figures/hodge/{name}.png",
            figures.hodge(model),
            "Share of the edge signal's energy in its gradient, curl and harmonic parts, per "
            f"layer and complex at HodgeCover's scale ({scale_text(model)}), averaged over "
            "every orientation of the edges; β1 is the number of independent harmonic flows.",
        ),
        harmonic_table(model),
        Figure(
            f"figures/sheaf/{name}.png",
            figures.sheaf(model),
            f"Sheaf h0, h1 and spectral gap per layer at HodgeCover's scale ({scale_text(model)}).",
        ),
        sheaf_table(model),
        Heading(4, "Which experts to keep"),
        *hodgecover_tables(model),
        Heading(4, "Probe against captured routing"),
        agreement_table(model),
    ]
    summary = (
        f"{name} — {s.get('family', '')}, {len(s.get('moe_layers', []))} MoE layers, "
        f"{s.get('n_experts')} experts, top-{s.get('top_k')}"
    )
    return Details(summary, blocks, anchor=anchor("model", name))


def models_blocks(data: ReportData) -> list[Block]:
    return [
        Heading(2, "Models", "models"),
        summary_table(data),
        *[model_section(m, data) for m in data.models],
    ]
