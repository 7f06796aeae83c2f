"""The per-model figures, one function per figure, each returning PNG bytes.

matplotlib's object API (``Figure``, no pyplot) renders with Agg and keeps no
global state, so figures can be built in a worker without a display. Figures
only draw artefact values; the one thing computed for display is the experts'
order in the heatmaps (hierarchical-clustering leaves).
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from scipy.cluster.hierarchy import leaves_list, linkage
from scipy.spatial.distance import squareform

from moetopo.artefacts.views import symmetric_matrix
from moetopo.geometry.sources import SOURCES
from moetopo.report.data import ModelData

DPI = 90
PANEL = (3.0, 2.4)  # inches per small-multiple panel


def margins(nrows: int, height: float) -> dict[str, float]:
    """Fixed subplot margins: constrained layout and tight boxes cost most of the render time."""
    return {
        "left": 0.08,
        "right": 0.98,
        "top": 1 - 0.6 / height,
        "bottom": 0.55 / height,
        "wspace": 0.35,
        "hspace": 0.55 if nrows > 1 else 0.2,
    }


def ordered_sources(values) -> list[str]:
    """Sources in the config's order, unknown ones after, so panels line up across models."""
    present = set(values)
    return [s for s in SOURCES if s in present] + sorted(present - set(SOURCES))


def source_colour(source: str) -> str:
    index = SOURCES.index(source) if source in SOURCES else len(SOURCES)
    return f"C{index % 10}"


def png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
    return buffer.getvalue()


def panels(n: int, ncols: int = 4, size=PANEL) -> tuple[Figure, list]:
    """A figure with ``n`` small panels in rows of ``ncols``; unused panels hidden."""
    ncols = max(1, min(ncols, n))
    nrows = max(1, math.ceil(n / ncols))
    height = size[1] * nrows + 0.7
    fig = Figure(figsize=(size[0] * ncols, height))
    fig.subplots_adjust(**margins(nrows, height))
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel().tolist()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def legend(fig: Figure, ax, title: str = "") -> None:
    """One legend for all panels, in a row above them."""
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(
        handles,
        labels,
        title=title or None,
        loc="upper center",
        ncol=len(labels) + 1,
        fontsize=8,
        title_fontsize=8,
        frameon=False,
        alignment="left",
    )


def empty(message: str) -> bytes:
    fig = Figure(figsize=(6, 1.2))
    fig.text(0.5, 0.5, message, ha="center", va="center")
    return png(fig)


def redundancy(model: ModelData) -> bytes:
    """Redundancy per MoE layer, one panel per source, one bar per threshold."""
    table = model["redundancy"]
    if table.empty:
        return empty("no redundancy table")
    sources = ordered_sources(table.source.unique())
    specs = sorted(table.threshold_spec.unique(), key=lambda s: ({"r": 0, "q": 1}.get(s[0], 2), s))
    layers = sorted(table.layer.unique())
    x = np.arange(len(layers))
    width = 0.8 / len(specs)
    top = max(0.05, float(table.redundancy.max()) * 1.15)
    fig, axes = panels(len(sources))
    for ax, source in zip(axes, sources, strict=True):
        rows = table[table.source == source].set_index(["threshold_spec", "layer"]).redundancy
        for k, spec in enumerate(specs):
            values = [rows.get((spec, layer), np.nan) for layer in layers]
            ax.bar(x + (k - (len(specs) - 1) / 2) * width, values, width, label=spec)
        ax.set_title(source, fontsize=9)
        ax.tick_params(labelsize=7)
        ax.set_ylim(0, top)
        ax.set_xticks(x, [str(v) for v in layers], fontsize=7)
        ax.set_xlabel("layer", fontsize=8)
        ax.set_ylabel("redundant pair fraction", fontsize=8)
    legend(fig, axes[0], "threshold")
    return png(fig)


def choose_layers(model: ModelData, spec: str, cap: int) -> list[int]:
    """The most and the least redundant MoE layer at ``spec`` (mean over sources), then others.

    Ties go to the lower layer, so all-zero redundancy picks the first and last layer.
    """
    table = model["redundancy"]
    layers = sorted(model["expert_distances"].layer.unique())
    if cap <= 0 or not layers:
        return []
    mean = table[table.threshold_spec == spec].groupby("layer").redundancy.mean()
    score = pd.Series({layer: mean.get(layer, 0.0) for layer in layers})
    ranked = sorted(layers, key=lambda layer: (-score[layer], layer))
    least = sorted(layers, key=lambda layer: (score[layer], -layer))[0]
    chosen = list(dict.fromkeys([ranked[0], least, *ranked]))
    return sorted(chosen[:cap])


