"""The collaboration section: CT-MoE-style collaboration matrices S (learned, from
coactivation, from router rows), their spectra, and the coactivation complex beside them.
Every number is read from the collaboration artefacts; the sentences state the numbers
and what they were compared with, nothing more."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd

from moetopo.artefacts.views import symmetric_matrix
from moetopo.report import fmt
from moetopo.report.data import ModelData, ReportData
from moetopo.report.doc import Block, Details, Figure, Heading, Para, Table, anchor
from moetopo.report.figures import at_cover_scale, empty, panels, png

SOURCE_NAMES = {
    "learned": "learned (checkpoint)",
    "coactivation": "coactivation",
    "router": "router rows",
}
COMPLEXES = ("coactivation", "function")  # the cohomology complexes S is compared with
LEVEL = 0.05


def measured(data: ReportData) -> list[ModelData]:
    return [m for m in data.models if "collaboration" in m.tables and len(m["collaboration"])]


def sources(table: pd.DataFrame) -> list[str]:
    return [s for s in SOURCE_NAMES if s in set(table.source)]


def shown_layer(model: ModelData) -> int:
    """The last MoE layer with a learned S, else the last layer with any (CT-MoE's figures
    show the final layer)."""
    table = model["collaboration"]
    learned = table[table.source == "learned"]
    return int((learned if len(learned) else table).layer.max())


def summary_table(models: list[ModelData]) -> Table:
    """One row per model and source: ranges over its MoE layers."""
    rows = []
    for model in models:
        table = model["collaboration"]
        for source in sources(table):
            t = table[table.source == source]
            ratio = t.entropy_mean / t.entropy_ceiling
            peak = t.max_offdiag / t.uniform_offdiag
            rows.append(
                [
                    model.name,
                    SOURCE_NAMES[source],
                    fmt.count(len(t)),
                    _span(ratio, 3),
                    _span(peak, 2),
                    fmt.sig(float((t.top_eigenvalue - 1).abs().max()), 2),
                    _span(t.second_modulus, 2),
                    _stationary_cell(t),
                ]
            )
    columns = ["model", "S", "layers", "row entropy ÷ log(E−1)", "max S ÷ 1/(E−1)"]
    columns += ["|λ1 − 1|", "|λ2|", "π vs power iteration"]
    return Table(
        columns,
        rows,
        anchor="collaboration-summary",
        caption="Ranges over MoE layers. Row entropy against its ceiling log(E−1) (1 = every "
        "row uniform); largest off-diagonal entry against the uniform 1/(E−1); the largest "
        "eigenvalue's distance from 1 (general eigensolver); the second largest modulus (1: "
        "the walk on S has several closed classes or is periodic); the largest difference "
        "between the left Perron vector and a power iteration, where the vector is unique",
    )


def _stationary_cell(table: pd.DataFrame) -> str:
    """The largest π gap where π is unique, and in how many layers it is not."""
    unique = table[table.unit_multiplicity == 1]
    cell = fmt.sig(float(unique.stationary_power_gap.max()), 2) if len(unique) else ""
    several = len(table) - len(unique)
    if several:
        note = f"not unique in {several} (eigenvalue 1 repeated)"
        cell = f"{cell}; {note}" if cell else note
    return cell


def _span(values: pd.Series, digits: int) -> str:
    """min–max, or one value where both print alike."""
    low, high = fmt.fixed(float(values.min()), digits), fmt.fixed(float(values.max()), digits)
    return low if low == high else f"{low}–{high}"


def agreement_table(model: ModelData) -> Table:
    """Per layer and S: overlap with the nearest experts of each cohomology complex."""
    table = model["collaboration_agreement"]
    shown = [c for c in COMPLEXES if c in set(table.distance_source)]
    rows = []
    for (layer, source), group in table.groupby(["layer", "source"], sort=True):
        cells = [str(layer), SOURCE_NAMES.get(source, source), str(int(group.k.iloc[0]))]
        for complex_ in shown:
            hit = group[group.distance_source == complex_]
            cells.append(_agreement_cell(hit.iloc[0]) if len(hit) else fmt.MISSING)
        rows.append(cells)
    return Table(
        ["layer", "S", "k", *(f"{c} neighbours" for c in shown)],
        rows,
        anchor=anchor("collaboration-agreement", model.name),
        caption="Share of each expert's k strongest collaborators that are among its k "
        "nearest experts (mean over experts), the mean under relabelled experts in "
        "brackets, and the one-sided permutation p-value (unadjusted). † S and distance "
        "come from the same data, so agreement is expected there",
    )


def _agreement_cell(row) -> str:
    mark = " †" if row.shared_basis else ""
    return (
        f"{fmt.fixed(row.overlap, 2)} ({fmt.fixed(row.null_mean, 2)}), "
        f"p {fmt.sig(row.p_value, 2)}{mark}"
    )


def agreement_sentence(model: ModelData) -> str:
    table = model["collaboration_agreement"]
    tested = table[~table.shared_basis]
    if tested.empty:
        return "No agreement tests between S and distances of other data."
    hits = tested[tested.p_adjusted < LEVEL]
    smallest = int(tested.n_permutations.min())
    text = (
        f"{len(hits)} of {len(tested)} agreement tests between an S and a distance from other "
        f"data have a Benjamini–Hochberg adjusted p-value below {LEVEL} (adjusted over the "
        f"model's {len(table)} tests)"
    )
    if tested.exact.any():
        text += f"; layers with few experts allow only {smallest} relabellings, so p ≥ 1/{smallest}"
    return text + "."


def spread_sentence(model: ModelData, layer: int) -> str:
    table = model["collaboration"]
    parts = []
    for r in table[table.layer == layer].itertuples():
        parts.append(
            f"{SOURCE_NAMES.get(r.source, r.source)} S has mean row entropy "
            f"{fmt.fixed(r.entropy_mean, 3)} (ceiling log({r.n_experts - 1}) = "
            f"{fmt.fixed(r.entropy_ceiling, 3)}) and largest entry {fmt.fixed(r.max_offdiag, 3)} "
            f"(uniform {fmt.fixed(r.uniform_offdiag, 3)})"
        )
    return f"Layer {layer}: " + "; ".join(parts) + "."


def specialisation_sentence(model: ModelData) -> str:
    table = model.tables.get("domain_specialisation")
    if table is None or table.empty or table.specialisation.isna().all():
        return "The captured routing records no domains, so no domain specialisation."
    a, b = table.domain_a.iloc[0], table.domain_b.iloc[0]
    size = table.specialisation.abs()
    top = table.loc[size.idxmax()]
    mean, largest = fmt.fixed(float(size.mean()), 3), fmt.fixed(top.specialisation, 2)
    return (
        f"Domain specialisation ({a} against {b}, captured routing): mean |s| over experts "
        f"and layers {mean}; largest {largest} "
        f"(layer {top.layer}, expert {top.expert}: chosen by {fmt.fixed(100 * top.share_a, 1)}% "
        f"of {a} tokens and {fmt.fixed(100 * top.share_b, 1)}% of {b} tokens)."
    )


def layer_figure(model: ModelData, layer: int) -> bytes:
    """S heatmaps of one layer, their eigenvalues, the coactivation complex with each
    expert's strongest collaborator, and the layer's domain specialisation."""
    entries = model["collaboration_entries"]
    entries = entries[entries.layer == layer]
    shown = sources(entries)
    if not shown:
        return empty(f"no collaboration matrix for layer {layer}")
    specialised = _specialisation(model, layer)
    fig, axes = panels(len(shown) + 2 + (specialised is not None), ncols=3, size=(3.2, 2.8))
    matrices = {s: _square(entries[entries.source == s]) for s in shown}
    for ax, source in zip(axes, shown, strict=False):
        ax.imshow(matrices[source], cmap="viridis", vmin=0)
        top = fmt.fixed(float(matrices[source].max()), 3)
        ax.set_title(f"{SOURCE_NAMES[source]} S\n(dark 0, bright {top})", fontsize=8)
        ax.set_xlabel("partner j", fontsize=7)
        ax.set_ylabel("expert i", fontsize=7)
        ax.tick_params(labelsize=6)
    _spectrum(axes[len(shown)], model["collaboration"], layer, shown)
    _complex(axes[len(shown) + 1], model, layer, matrices[shown[0]], shown[0])
    if specialised is not None:
        ax = axes[-1]
        ax.bar(specialised.expert, specialised.specialisation, color="C2")
        ax.axhline(0, color="k", lw=0.5)
        ax.set_ylim(-1.05, 1.05)
        ax.set_title(f"specialisation ({specialised.domain_a.iloc[0]} +1, "
                     f"{specialised.domain_b.iloc[0]} −1)", fontsize=8)  # fmt: skip
        ax.set_xlabel("expert", fontsize=7)
        ax.tick_params(labelsize=6)
    return png(fig)


def _square(rows: pd.DataFrame) -> np.ndarray:
    n = int(rows.i.max()) + 1
    matrix = np.zeros((n, n))
    matrix[rows.i.to_numpy(), rows.j.to_numpy()] = rows.weight.to_numpy()
    return matrix


def _specialisation(model: ModelData, layer: int) -> pd.DataFrame | None:
    table = model.tables.get("domain_specialisation")
    if table is None or table.empty:
        return None
    rows = table[table.layer == layer]
    return rows if len(rows) else None


def _spectrum(ax, table: pd.DataFrame, layer: int, shown: list[str]) -> None:
    """Eigenvalues in the complex plane, one marker per source, with the unit circle."""
    angle = np.linspace(0, 2 * np.pi, 200)
    ax.plot(np.cos(angle), np.sin(angle), color="0.8", lw=0.6)
    for k, source in enumerate(shown):
        row = table[(table.layer == layer) & (table.source == source)].iloc[0]
        ax.scatter(row.eigenvalues_real, row.eigenvalues_imag, s=14, marker="os^"[k % 3],
                   facecolors="none", edgecolors=f"C{k}", label=SOURCE_NAMES[source])  # fmt: skip
    ax.set_aspect("equal")
    ax.set_xlim(-1.1, 1.1)
    ax.set_ylim(-1.1, 1.1)
    ax.set_title("eigenvalues of S", fontsize=8)
    ax.tick_params(labelsize=6)
    ax.legend(fontsize=6, frameon=False, loc="lower left")


def _complex(ax, model: ModelData, layer: int, s: np.ndarray, source: str) -> None:
    """The coactivation complex at HodgeCover's scale (edges and filled triangles), and an
    arrow from each expert to its strongest collaborator in S."""
    distances = model["expert_distances"]
    rows = distances[(distances.layer == layer) & (distances.source == "coactivation")]
    hodge = at_cover_scale(model, model["hodge"])
    scale = hodge[(hodge.layer == layer) & (hodge.source == "coactivation")]
    n = len(s)
    angle = 2 * np.pi * np.arange(n) / n
    xy = np.column_stack([np.cos(angle), np.sin(angle)])
    if len(rows) and len(scale):
        epsilon = float(scale.epsilon.iloc[0])
        d = symmetric_matrix(rows.i, rows.j, rows.distance.to_numpy(), n)
        edge = (d <= epsilon) & ~np.eye(n, dtype=bool)
        for a, b, c in itertools.combinations(range(n), 3):
            if edge[a, b] and edge[b, c] and edge[a, c]:
                ax.fill(*xy[[a, b, c]].T, color="C0", alpha=0.12, lw=0)
        for a, b in zip(*np.nonzero(np.triu(edge)), strict=True):
            ax.plot(*xy[[a, b]].T, color="C0", lw=0.8)
        title = f"coactivation complex, ε = {fmt.sig(epsilon, 3)}"
    else:
        title = "no coactivation complex"
    partner = np.argmax(np.where(np.eye(n, dtype=bool), -np.inf, s), axis=1)
    for a, b in enumerate(partner):
        ax.annotate("", xy=0.88 * xy[b] + 0.12 * xy[a], xytext=xy[a],
                    arrowprops={"arrowstyle": "->", "color": "C3", "lw": 0.8})  # fmt: skip
    ax.scatter(*xy.T, s=80, color="white", edgecolors="k", zorder=3)
    for e, (x, y) in enumerate(xy):
        ax.text(x, y, str(e), ha="center", va="center", fontsize=6, zorder=4)
    ax.set_title(f"{title}\n→ strongest partner in {SOURCE_NAMES[source]} S", fontsize=8)
    ax.set_xlim(-1.25, 1.25)  # fixed: two experts alone lie on a line of no height
    ax.set_ylim(-1.25, 1.25)
    ax.set_aspect("equal")
    ax.set_axis_off()


def model_blocks(model: ModelData) -> Details:
    layer = shown_layer(model)
    blocks: list[Block] = [
        Para(spread_sentence(model, layer)),
        Figure(
            f"figures/collaboration/{model.name}.png",
            layer_figure(model, layer),
            f"Layer {layer}: each S (rows sum to 1, zero diagonal), its eigenvalues, the "
            "coactivation complex of the cohomology stage (experts closer than ε joined, "
            "triangles filled) with an arrow from each expert to its strongest collaborator, "
            "and each expert's domain specialisation.",
        ),
        agreement_table(model),
        Para(agreement_sentence(model)),
        Para(specialisation_sentence(model)),
    ]
    return Details(model.name, blocks, anchor=anchor("collaboration", model.name))


def collaboration_blocks(data: ReportData) -> list[Block]:
    models = measured(data)
    if not models:
        return []
    intro = (
        "Collaboration matrices S as CT-MoE defines them (a softmax over each row's "
        "off-diagonal of a symmetric score): learned where the checkpoint carries CT-MoE's "
        "parameter, from the rate at which routing selects two experts together, and from "
        "the cosine of router rows. The eigenvalues come from a general eigensolver, so the "
        "largest of a row-stochastic S is 1."
    )
    return [
        Heading(2, "Expert collaboration", "collaboration"),
        Para(intro),
        summary_table(models),
        *[model_blocks(m) for m in models],
    ]
