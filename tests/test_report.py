"""The report: self-contained HTML whose numbers are the artefacts', Markdown twin, rendering.

A synthetic artefact set (written with the real schemas; the conjecture table by
the real stage functions) keeps these tests fast; the workflow test runs the
pipeline on tiny checkpoints and checks the same things plus `snakemake --report`.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from html.parser import HTMLParser
from pathlib import Path

import matplotlib.image
import numpy as np
import pandas as pd
import pytest

from moetopo.artefacts import read_table, write_table
from moetopo.report import fmt
from moetopo.report.build import write_report
from moetopo.report.data import load_report, model_files, pair_files, study_files
from moetopo.report.figures import choose_layers
from moetopo.stages.conjecture import conjecture_rows, conjecture_rows_by_score, model_tables

from conftest import SNAKEFILE

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ["router_l1", "coactivation"]
SPECS = ["r0.25", "r0.5", "q0.1"]
LAYERS = [1, 2]
N_EXPERTS = 6
MODELS = ["m0", "m1", "m2", "m3", "m4-ft"]
PRIMARY = {
    "metric": "h1_count_per_active_param",
    "source": "router_l1",
    "statistic": "partial_spearman",
    "level": "model",
}
PAIR = ("m0", "m4-ft")
PNG = b"\x89PNG\r\n\x1a\n"
VOID = {"meta", "img", "br", "hr", "link", "input", "col", "wbr", "source"}


# --- a synthetic artefact set ---------------------------------------------------------


def summary(k: int) -> dict:
    total, active = 100_000 * (k + 1) + 1234, 40_000 + 1000 * k
    return {
        "family": ["mixtral", "olmoe"][k % 2],
        "architecture": "TinyForCausalLM",
        "detected_by": "given",
        "n_layers": 3,
        "moe_layers": LAYERS,
        "dense_layers": [0],
        "n_experts": N_EXPERTS,
        "top_k": 2,
        "n_shared_experts": 0,
        "hidden_size": 32,
        "total_params": total,
        "activated_params": active,
        "expert_params": total // 2,
        "dtypes": {"BF16": total},
        "routing": {"rule": "softmax_topk"},
        "shards": [
            {
                "name": f"model-0000{s}-of-00002.safetensors",
                "bytes": 5000 + s,
                "digest": f"{s}" * 64,
            }
            for s in (1, 2)
        ],
        "total_bytes": 10003,
        "warnings": [],
    }


def model_tables_for(k: int, rng: np.random.Generator) -> tuple[dict, pd.DataFrame]:
    """Per-model artefacts; m0 has redundant experts 0 and 1 in layer 2 by router_l1."""
    i, j = np.triu_indices(N_EXPERTS, 1)
    distances, redundancy, persistence, sheaf, hodge, cover, summary_rows = ([] for _ in range(7))
    for layer in LAYERS:
        for source in SOURCES:
            d = rng.uniform(1.0, 2.0, i.size)
            planted = k == 0 and layer == 2 and source == "router_l1"
            if planted:
                d[0] = 0.01
            distances.append(
                pd.DataFrame(
                    {
                        "layer": layer,
                        "source": source,
                        "i": i,
                        "j": j,
                        "distance": d,
                        "inputs": "captured" if source == "function" else "weights",
                    }
                )  # fmt: skip
            )
            for spec in SPECS:
                pairs = 6 if planted and spec == "r0.5" else int(rng.integers(0, 2))
                redundancy.append(
                    {
                        "layer": layer,
                        "source": source,
                        "threshold_spec": spec,
                        "threshold": 0.5,
                        "n_experts": N_EXPERTS,
                        "redundant_pairs": pairs,
                        "total_pairs": i.size,
                        "redundancy": pairs / i.size,
                        "n_groups": min(pairs, 1),
                        "largest_group": 2 if pairs else 1,
                        "mean_distance": 1.5,
                        "n_clusters": N_EXPERTS - pairs,
                    }
                )
            deaths = np.append(rng.uniform(0.5, 1.0, N_EXPERTS - 1), np.inf)
            h1 = int(k % 2 == 0) + (layer == 2)
            for dim, births, ends in (
                (0, np.zeros(N_EXPERTS), deaths),
                (1, np.full(2, 1.2), np.array([1.6, 1.25])),
            ):
                for b, e, n in zip(births, ends, range(len(births)), strict=True):
                    persistence.append(
                        {
                            "layer": layer,
                            "source": source,
                            "dim": dim,
                            "birth": b,
                            "death": e,
                            "persistence": e - b,
                            "significant": dim == 0 or n < h1 - (layer == 2),
                            "p_value": 0.01 if dim == 0 or n < h1 - (layer == 2) else 0.5,
                            "threshold": 0.1,
                        }
                    )
            sheaf.append(
                {
                    "layer": layer,
                    "source": source,
                    "quantile": 0.3,
                    "epsilon": 1.3,
                    "stalk_dim": 2,
                    "h0": int(rng.integers(0, 4)),
                    "h1": int(rng.integers(0, 9)),
                    "eigenvalues": [0.0, 0.1],
                    "rtol": 1e-8,
                    "n_edges": 5,
                    "normalised_eigenvalues": [0.0, 0.05],
                    "spectral_gap": 0.05,
                    "weighting": "coactivation",
                }
            )
            betti = int(layer == 2 and k % 2 == 0)
            hodge.append(
                {
                    "layer": layer,
                    "source": source,
                    "quantile": 0.3,
                    "epsilon": 1.3,
                    "signal_source": "function",
                    "signal_inputs": "captured",
                    "gradient_energy": 8.0 + k,
                    "curl_energy": 1.5,
                    "harmonic_energy": 0.5 * betti,
                    "harmonic_fraction": 0.5 * betti / (9.5 + k + 0.5 * betti),
                    "betti1": betti,
                    "n_edges": 5,
                    "n_triangles": 1,
                    "residual": 1e-16,
                    "iterations": 1,
                }
            )
            for metric, value in (("h1_significant", h1), ("h1_significant_persistence", 0.4 * h1)):
                summary_rows.append(
                    {"layer": layer, "source": source, "metric": metric, "value": float(value)}
                )
        for method in ("hodgecover", "load", "groups"):
            rank = rng.permutation(N_EXPERTS) if method != "groups" else np.arange(N_EXPERTS)
            for keep in (2, 4):
                cover.append(
                    pd.DataFrame(
                        {
                            "layer": layer,
                            "method": method,
                            "keep": keep,
                            "expert": np.arange(N_EXPERTS),
                            "kept": rank < keep,
                            "quantile": 0.3,
                            "barrier_inputs": "captured",
                            "rank": rank,
                        }
                    )
                )
    agreement = pd.DataFrame(
        {
            "layer": LAYERS,
            "n_tokens": 300,
            "load_spearman": [0.91, 0.42] if k else [np.nan, np.nan],
            "topk_overlap": [0.7, np.nan],
            "same_tokens": [True, False],
        }
    )
    tables = {
        "expert_distances": pd.concat(distances),
        "redundancy": pd.DataFrame(redundancy),
        "persistence": pd.DataFrame(persistence),
        "sheaf": pd.DataFrame(sheaf),
        "hodge": pd.DataFrame(hodge),
        "hodgecover": pd.concat(cover),
        "routing_agreement": agreement.iloc[: 0 if k == 3 else 2],
    }
    return tables, pd.DataFrame(summary_rows)


def pair_tables(root: Path) -> None:
    meta = {"pair": {"base": PAIR[0], "tuned": PAIR[1]}}
    scaffold = pd.DataFrame(
        {
            "layer": [0, 1, 2],
            "q_fraction": [0.2, 0.9, 0.4],
            "k_fraction": [0.1, 0.2, 0.3],
            "o_fraction": [0.3, 0.8, 0.2],
            "is_scaffold": [False, True, False],
            "v_fraction": [0.5, 0.5, 0.5],
            "relative_depth": [1 / 6, 0.5, 5 / 6],
            "q_change": 0.1,
            "k_change": 0.1,
            "v_change": 0.1,
            "o_change": 0.1,
        }
    )
    crossref = pd.DataFrame(
        {
            "layer": [0, 1, 2],
            "is_scaffold": [False, True, False],
            "is_moe": [False, True, True],
            "redundancy": [np.nan, 0.6, 0.1],
            "routing_dominated": [False, True, False],
            "router_change": [np.nan, 0.3, 0.05],
            "expert_change": [np.nan, 0.1, 0.1],
            "expert_change_max": [np.nan, 0.2, 0.15],
            "router_to_expert": [np.nan, 3.0, 0.5],
        }
    )
    files = pair_files(root, "--".join(PAIR))
    write_table(
        scaffold,
        files["scaffold"],
        "scaffold",
        extra=meta,
        params={"q_min": 0.5, "o_min": 0.5, "k_max": 0.5},
    )
    write_table(
        crossref,
        files["crossref"],
        "crossref",
        extra=meta,
        params={"source": "router_l1", "threshold_spec": "r0.5", "min_redundancy": 0.5},
        warnings=["a planted crossref warning"],
    )
    write_table(
        pd.DataFrame(
            {
                "scope": ["projection"],
                "statistic": ["shifted_fraction"],
                "projection": ["q"],
                "depth_low": [np.nan],
                "depth_high": [np.nan],
                "estimate": [0.5],
                "ci_low": [np.nan],
                "ci_high": [np.nan],
                "ci_method": ["none"],
                "n_pairs": [1],
                "n_values": [3],
                "reason": ["one pair: no interval"],
            }
        ),
        study_files(root, True)["pairs_summary"],
        "pairs_summary",
    )


def write_artefacts(root: Path) -> None:
    rng = np.random.default_rng(7)
    summaries, layer_summaries = {}, {}
    for k, name in enumerate(MODELS):
        files = model_files(root, name)
        files["summary"].parent.mkdir(parents=True)
        summaries[name] = summary(k)
        files["summary"].write_text(json.dumps(summaries[name]))
        tables, layer_summaries[name] = model_tables_for(k, rng)
        for kind, frame in tables.items():
            write_table(frame, files[kind], kind, warnings=["planted"] if k == 2 else ())
    scores = [{"model": n, "score": 2.0 - 0.1 * k} for k, n in enumerate(MODELS)]
    models, layers = model_tables(scores, summaries, layer_summaries)
    gaps = [{"model": n, "score": 0.01 * k} for k, n in enumerate(MODELS)]
    table = conjecture_rows_by_score(
        {
            "score": (models, layers, False),
            "gap": (*model_tables(gaps, summaries, layer_summaries), False),
        },
        primary_score="score",
        confidence_level=0.95,
        n_resamples=199,
        seed=0,
        min_models=3,
        primary=PRIMARY,
    )
    study = study_files(root, True)
    params = {
        "other_scores": {"gap": "lower"},
        "primary_score": "score",
        "directions": {"score": False, "gap": False},
        "higher_is_better": False,
        "confidence_level": 0.95,
        "n_resamples": 199,
        "seed": 0,
        "min_models": 3,
    }
    write_table(models, study["stats_models"], "stats_models", params=params)
    write_table(
        table,
        study["conjecture"],
        "conjecture",
        params=params,
    )
    pair_tables(root)


def render(root: Path, out: Path, models, pairs, config: dict) -> None:
    data = load_report(
        [(m, f"models/{m}", model_files(root, m)) for m in models],
        [(b, t, pair_files(root, f"{b}--{t}")) for b, t in pairs],
        study_files(root, bool(pairs)),
        config,
    )
    write_report(data, out)


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> tuple[Path, Path]:
    """(results root, report directory) of the synthetic set."""
    root = tmp_path_factory.mktemp("results")
    write_artefacts(root)
    out = root / "report"
    render(root, out, MODELS, [PAIR], {"clusters": {"linkage": "average"}})
    return root, out


# --- reading the page back ------------------------------------------------------------


class Page(HTMLParser):
    """The page's tables (by id), images and references; fails on unbalanced tags."""

    def __init__(self, text: str):
        super().__init__()
        self.stack: list[str] = []
        self.tables: dict[str, list[list[str]]] = {}
        self.images: list[dict] = []
        self.references: list[tuple[str, str, str]] = []
        self.tags: set[str] = set()
        self._table: str | None = None
        self._cell: list[str] | None = None
        self.feed(text)
        self.close()
        assert not self.stack, f"unclosed tags {self.stack}"

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.add(tag)
        if tag not in VOID:
            self.stack.append(tag)
        self.references += [(tag, k, v) for k, v in attrs.items() if k in ("src", "href")]
        if tag == "img":
            self.images.append(attrs)
        elif tag == "table":
            self._table = attrs.get("id", f"table-{len(self.tables)}")
            self.tables[self._table] = []
        elif tag == "tr" and self._table:
            self.tables[self._table].append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag in VOID:
            return
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes {self.stack[-1:]}"
        self.stack.pop()
        if tag in ("td", "th") and self._table is not None:
            self.tables[self._table][-1].append("".join(self._cell))
            self._cell = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)

    def rows(self, table: str) -> list[dict[str, str]]:
        header, *body = self.tables[table]
        return [dict(zip(header, row, strict=True)) for row in body]


