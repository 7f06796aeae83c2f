"""Figures of the fine-tunes and of the conjecture, each returning PNG bytes.

The conjecture scatter's least-squares line and its bootstrap band are drawn
for display (``moetopo.stats.fit_line_band``); the verdict comes from the tests
in the conjecture artefact.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from moetopo.report.data import PairData
from moetopo.report.figures import empty, ordered_sources, png
from moetopo.stats import fit_line_band


def scaffold(pair: PairData) -> bytes:
    """Shifted-row fraction per layer and projection; scaffold layers starred."""
    table = pair["scaffold"].sort_values("layer")
    if table.empty:
        return empty("no attention rows compared")
    columns = ["q_fraction", "k_fraction", "v_fraction", "o_fraction"]
    values = table[columns].to_numpy(dtype=float)
    fig = Figure(figsize=(3.6, 0.8 + 0.25 * len(table)), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(values, cmap="magma", vmin=0, vmax=1, aspect="auto")
    fig.colorbar(image, ax=ax, label="shifted fraction")
    ax.set_xticks(range(4), ["q", "k", "v", "o"])
    labels = [
        f"★ {v}" if s else str(v) for v, s in zip(table.layer, table.is_scaffold, strict=True)
    ]
    ax.set_yticks(range(len(table)), labels, fontsize=7)
    ax.set_ylabel("layer (★ scaffold)")
    if len(table) <= 40:
        for (r, c), v in np.ndenumerate(values):
            if np.isfinite(v):
                ax.text(c, r, f"{v:.2f}", ha="center", va="center", fontsize=6, color="grey")
    return png(fig)


def change(pair: PairData) -> bytes:
    """Relative change of the router and of the experts per MoE layer (bar: mean, tick: max)."""
    table = pair["crossref"]
    table = table[table.is_moe].sort_values("layer")
    if table.empty:
        return empty("no MoE layer in this pair")
    x = np.arange(len(table))
    fig = Figure(figsize=(max(4.0, 0.35 * len(table) + 2), 2.6), layout="constrained")
    ax = fig.subplots()
    ax.bar(x - 0.2, table.router_change, 0.4, label="router")
    ax.bar(x + 0.2, table.expert_change, 0.4, label="experts (mean)")
    ax.scatter(x + 0.2, table.expert_change_max, marker="_", color="k", label="experts (max)")
    for k, is_scaffold in enumerate(table.is_scaffold):
        if is_scaffold:
            ax.axvspan(k - 0.5, k + 0.5, color="C3", alpha=0.1)
    ax.set_xticks(x, [str(v) for v in table.layer], fontsize=7)
    ax.set_xlabel("MoE layer (shaded: scaffold)")
    ax.set_ylabel("relative change")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return png(fig)


def _scatter_with_band(ax, rows: pd.DataFrame, params: dict, tuned: set[str]) -> None:
    x = rows.h1_per_active_param.to_numpy(dtype=float)
    y = rows.score.to_numpy(dtype=float)
    band = fit_line_band(
        x,
        y,
        confidence_level=float(params.get("confidence_level", 0.95)),
        n_resamples=int(params.get("n_resamples", 9999)),
        seed=int(params.get("seed", 0)),
    )
    if np.isfinite(band.low).any():
        ax.fill_between(band.x, band.low, band.high, color="C0", alpha=0.2, lw=0)
    if np.isfinite(band.fit).any():
        ax.plot(band.x, band.fit, color="C0", lw=1.2)
    families = sorted(rows.family.unique())
    for k, family in enumerate(families):
        part = rows[rows.family == family]
        is_tuned = part.model.isin(tuned).to_numpy()
        colour = f"C{(k + 1) % 10}"
        ax.scatter(
            part.h1_per_active_param[~is_tuned],
            part.score[~is_tuned],
            s=18,
            color=colour,
            label=family,
        )
        ax.scatter(
            part.h1_per_active_param[is_tuned],
            part.score[is_tuned],
            s=18,
            facecolors="none",
            edgecolors=colour,
        )


def conjecture(
    stats_models: pd.DataFrame, metric: str, source: str, params: dict, tuned: set[str]
) -> bytes:
    """Score against H1 per activated parameter, the least-squares line and its bootstrap band."""
    short = metric.removesuffix("_per_active_param")
    rows = stats_models[(stats_models.metric == short) & (stats_models.source == source)]
    rows = rows.dropna(subset=["score", "h1_per_active_param"])
    if rows.empty:
        return empty("no scored model")
    fig = Figure(figsize=(7.0, 4.4), layout="constrained")
    ax = fig.subplots()
    _scatter_with_band(ax, rows, params, tuned)
    better = "higher" if params.get("higher_is_better", True) else "lower"
    ax.set_xlabel(f"{short.replace('_', ' ')} per activated parameter ({source})")
    ax.set_ylabel(f"score ({better} is better)")
    ax.legend(fontsize=7, title="family (hollow: fine-tune)", title_fontsize=7)
    return png(fig)


def conjecture_grid(
    stats_models: pd.DataFrame, table: pd.DataFrame, params: dict, tuned: set[str]
) -> bytes:
    """The same scatter for every metric (rows) and source (columns), with Pearson verdicts."""
    scored = stats_models.dropna(subset=["score", "h1_per_active_param"])
    metrics = sorted(scored.metric.unique())
    sources = ordered_sources(scored.source.unique())
    if not metrics:
        return empty("no scored model")
    fig = Figure(figsize=(2.6 * len(sources), 2.3 * len(metrics)), layout="constrained")
    axes = fig.subplots(len(metrics), len(sources), squeeze=False)
    for r, metric in enumerate(metrics):
        for c, source in enumerate(sources):
            ax = axes[r][c]
            rows = scored[(scored.metric == metric) & (scored.source == source)]
            _scatter_with_band(ax, rows, params, tuned)
            test = table[
                (table.level == "model")
                & (table.metric == f"{metric}_per_active_param")
                & (table.source == source)
                & (table.statistic == "pearson")
            ]
            verdict = ""
            if len(test) and np.isfinite(test.iloc[0].estimate):
                verdict = f"r={test.iloc[0].estimate:.2f} {test.iloc[0].verdict}"
            elif len(test):
                verdict = test.iloc[0].verdict
            ax.set_title(f"{source}\n{verdict}", fontsize=7)
            ax.tick_params(labelsize=6)
            ax.xaxis.get_offset_text().set_fontsize(6)
            if c == 0:
                ax.set_ylabel(f"score · {metric}", fontsize=7)
    return png(fig)
