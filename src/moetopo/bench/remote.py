"""Benchmark: inventory + gates of the full-scale DeepSeek-V3 layout read over HTTP.

The 163 sparse shards are served on loopback, in their own process, under the hub's URL
shape, and read as ``hf://bench/deepseek-v3`` with an empty cache, as the inventory and
gates jobs read them. Against a baseline measured in the same run: a tight loop that
issues the very same requests (the server's log of the measured run) one after another
with the same library (huggingface_hub's session) and keeps nothing; and the same jobs
on the local files, so that what reading over HTTP adds is told apart from what the jobs
cost anyway (parsing 163 headers, classifying 92k tensors, compressing the router rows).
Printed: bytes fetched against the model's bytes, wall times and their ratios, peak RSS.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import tempfile
import time
from pathlib import Path

from moetopo.bench.gates import ours
from moetopo.bench.layouts import deepseek_v3_config, deepseek_v3_tensors, write_sparse
from moetopo.bench.measure import in_fresh_process

REPO = "bench/deepseek-v3"


def _serve(directory: str, conn) -> None:
    """The loopback server, in a process of its own so it does not share our GIL."""
    from moetopo.fixtures.http_server import CheckpointServer

    with CheckpointServer() as server:
        server.add(REPO, directory)
        conn.send(server.endpoint)
        while (message := conn.recv()) != "stop":
            if isinstance(message, float):
                server.latency = message
            elif message == "log":
                conn.send([(s.file, s.begin, s.end, s.status) for s in server.log])
                server.log.clear()


def remote_run(endpoint: str, cache: str, out: str) -> tuple:
    """The inventory and gates jobs on the served model, with a fresh cache."""
    os.environ["HF_ENDPOINT"] = endpoint
    os.environ["MOETOPO_CACHE"] = cache
    from moetopo.checkpoint import remote

    start = time.perf_counter()
    rows, phases = ours(f"hf://{REPO}", out)
    seconds = time.perf_counter() - start
    fetched = remote.FETCHED
    return seconds, rows, phases, fetched.bytes, fetched.requests, remote.mirrored_bytes()


def replay(endpoint: str, requests: list[tuple[str, int, int, int]]) -> float:
    """The same GETs, in order, with the same library; each body read and dropped."""
    from huggingface_hub import get_session

    session = get_session()
    base = f"{endpoint}/{REPO}/resolve/main/"
    start = time.perf_counter()
    for file, begin, end, status in requests:
        headers = {"range": f"bytes={begin}-{end - 1}"} if status == 206 else {}
        response = session.get(base + file, headers=headers)
        if len(response.content) != end - begin:
            raise RuntimeError(f"{file}: {len(response.content)} bytes, not {end - begin}")
    return time.perf_counter() - start


def measure(conn, endpoint: str, full: Path, tmp: Path, repeat: int) -> dict:
    """The fastest of ``repeat`` runs of ours over HTTP, of the replayed requests, and of
    ours on the local files (runs alternate, each in a fresh process)."""
    best, loop, local = None, None, None
    for k in range(repeat):
        here = in_fresh_process(ours, str(full), str(tmp / f"local{k}"))
        local = here.seconds if local is None else min(local, here.seconds)
        run = in_fresh_process(remote_run, endpoint, str(tmp / f"cache{k}"), str(tmp / f"o{k}"))
        conn.send("log")
        requests = conn.recv()
        if best is None or run.result[0] < best.result[0]:
            best = run
        replayed = in_fresh_process(replay, endpoint, requests).result
        loop = replayed if loop is None else min(loop, replayed)
    return {"best": best, "loop": loop, "local": local}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m moetopo.bench remote", description=__doc__)
    parser.add_argument("--workdir", help="where to write the sparse layout (default: a temp dir)")
    parser.add_argument("--repeat", type=int, default=2, help="runs of each; the fastest counts")
    parser.add_argument(
        "--latency-ms",
        type=float,
        nargs="+",
        default=[0.0, 20.0],
        help="the server's delay before each answer (0: loopback as is; 20: a near hub)",
    )
    args = parser.parse_args(argv)
    context = multiprocessing.get_context("spawn")
    results = {}
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        tmp = Path(tmp)
        config = deepseek_v3_config()
        full = write_sparse(tmp / "dsv3", config, list(deepseek_v3_tensors(config)), 163)
        model_bytes = sum(p.stat().st_size for p in full.iterdir() if p.is_file())
        conn, server_conn = context.Pipe()
        server = context.Process(target=_serve, args=(str(full), server_conn), daemon=True)
        server.start()
        endpoint = conn.recv()
        for latency in args.latency_ms:
            conn.send(latency / 1000)
            results[latency] = measure(conn, endpoint, full, tmp / f"l{latency:g}", args.repeat)
        conn.send("stop")
        server.join()
    first = results[args.latency_ms[0]]
    seconds, rows, phases, fetched, n_requests, mirrored = first["best"].result
    print(
        f"DeepSeek-V3 layout over loopback HTTP: {model_bytes / 2**30:.0f} GiB in 163 shards "
        f"({mirrored / 2**30:.0f} GiB mirrored); {rows} router rows written"
    )
    print(
        f"fetched {fetched / 2**20:.1f} MiB in {n_requests} requests = "
        f"{100 * fetched / model_bytes:.4f}% of the model (goal <= 0.05%)"
    )
    for latency, result in results.items():
        best, loop, local = result["best"], result["loop"], result["local"]
        seconds = best.result[0]
        print(
            f"{latency:g} ms per request: moetopo inventory+gates over HTTP {seconds:.2f} s; "
            f"the same requests in a tight loop {loop:.2f} s: ratio {seconds / loop:.2f}x "
            f"(goal <= 2x); on local files {local:.2f} s, so HTTP adds {seconds - local:.2f} s; "
            f"peak RSS {best.peak_rss_mib:.0f} MiB (goal < 1024)"
        )
    print(f"phases over HTTP at {args.latency_ms[0]:g} ms:")
    for phase, phase_seconds in phases.items():
        print(f"    {phase:41s} {phase_seconds:8.2f} s")
    return 0
