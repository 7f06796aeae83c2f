"""The designed study's section: H1 against each factor with its seed spread, the score
against H1 by factor, whether each figure belongs to the configuration or the seed, and
the answer with the smallest effect the study could have seen."""

from __future__ import annotations

import numpy as np
import pandas as pd

from moetopo.report import fmt
from moetopo.report.data import ReportData
from moetopo.report.doc import Block, Details, Figure, Heading, Para, Table
from moetopo.report.figures import panels, png

TESTS = {
    "figure_with_factor": "H1 moves with the factor (Spearman)",
    "score_with_factor": "the score moves with the factor (Spearman)",
    "figure_with_score_within": "seed to seed, more H1 goes with a better score (Pearson)",
}


def factor_figure(points: pd.DataFrame, score: str) -> bytes:
    """A panel per factor: each model's H1 at its value of the factor (dots), the mean of
    each configuration's seeds (line) and their range (bar)."""
    rows = points[points.score == score]
    factors = sorted(rows.factor.unique())
    fig, axes = panels(len(factors), ncols=3, size=(3.2, 2.5))
    for ax, factor in zip(axes, factors, strict=True):
        series = rows[rows.factor == factor]
        by_value = series.groupby("value").h1.agg(["mean", "min", "max"])
        ax.errorbar(by_value.index, by_value["mean"],
                    yerr=[by_value["mean"] - by_value["min"], by_value["max"] - by_value["mean"]],
                    marker="o", ms=4, capsize=3, color="C0")  # fmt: skip
        ax.scatter(series.value, series.h1, s=8, color="C1", alpha=0.7, zorder=3)
        ax.set_xlabel(factor.replace("_", " "), fontsize=8)
        ax.set_ylabel("significant H1 bars", fontsize=8)
        ax.tick_params(labelsize=7)
    return png(fig)


def score_figure(points: pd.DataFrame, score: str) -> bytes:
    """The score against H1, one colour per factor (the base point's models in grey)."""
    from matplotlib.figure import Figure as MplFigure

    rows = points[points.score == score].drop_duplicates("model")
    fig = MplFigure(figsize=(6.4, 4.0), layout="constrained")
    ax = fig.subplots()
    own = rows[rows.configuration.str.startswith("base")]
    ax.scatter(own.h1, own.score_value, color="0.5", s=14, label="base point")
    varied = rows.drop(own.index)
    for k, (factor, group) in enumerate(varied.groupby("factor", sort=True)):
        ax.scatter(group.h1, group.score_value, s=14, color=f"C{k}", label=factor)
    ax.set_xlabel("significant H1 bars (sum over MoE layers)")
    ax.set_ylabel(score)
    ax.legend(fontsize=7, ncols=2)
    return png(fig)


def seeds_table(seeds: pd.DataFrame) -> Table:
    body = [
        [r.figure, fmt.count(r.n_models), fmt.count(r.n_configurations), fmt.sig(r.mean),
         fmt.sig(r.seed_sd), fmt.sig(r.between_share), fmt.sig(r.p_value), r.reason]
        for r in seeds.itertuples()
    ]  # fmt: skip
    columns = ["figure", "models", "configurations", "mean", "seed SD", "share between"]
    caption = "Is each figure a property of the configuration or of the seed?"
    return Table([*columns, "ANOVA p", "note"], body, anchor="study-seeds", caption=caption)


def effects_table(effects: pd.DataFrame) -> Table:
    body = [
        [r.score, r.factor, r.test.replace("_", " "), fmt.fixed(r.estimate),
         fmt.interval(r.ci_low, r.ci_high), fmt.sig(r.p_adjusted), fmt.count(r.n),
         fmt.fixed(r.detectable), r.verdict]
        for r in effects.itertuples()
    ]  # fmt: skip
    columns = ["score", "factor", "test", "estimate", "interval", "p adjusted", "models"]
    caption = "Each test; detectable: the smallest |r| it finds 80% of the time"
    return Table([*columns, "detectable", "verdict"], body, anchor="study-effects",
                 caption=caption)  # fmt: skip


def answer(data: ReportData) -> str:
    """The study's answer in words, claiming no more than the adjusted tests."""
    effects = data.design["study_effects"]
    primary = data.primary_score
    pooled = effects[(effects.factor == "all") & (effects.score == primary)]
    if pooled.empty:
        return "The study's pooled test did not run."
    row = pooled.iloc[0]
    seeds = data.design["study_seeds"].set_index("figure")
    h1 = seeds[seeds.index.str.contains(":")]
    flat = h1[h1.reason == "constant across every model"]
    parts = [
        f"Designed study, {fmt.count(row.n)} independent models in "
        f"{fmt.count(row.n_configurations)} configurations."
    ]
    if np.isnan(row.estimate):
        varied = ", ".join(
            f"{f} (mean {fmt.sig(m)})" for f, m in h1.drop(flat.index)["mean"].items()
        )
        parts.append(
            f"Not measurable here: {row.reason}. {len(flat)} of {len(h1)} H1 figures (source "
            "and metric) are the same in every model"
            + (f"; the others vary in few models: {varied}." if varied else ".")
        )
    else:
        parts.append(
            f"Seed to seed, where the design holds everything else fixed, the correlation of "
            f"H1 with a better {primary} is {fmt.fixed(row.estimate)} "
            f"({fmt.interval(row.ci_low, row.ci_high)}, adjusted p {fmt.sig(row.p_adjusted)}): "
            f"{row.verdict}; the test finds |r| >= {fmt.fixed(row.detectable)} 80% of the time."
        )
        moved = effects[(effects.test == "figure_with_factor") & (effects.score == primary)]
        moved = moved[moved.verdict != "inconclusive"].factor.tolist()
        parts.append("H1 moves with " + (", ".join(moved) or "none of the factors") + ".")
    scored = effects[(effects.test == "score_with_factor") & (effects.score == primary)]
    decided = scored[scored.verdict != "inconclusive"]
    if len(decided):
        said = "; ".join(
            f"{r.factor} (Spearman {fmt.fixed(r.estimate)}: a larger value, a "
            f"{'better' if r.estimate > 0 else 'worse'} {primary})"
            for r in decided.itertuples()
        )
        parts.append(f"The design does move the {primary}: {said}.")
    shares = [
        f"{f} {fmt.sig(r.between_share)}"
        for f, r in seeds.drop(h1.index).iterrows()
        if pd.notna(r.between_share)
    ]
    if shares:
        parts.append(
            "Share of each score's variance between configurations (1: set by the "
            "configuration, 0: by the seed): " + ", ".join(shares) + "."
        )
    return " ".join(parts)


def design_blocks(data: ReportData) -> list[Block]:
    if "study_effects" not in data.design:
        return []
    points = data.design["study_models"]
    score = data.primary_score
    return [
        Heading(2, "Designed study", "study"),
        Para(answer(data), "verdict"),
        Figure(
            "figures/study/h1_by_factor.png",
            factor_figure(points, score),
            "Significant H1 bars (primary source) at each value of each factor: dots are "
            "models, the line joins configuration means, bars span the seeds.",
        ),  # fmt: skip
        Figure(
            "figures/study/score_by_h1.png",
            score_figure(points, score),
            f"{score} against H1, one colour per varied factor.",
        ),  # fmt: skip
        seeds_table(data.design["study_seeds"]),
        Details("Every test of the study", [effects_table(data.design["study_effects"])]),
    ]
