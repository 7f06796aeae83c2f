"""Shared test helpers: where the repository is, and running Snakemake on it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def snakemake(workdir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run the repository's workflow with ``workdir`` as its working directory."""
    command = [
        sys.executable,
        "-m",
        "snakemake",
        "--snakefile",
        str(REPO / "Snakefile"),
        "--directory",
        str(workdir),
        *args,
    ]
    result = subprocess.run(command, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(
            f"snakemake {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
        )
    return result


@pytest.fixture
def workdir(tmp_path) -> Path:
    """A working directory holding a copy of config/ whose sheets point into the repo."""
    shutil.copytree(REPO / "config", tmp_path / "config")
    for sheet in ("models.tsv", "pairs.tsv"):
        path = tmp_path / "config" / sheet
        lines = path.read_text().splitlines()
        fixed = [lines[0]] + [
            "\t".join(
                str(REPO / cell) if cell.startswith("resources/") else cell
                for cell in line.split("\t")
            )
            for line in lines[1:]
        ]
        path.write_text("\n".join(fixed) + "\n")
    return tmp_path
