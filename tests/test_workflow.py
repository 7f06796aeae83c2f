"""The workflow end to end: completes, does nothing twice, reruns exactly what depends
on a forced stage, lints clean."""

from __future__ import annotations

import re

import pytest

from moetopo.artefacts import read_table

from conftest import artefacts, snakemake

pytestmark = pytest.mark.workflow
STAGE_ARTEFACTS = (
    "model.json", "inventory.parquet", "gates.parquet", "routing.parquet",
    "expert_distances.parquet", "redundancy.parquet", "persistence.parquet", "hodge.parquet",
    "sheaf.parquet", "hodgecover.parquet", "layer_summary.parquet", "compression.parquet",
    "compression_selections.parquet", "collaboration.parquet", "collaboration_agreement.parquet",
)  # fmt: skip


def planned_jobs(workdir, *args) -> dict[str, int]:
    """Rule -> job count of a dry run."""
    out = snakemake(workdir, "--dry-run", "--cores", "2", *args).stdout
    table = out.split("Job stats:")[-1] if "Job stats:" in out else ""
    return {
        m.group(1): int(m.group(2))
        for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.MULTILINE)
        if m.group(1) != "total"
    }


def test_run_completes_every_stage(small_run):
    found = artefacts(small_run)
    for model in ("mixtral-e8k2-h64-s0", "mixtral-e8k2-h64-s0-ft-prose"):
        for name in STAGE_ARTEFACTS:
            assert f"{model}/{name}" in found, name
    pair = "pairs/mixtral-e8k2-h64-s0--mixtral-e8k2-h64-s0-ft-prose"
    for name in ("attention_diff", "scaffold", "crossref", "bottleneck"):
        assert f"{pair}/{name}.parquet" in found
    assert "stats/conjecture.parquet" in found
    for name in ("compression_methods", "compression_layers", "compression_topology"):
        assert f"stats/{name}.parquet" in found


def test_second_run_does_nothing_and_forcerun_reruns_only_dependents(small_run):
    assert planned_jobs(small_run) == {}
    rerun = planned_jobs(small_run, "--forcerun", "gates")
    assert {"gates", "routing", "expert_geometry", "clusters", "cohomology", "conjecture"} <= set(
        rerun
    )
    assert {"compression", "compression_summary"} <= set(rerun)  # it reads HodgeCover's ranking
    assert rerun["gates"] == 2
    assert not {"inventory", "inventory_shard", "attention_diff"} & set(rerun)


def test_changing_a_parameter_reruns_its_stage_and_what_follows(small_run):
    rerun = planned_jobs(small_run, "--config", "clusters={thresholds: [r0.3]}")
    assert "clusters" in rerun and "cohomology" in rerun
    assert not {"gates", "routing", "expert_geometry", "inventory"} & set(rerun)


def test_changing_an_engineering_knob_reruns_nothing(small_run):
    """streaming.chunk_mb bounds memory and changes no result, so it is no rule's param."""
    overlay = small_run / "small_chunks.yaml"
    overlay.write_text("streaming: {chunk_mb: 64}\n")
    assert planned_jobs(small_run, "--configfile", "config/config.yaml", str(overlay)) == {}


def test_router_only_overlay_runs_every_stage(router_only_run):
    """config/router_only.yaml, the quick pass for huge checkpoints, on one small model."""
    target = router_only_run
    distances, _ = read_table(target / "results/mixtral-e4k1-h48-s1/expert_distances.parquet")
    assert set(distances.source) == {"router_l1", "router_cosine", "router_l2", "coactivation"}
    sheaf, _ = read_table(target / "results/mixtral-e4k1-h48-s1/sheaf.parquet")
    assert len(sheaf) and (sheaf.stalk_dim == 2).all()  # stalks from router rows
    assert (target / "results/report/index.html").exists()
    compression = [p for p in (target / "results").rglob("compression*") if p.is_file()]
    assert not compression  # it would read experts
    assert not list((target / "results").rglob("superposition*.parquet"))  # so would it
    assert not list((target / "results/report/figures/compression").glob("*.png"))


def test_lint_is_clean(workdir):
    result = snakemake(workdir, "--lint")
    assert "Congratulations, your workflow is in a good condition" in result.stdout + result.stderr


def test_the_report_shows_every_compression_method_at_three_budgets(small_run):
    """The compression section's table has a row per method and a column per budget, the
    findings lead with the measured cost, and each model's selection is exported."""
    from moetopo.report.compression import METHOD_NAMES

    text = (small_run / "results/report/report.md").read_text()
    assert "## Compression: what removing experts costs" in text
    section = text.split("## Compression", 1)[1]
    header = "| method | keep 0.25 | keep 0.5 | keep 0.75 |"
    assert header in section
    rows = section.split(header, 1)[1].split("\n\n", 1)[0].strip().splitlines()[1:]
    assert sorted(r.split(" | ")[0].lstrip("| ") for r in rows) == sorted(METHOD_NAMES.values())
    assert "cost of removing experts" in text and "Keeping 0.5 of the experts costs" in text
    found = artefacts(small_run)
    for model in ("mixtral-e8k2-h64-s0", "mixtral-e8k2-h64-s0-ft-prose"):
        assert f"{model}/compression_selection.json" in found