def number(text: str) -> float:
    return float(text.replace(",", "").replace("\u2212", "-"))


def close(text: str, value: float, digits: int = 3) -> bool:
    """The printed text is the artefact value at the printed precision."""
    if pd.isna(value):
        return text == fmt.MISSING
    return abs(number(text) - value) <= 0.5 * 10**-digits + 1e-12


def check_numbers(page: Page, root: Path, models: list[str], pairs: list[str]) -> None:
    """Cells of the report's tables against the Parquet and JSON artefacts."""
    conjecture, _ = read_table(root / "stats" / "conjecture.parquet")
    tables = [("conjecture-model", "score", "model"), ("conjecture-layer", "score", "layer")]
    tables += [("conjecture-gap-model", "gap", "model")] if "gap" in set(conjecture.score) else []
    for name, score, level in tables:
        shown = page.rows(name)
        expected = conjecture[(conjecture.level == level) & (conjecture.score == score)]
        assert len(shown) == len(expected)
        for cell, row in zip(shown, expected.itertuples(), strict=True):
            assert (cell["metric"], cell["source"], cell["statistic"]) == (
                row.metric,
                row.source,
                row.statistic,
            )
            assert close(cell["estimate"], row.estimate)
            assert cell["interval"] == fmt.interval(row.ci_low, row.ci_high)
            assert cell["p adjusted"] == fmt.sig(row.p_adjusted)
            error = f" ± {fmt.sig(row.p_mc_error)}" if row.p_mc_error > 0 else ""
            assert cell["p"] == fmt.sig(row.p_value) + error
            assert cell["verdict"] == row.verdict and cell["reason"] == row.reason
    summary_rows = {r["model"]: r for r in page.rows("models-summary")}
    for model in models:
        facts = json.loads((root / model / "model.json").read_text())
        assert number(summary_rows[model]["total params"]) == facts["total_params"]
        assert number(summary_rows[model]["activated params"]) == facts["activated_params"]
        redundancy, _ = read_table(root / model / "redundancy.parquet")
        redundancy = redundancy[redundancy.threshold_spec == "r0.5"]
        for cell in page.rows(f"redundancy-{model.replace('.', '_')}"):
            for source, text in list(cell.items())[1:]:
                value = redundancy[
                    (redundancy.layer == int(cell["layer"])) & (redundancy.source == source)
                ].redundancy.item()
                assert close(text, value)
        agreement, _ = read_table(root / model / "routing_agreement.parquet")
        shown = page.rows(f"agreement-{model.replace('.', '_')}")
        for cell, row in zip(shown, agreement.itertuples(), strict=True):
            assert close(cell["load rank correlation"], row.load_spearman)
            assert close(cell["top-k overlap"], row.topk_overlap)
        digests = {
            (r["model"], r["shard"]): r["header sha256"] for r in page.rows("provenance-shards")
        }
        for shard in facts["shards"]:
            assert digests[(model, shard["name"])] == shard["digest"]
    for pair in pairs:
        crossref, _ = read_table(root / "pairs" / pair / "crossref.parquet")
        shown = page.rows(f"crossref-{pair.replace('.', '_')}")
        for cell, row in zip(shown, crossref.itertuples(), strict=True):
            assert cell["scaffold"] == fmt.flag(row.is_scaffold)
            assert cell["routing-dominated"] == fmt.flag(row.routing_dominated)
            assert close(cell["redundancy"], row.redundancy)
            assert close(cell["router change"], row.router_change)
        scaffold, _ = read_table(root / "pairs" / pair / "scaffold.parquet")
        shown = page.rows(f"scaffold-{pair.replace('.', '_')}")
        for cell, row in zip(shown, scaffold.itertuples(), strict=True):
            assert close(cell["q shifted"], row.q_fraction)
            assert close(cell["k shifted"], row.k_fraction)


