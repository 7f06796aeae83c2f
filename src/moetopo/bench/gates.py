"""Benchmark: inventory + gates on a full-scale DeepSeek-V3 layout (163 sparse shards).

Compares, each in a fresh process and timed without its imports, (1) moetopo's
inventory and gates stages end to end, as their Snakemake jobs run them, with (a) a
tight loop that only parses every header and reads the router byte ranges, and (c)
writing gates.parquet alone from router rows already in memory: the least any tool
pays that keeps the gates artefact's schema (list<float32> rows, zstd). Both
cold (page cache dropped) and warm. On a smaller layout, (b) the naive approach that
loads every shard whole.
"""

from __future__ import annotations

import argparse
import json
import struct
import tempfile
import time
from pathlib import Path

import numpy as np

from moetopo.artefacts import read_columns, stream_table, write_json, write_table
from moetopo.bench.layouts import deepseek_v3_config, deepseek_v3_tensors, write_sparse
from moetopo.bench.measure import drop_page_cache_hint, fastest_of, in_fresh_process
from moetopo.checkpoint.model import open_model
from moetopo.checkpoint.shards import list_shards
from moetopo.stages.gates import Routers, gate_batches
from moetopo.stages.inventory import merge_inventory
from moetopo.stages.inventory_shard import shard_rows


def ours(model_dir: str, out_dir: str) -> tuple[int, dict[str, float]]:
    """The inventory (per shard, then merge) and gates jobs, in sequence, timed by phase."""
    out = Path(out_dir)
    phases: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        phases[name] = now - clock
        clock = now

    paths = []
    for shard in list_shards(model_dir).shards:
        rows, meta = shard_rows(model_dir, shard)
        paths.append(out / "inventory" / f"{shard}.parquet")
        write_table(rows, paths[-1], "shard_header", extra=meta)
    lap("inventory_shard: parse + write 163 headers")
    inventory, summary, _ = merge_inventory(model_dir, [read_columns(p) for p in paths])
    lap("inventory merge: verify + classify")
    write_table(
        inventory,
        out / "inventory.parquet",
        "inventory",
        extra={"shards": summary["shards"]},
    )
    write_json(summary, out / "model.json")
    lap("inventory merge: write inventory")
    routers = Routers.from_inventory(model_dir, out / "inventory.parquet", summary)
    n_rows = 0
    with stream_table(out / "gates.parquet", "gates") as stream:
        for batch in gate_batches(routers, stream.warnings):
            stream.write(batch)
            n_rows += len(batch["expert"])
    lap("gates: read routers + write")
    return n_rows, phases


def gates_write_alone(model_dir: str, out_dir: str) -> float:
    """Seconds to write gates.parquet from router rows already read into memory."""
    warnings: list[str] = []
    batches = list(gate_batches(Routers.of_model(open_model(model_dir)), warnings))
    start = time.perf_counter()
    with stream_table(Path(out_dir) / "gates-alone.parquet", "gates") as stream:
        for batch in batches:
            stream.write(batch)
    return time.perf_counter() - start


def tight_loop(model_dir: str) -> int:
    """Parse every header and read every router's bytes: the least any tool must do."""
    routers = 0
    for shard in sorted(Path(model_dir).glob("*.safetensors")):
        with open(shard, "rb") as handle:
            (n,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(n))
            for name, entry in header.items():
                if name.endswith("mlp.gate.weight"):
                    begin, end = entry["data_offsets"]
                    handle.seek(8 + n + begin)
                    data = np.frombuffer(handle.read(end - begin), dtype=np.uint16)
                    routers += data.size // entry["shape"][1]
    return routers


def naive(model_dir: str) -> int:
    """Load each shard whole (safetensors.deserialize) and keep the router rows."""
    import safetensors

    routers = 0
    for shard in sorted(Path(model_dir).glob("*.safetensors")):
        for name, tensor in safetensors.deserialize(shard.read_bytes()):
            if name.endswith("mlp.gate.weight"):
                routers += tensor["shape"][0]
    return routers


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m moetopo.bench gates", description=__doc__)
    parser.add_argument("--workdir", help="where to write the sparse layouts (default: a temp dir)")
    parser.add_argument(
        "--small-layers", type=int, default=6, help="layers of the naive-comparison layout"
    )
    parser.add_argument(
        "--repeat", type=int, default=2, help="runs of each job; the fastest counts"
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        tmp = Path(tmp)
        config = deepseek_v3_config()
        full = write_sparse(tmp / "dsv3", config, list(deepseek_v3_tensors(config)), 163)
        small_config = deepseek_v3_config(n_experts=64, n_layers=args.small_layers)
        small = write_sparse(
            tmp / "small", small_config, list(deepseek_v3_tensors(small_config)), 8
        )
        shards = len(list(full.glob("*.safetensors")))
        apparent = sum(p.stat().st_size for p in full.glob("*.safetensors")) / 2**30
        print(f"full layout: DeepSeek-V3, {shards} shards, {apparent:.0f} GiB apparent size")
        out = str(tmp / "out-full")
        jobs = [
            ("moetopo inventory+gates", ours, (str(full), out)),
            ("(a) tight loop: headers + router bytes", tight_loop, (str(full),)),
            ("(c) gates.parquet write alone", gates_write_alone, (str(full), out)),
        ]
        shard_files = sorted(full.glob("*.safetensors"))
        for cache in ("cold", "warm"):
            hint = (lambda: drop_page_cache_hint(shard_files)) if cache == "cold" else None
            best = fastest_of(jobs, args.repeat, before_each=hint)
            for label, m in best.items():
                print(f"{cache} {label:40s} {m.seconds:7.2f} s  peak RSS {m.peak_rss_mib:6.0f} MiB")
            moetopo, tight, write = best.values()
            print(
                f"{cache}: moetopo / (a) = {moetopo.seconds / tight.seconds:.1f}x (goal <= 2x); "
                f"(c) / (a) = {write.seconds / tight.seconds:.1f}x; moetopo / ((a) + (c)) = "
                f"{moetopo.seconds / (tight.seconds + write.seconds):.2f}x; "
                f"peak RSS {moetopo.peak_rss_mib:.0f} MiB (goal < 1024)"
            )
        count, phases = moetopo.result
        print(
            f"moetopo phases (fastest warm run; {count} router rows written, (a) read "
            f"{tight.result}, the multi-token-prediction layer's included):"
        )
        for phase, seconds in phases.items():
            print(f"    {phase:41s} {seconds:8.2f} s")
        small_ours = in_fresh_process(ours, str(small), str(tmp / "out-small"))
        slow = in_fresh_process(naive, str(small))
        print(
            f"small layout ({args.small_layers} layers): naive {slow.seconds:.2f} s, "
            f"{slow.peak_rss_mib:.0f} MiB; moetopo {small_ours.seconds:.2f} s, "
            f"{small_ours.peak_rss_mib:.0f} MiB: naive / moetopo = "
            f"{slow.seconds / small_ours.seconds:.1f}x time, "
            f"{slow.peak_rss_mib / small_ours.peak_rss_mib:.1f}x peak RSS"
        )
    return 0
