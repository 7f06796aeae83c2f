"""The headline findings in plain words, each sentence built from artefact values.

These are what a reader did not know before the run: where experts are
redundant, where loops and harmonic flow sit, where HodgeCover disagrees with
load, how far the weights-only probe can be trusted, what a fine-tune moved,
and what the conjecture test says.
"""

from __future__ import annotations

import pandas as pd

from moetopo.report import fmt
from moetopo.report.data import ModelData, PairData, ReportData
from moetopo.report.figures import CYCLE_EDGES

STATISTICS = {
    "pearson": "Pearson r",
    "spearman": "Spearman ρ",
    "partial_pearson": "Pearson r controlling for size",
    "partial_spearman": "Spearman ρ controlling for size",
    "regression": "H1's coefficient (score on H1 and log10 activated parameters)",
}
METRICS = {
    "h1_count_per_active_param": "the number of significant H1 bars per activated parameter",
    "h1_persistence_per_active_param": "the significant H1 persistence per activated parameter",
}
MAX_LISTED = 12


def threshold_words(spec: str) -> str:
    """'r0.5' -> '0.5 x the layer's median distance', as config/README.md defines it."""
    if spec.startswith("r"):
        return f"{spec[1:]} × the layer's median distance"
    if spec.startswith("q"):
        return f"the layer's {spec[1:]}-quantile distance"
    return f"distance {spec}"


def layers_text(layers) -> str:
    layers = [int(x) for x in layers]
    shown = fmt.listing(layers[:MAX_LISTED])
    return shown + (f" and {len(layers) - MAX_LISTED} more" if len(layers) > MAX_LISTED else "")


def spread(rows: pd.DataFrame, column: str) -> str:
    """'0.62 (layer 2)' or 'from 0.62 (layer 2) to 0.98 (layer 0)': the extremes, as read."""
    rows = rows.dropna(subset=[column]).sort_values([column, "layer"])
    low, high = rows.iloc[0], rows.iloc[-1]
    text = f"{fmt.fixed(low[column])} (layer {low.layer})"
    if len(rows) == 1:
        return text
    return f"from {text} to {fmt.fixed(high[column])} (layer {high.layer})"


def most_redundant(model: ModelData, spec: str) -> str:
    table = model["redundancy"]
    table = table[table.threshold_spec == spec]
    if table.empty:
        specs = fmt.listing(sorted(model["redundancy"].threshold_spec.unique()))
        return f"Redundancy was not computed at {spec} (thresholds present: {specs})."
    top = table.sort_values(["redundancy", "layer", "source"], ascending=[False, True, True])
    best = top.iloc[0]
    if best.redundancy <= 0:
        return (
            f"No two experts are closer than {threshold_words(spec)} in any layer or "
            f"source: no redundant experts at {spec}."
        )
    ties = int((table.redundancy == best.redundancy).sum()) - 1
    tied = f" ({ties} other layer/source tied)" if ties else ""
    return (
        f"Most redundant: layer {best.layer} by {best.source}, "
        f"{fmt.count(best.redundant_pairs)} of {fmt.count(best.total_pairs)} expert pairs "
        f"closer than {threshold_words(spec)} (redundancy {fmt.fixed(best.redundancy)}), "
        f"in {fmt.count(best.n_groups)} group(s), the largest of "
        f"{fmt.count(best.largest_group)} experts{tied}."
    )