def check_self_contained(out: Path) -> Page:
    page = Page((out / "index.html").read_text(encoding="utf-8"))
    assert not page.tags & {"script", "link", "iframe", "object", "embed"}
    for tag, attr, value in page.references:
        assert (tag, attr) in {("a", "href"), ("img", "src")}, (tag, attr)
        assert value.startswith("#" if tag == "a" else "data:image/png;base64,"), value[:40]
    files = sorted(p.relative_to(out).as_posix() for p in (out / "figures").rglob("*.png"))
    assert sorted(img["data-file"] for img in page.images) == files
    for img in page.images:
        png = base64.b64decode(img["src"].split(",", 1)[1], validate=True)
        assert png.startswith(PNG) and png == (out / img["data-file"]).read_bytes()
    return page


# --- tests ----------------------------------------------------------------------------


def test_html_parses_and_every_figure_is_embedded(report):
    _, out = report
    page = check_self_contained(out)
    assert len(page.images) == 6 * len(MODELS) + 2 + 2  # 6 per model, 2 per pair, 2 conjecture
    assert "http://" not in (out / "index.html").read_text()


def test_numbers_in_the_report_equal_the_artefacts(report):
    root, out = report
    page = Page((out / "index.html").read_text(encoding="utf-8"))
    check_numbers(page, root, MODELS, ["--".join(PAIR)])


