"""Benchmark: the whole workflow over full-scale checkpoint layouts (sparse files).

For DeepSeek-V3 (163 shards, FP8), Kimi-K2 (384 experts, 1 TB), Qwen3-235B-A22B
(94 layers) and Llama-4-Maverick (interleaved MoE, ``language_model.`` prefix), each
written with real router and embedding bytes and holes elsewhere: the DAG's job
count, the time Snakemake takes to build it (a dry run), the wall time of a real
``snakemake --cores 2`` run with the expert-weight sources off (every stage, the
report included), and the peak RSS of the largest job (each job logs its VmHWM).
Goals: DAG in under 30 s, no job over 4 GiB.

``--project`` plans the whole default pipeline instead (every distance source, the
cohomology with merge barriers, compression): each layout is written narrowed at two
widths with real bytes everywhere (:func:`moetopo.bench.layouts.reduced`: the full
expert count, one MoE layer), the default pipeline runs on each, and every job's log
gives its seconds, bytes read and peak RSS. A stage's cost per MoE layer is fitted as
a + b * width (expert parameters for the stages that read experts, the hidden size for
the others) and extrapolated to the published width, per-shard inventory jobs scale
with the shard count; the projected wall time assumes one job at a time, each using
both cores (the Gram, ripser's callers and numpy's BLAS do).
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

from moetopo.bench.layouts import (
    FULL_SCALE,
    moe_layer_count,
    reduced,
    write_full_scale,
    write_sparse,
)

REPO = Path(__file__).resolve().parents[3]
ROUTER_ONLY = REPO / "config" / "router_only.yaml"


def snakemake(workdir: Path, *args: str, overlay: list[str] | None = None) -> tuple[float, str]:
    """Run the workflow in ``workdir`` on the default config and ``overlay`` config files
    (the router-only one unless given)."""
    start = time.perf_counter()
    overlay = [str(ROUTER_ONLY)] if overlay is None else overlay
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "workflow" / "Snakefile"),
         "--directory", str(workdir), *args, "--configfile", "config/config.yaml", *overlay],
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


def new_run(run: Path, name: str, model_dir: Path) -> None:
    """A working directory whose sheet holds the one model."""
    (run / "config").mkdir(parents=True)
    shutil.copy(REPO / "config" / "config.yaml", run / "config" / "config.yaml")
    (run / "config" / "models.tsv").write_text(
        f"model\tpath\tscore\tfamily\trouting\n{name}\t{model_dir}\t\t\t\n"
    )
    (run / "config" / "pairs.tsv").write_text("base\ttuned\n")


def run_layout(name: str, root: Path) -> dict:
    model_dir = root / name
    start = time.perf_counter()
    write_full_scale(name, model_dir)
    written = time.perf_counter() - start
    run = root / f"run-{name}"
    new_run(run, name, model_dir)
    dag_seconds, dry = snakemake(run, "--dry-run", "--cores", "2")
    run_seconds, _ = snakemake(run, "--cores", "2")
    nothing = {"rss_mib": 0.0, "log": ""}
    largest = max(job_costs(run, name), key=lambda job: job["rss_mib"], default=nothing)
    apparent = sum(p.stat().st_size for p in model_dir.glob("*.safetensors")) / 2**30
    shutil.rmtree(model_dir)
    return {
        "layout": name,
        "GiB": apparent,
        "jobs": job_count(dry),
        "dag_s": dag_seconds,
        "run_s": run_seconds,
        "write_s": written,
        "peak_mib": largest["rss_mib"],
        "peak_job": largest["log"],
        "report": (run / "results" / "report" / "index.html").exists(),
    }


JOB_LINE = re.compile(r"peak RSS (\d+) MiB, read (\d+) MiB, ([\d.]+) s")
# the rules with one job per MoE layer (named by their log directory), whose cost grows
# with the experts' bytes; and the one with a job per shard
PER_LAYER = {"geometry": "expert_geometry", "cohomology": "cohomology",
             "compression": "compression"}  # fmt: skip
PER_SHARD = {"inventory": "inventory_shard"}


def job_costs(workdir: Path, model: str) -> list[dict]:
    """One row per finished job of ``model``: its stage, seconds, MiB read, peak RSS and
    log file."""
    rows = []
    for log in sorted((workdir / "logs").rglob("*.log")):
        found = JOB_LINE.search(log.read_text(errors="replace"))
        if not found:
            continue
        parts = log.relative_to(workdir / "logs").with_suffix("").parts
        if parts[0] == model and len(parts) > 2:
            stage = {**PER_LAYER, **PER_SHARD}[parts[1]]
        else:
            stage = parts[-1]
        rss, mib, seconds = found.groups()
        rows.append({"stage": stage, "seconds": float(seconds), "read_mib": float(mib),
                     "rss_mib": float(rss), "log": str(log.relative_to(workdir))})  # fmt: skip
    return rows


def widths(config: dict) -> dict[str, float]:
    text = config.get("text_config", config)
    return {
        "expert": 3.0 * text["hidden_size"] * text["moe_intermediate_size"]
        if "moe_intermediate_size" in text
        else 3.0 * text["hidden_size"] * text["intermediate_size"],
        "hidden": float(text["hidden_size"]),
    }


def measure_reduced(name: str, divisor: int, root: Path, overlay: list[str]) -> dict:
    """Per-stage cost per MoE layer of the default pipeline on ``name`` narrowed
    ``divisor`` times (one MoE layer; inventory per shard)."""
    config, specs = reduced(name, divisor)
    model_dir = write_sparse(root / f"{name}-{divisor}", config, specs, 4)
    run = root / f"run-{name}-{divisor}"
    new_run(run, name, model_dir)
    wall, _ = snakemake(run, "--cores", "2", overlay=overlay)
    jobs: dict[str, list[dict]] = {}
    for job in job_costs(run, name):
        jobs.setdefault(job["stage"], []).append(job)
    stages = {}
    for stage, done in jobs.items():
        # per-shard jobs are the same work each time: the fastest is the one least slowed
        # by its neighbour
        repeated = stage in PER_LAYER.values() or stage in PER_SHARD.values()
        stages[stage] = {
            k: (min(j[k] for j in done) if repeated else sum(j[k] for j in done))
            for k in ("seconds", "read_mib")
        } | {"rss_mib": max(j["rss_mib"] for j in done)}
    shutil.rmtree(model_dir)
    return {"widths": widths(config), "stages": stages, "wall": wall}


def extrapolate(x0: float, y0: float, x1: float, y1: float, x: float) -> float:
    """y at x on the line through two measurements; never below the larger one (a
    noisy pair must not project a stage to nothing)."""
    slope = max(0.0, (y1 - y0) / (x1 - x0))
    return max(y0, y1, y1 + slope * (x - x1))


def project(name: str, narrow: dict, wide: dict) -> list[dict]:
    """Per stage at the published widths: seconds and MiB read per MoE layer (per shard
    for the inventory), peak RSS, and hours for the whole model."""
    make_config, _, shards = FULL_SCALE[name]
    full = widths(make_config())
    n_layers = moe_layer_count(name)
    rows = []
    for stage in wide["stages"]:
        a, b = narrow["stages"].get(stage), wide["stages"][stage]
        if a is None:
            continue
        key = "expert" if stage in PER_LAYER.values() else "hidden"
        x0, x1, x = narrow["widths"][key], wide["widths"][key], full[key]
        per_shard = stage in PER_SHARD.values()
        count = shards if per_shard else n_layers  # the narrowed model has one MoE layer
        per = {k: extrapolate(x0, a[k], x1, b[k], x) for k in ("seconds", "read_mib")}
        rows.append({"stage": stage, "per": "shard" if per_shard else "layer",
                     "seconds": per["seconds"], "read_gib": per["read_mib"] / 1024,
                     "rss_mib": b["rss_mib"], "hours": per["seconds"] * count / 3600})  # fmt: skip
    return sorted(rows, key=lambda r: -r["hours"])


def print_projection(name: str, rows: list[dict], divisors: tuple[int, int]) -> None:
    total = sum(r["hours"] for r in rows)
    print(f"\n{name}: {moe_layer_count(name)} MoE layers, projected {total:.1f} h on 2 cores"
          f" (measured at 1/{divisors[0]} and 1/{divisors[1]} of its widths)")  # fmt: skip
    print(f"  {'stage':32s} {'s per unit':>11s} {'GiB read':>9s} {'peak RSS':>9s} {'hours':>7s}")
    for r in rows:
        print(f"  {r['stage'] + ' (per ' + r['per'] + ')':32s} {r['seconds']:11.1f} "
              f"{r['read_gib']:9.2f} {r['rss_mib']:6.0f} MiB {r['hours']:7.2f}")  # fmt: skip


def main_project(args) -> int:
    narrow_d, wide_d = sorted(args.divisors, reverse=True)
    with tempfile.TemporaryDirectory(dir=args.workdir, prefix="moetopo-bench-plan-") as tmp:
        for name in args.layouts:
            overlay = [str(Path(c).resolve()) for c in args.configfile]
            narrow = measure_reduced(name, narrow_d, Path(tmp), overlay)
            wide = measure_reduced(name, wide_d, Path(tmp), overlay)
            print_projection(name, project(name, narrow, wide), (narrow_d, wide_d))
            print(f"  (runs at 1/{narrow_d}: {narrow['wall']:.0f} s, "
                  f"1/{wide_d}: {wide['wall']:.0f} s)", flush=True)  # fmt: skip
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m moetopo.bench scale", description=__doc__)
    parser.add_argument("--workdir", help="where to write layouts and runs (default: a temp dir)")
    parser.add_argument("--layouts", nargs="*", default=list(FULL_SCALE), choices=list(FULL_SCALE))
    parser.add_argument(
        "--project", action="store_true", help="plan the whole default pipeline (see above)"
    )
    parser.add_argument(
        "--configfile",
        nargs="*",
        default=[],
        help="with --project: config files over the default one (plan your own settings)",
    )
    parser.add_argument(
        "--divisors", nargs=2, type=int, default=[16, 8], help="the two narrowing factors"
    )
    args = parser.parse_args(argv)
    if args.project:
        return main_project(args)
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