def loops(model: ModelData, stats_models: pd.DataFrame) -> str:
    """Significant H1 per source (stats/models h1_total) and where harmonic flow sits."""
    rows = stats_models[(stats_models.model == model.name) & (stats_models.metric == "h1_count")]
    bars = [f"{r.source} {fmt.sig(r.h1_total)}" for r in rows.itertuples() if r.h1_total > 0]
    persistence = model["persistence"]
    h1 = persistence[(persistence.dim == 1) & persistence.significant]
    if bars:
        text = (
            f"Significant H1 bars (loops no pairwise score sees), summed over MoE layers: "
            f"{', '.join(bars)}; in layers {layers_text(sorted(h1.layer.unique()))}."
        )
    else:
        text = "No significant H1 bar in any layer or source."
    hodge = model["hodge"]
    possible = hodge[hodge.n_edges >= CYCLE_EDGES]
    if possible.empty:
        return text + (
            " Harmonic flow not measurable: no complex, at any scale, has the 4 edges a "
            "cycle needs."
        )
    harmonic = possible[possible.betti1 > 0]
    if harmonic.empty:
        return text + " No harmonic flow at any scale: every cycle of the complexes is filled."
    top = harmonic.sort_values(["harmonic_fraction", "layer"], ascending=[False, True]).iloc[0]
    return text + (
        f" Harmonic flow (betti1 > 0) in layers {layers_text(sorted(harmonic.layer.unique()))}, "
        f"in {len(harmonic)} of the {len(possible)} complexes (scales and sources) that can "
        f"hold a cycle; largest harmonic fraction {fmt.sig(top.harmonic_fraction)} (layer "
        f"{top.layer}, {top.source} complex at the {top['quantile']:g} quantile, "
        f"{top.signal_source} signal)."
    )


def kept_sets(model: ModelData) -> pd.DataFrame:
    """Per layer, keep budget and method, the kept experts (sorted tuple)."""
    cover = model["hodgecover"]
    kept = cover[cover.kept]
    return (
        kept.groupby(["layer", "keep", "method"])
        .expert.apply(lambda e: tuple(sorted(int(x) for x in e)))
        .unstack("method")
        .reset_index()
    )


def hodgecover_vs_load(model: ModelData) -> str:
    sets = kept_sets(model)
    if sets.empty or "hodgecover" not in sets:
        return "No HodgeCover selection (no MoE layer with a harmonic ranking)."
    smallest = sets[sets.keep == sets.groupby("layer").keep.transform("min")]
    n = len(smallest)
    parts = []
    for other in ("load", "groups"):
        if other in smallest:
            differ = int((smallest.hodgecover != smallest[other]).sum())
            parts.append(f"from {other}-based selection in {differ} of {n}")
    experts = model.summary.get("n_experts")
    budget = fmt.listing(sorted(int(k) for k in smallest.keep.unique()))
    return (
        f"At the smallest keep budget ({budget} of {experts} experts), HodgeCover keeps a "
        f"different set {' and '.join(parts)} MoE layers."
    )


def probe_agreement(model: ModelData) -> str:
    table = model["routing_agreement"]
    if table.empty:
        return (
            "No captured router logits: routing is the weights-only probe, and how far it "
            "matches real routing is not measured."
        )
    rho = table.dropna(subset=["load_spearman"])
    if rho.empty:
        text = "Probe and captured expert loads cannot be rank-correlated (a load is constant)."
    else:
        low = rho.load_spearman.min()
        trust = "closely" if low >= 0.8 else "partly" if low >= 0.5 else "poorly"
        text = (
            f"The weights-only probe {trust} reproduces the captured expert load: rank "
            f"correlation {spread(rho, 'load_spearman')}."
        )
        experts = model.summary.get("n_experts") or 0
        if experts < 8:
            text += f" With {experts} experts a rank correlation is coarse."
    if table.topk_overlap.isna().all():
        return text + (
            " Per-token top-k overlap not measured: the captured file does not say which "
            "tokens it routed."
        )
    return text + f" Mean per-token top-k overlap {spread(table, 'topk_overlap')}."