def cluster_order(matrix: np.ndarray, method: str) -> np.ndarray:
    """Leaves of the hierarchical clustering, so near experts sit next to each other."""
    if len(matrix) < 3 or not np.isfinite(matrix).all():
        return np.arange(len(matrix))
    return leaves_list(linkage(squareform(matrix, checks=False), method=method))


def distance_heatmaps(model: ModelData, layers: Sequence[int], method: str) -> bytes:
    """Distance matrices of the chosen layers (rows) for every source (columns).

    All matrices share one axes as a mosaic (one Axes per matrix renders ten times
    slower); each is scaled to its own range, dark = close.
    """
    table = model["expert_distances"]
    sources = ordered_sources(table.source.unique())
    if not layers or not sources:
        return empty("no distances")
    fig = Figure(figsize=(2.0 * len(sources), 2.1 * len(layers)))
    ax = fig.add_axes((0.01, 0.01, 0.98, 0.98))
    ax.set_axis_off()
    ax.set_xlim(0, len(sources))
    ax.set_ylim(len(layers), 0)
    for row, layer in enumerate(layers):
        for col, source in enumerate(sources):
            rows = table[(table.layer == layer) & (table.source == source)]
            if rows.empty:
                continue
            matrix = symmetric_matrix(rows.i, rows.j, rows.distance)
            order = cluster_order(matrix, method)
            shown = matrix[np.ix_(order, order)]
            np.fill_diagonal(shown, np.nan)  # blank diagonal: the colour range is the pairs'
            x0, y0, size = col + 0.12, row + 0.16, 0.8
            ax.imshow(
                shown,
                cmap="viridis",
                extent=(x0, x0 + size, y0 + size, y0),
                interpolation="nearest",
            )
            ax.text(x0 + size / 2, y0 - 0.03, f"layer {layer} · {source}", ha="center", fontsize=8)
            if len(order) <= 16:
                step = size / len(order)
                for k, expert in enumerate(order):
                    at = (k + 0.5) * step
                    ax.text(x0 - 0.01, y0 + at, str(expert), ha="right", va="center", fontsize=5)
    return png(fig)


def persistence(model: ModelData) -> bytes:
    """Persistence diagrams pooled over MoE layers, one panel per source."""
    table = model["persistence"]
    if table.empty:
        return empty("no persistence diagram")
    sources = ordered_sources(table.source.unique())
    fig, axes = panels(len(sources), size=(2.8, 2.8))
    for ax, source in zip(axes, sources, strict=True):
        rows = table[table.source == source]
        finite = rows.death[np.isfinite(rows.death)]
        top = float(max(finite.max() if len(finite) else 1.0, rows.birth.max())) * 1.1 or 1.0
        for dim, colour in ((0, "C0"), (1, "C1")):
            part = rows[rows.dim == dim]
            death = np.where(np.isfinite(part.death), part.death, top)
            for significant, face in ((True, colour), (False, "none")):
                mask = (part.significant == significant).to_numpy()
                ax.scatter(
                    part.birth[mask],
                    death[mask],
                    s=14,
                    facecolors=face,
                    edgecolors=colour,
                    label=f"H{dim}" if significant else None,
                )
        ax.plot([0, top], [0, top], color="grey", lw=0.8)
        ax.axhline(top, color="grey", lw=0.6, ls="--")
        ax.text(0, top, " ∞", va="bottom", fontsize=7)
        ax.set_title(source, fontsize=9)
        ax.set_xlabel("birth", fontsize=8)
        ax.set_ylabel("death", fontsize=8)
    legend(fig, axes[0])
    return png(fig)


CYCLE_EDGES = 4  # a complex with fewer edges cannot hold a hollow cycle: b1 = 0 by force