def test_headline_findings_name_what_was_planted(report):
    root, out = report
    page = Page((out / "index.html").read_text(encoding="utf-8"))
    findings = {r["model"]: r for r in page.rows("findings-models")}
    assert "layer 2 by router_l1, 6 of 15 expert pairs" in findings["m0"]["redundancy"]
    assert "no redundant experts at r0.5" not in findings["m0"]["redundancy"]
    routing = {m: row["inputs and routing probe"] for m, row in findings.items()}
    assert "not measured" in routing["m3"]  # no captured routing
    assert "from 0.420 (layer 2) to 0.910 (layer 1)" in routing["m1"]
    assert "top-k overlap 0.700 (layer 1)." in routing["m1"]
    assert "Experts compared" not in routing["m1"]  # no function distance: nothing to say
    assert "Harmonic flow (betti1 > 0) in layers 2" in findings["m0"]["loops and harmonic flow"]
    (pair,) = page.rows("findings-pairs")
    assert "Scaffold layers" in pair["attention scaffold"] and ": 1." in pair["attention scaffold"]
    assert (
        "Routing-dominated layers (scaffold layers whose experts are redundant): 1."
        in (pair["router and experts"])
    )
    assert "router moved more than the experts in layers 1" in pair["router and experts"]
    text = (out / "index.html").read_text()
    assert "a planted crossref warning" in text and "planted" in text