def function_inputs(model: ModelData) -> str:
    """Which inputs the function distances (and so the merge barriers) were measured on."""
    table = model["expert_distances"]
    if table.empty or "inputs" not in table:
        return ""
    rows = table[table.source == "function"].drop_duplicates("layer")
    if rows.empty:
        return ""
    captured = sorted(rows.layer[rows.inputs == "captured"])
    probe = sorted(rows.layer[rows.inputs != "captured"])
    if not probe:
        return "Experts compared on captured router inputs in every MoE layer."
    if not captured:
        return "Experts compared on the weights-only probe in every MoE layer (no captured inputs)."
    return (
        f"Experts compared on captured router inputs in layers {layers_text(captured)}, on "
        f"the weights-only probe in layers {layers_text(probe)}."
    )


def model_findings(model: ModelData, data: ReportData) -> list[str]:
    inputs = function_inputs(model)
    return [
        most_redundant(model, data.settings["threshold_spec"]),
        loops(model, data.stats_models),
        hodgecover_vs_load(model),
        (inputs + " " if inputs else "") + probe_agreement(model),
    ]


def scaffold_layers(pair: PairData) -> str:
    scaffold = pair["scaffold"]
    params = pair.meta["scaffold"].get("params", {})
    rule = (
        f"q above {params.get('q_min')}, o above {params.get('o_min')} and k below "
        f"{params.get('k_max')} of rows shifted"
    )
    layers = scaffold[scaffold.is_scaffold].layer
    text = (
        f"Scaffold layers ({rule}): {layers_text(layers)}."
        if len(layers)
        else f"No scaffold layer ({rule})."
    )
    fractions = scaffold[["q_fraction", "k_fraction", "o_fraction"]]
    if len(scaffold) and (fractions >= 1.0).all().all():
        text += (
            " Every q, k and o row shifted in every layer: the shift threshold "
            "(attention_diff.threshold) is below this fine-tune's change everywhere, so the "
            "scaffold rule cannot tell layers apart; raise it."
        )
    return text


def routing_change(pair: PairData) -> str:
    crossref = pair["crossref"]
    moe = crossref[crossref.is_moe]
    dominated = crossref[crossref.routing_dominated].layer
    text = (
        f"Routing-dominated layers (scaffold layers whose experts are redundant): "
        f"{layers_text(dominated)}."
    )
    ratio = moe.dropna(subset=["router_to_expert"])
    if ratio.empty:
        return text
    span = f"router-to-expert change {spread(ratio, 'router_to_expert')}"
    router_led = ratio[ratio.router_to_expert > 1].layer
    if router_led.empty:
        return text + f" The router moved less than the experts in every MoE layer ({span})."
    if len(router_led) == len(ratio):
        return text + f" The router moved more than the experts in every MoE layer ({span})."
    return text + (
        f" The router moved more than the experts in layers {layers_text(router_led)} ({span})."
    )


def pair_findings(pair: PairData) -> list[str]:
    return [scaffold_layers(pair), routing_change(pair)]


def primary_rows(data: ReportData) -> tuple[pd.DataFrame, str]:
    """Conjecture rows of the primary test's metric and source, and a note when no
    primary test ran (then the first metric and source tested stand in)."""
    table = data.conjecture
    if table.empty:
        return table, ""
    primary = table[table.primary] if "primary" in table else table.iloc[:0]
    note = ""
    if primary.empty:
        first = table.sort_values(["metric", "source"]).iloc[0]
        note = (
            f"No primary test ran (see conjecture.primary_* in the config); showing "
            f"{first.metric}, {first.source}, which no verdict was declared for."
        )
    else:
        first = primary.iloc[0]
    return table[(table.metric == first.metric) & (table.source == first.source)], note


def statistic_sentence(row) -> str:
    name = STATISTICS.get(row.statistic, row.statistic)
    if row.ci_method == "none" or pd.isna(row.estimate):
        return f"{name}: {row.verdict} ({row.reason})."
    undone = row.verdict == "inconclusive" and row.verdict_unadjusted != "inconclusive"
    why = f" ({row.reason})" if undone else ""  # the adjustment undid it: say how
    return (
        f"{name} = {fmt.fixed(row.estimate)}, {row.ci_method} interval "
        f"{fmt.interval(row.ci_low, row.ci_high)}, permutation p = {fmt.sig(row.p_value)}"
        f"{monte_carlo(row)} "
        f"(adjusted for multiple tests {fmt.sig(row.p_adjusted)}): {row.verdict}{why}."
    )


