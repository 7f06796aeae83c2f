"""Shared test helpers: the repository, running Snakemake on it, and one small demo run.

Workflow tests share a single local run over a two-model slice of the demo zoo (a
base model and its fine-tune, so every stage, the pair stages included, runs); the
full zoo is what README's demo command runs.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import settings

# Property tests draw the same examples on every machine, so a CI run checks what was
# checked here; HYPOTHESIS_PROFILE=explore draws fresh ones to hunt for new failures.
settings.register_profile("reproducible", derandomize=True, deadline=None)
settings.register_profile("explore", deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "reproducible"))

REPO = Path(__file__).resolve().parents[1]
SNAKEFILE = REPO / "workflow" / "Snakefile"
SMALL_PAIR = ("mixtral-e8k2-h64-s0", "mixtral-e8k2-h64-s0-ft-prose")


def snakemake(
    workdir: Path, *args: str, check: bool = True, timeout: float = 1800, **kwargs
) -> subprocess.CompletedProcess:
    """Run the repository's workflow with ``workdir`` as its working directory.

    Past ``timeout`` seconds the whole process group is killed and the test fails: a job
    left running (a SLURM step, a script) would otherwise hold the output pipes open and
    the wait would never end."""
    command = [
        sys.executable, "-m", "snakemake", "--snakefile", str(SNAKEFILE),
        "--directory", str(workdir), *args,
    ]  # fmt: skip
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True, **kwargs,
    ) as process:  # fmt: skip
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            stdout, stderr = process.communicate()
            raise AssertionError(
                f"snakemake {' '.join(args)} still running after {timeout} s:\n{stdout}\n{stderr}"
            ) from None
    result = subprocess.CompletedProcess(command, process.returncode, stdout, stderr)
    if check and result.returncode != 0:
        raise AssertionError(
            f"snakemake {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
        )
    return result


def demo_config(target: Path, models: tuple[str, ...] | None = None) -> Path:
    """A working directory holding config/ whose sheets point into the repository.

    ``models`` keeps only those rows of the demo sheet (and the pairs among them).
    """
    shutil.copytree(REPO / "config", target / "config")
    sheet = pd.read_csv(REPO / "config" / "models.tsv", sep="\t", dtype=str).fillna("")
    pairs = pd.read_csv(REPO / "config" / "pairs.tsv", sep="\t", dtype=str).fillna("")
    if models is not None:
        sheet = sheet[sheet.model.isin(models)]
        pairs = pairs[pairs.base.isin(models) & pairs.tuned.isin(models)]
    for column in ("path", "routing"):
        sheet[column] = [str(REPO / p) if p else "" for p in sheet[column]]
    sheet.to_csv(target / "config" / "models.tsv", sep="\t", index=False)
    pairs.to_csv(target / "config" / "pairs.tsv", sep="\t", index=False)
    return target


@pytest.fixture
def workdir(tmp_path) -> Path:
    """An empty run directory configured with the whole demo."""
    return demo_config(tmp_path)


@pytest.fixture(scope="session")
def small_run(tmp_path_factory) -> Path:
    """One completed local run over the two-model slice, shared by the workflow tests."""
    target = demo_config(tmp_path_factory.mktemp("small-run"), SMALL_PAIR)
    snakemake(target, "--cores", "2")
    return target


ROUTER_ONLY_MODEL = "mixtral-e4k1-h48-s1"
ROUTER_ONLY = ("--configfile", str(REPO / "config" / "config.yaml"))
ROUTER_ONLY += (str(REPO / "config" / "router_only.yaml"),)


@pytest.fixture(scope="session")
def router_only_run(tmp_path_factory) -> Path:
    """One completed local run of config/router_only.yaml over one small model (four
    shards), shared by the tests of that overlay and of the SLURM executor."""
    target = demo_config(tmp_path_factory.mktemp("router-only"), (ROUTER_ONLY_MODEL,))
    snakemake(target, "--cores", "2", *ROUTER_ONLY)
    return target


def forget_remote_mirrors(monkeypatch) -> None:
    """As in a new process: no remote mirror opened, no byte counted as fetched."""
    from moetopo.checkpoint import remote

    monkeypatch.setattr(remote, "_OPEN", {})
    monkeypatch.setattr(remote, "_MIRRORS", {})
    monkeypatch.setattr(remote, "FETCHED", remote.FetchStats())


def artefacts(root: Path) -> dict[str, Path]:
    """Every Parquet and JSON artefact under results/, keyed by relative path."""
    found = {}
    for path in sorted((root / "results").rglob("*")):
        if path.suffix in (".parquet", ".json"):
            found[str(path.relative_to(root / "results"))] = path
    return found


def gate_rows(model) -> tuple[dict, list[str]]:
    """All gate rows of ``model`` in memory, as the gates stage would stream them."""
    import numpy as np

    from moetopo.stages.gates import Routers, gate_batches

    warnings: list[str] = []
    frames = list(gate_batches(Routers.of_model(model), warnings))
    return {k: np.concatenate([f[k] for f in frames]) for k in frames[0]}, warnings