def test_the_findings_say_which_inputs_the_experts_were_compared_on():
    from moetopo.report.findings import function_inputs

    def table(origins):
        rows = [("function", layer, o) for layer, o in enumerate(origins)]
        rows.append(("router_l1", 0, "router rows"))
        return {"expert_distances": pd.DataFrame(rows, columns=["source", "layer", "inputs"])}

    assert function_inputs(table(["captured"] * 3)) == (
        "Experts compared on captured router inputs in every MoE layer."
    )
    assert function_inputs(table(["captured", "probe", "captured"])) == (
        "Experts compared on captured router inputs in layers 0, 2, on the weights-only "
        "probe in layers 1."
    )
    assert "weights-only probe in every MoE layer" in function_inputs(table(["probe"]))


def test_the_verdict_in_words_is_the_artefacts(report):
    root, out = report
    conjecture, _ = read_table(root / "stats" / "conjecture.parquet")
    conjecture = conjecture[conjecture.score == "score"]  # the lead's; gap has its own table
    rows = conjecture[
        (conjecture.metric == "h1_count_per_active_param")
        & (conjecture.source == "router_l1")
        & (conjecture.level == "model")
    ]
    page = (out / "report.md").read_text(encoding="utf-8")
    verdict = page.split("## What stands out", 1)[1].split("##", 1)[0]
    for row in rows.itertuples():
        if np.isfinite(row.estimate):
            assert f"= {fmt.fixed(row.estimate)}, {row.ci_method} interval" in verdict
        assert f": {row.verdict}" in verdict
    assert f"Measured across {rows.n_models.iloc[0]} models" in verdict
    # the lead asks the declared primary question and answers it from its row alone
    lead = verdict.split("**", 2)[1]
    assert lead.startswith("Primary test, declared before the run: does the number of significant")
    assert "track the score, controlling for size?" in lead
    primary = rows[rows.primary].iloc[0]
    assert primary.statistic == "partial_spearman"
    answer = lead.split("is better). ", 1)[1]
    if np.isfinite(primary.estimate):
        assert answer.startswith(f"Spearman ρ controlling for size = {fmt.fixed(primary.estimate)}")
        assert f"(adjusted for multiple tests {fmt.sig(primary.p_adjusted)})" in answer
    else:  # the synthetic score is a function of size: nothing left to correlate
        assert answer == f"Spearman ρ controlling for size: {primary.verdict} ({primary.reason})."
    other = "The other statistics of this metric and source, with verdicts adjusted for the "
    assert other + "number of tests: across models" in verdict
    model_level = conjecture[conjecture.level == "model"]
    # no decided verdict rests on a test that the adjustment for many tests undoes
    decided = model_level.verdict != "inconclusive"
    assert (model_level.p_adjusted[decided] <= 0.05).all()
    counts = model_level.verdict.value_counts()
    assert f"{len(model_level)} tests: {counts.get('supported', 0)} supported" in page
    for caveat in ("controlling for size", "resample whole models", "m4-ft"):
        assert caveat in verdict


