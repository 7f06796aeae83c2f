"""The demo slice submitted through Snakemake's SLURM executor to a real single-node SLURM
(tests/slurm/start.sh brings one up on this host) gives the artefacts of a local run."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess

import pyarrow.parquet as pq
import pytest

from conftest import REPO, ROUTER_ONLY, ROUTER_ONLY_MODEL, artefacts, demo_config, snakemake

pytestmark = pytest.mark.workflow
SCRIPTS = REPO / "tests" / "slurm"


@pytest.fixture(scope="module")
def slurm_cluster():
    if importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
        pytest.skip("the slurm extra is not installed (pip install -e '.[slurm]')")
    if shutil.which("slurmctld") is None and os.geteuid() != 0:
        pytest.skip("SLURM is not installed and installing it needs root")
    for _ in range(2):  # a second try from scratch, should the daemons trip once
        started = subprocess.run(
            ["bash", SCRIPTS / "start.sh"], capture_output=True, text=True, timeout=900
        )  # apt-get may run first when SLURM is absent
        if started.returncode == 0:
            break
        subprocess.run(["bash", SCRIPTS / "stop.sh"], capture_output=True, timeout=120)
    assert started.returncode == 0, f"could not start SLURM:\n{started.stderr}"
    yield started.stdout.strip()
    subprocess.run(["bash", SCRIPTS / "stop.sh"], capture_output=True, timeout=120)


def test_slurm_run_equals_local_run(slurm_cluster, router_only_run, tmp_path):
    """The router-only pass over one model (every stage but those reading experts, 17
    jobs): what the executor must get right is the same for every rule, and a whole-demo
    run through SLURM's status polling costs minutes of CI for no further check."""
    target = demo_config(tmp_path, (ROUTER_ONLY_MODEL,))
    snakemake(
        target,
        *ROUTER_ONLY,
        "--workflow-profile", str(REPO / "workflow" / "profiles" / "slurm"),
        "--cores", "2",
        "--resources", "mem_mb=16000",
        "--slurm-init-seconds-before-status-checks", "2",
        "--seconds-between-status-checks", "2",
        "--slurm-keep-successful-logs",
        timeout=900,
    )  # fmt: skip
    submitted = list((target / ".snakemake" / "slurm_logs").rglob("*.log"))
    assert submitted, "no job went through SLURM"
    assert any("group_shards" in str(p) for p in submitted)  # small jobs were bundled
    local, remote = artefacts(router_only_run), artefacts(target)
    assert set(remote) == set(local)
    for name, path in local.items():
        if path.suffix == ".parquet":
            assert pq.read_table(remote[name]).equals(pq.read_table(path)), name
        else:
            assert remote[name].read_text() == path.read_text(), name
