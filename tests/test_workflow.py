"""The workflow end to end on the built-in demo: completes, resumes, reruns what it should."""

from __future__ import annotations

import re

import pytest

from conftest import snakemake

pytestmark = pytest.mark.workflow


def planned_jobs(workdir, *args) -> dict[str, int]:
    """Rule -> job count of a dry run."""
    out = snakemake(workdir, "--dry-run", "--cores", "2", *args).stdout
    table = out.split("Job stats:")[-1] if "Job stats:" in out else ""
    return {
        m.group(1): int(m.group(2))
        for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.MULTILINE)
        if m.group(1) != "total"
    }


def test_demo_runs_resumes_and_reruns_exactly_what_depends_on_a_stage(workdir):
    snakemake(workdir, "--cores", "2")
    assert (workdir / "results").is_dir()
    assert planned_jobs(workdir) == {}  # a second run does nothing
    rerun = planned_jobs(workdir, "--forcerun", "gates")
    assert "gates" in rerun and "routing" in rerun and "clusters" in rerun
    assert not {"inventory", "inventory_shard"} & set(rerun)


def test_lint_is_clean(workdir):
    result = snakemake(workdir, "--lint")
    assert "Congratulations, your workflow is in a good condition" in result.stdout + result.stderr