def test_a_study_without_any_nonzero_metric_says_not_measurable():
    from types import SimpleNamespace

    from moetopo.report.findings import conjecture_verdict

    names = [f"m{k}" for k in range(6)]
    models = pd.DataFrame(
        {
            "model": names,
            "source": "router_l1",
            "metric": "h1_count",
            "score": np.linspace(1.5, 2.5, 6),
            "h1_per_active_param": 0.0,
            "h1_total": 0.0,
            "activated_params": np.geomspace(1e5, 1e8, 6),
            "total_params": np.geomspace(1e6, 1e9, 6),
        }
    )
    layers = models.assign(layer=0, per_active_param=0.0)[
        ["model", "layer", "source", "metric", "score", "per_active_param"]
    ]
    table = conjecture_rows(
        models, layers, higher_is_better=False, confidence_level=0.95, n_resamples=199,
        seed=0, min_models=3, primary=PRIMARY,
    )  # fmt: skip
    assert (table.n_nonzero == 0).all() and (table.verdict == "inconclusive").all()
    assert table.reason.str.startswith("no scored model has a nonzero").all()
    assert "regression" in set(table.statistic)
    data = SimpleNamespace(
        conjecture=table,
        settings={},
        conjecture_params={"confidence_level": 0.95, "higher_is_better": False},
    )
    lead, tallies = conjecture_verdict(data)
    assert lead.startswith("Not measurable here: does the number of significant H1 bars per")
    assert "None of the 6 scored models (a fine-tune counted with its base) has a nonzero" in lead
    assert tallies.startswith("All metrics and sources, model level: 5 tests: 0 supported")