def cover_scale(model: ModelData) -> float | None:
    """The quantile HodgeCover selected on (the scale the one-scale views show), else the
    median scale computed; None without complexes."""
    cover, hodge = model["hodgecover"], model["hodge"]
    if "quantile" in cover and cover["quantile"].notna().any():
        return float(cover["quantile"].dropna().iloc[0])
    scales = sorted(hodge["quantile"].unique()) if len(hodge) else []
    return float(scales[len(scales) // 2]) if scales else None


def at_cover_scale(model: ModelData, table: pd.DataFrame) -> pd.DataFrame:
    scale = cover_scale(model)
    return table if scale is None else table[np.isclose(table["quantile"], scale)]


def scales(model: ModelData) -> bytes:
    """b1 of every layer's complex at every scale, one panel per source: a conclusion holds
    where it holds across scales. Hollow markers: too few edges for any cycle."""
    table = model["hodge"]
    if table.empty:
        return empty("no complexes")
    sources = ordered_sources(table.source.unique())
    fig, axes = panels(len(sources))
    for ax, source in zip(axes, sources, strict=True):
        rows = table[table.source == source]
        for k, (layer, part) in enumerate(rows.groupby("layer", sort=True)):
            part = part.sort_values("quantile")
            colour = f"C{k % 10}"
            q, b1 = part["quantile"].to_numpy(), part.betti1.to_numpy()
            ax.plot(q, b1, "-", color=colour, lw=1, label=f"layer {layer}")
            ok = (part.n_edges >= CYCLE_EDGES).to_numpy()
            for mask, face in ((ok, colour), (~ok, "none")):
                ax.scatter(q[mask], b1[mask], s=14, facecolors=face, edgecolors=colour)
        ax.set_title(f"{source} complex", fontsize=9)
        ax.set_xlabel("scale (distance quantile)", fontsize=8)
        ax.set_ylabel("β1", fontsize=8)
        ax.set_ylim(-0.3, max(1, int(rows.betti1.max())) + 0.3)
        ax.yaxis.get_major_locator().set_params(integer=True)
    legend(fig, axes[0])
    return png(fig)


def hodge(model: ModelData) -> bytes:
    """Gradient, curl and harmonic share of the edge signal's energy per layer and source,
    at HodgeCover's scale."""
    table = at_cover_scale(model, model["hodge"])
    if table.empty:
        return empty("no Hodge decomposition")
    sources = ordered_sources(table.source.unique())
    parts = ("gradient_energy", "curl_energy", "harmonic_energy")
    fig, axes = panels(len(sources))
    for ax, source in zip(axes, sources, strict=True):
        rows = table[table.source == source].sort_values("layer")
        total = rows[list(parts)].sum(axis=1).replace(0, np.nan)
        x = np.arange(len(rows))
        bottom = np.zeros(len(rows))
        for part, colour in zip(parts, ("C0", "C2", "C3"), strict=True):
            share = (rows[part] / total).fillna(0).to_numpy()
            ax.bar(x, share, bottom=bottom, color=colour, label=part.split("_")[0])
            bottom += share
        for k, betti in enumerate(rows.betti1):
            if betti > 0:
                ax.text(k, 1.02, f"β1={betti}", ha="center", fontsize=6)
        ax.set_ylim(0, 1.15)
        ax.set_xticks(x, [str(v) for v in rows.layer], fontsize=7)
        ax.set_title(f"{source} complex", fontsize=9)
        ax.set_xlabel("layer", fontsize=8)
        ax.set_ylabel("energy share", fontsize=8)
    legend(fig, axes[0])
    return png(fig)


def sheaf(model: ModelData) -> bytes:
    """Sheaf h0, h1 and spectral gap per layer, one line per source, at HodgeCover's scale."""
    table = at_cover_scale(model, model["sheaf"])
    if table.empty:
        return empty("no sheaf cohomology")
    fig, axes = panels(3, size=(3.4, 2.6))
    for ax, column in zip(axes, ("h0", "h1", "spectral_gap"), strict=True):
        for source in ordered_sources(table.source.unique()):
            rows = table[table.source == source].sort_values("layer")
            ax.plot(rows.layer, rows[column], "o-", ms=3, color=source_colour(source), label=source)
        ax.set_title(column.replace("_", " "), fontsize=9)
        ax.set_xlabel("layer", fontsize=8)
        ax.set_xticks(sorted(table.layer.unique()))
    axes[2].legend(fontsize=6, loc="best")
    return png(fig)
