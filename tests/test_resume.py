"""A run killed with SIGKILL mid-job resumes without redoing finished jobs, and ends with
artefacts equal to an uninterrupted run's."""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from conftest import SMALL_PAIR, SNAKEFILE, artefacts, demo_config, snakemake

pytestmark = pytest.mark.workflow


def incomplete_outputs(workdir) -> set[str]:
    """Outputs Snakemake recorded as started but not finished (.snakemake/incomplete)."""
    root = workdir / ".snakemake" / "incomplete"
    found = set()
    for path in root.rglob("*"):
        if path.is_file() and path.name != "migration_underway":
            parts = path.relative_to(root).parts
            encoded = "".join(p.removeprefix("@") for p in parts)
            found.add(base64.urlsafe_b64decode(encoded).decode())
    return found


def file_tree(workdir) -> list[str]:
    root = workdir / "results"
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))


def same_artefact(a, b) -> bool:
    """Byte-identical, or (Parquet) the same table: equal columns and equal metadata."""
    if a.read_bytes() == b.read_bytes():
        return True
    if a.suffix != ".parquet":
        return False
    return pq.read_table(a).equals(pq.read_table(b)) and (
        pq.read_metadata(a).metadata == pq.read_metadata(b).metadata
    )


def test_killed_run_resumes_and_matches_a_clean_run(small_run, tmp_path):
    target = demo_config(tmp_path, SMALL_PAIR)
    command = [
        sys.executable, "-m", "snakemake", "--snakefile", str(SNAKEFILE),
        "--directory", str(target), "--cores", "2",
    ]  # fmt: skip
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.time() + 300
    # Wait until jobs past the inventory are finished and another one is under way (kill
    # between two jobs and nothing is incomplete: the marker must be there at the kill).
    while time.time() < deadline and process.poll() is None:
        done = list((target / "results").glob("*/geometry/*.parquet"))
        if done and incomplete_outputs(target):
            break
        time.sleep(0.05)
    assert process.poll() is None, "the run finished before it could be killed"
    os.killpg(process.pid, signal.SIGKILL)  # snakemake and the job it is running, at once
    process.wait()
    unfinished = {Path(p).relative_to("results").as_posix() for p in incomplete_outputs(target)}
    assert unfinished, "no job was running at the kill"
    before = {
        name: path.stat().st_mtime_ns
        for name, path in artefacts(target).items()
        if name not in unfinished
    }
    assert before, "nothing had finished before the kill"
    assert len(before) < len(artefacts(small_run)), "nothing was left to do after the kill"
    # no partly written artefact under a final name: temporary files are hidden (.name.*.tmp)
    for path in (target / "results").rglob("*"):
        assert not (path.is_file() and path.suffix == ".tmp" and not path.name.startswith("."))

    # what Snakemake tells the user after a kill: drop the stale lock, rerun incomplete jobs
    locked = snakemake(target, "--cores", "2", check=False)
    assert locked.returncode != 0 and "--unlock" in locked.stdout + locked.stderr
    snakemake(target, "--unlock")
    snakemake(target, "--cores", "2", "--rerun-incomplete")

    # the whole tree, hidden files included: no temporary litter, nothing a clean run lacks
    # (Snakemake marks every directory output with .snakemake_timestamp, in both runs)
    assert file_tree(target) == file_tree(small_run)
    after = artefacts(target)
    redone = [name for name, mtime in before.items() if after[name].stat().st_mtime_ns != mtime]
    assert redone == [], f"finished jobs were redone: {redone}"
    reference = artefacts(small_run)
    assert set(after) == set(reference)
    differing = [n for n in reference if not same_artefact(after[n], reference[n])]
    assert differing == [], f"artefacts differ from the clean run: {differing}"