def test_markdown_twin_has_the_sections_and_links_its_figures(report):
    _, out = report
    text = (out / "report.md").read_text(encoding="utf-8")
    for heading in (
        "## What stands out",
        "## Models",
        "## Fine-tunes",
        "## Conjecture",
        "## Provenance",
        "### m0 —",
    ):
        assert heading in text
    links = [
        line.split("](", 1)[1].rstrip(")") for line in text.splitlines() if line.startswith("![")
    ]
    assert links and all((out / link).is_file() for link in links)
    assert (out / "tables" / "conjecture-model.tsv").read_text().startswith("metric\tsource")


def test_other_scores_have_their_own_tables_and_the_lead_keeps_to_the_primary(report):
    root, out = report
    table = read_table(study_files(root, True)["conjecture"])[0]
    tsv = {
        name: pd.read_csv(out / "tables" / f"{name}.tsv", sep="\t")
        for name in ("conjecture-model", "conjecture-gap-model")
    }
    for name, score in (("conjecture-model", "score"), ("conjecture-gap-model", "gap")):
        rows = table[(table.score == score) & (table.level == "model")]
        assert len(tsv[name]) == len(rows) > 0
    text = (out / "report.md").read_text(encoding="utf-8")
    assert "### Other scores" in text
    assert "gap (lower is better), " in text
    data = load_report([], [], study_files(root, True), {})
    assert set(data.conjecture.score) == {"score"} and set(data.other_scores.score) == {"gap"}


def test_heatmap_layers_are_the_most_and_least_redundant(report):
    root, _ = report
    data = load_report([("m0", "", model_files(root, "m0"))], [], study_files(root, False), {})
    assert choose_layers(data.models[0], "r0.5", 1) == [2]
    assert choose_layers(data.models[0], "r0.5", 2) == [1, 2]
    assert choose_layers(data.models[0], "r0.5", 0) == []


CHROMIUM = next(
    filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None
)


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed")
def test_report_renders_in_headless_chromium(report, tmp_path):
    _, out = report
    shot = tmp_path / "shot.png"
    command = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        f"--screenshot={shot}",
        "--window-size=1280,2000",
        (out / "index.html").as_uri(),
    ]
    subprocess.run(command, capture_output=True, timeout=120, check=True)
    pixels = matplotlib.image.imread(shot)[..., :3]
    assert pixels.shape[:2] == (2000, 1280)
    ink = (pixels < 0.9).any(axis=-1).mean()
    colours = len(np.unique((pixels * 255).astype(np.uint8).reshape(-1, 3), axis=0))
    assert ink > 0.05 and colours > 20, (ink, colours)


