"""The conjecture section: the verdict in words, its caveats, the scatter and every test."""

from __future__ import annotations

import pandas as pd

from moetopo.report import fmt, study_figures
from moetopo.report.data import ReportData
from moetopo.report.doc import Block, Figure, Heading, Para, Table, anchor
from moetopo.report.findings import (
    METRICS,
    STATISTICS,
    conjecture_verdict,
    monte_carlo,
    primary_rows,
)


def tests_table(table: pd.DataFrame, level: str, name: str = "conjecture") -> Table:
    rows = table[table.level == level]
    columns = ["metric", "source", "statistic", "estimate", "interval", "method", "p"]
    columns += ["p adjusted"]
    columns += ["models"] + (["layers"] if level == "layer" else []) + ["verdict", "reason"]
    body = [
        [
            r.metric,
            r.source,
            r.statistic,
            fmt.fixed(r.estimate),
            fmt.interval(r.ci_low, r.ci_high),
            r.ci_method,
            fmt.sig(r.p_value) + monte_carlo(r),
            fmt.sig(r.p_adjusted),
            fmt.count(r.n_models),
        ]
        + ([fmt.count(r.n_layers)] if level == "layer" else [])
        + [r.verdict, r.reason]
        for r in rows.itertuples()
    ]
    return Table(columns, body, anchor=f"{name}-{level}", caption=f"{level}-level tests")


def models_table(data: ReportData, metric: str, source: str) -> Table:
    short = metric.removesuffix("_per_active_param")
    stats = data.stats_models
    rows = stats[(stats.metric == short) & (stats.source == source)].sort_values("model")
    body = [
        [
            r.model,
            r.family,
            fmt.sig(r.score, 6),
            fmt.sig(r.h1_total),
            fmt.sig(r.h1_per_active_param),
            fmt.count(r.activated_params),
            fmt.count(r.total_params),
        ]
        for r in rows.itertuples()
    ]
    columns = ["model", "family", "score", f"{short} (sum over layers)", "per activated param"]
    return Table(
        [*columns, "activated params", "total params"],
        body,
        anchor="conjecture-points",
        caption=f"The points of the scatter: {METRICS.get(metric, metric)}, {source}",
    )


def conjecture_blocks(data: ReportData) -> list[Block]:
    rows, _ = primary_rows(data)
    blocks: list[Block] = [Heading(2, "Conjecture", "conjecture")]
    blocks += [Para(p, "verdict") for p in conjecture_verdict(data)]
    if rows.empty:
        return blocks
    metric, source = rows.iloc[0].metric, rows.iloc[0].source
    tuned = {p.tuned for p in data.pairs}
    # the figures label and orient the primary score, whichever column it is
    params = data.conjecture_params | {"higher_is_better": data.score_is_better_higher()}
    level = f"{100 * float(params.get('confidence_level', 0.95)):g}%"
    score = data.primary_score
    blocks += [
        Figure(
            "figures/conjecture/headline.png",
            study_figures.conjecture(data.stats_models, metric, source, params, tuned),
            f"{score.capitalize()} against {METRICS.get(metric, metric)} ({source}). The line "
            f"is the least-squares fit; the band is a {level} pointwise bootstrap band of that "
            "line (resampling models), drawn for display: the verdict comes from the tests below.",
        ),
        models_table(data, metric, source),
        Figure(
            "figures/conjecture/all_sources.png",
            study_figures.conjecture_grid(data.stats_models, data.conjecture, params, tuned),
            "The same scatter for every metric and source, with the model-level Pearson "
            "estimate and verdict.",
        ),
        Heading(3, "Every test"),
        Para(
            "Statistics: "
            + "; ".join(f"{k} = {v}" for k, v in STATISTICS.items())
            + " (partial correlations control for log10 total parameters). p: permutation "
            "test; p adjusted: Benjamini-Hochberg over all tests of the same level."
        ),
        tests_table(data.conjecture, "model"),
        tests_table(data.conjecture, "layer"),
    ]
    return blocks + other_score_blocks(data)


def other_score_blocks(data: ReportData) -> list[Block]:
    """The tests of the scores other than the primary one: each counted in the adjustment,
    none the lead's verdict."""
    table = data.other_scores
    if table is None or table.empty:
        return []
    blocks: list[Block] = [Heading(3, "Other scores")]
    for score, rows in table.groupby("score", sort=True):
        better = "higher" if data.score_is_better_higher(score) else "lower"
        decided = rows[rows.verdict != "inconclusive"]
        said = (
            "; ".join(
                f"{r.metric}, {r.source}, {r.statistic}: {r.verdict}" for r in decided.itertuples()
            )
            or "every test inconclusive"
        )
        blocks += [
            Para(f"{score} ({better} is better), {len(rows)} tests after adjustment: {said}."),
            tests_table(rows, "model", name=anchor("conjecture", score)),
        ]
    return blocks
