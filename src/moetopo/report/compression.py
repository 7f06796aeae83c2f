"""The compression section: what removing or merging experts costs, per method and budget,
and whether a layer's topology foretells it. Every number is read from the compression
artefacts (the per-model evaluation and the summary over models)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from moetopo.report import fmt
from moetopo.report.data import ModelData, ReportData
from moetopo.report.doc import Block, Figure, Heading, Para, Table
from moetopo.report.figures import panels, png
from moetopo.stats.pruning import TOPOLOGY_FIGURES, layer_errors

METHOD_NAMES = {
    "frequency": "frequency (drop)",
    "random": "random (drop)",
    "reap": "REAP (drop)",
    "weights_only": "weights only (drop)",
    "hodgecover": "HodgeCover, distance complex (drop)",
    "pairwise": "pairwise merge cost (redirect)",
    "hodgecover_paper": "HodgeCover, paper (redirect)",
    "hc_smoe": "HC-SMoE (merge)",
}


def method_name(method: str) -> str:
    return METHOD_NAMES.get(method, method)


def evaluated(data: ReportData) -> list[ModelData]:
    return [m for m in data.models if "compression" in m.tables and len(m["compression"])]


def frontier_figure(models: list[ModelData]) -> bytes:
    """One panel per model: kept fraction against held-out relative error (mean over MoE
    layers), a line per method; random's band spans its draws. Each panel has its own
    scale: a model whose smallest budget costs 4 would flatten every other."""
    fig, axes = panels(len(models), ncols=3, size=(3.4, 2.6))
    methods = [m for m in METHOD_NAMES if any(m in set(x["compression"].method) for x in models)]
    for ax, model in zip(axes, models, strict=True):
        table = model["compression"]
        rows = table[table.metric == "relative_error"]
        errors = layer_errors(rows.assign(model=model.name))
        for k, method in enumerate(methods):
            line = errors[errors.method == method].groupby("fraction").error.mean()
            if line.empty:
                continue
            style = "--" if method == "random" else "-"
            ax.plot(line.index, line.values, style, marker="o", ms=3, color=f"C{k}",
                    label=method_name(method))  # fmt: skip
            if method == "random":
                draws = rows[rows.method == "random"].groupby(["fraction", "draw"]).value.mean()
                band = draws.groupby("fraction").agg(["min", "max"])
                ax.fill_between(band.index, band["min"], band["max"], color=f"C{k}", alpha=0.15)
        inputs = ", ".join(sorted(table.inputs.unique()))
        ax.set_title(f"{model.name}\n({inputs} inputs)", fontsize=8)
        ax.set_xlabel("kept fraction of experts", fontsize=8)
        ax.set_ylabel("relative error (held out)", fontsize=8)
        ax.set_ylim(bottom=0)
        ax.tick_params(labelsize=7)
    if axes:
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="upper center", ncol=3, fontsize=8, frameon=False)
        fig.subplots_adjust(top=1 - 1.2 / fig.get_figheight())
    return png(fig)


def methods_table(methods: pd.DataFrame) -> Table:
    """Methods as rows, budgets as columns: mean relative error (layers won)."""
    fractions = sorted(methods.fraction.unique())
    rows = []
    for method in [m for m in METHOD_NAMES if m in set(methods.method)]:
        cells = [method_name(method)]
        for f in fractions:
            row = methods[(methods.method == method) & np.isclose(methods.fraction, f)]
            if row.empty:
                cells.append(fmt.MISSING)
                continue
            r = row.iloc[0]
            best = " (best)" if r.best else ""
            cells.append(
                f"{fmt.fixed(r.mean_error)} ({fmt.count(r.wins)}/{fmt.count(r.n_layers)}){best}"
            )
        rows.append(cells)
    columns = ["method", *(f"keep {f:g}" for f in fractions)]
    return Table(
        columns,
        rows,
        anchor="compression-methods",
        caption="Mean held-out relative error over every MoE layer of every model, and in "
        "how many layers the method had the least error",
    )


def topology_table(association: pd.DataFrame) -> Table:
    rows = []
    for r in association.itertuples():
        rows.append(
            [
                TOPOLOGY_FIGURES.get(r.figure, r.figure),
                fmt.fixed(r.estimate),
                fmt.interval(r.ci_low, r.ci_high),
                fmt.sig(r.p_value, 2),
                f"{fmt.count(r.n_layers)} ({fmt.count(r.n_models)})",
            ]
        )
    return Table(
        ["per-layer figure", "Spearman ρ with cost", "95% interval", "p", "layers (models)"],
        rows,
        anchor="compression-topology",
        caption="Rank correlation, across layers, of each figure with the least error any "
        "method reaches at the middle budget; the interval resamples whole models",
    )


def end_to_end_rows(models: list[ModelData]) -> pd.DataFrame:
    """Every end-to-end row of every model that has them, with the loss increase."""
    frames = [
        m["compression_end_to_end"].assign(model=m.name)
        for m in models
        if "compression_end_to_end" in m.tables
    ]
    if not frames:
        return pd.DataFrame()
    rows = pd.concat(frames, ignore_index=True)
    return rows.assign(increase=rows.loss - rows.full_loss)


def end_to_end_blocks(models: list[ModelData]) -> list[Block]:
    rows = end_to_end_rows(models)
    if rows.empty:
        return [
            Para(
                "End-to-end loss not measured in this run: it needs torch and transformers "
                "(the zoo extra), held-out text (the zoo's own, or compression.eval_text) "
                "and a model small enough to run.",
                "note",
            )
        ]
    measured = rows.dropna(subset=["kl"])
    per_model = measured.groupby(["model", "fraction", "method"])[["kl", "increase"]].mean()
    mean = per_model.groupby(["fraction", "method"]).mean()
    count = per_model.groupby(["fraction", "method"]).size()
    fractions = sorted(rows.fraction.unique())
    table_rows = []
    for method in [m for m in METHOD_NAMES if m in set(rows.method)]:
        cells = [method_name(method)]
        for f in fractions:
            if (f, method) not in mean.index:
                cells.append(fmt.MISSING)
                continue
            kl, inc = mean.loc[(f, method)]
            cells.append(f"{fmt.fixed(kl)} (+{fmt.fixed(inc)}, {fmt.count(count[(f, method)])})")
        table_rows.append(cells)
    n_models = rows.model.nunique()
    blocks: list[Block] = [
        Para(
            f"End to end, on {fmt.count(n_models)} model{'s' * (n_models != 1)} with the "
            "reduction in every MoE layer at once: " + best_end_to_end(mean) + "."
        ),
        Table(
            ["method", *(f"keep {f:g}" for f in fractions)],
            table_rows,
            anchor="compression-end-to-end",
            caption="Mean over models of KL(full || reduced) per token (held-out loss "
            "increase, models measured); random's draws averaged first",
        ),
    ]
    refused = rows[rows.kl.isna() & (rows.note != "")]
    if len(refused):
        blocks.append(
            Para(
                f"{fmt.count(len(refused))} selection(s) not run end to end: no single "
                f"config holds them (for example {refused.model.iloc[0]}, "
                f"{method_name(refused.method.iloc[0])} at keep {refused.fraction.iloc[0]:g}).",
                "note",
            )
        )
    return blocks


def best_end_to_end(mean: pd.DataFrame) -> str:
    parts = []
    for f in sorted({f for f, _ in mean.index}):
        at = mean.loc[f]
        best = at.kl.idxmin()
        parts.append(f"keeping {f:g}, {method_name(best)} (KL {fmt.fixed(at.kl.min())})")
    return "least KL to the full model " + "; ".join(parts)


def winners_text(methods: pd.DataFrame) -> str:
    parts = []
    for f in sorted(methods.fraction.unique()):
        rows = methods[np.isclose(methods.fraction, f)]
        best = rows[rows.best].method.tolist()
        random = rows[rows.method == "random"].mean_error
        vs = f" against {fmt.fixed(random.iloc[0])} for random drops" if len(random) else ""
        error = fmt.fixed(rows[rows.best].mean_error.iloc[0])
        names = " and ".join(method_name(m) for m in best)
        parts.append(f"keeping {f:g}: {names}, mean relative error {error}{vs}")
    return "Least layer-wise error at each budget: " + "; ".join(parts) + "."


def association_text(association: pd.DataFrame) -> str:
    if association.empty:
        return ""
    excludes = (association.ci_low > 0) | (association.ci_high < 0)
    # both the interval and the permutation test, Bonferroni over the figures tested
    agrees = association.p_value * len(association) <= 0.05
    found = association[np.isfinite(association.ci_low) & excludes & agrees]
    n = fmt.count(association.n_models.max())
    if found.empty:
        undefined = association[~np.isfinite(association.estimate)]
        tail = f" ({undefined.reason.iloc[0]})" if len(undefined) == len(association) else ""
        return (
            f"No per-layer topological figure predicts pruning cost across {n} models: no "
            "95% interval excludes 0 with a permutation p below 0.05 over the "
            f"{len(association)} figures tested{tail}."
        )
    parts = [
        f"{TOPOLOGY_FIGURES[r.figure]} (ρ = {fmt.fixed(r.estimate)}, "
        f"{fmt.interval(r.ci_low, r.ci_high)})"
        for r in found.itertuples()
    ]
    return (
        f"Across {n} models, a layer's pruning cost moves with {'; '.join(parts)} "
        f"(interval and permutation p, Bonferroni over the {len(association)} figures)."
    )


def compression_blocks(data: ReportData) -> list[Block]:
    models = evaluated(data)
    if not models:
        return []
    blocks: list[Block] = [Heading(2, "Compression: what removing experts costs", "compression")]
    blocks.append(
        Para(
            "Each MoE layer's routed output with a reduced expert set against the full "
            "layer, on held-out tokens the selection never saw: relative squared error "
            "(0 is lossless; 1 is as far off as an output of zero). Dropping routes every "
            "token again among the survivors as the family's rule does; redirecting and "
            "merging keep the routing and serve a pruned expert's tokens by another."
        )
    )
    methods = data.compression.get("compression_methods")
    if methods is not None and len(methods):
        blocks.append(Para(winners_text(methods)))
        blocks.append(methods_table(methods))
    blocks.append(
        Figure(
            "figures/compression/frontier.png",
            frontier_figure(models),
            "Kept fraction against held-out relative error, mean over MoE layers",
        )
    )
    blocks += end_to_end_blocks(models)
    association = data.compression.get("compression_topology")
    if association is not None and len(association):
        blocks.append(Para(association_text(association)))
        blocks.append(topology_table(association))
    return blocks


def merge_cost(model: ModelData, data: ReportData) -> str:
    """The findings' redundancy cell: the measured cost of halving each layer."""
    layers = data.compression.get("compression_layers")
    if layers is None or "compression" not in model.tables:
        return ""
    rows = layers[layers.model == model.name].dropna(subset=["cost"])
    if rows.empty:
        return ""
    table = model["compression"]
    random = table[(table.metric == "relative_error") & (table.method == "random")]
    fraction = float(rows.fraction.iloc[0])
    random = random[np.isclose(random.fraction, fraction)].groupby("layer").value.mean()
    ordered = rows.sort_values(["cost", "layer"])
    cheap, dear = ordered.iloc[0], ordered.iloc[-1]
    inputs = ", ".join(sorted(table.inputs.unique()))

    def text(r) -> str:
        baseline = random.get(r.layer)
        vs = f", random {fmt.fixed(baseline)}" if baseline is not None else ""
        return f"layer {r.layer}: {fmt.fixed(r.cost)} by {method_name(r.cost_method)}{vs}"

    out = f"Keeping {fraction:g} of the experts costs, at least, {text(cheap)}"
    if len(ordered) > 1:
        out += f"; at most {text(dear)}"
    return out + f" (held-out relative error on {inputs} inputs)."
