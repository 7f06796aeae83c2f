"""The superposition section: how each expert packs a feature basis into its hidden units,
read from the superposition artefacts. Every figure and table says which basis it used:
the numbers mean different things on the toy models' known features, on router rows and
on a basis file's features."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.ticker import FuncFormatter

from moetopo.report import fmt
from moetopo.report.data import ModelData, ReportData
from moetopo.report.doc import Block, Details, Figure, Heading, Para, Table, anchor
from moetopo.report.figures import panels, png

BASIS_NAMES = {
    "identity": "the input coordinates (a toy model's known features)",
    "router": "the router's rows (data-free default)",
}


def basis_name(basis: str) -> str:
    if basis.startswith("file:"):
        return f"the features of {basis.removeprefix('file:')}"
    return BASIS_NAMES.get(basis, basis)


def measured(data: ReportData) -> list[ModelData]:
    return [m for m in data.models if "superposition" in m.tables and len(m["superposition"])]


def layer_rows(model: ModelData) -> pd.DataFrame:
    """One row per MoE layer: its basis, k/E and the stage's layer figures, with the
    feature-expert pairs of each class summed over experts."""
    table = model["superposition"]
    counts = ["n_dedicated", "n_antipodal", "n_superimposed", "n_ignored"]
    layers = table.groupby("layer").agg(
        basis=("basis", "first"),
        top_k=("top_k", "first"),
        n_experts=("n_experts", "first"),
        n_features=("n_features", "first"),
        hidden=("hidden", "first"),
        dimensionality=("layer_dimensionality", "first"),
        dims_per_feature=("layer_dims_per_feature", "first"),
        monosemanticity=("layer_monosemanticity", "first"),
        feature_sparsity=("feature_sparsity", "first"),
        load_source=("load_source", "first"),
        **{c: (c, "sum") for c in counts},
    )
    return layers.assign(active=layers.top_k / layers.n_experts).reset_index()


def phase_grid(models: list[ModelData]) -> pd.DataFrame:
    """Models whose checkpoint records a feature sparsity (the toy grid), one row each."""
    rows = []
    for model in models:
        for r in layer_rows(model).itertuples():
            if np.isfinite(r.feature_sparsity):
                rows.append({"model": model.name, **r._asdict()})
    return pd.DataFrame(rows)


def phase_figure(grid: pd.DataFrame) -> bytes:
    """Feature sparsity against k/E, coloured by monosemanticity and by the dimensions per
    feature a routed token meets (usage-weighted D*), each cell printed."""
    fig, axes = panels(2, ncols=2, size=(4.2, 3.4))
    sparsity = sorted(grid.feature_sparsity.unique())
    active = sorted(grid.active.unique())
    for ax, (column, title) in zip(
        axes,
        (("monosemanticity", "monosemanticity"), ("dims_per_feature", "dimensions per feature D*")),
        strict=True,
    ):
        table = grid.pivot_table(index="feature_sparsity", columns="active", values=column)
        values = table.reindex(index=sparsity, columns=active).to_numpy()
        top = max(1.0, float(np.nanmax(values)))
        image = ax.imshow(values, origin="lower", cmap="viridis", vmin=0, vmax=top, aspect="auto")
        for (i, j), v in np.ndenumerate(values):
            if np.isfinite(v):
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if v < top / 2 else "black")  # fmt: skip
        ax.set_xticks(range(len(active)), [f"{a:g}" for a in active], fontsize=7)
        ax.set_yticks(range(len(sparsity)), [f"{s:g}" for s in sparsity], fontsize=7)
        ax.set_xlabel("active fraction of experts k/E", fontsize=8)
        ax.set_ylabel("feature sparsity S", fontsize=8)
        ax.set_title(title, fontsize=9)
        fig.colorbar(image, ax=ax, fraction=0.05, pad=0.03)
    fig.subplots_adjust(right=0.93, wspace=0.4)
    return png(fig)


def model_figure(models: list[ModelData], threshold: str) -> tuple[bytes, str]:
    """Left: each model's monosemanticity (mean over its MoE layers) against k/E, one
    colour per basis. Right: each layer's monosemanticity against its weight-cosine
    redundancy at the report's threshold, drawn only where redundancy varies (a column of
    points at one value shows nothing). Returns the figure and its caption."""
    bases = sorted({b for m in models for b in m["superposition"].basis.unique()})
    collected = {}
    for basis in bases:
        points, pairs = [], []
        for model in models:
            layers = layer_rows(model)
            layers = layers[layers.basis == basis]
            if layers.empty:
                continue
            points.append((layers.active.mean(), layers.monosemanticity.mean()))
            pairs += _redundancy_pairs(model, layers, threshold)
        collected[basis] = (points, pairs)
    redundancies = {x for _, pairs in collected.values() for x, _ in pairs}
    spread = len(redundancies) > 1
    # one panel keeps the two panels' width, so its margins hold the axis labels
    fig, axes = panels(2, ncols=2, size=(4.2, 3.2)) if spread else panels(1, size=(8.4, 3.2))
    left = axes[0]
    for k, (basis, (points, pairs)) in enumerate(collected.items()):
        x, y = zip(*points, strict=True)
        left.scatter(x, y, s=18, color=f"C{k}", label=basis_name(basis))
        if spread and pairs:
            rx, ry = zip(*pairs, strict=True)
            axes[1].scatter(rx, ry, s=14, color=f"C{k}")
    left.set_xscale("log", base=2)
    left.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    left.set_xlabel("active fraction of experts k/E", fontsize=8)
    left.set_ylabel("monosemanticity (mean over layers)", fontsize=8)
    if spread:
        axes[1].set_xlabel(f"redundancy, weight cosine at {threshold}", fontsize=8)
        axes[1].set_ylabel("monosemanticity (per layer)", fontsize=8)
    for ax in axes:
        ax.set_ylim(-0.03, 1.03)
        ax.tick_params(labelsize=7)
    fig.legend(*left.get_legend_handles_labels(), loc="upper center", ncol=2, fontsize=8,
               frameon=False)  # fmt: skip
    fig.subplots_adjust(top=1 - 0.6 / fig.get_figheight())
    caption = "Monosemanticity against k/E per model"
    if spread:
        caption += ", and against weight-cosine redundancy per layer"
    elif redundancies:
        caption += (
            f" (weight-cosine redundancy at {threshold} is {fmt.sig(redundancies.pop(), 3)} in "
            "every layer, so monosemanticity is not drawn against it)"
        )
    return png(fig), caption + "; one colour per basis, as the legend names it"


def _redundancy_pairs(model: ModelData, layers: pd.DataFrame, threshold: str) -> list[tuple]:
    table = model.tables.get("redundancy")
    if table is None or table.empty:
        return []
    rows = table[(table.source == "weight_cosine") & (table.threshold_spec == threshold)]
    redundancy = rows.set_index("layer").redundancy
    return [
        (redundancy[r.layer], r.monosemanticity)
        for r in layers.itertuples()
        if r.layer in redundancy.index
    ]


def layer_table(model: ModelData) -> Table:
    rows = [
        [
            str(r.layer),
            basis_name(r.basis),
            f"{r.top_k}/{r.n_experts}",
            f"{fmt.count(r.n_features)} × {fmt.count(r.hidden)}",
            fmt.fixed(r.dimensionality),
            fmt.sig(r.dims_per_feature),
            fmt.fixed(r.monosemanticity),
            " / ".join(
                fmt.count(v) for v in (r.n_dedicated, r.n_antipodal, r.n_superimposed, r.n_ignored)
            ),
            r.load_source,
        ]
        for r in layer_rows(model).itertuples()
    ]
    return Table(
        [
            "layer",
            "basis",
            "k/E",
            "features × hidden",
            "mean global D_i",
            "D*",
            "monosemanticity",
            "dedicated / antipodal / superimposed / ignored",
            "load",
        ],
        rows,
        anchor=anchor("superposition", model.name),
        caption="Per MoE layer: the usage-weighted mean dimensionality of the basis "
        "features, the dimensions per feature D* = m / |W|² weighted by load (in the "
        "weights' own scale), the usage-weighted share of represented feature-expert "
        "pairs that are dedicated, and the pairs of each class summed over experts; load "
        "says whether usage came from captured routing or the probe",
    )


def bases_text(models: list[ModelData]) -> str:
    used: dict[str, list[str]] = {}
    for model in models:
        for basis in model["superposition"].basis.unique():
            used.setdefault(basis, []).append(model.name)
    parts = [f"{basis_name(b)} for {fmt.count(len(names))} model(s)" for b, names in used.items()]
    return "Bases: " + "; ".join(parts) + "."


def superposition_blocks(data: ReportData) -> list[Block]:
    models = measured(data)
    if not models:
        return []
    threshold = data.settings["threshold_spec"]
    blocks: list[Block] = [
        Heading(2, "Superposition: how experts pack features", "superposition"),
        Para(
            "Each basis feature i lands in expert e at W_i, the expert's input projections "
            "applied to it. Its dimensionality D_i = |W_i|² / Σ_j (Ŵ_i·W_j)² is 1 when no "
            "other feature shares its direction and ½ for each of an antipodal pair; global "
            "D_i weights the experts by routing load. A represented feature is dedicated "
            "when its squared cosines to the expert's other represented features sum to at "
            "most the configured threshold; monosemanticity is the load-weighted share of "
            "represented feature-expert pairs that are dedicated. " + bases_text(models)
        ),
    ]
    grid = phase_grid(models)
    if len(grid) and grid.feature_sparsity.nunique() > 1 and grid.active.nunique() > 1:
        bases = ", ".join(sorted({basis_name(b) for b in grid.basis}))
        blocks.append(
            Figure(
                "figures/superposition/phase.png",
                phase_figure(grid),
                f"Superposition phase diagram over the toy grid ({fmt.count(len(grid))} "
                f"models; basis: {bases}): feature sparsity against the active fraction of "
                "experts, coloured by monosemanticity and by the dimensions per feature a "
                "routed token meets (D* weighted by load)",
            )
        )
    figure, caption = model_figure(models, threshold)
    blocks.append(Figure("figures/superposition/models.png", figure, caption))
    for model in models:
        blocks.append(Details(f"{model.name}: superposition per layer", [layer_table(model)]))
    return blocks