def monte_carlo(row) -> str:
    """' ± 0.0021' (the p-value's Monte Carlo error), or nothing for an exact test."""
    error = getattr(row, "p_mc_error", float("nan"))
    return f" ± {fmt.sig(error)}" if pd.notna(error) and error > 0 else ""


def tally(table: pd.DataFrame, alpha: float) -> str:
    """Verdict counts after the adjustment for the number of tests, and how many tests
    were decided on their own but not once all of them are counted."""
    counts = table.verdict.value_counts()
    parts = [f"{counts.get(v, 0)} {v}" for v in ("supported", "contradicted", "inconclusive")]
    undone = (table.verdict_unadjusted != "inconclusive") & (table.verdict == "inconclusive")
    lost = int(undone.sum())
    out = f"{len(table)} tests: {', '.join(parts)}"
    if lost:
        out += (
            f" ({lost} decided on their own, but not at Benjamini-Hochberg adjusted "
            f"p ≤ {alpha:g} over the tests of this level)"
        )
    return out


def verdicts(rows: pd.DataFrame) -> str:
    """'inconclusive', or 'supported by Pearson, inconclusive by Spearman' when they differ."""
    if rows.empty:
        return "not tested"
    if rows.verdict.nunique() == 1:
        return rows.verdict.iloc[0]
    names = rows.statistic.str.replace("partial_", "").str.capitalize()
    return ", ".join(f"{v} by {n}" for v, n in zip(rows.verdict, names, strict=True))


def in_short(model_rows: pd.DataFrame, layer_rows: pd.DataFrame) -> str:
    partial = model_rows.statistic.str.startswith("partial_")
    return (
        f"across models {verdicts(model_rows[~partial])}; controlling for size "
        f"{verdicts(model_rows[partial])}; across layers {verdicts(layer_rows)}."
    )


def conjecture_verdict(data: ReportData) -> list[str]:
    """The verdict paragraphs: the primary test's answer, then the other statistics of its
    metric and source, then the tally of all tests."""
    rows, note = primary_rows(data)
    order = {name: k for k, name in enumerate(STATISTICS)}
    rows = rows.sort_values("statistic", key=lambda c: c.map(order).fillna(len(order)))
    if rows.empty:
        return ["The conjecture was not tested: no model has both a score and H1 figures."]
    params = data.conjecture_params
    primary = rows[rows.primary] if "primary" in rows else rows.iloc[:0]
    first = primary.iloc[0] if len(primary) else rows.iloc[0]
    others = rows.drop(primary.index)
    model_rows = others[others.level == "model"]
    layer_rows = others[others.level == "layer"]
    table = data.conjecture
    alpha = 1.0 - confidence_level(params)
    tallies = (
        f"All metrics and sources, model level: {tally(table[table.level == 'model'], alpha)}; "
        f"layer level: {tally(table[table.level == 'layer'], alpha)}."
    )
    metric = METRICS.get(first.metric, first.metric)
    if first.statistic == "regression":  # its H1 is the total; size is a covariate
        metric = metric.removesuffix(" per activated parameter")
    out = [note] if note else []
    if (rows.n_nonzero == 0).all():
        out.append(
            f"Not measurable here: does {metric} ({first.source} distances) track the score? "
            f"None of the {fmt.count(first.n_models)} scored models (a fine-tune counted with "
            "its base) has a nonzero value; "
            "every H1 bar is within what shapeless layers of the same spread show (the "
            "null model), so there is nothing to correlate."
        )
        return [*out, tallies]
    level = f"{100 * confidence_level(params):g}%"
    direction = "higher" if data.score_is_better_higher() else "lower"
    size = ", controlling for size" if first.statistic.startswith("partial_") else ""
    if first.statistic == "regression":
        size = " beyond what the number of activated parameters predicts"
    unit = "models" if first.level == "model" else "MoE layers, resampling whole models"
    declared = "Primary test, declared before the run" if len(primary) else "Test"
    out.append(
        f"{declared}: does {metric} ({first.source} distances) track the score{size}? "
        f"Measured across {fmt.count(first.n_models)} {unit} with {level} bootstrap "
        f"intervals; a positive estimate means more H1 per activated parameter goes with a "
        f"better score (here {direction} is better). {statistic_sentence(first)}"
    )
    out.append(
        "The other statistics of this metric and source, with verdicts adjusted for the "
        "number of tests: " + in_short(model_rows, layer_rows)
    )
    if not model_rows.empty:
        out.append(
            "Across models: " + " ".join(statistic_sentence(r) for r in model_rows.itertuples())
        )
    if not layer_rows.empty:
        n_layers = fmt.count(layer_rows.iloc[0].n_layers)
        out.append(
            f"Across {n_layers} MoE layers, resampling whole models: "
            + " ".join(statistic_sentence(r) for r in layer_rows.itertuples())
        )
    out.append(tallies)
    return out