@pytest.mark.workflow
def test_workflow_writes_the_report_and_snakemake_report_succeeds(tmp_path):
    from moetopo.fixtures import random_model, write_family

    models = tmp_path / "models"
    for name, family, seed in (
        ("a", "qwen2_moe", 40),
        ("b", "mixtral", 41),
        ("a.ft", "qwen2_moe", 40),
    ):
        tiny = random_model(n_layers=2, n_experts=6, hidden=32, intermediate=16, seed=seed)
        if name == "a.ft":
            tiny.layers[0].q *= 1.5
            tiny.layers[0].o *= 1.5
            tiny.layers[1].router *= 1.2
        write_family(tiny, family, models / name, n_shards=1)
    (tmp_path / "models.tsv").write_text(
        "model\tpath\tscore\n"
        + "".join(f"{n}\t{models / n}\t{s}\n" for n, s in (("a", 1.5), ("b", 2.0), ("a.ft", 1.4)))
    )
    (tmp_path / "pairs.tsv").write_text("base\ttuned\na\ta.ft\n")
    (tmp_path / "quick.yaml").write_text(
        f"models: {tmp_path / 'models.tsv'}\npairs: {tmp_path / 'pairs.tsv'}\n"
        "geometry: {sources: [router_l1, coactivation]}\nprobe: {routing_tokens: 64}\n"
        "cohomology: {hodge_signal: router_l1}\n"
        "conjecture: {n_resamples: 199, min_models: 3}\npairs_summary: {n_resamples: 199}\n"
    )
    config = [str(ROOT / "config" / "config.yaml"), str(tmp_path / "quick.yaml")]
    command = [
        sys.executable,
        "-m",
        "snakemake",
        "--snakefile",
        str(SNAKEFILE),
        "--directory",
        str(tmp_path),
        "--configfile",
        *config,
    ]
    env = os.environ | {"PYTHONPATH": ""}
    done = subprocess.run([*command, "--cores", "2"], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    out = tmp_path / "results" / "report"
    page = check_self_contained(out)
    check_numbers(page, tmp_path / "results", ["a", "b", "a.ft"], ["a--a.ft"])
    assert "## Conjecture" in (out / "report.md").read_text()
    archive = tmp_path / "report.zip"
    done = subprocess.run(
        [*command, "--report", str(archive)], capture_output=True, text=True, env=env
    )
    assert done.returncode == 0, done.stderr[-3000:]
    names = zipfile.ZipFile(archive).namelist()
    assert any(n.endswith("headline.png") for n in names)
    assert any(n.endswith("conjecture-model.tsv") for n in names)


def test_markdown_never_passes_names_through_as_html():
    from moetopo.report.doc import Bullets, Details, Figure, Heading, Para, Pre, Table
    from moetopo.report.markdown import render_markdown

    evil = "<script>alert(1)</script>"
    blocks = [
        Heading(2, evil),
        Para(evil),
        Para(evil, "verdict"),
        Bullets([evil]),
        Table([evil], [[evil]], caption=evil),
        Figure("figures/x.png", b"", evil),
        Details(evil, [Para(evil)]),
        Pre(f"```\n{evil}\n````"),
    ]
    text = render_markdown(blocks)
    outside_code = re.split(r"`{5}yaml\n.*?\n`{5}", text, flags=re.S)
    assert len(outside_code) == 2  # the fence outgrew the backticks inside it
    assert all("<script" not in part for part in outside_code)
    assert text.count("&lt;script>") == 11  # each place a name can stand


def test_a_fine_tune_and_its_base_are_one_model_of_evidence():
    rng = np.random.default_rng(5)
    names = [f"m{k}" for k in range(7)] + ["m0-ft", "m0-ft-ft"]
    h1 = rng.uniform(0.1, 1.0, len(names))
    models = pd.DataFrame(
        {
            "model": names,
            "source": "router_l1",
            "metric": "h1_count",
            "score": 2.0 - h1 + 0.01 * rng.normal(size=len(names)),
            "h1_per_active_param": h1,
            "h1_total": h1 * 1e6,
            "activated_params": 1e6,
            "total_params": 1e6,
        }
    )
    layers = models.assign(layer=0, per_active_param=h1)[
        ["model", "layer", "source", "metric", "score", "per_active_param"]
    ]
    clusters = {"m0-ft": "m0", "m0-ft-ft": "m0"}
    table = conjecture_rows(
        models, layers, higher_is_better=False, confidence_level=0.95, n_resamples=199,
        seed=0, min_models=3, primary=PRIMARY, clusters=clusters,
    )  # fmt: skip
    assert (table.n_models == 7).all()  # nine checkpoints, seven independent models
    alone = conjecture_rows(
        models[models.model.isin(names[1:7])],
        layers[layers.model.isin(names[1:7])],
        higher_is_better=False, confidence_level=0.95, n_resamples=199, seed=0, min_models=3,
    )  # fmt: skip
    assert (alone.n_models == 6).all()
    # the cluster enters as the mean of its members
    mean = models[models.model.str.startswith("m0")][["h1_per_active_param", "score"]].mean()
    expected = np.corrcoef(
        np.r_[mean.h1_per_active_param, h1[1:7]], -np.r_[mean.score, models.score[1:7]]
    )[0, 1]
    raw = table[(table.level == "model") & (table.statistic == "pearson")].iloc[0]
    assert raw.estimate == pytest.approx(expected)


def test_pairs_give_each_fine_tune_the_base_it_descends_from():
    from moetopo.pipeline.pairs import PairSheet

    class Sheet:
        names = ["a", "b", "c", "d"]

    pairs = pd.DataFrame({"base": ["a", "b", "a"], "tuned": ["b", "c", "d"]})
    assert PairSheet(pairs, Sheet()).clusters() == {"b": "a", "c": "a", "d": "a"}
