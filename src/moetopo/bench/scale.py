"""Benchmark: the whole workflow over full-scale checkpoint layouts (sparse files).

For DeepSeek-V3 (163 shards, FP8), Kimi-K2 (384 experts, 1 TB), Qwen3-235B-A22B
(94 layers) and Llama-4-Maverick (interleaved MoE, ``language_model.`` prefix), each
written with real router and embedding bytes and holes elsewhere: the DAG's job
count, the time Snakemake takes to build it (a dry run), the wall time of a real
``snakemake --cores 2`` run with the expert-weight sources off (every stage, the
report included), and the peak RSS of the largest job (each job logs its VmHWM).
Goals: DAG in under 30 s, no job over 4 GiB.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from moetopo.bench.layouts import FULL_SCALE, write_full_scale

REPO = Path(__file__).resolve().parents[3]
ROUTER_ONLY = REPO / "config" / "router_only.yaml"


def snakemake(workdir: Path, *args: str) -> tuple[float, str]:
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "workflow" / "Snakefile"),
         "--directory", str(workdir), *args, "--configfile", "config/config.yaml",
         str(ROUTER_ONLY)],
        capture_output=True,
        text=True,
        cwd=workdir,
    )  # fmt: skip
    elapsed = time.perf_counter() - start
    if result.returncode:
        tail = (result.stdout + result.stderr)[-4000:]
        raise RuntimeError(f"snakemake {' '.join(args)} failed:\n{tail}")
    return elapsed, result.stdout + result.stderr


def job_count(output: str) -> int:
    found = re.search(r"^total\s+(\d+)$", output, re.MULTILINE)
    return int(found.group(1)) if found else 0


def largest_job(workdir: Path) -> tuple[float, str]:
    """(peak RSS in MiB, log file) of the hungriest job, from the jobs' own logs."""
    best = (0.0, "")
    for log in (workdir / "logs").rglob("*.log"):
        for match in re.finditer(r"peak RSS (\d+) MiB", log.read_text(errors="replace")):
            best = max(best, (float(match.group(1)), str(log.relative_to(workdir))))
    return best


def run_layout(name: str, root: Path) -> dict:
    model_dir = root / name
    start = time.perf_counter()
    write_full_scale(name, model_dir)
    written = time.perf_counter() - start
    run = root / f"run-{name}"
    (run / "config").mkdir(parents=True)
    shutil.copy(REPO / "config" / "config.yaml", run / "config" / "config.yaml")
    (run / "config" / "models.tsv").write_text(
        f"model\tpath\tscore\tfamily\trouting\n{name}\t{model_dir}\t\t\t\n"
    )
    (run / "config" / "pairs.tsv").write_text("base\ttuned\n")
    dag_seconds, dry = snakemake(run, "--dry-run", "--cores", "2")
    run_seconds, _ = snakemake(run, "--cores", "2")
    peak, where = largest_job(run)
    apparent = sum(p.stat().st_size for p in model_dir.glob("*.safetensors")) / 2**30
    shutil.rmtree(model_dir)
    return {
        "layout": name,
        "GiB": apparent,
        "jobs": job_count(dry),
        "dag_s": dag_seconds,
        "run_s": run_seconds,
        "write_s": written,
        "peak_mib": peak,
        "peak_job": where,
        "report": (run / "results" / "report" / "index.html").exists(),
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m moetopo.bench scale", description=__doc__)
    parser.add_argument("--workdir", help="where to write layouts and runs (default: a temp dir)")
    parser.add_argument("--layouts", nargs="*", default=list(FULL_SCALE), choices=list(FULL_SCALE))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(dir=args.workdir, prefix="moetopo-bench-scale-") as tmp:
        print("layout               GiB  jobs  DAG s   run s  peak job RSS  report")
        for name in args.layouts:
            row = run_layout(name, Path(tmp))
            print(
                f"{row['layout']:18s} {row['GiB']:6.0f} {row['jobs']:5d} {row['dag_s']:6.1f} "
                f"{row['run_s']:7.1f} {row['peak_mib']:9.0f} MiB  "
                f"{'yes' if row['report'] else 'NO'}"
                f"   (largest: {row['peak_job']})",
                flush=True,
            )
        print("goals: DAG < 30 s per layout; no job over 4096 MiB")
    return 0