def confidence_level(params: dict) -> float:
    """The conjecture stage's confidence level (0.95 where it recorded none)."""
    return float(params.get("confidence_level", 0.95))


def sparse_metric(data: ReportData) -> str:
    """A warning when few models have any H1 at all for the headline metric and source."""
    rows, _ = primary_rows(data)
    if rows.empty:
        return ""
    metric, source = rows.iloc[0].metric, rows.iloc[0].source
    stats = data.stats_models
    stats = stats[
        (stats.metric == metric.removesuffix("_per_active_param"))
        & (stats.source == source)
        & stats.score.notna()
    ]
    nonzero = int((stats.h1_total > 0).sum())
    if not nonzero or 2 * nonzero >= len(stats):  # none: the lead says it
        return ""
    return (
        f"Only {nonzero} of {len(stats)} scored models have any H1 for {source}: the "
        "headline correlations rest on those few points."
    )


def conjecture_caveats(data: ReportData) -> list[str]:
    table = data.conjecture
    params = data.conjecture_params
    n_models = int(table.n_models.max()) if len(table) else 0
    tuned = sorted({p.tuned for p in data.pairs} & {m.name for m in data.models})
    level = confidence_level(params)
    few = "; with so few, the intervals are wide and rule out little" if n_models < 30 else ""
    caveats = [
        f"{n_models} scored models (a verdict needs at least "
        f"{params.get('min_models', '?')}){few}.",
        "Size confounds H1 per activated parameter: the ratio divides by the activated "
        "parameters, and size itself tends to track the score. The regression rows "
        "therefore fit the score on the H1 total and log10 activated parameters (and the "
        "configured covariates) and report H1's coefficient; the 'controlling for size' "
        "rows are partial correlations of the ratio on log10 total parameters. Training "
        "budget is not controlled.",
        f"Many tests: at a {100 * level:g}% level about {100 * (1 - level):.3g}% of tests "
        "exclude zero by chance alone, so an isolated 'supported' among many 'inconclusive' "
        "is weak evidence. A verdict also needs the permutation test to agree with the "
        "interval, and the adjusted p-values (Benjamini-Hochberg over all tests of a level) "
        "say which decided tests survive the number of tests run.",
        "Layer-level rows treat every MoE layer as a point but resample whole models "
        "(clustered bootstrap), so many layers of one model do not inflate certainty.",
    ]
    sparse = sparse_metric(data)
    if sparse:
        caveats.append(sparse)
    if tuned:
        caveats.append(
            f"Fine-tunes ({fmt.listing(tuned)}) share their base's weights, so each enters "
            "with its base as one model: the mean of their metrics and scores."
        )
    return caveats
