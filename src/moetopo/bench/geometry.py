"""Benchmark: exact streamed Gram distances of one Qwen3-30B-A3B-shaped layer.

128 experts, hidden 2048, expert intermediate 768, BF16 (1.2 GB of real random
bytes). Each measurement runs in a fresh process: moetopo's weight distances
(reading, widening, centring, float32 Gram summed in float64, exact re-check of near
pairs) against a plain numpy matmul X @ X.T of the same [experts, parameters] shape in
float64 (the precision of the distances' contract), float32 and bfloat16 (the stored
dtype), and moetopo's function distances per 1k probe tokens. Jobs run interleaved
several times and the fastest run of each counts (the machine is shared). Then where
the time goes (each phase added in turn) and the accuracy against the float64 Gram.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import ml_dtypes
import numpy as np

from moetopo.bench.layouts import Spec, qwen3_moe_config, qwen3_moe_tensors, write_sparse
from moetopo.bench.measure import fastest_of, in_fresh_process

HIDDEN, INTER, EXPERTS = 2048, 768, 128


def qwen3_layer(n_experts: int) -> tuple[dict, list[Spec]]:
    """One Qwen3-30B-A3B-shaped MoE layer with real expert bytes (and a small vocabulary)."""
    config = qwen3_moe_config() | {
        "hidden_size": HIDDEN,
        "moe_intermediate_size": INTER,
        "num_hidden_layers": 1,
        "num_attention_heads": 32,
        "num_experts": n_experts,
        "vocab_size": 4096,
    }
    return config, list(qwen3_moe_tensors(config, real_embeddings=True, real_experts=True))


def ours(model_dir: str, chunk_mb: int) -> float:
    """Seconds of the weight distances of the layer (reading, dequantising, Gram), timed
    like the matmul: imports and opening the model are outside the clock."""
    from moetopo.checkpoint.model import open_model
    from moetopo.geometry.distances import weight_distances

    model = open_model(model_dir)
    start = time.perf_counter()
    distances = weight_distances(model.reader, model.layout.layers[0], chunk_mb << 20)
    seconds = time.perf_counter() - start
    if not np.isfinite(distances["weight_l2"]).all():
        raise AssertionError("non-finite weight distances")
    return seconds


def plain_matmul(n_experts: int, n_params: int, dtype: str) -> float:
    """X @ X.T on an in-memory [experts, params] matrix: the rate to compare against."""
    rng = np.random.default_rng(0)
    x = np.empty((n_experts, n_params), dtype=getattr(ml_dtypes, dtype, dtype))
    step = 1 << 20
    for start in range(0, n_params, step):
        x[:, start : start + step] = rng.standard_normal((n_experts, min(step, n_params - start)))
    start = time.perf_counter()
    x @ x.T  # the product timed
    return time.perf_counter() - start


def phases(model_dir: str) -> dict[str, float]:
    """Cumulative seconds of the weight distances' loop as its phases are added in turn:
    reading alone, then widening, centring, and the Gram (the whole product)."""
    from moetopo.checkpoint.dtypes import widen_into
    from moetopo.checkpoint.model import open_model
    from moetopo.geometry.distances import CenteredGram, expert_row_blocks

    model = open_model(model_dir)
    moe = model.layout.layers[0]
    n = moe.n_experts
    width = 2048
    buffer = np.empty(n * width, dtype=np.float32)
    averager = np.full(n, 1.0 / n, dtype=np.float32)
    seconds = {}
    for phase in ("read", "+ widen", "+ centre", "+ Gram"):
        gram = CenteredGram(n)
        start = time.perf_counter()
        for block in expert_row_blocks(model.reader, moe, np.arange(n), 32 << 20):
            if phase == "read":
                continue
            for c0 in range(0, block.shape[1], width):
                part = block[:, c0 : c0 + width]
                wide = widen_into(buffer[: part.size].reshape(part.shape), part)
                if phase == "+ centre":
                    wide -= averager @ wide
                elif phase == "+ Gram":
                    gram.add(wide)
        seconds[phase] = time.perf_counter() - start
    return seconds


def accuracy(model_dir: str, chunk_mb: int) -> dict[str, float]:
    """The fast distances against a float64 Gram of the same layer: the largest error of
    a distance relative to the pair's norms, and relative to the distance."""
    from moetopo.checkpoint.model import open_model
    from moetopo.geometry.distances import CenteredGram, expert_row_blocks, weight_distances

    model = open_model(model_dir)
    moe = model.layout.layers[0]
    fast = weight_distances(model.reader, moe, chunk_mb << 20)["weight_l2"]
    gram = CenteredGram(moe.n_experts)
    for block in expert_row_blocks(model.reader, moe, np.arange(moe.n_experts), 32 << 20):
        for c0 in range(0, block.shape[1], 2048):
            gram.add(block[:, c0 : c0 + 2048].astype(np.float64))
    sq, norms_sq, _ = gram.squared()
    exact = np.sqrt(sq)
    off = ~np.eye(moe.n_experts, dtype=bool)
    pair_norms = np.sqrt(norms_sq[:, None] + norms_sq[None, :])
    return {
        "relative to the pair's norms": float(np.max(np.abs(fast - exact)[off] / pair_norms[off])),
        "relative to the distance": float(np.max(np.abs(fast[off] / exact[off] - 1))),
    }


def function_time(model_dir: str, tokens: int) -> float:
    from moetopo.checkpoint.model import open_model
    from moetopo.checkpoint.probes import function_probe
    from moetopo.geometry.distances import layer_function_distances

    model = open_model(model_dir)
    x, activation, limit = function_probe(model, tokens, 0)
    start = time.perf_counter()
    layer_function_distances(model.reader, model.layout.layers[0], x, activation, limit)
    return time.perf_counter() - start


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m moetopo.bench geometry", description=__doc__)
    parser.add_argument("--workdir", help="where to write the layer (default: a temp dir)")
    parser.add_argument("--experts", type=int, default=EXPERTS)
    parser.add_argument("--chunk-mb", type=int, default=256)
    parser.add_argument(
        "--tokens", type=int, default=256, help="probe tokens for the function timing"
    )
    parser.add_argument(
        "--repeat", type=int, default=3, help="runs of each job; the fastest counts"
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        model = write_sparse(Path(tmp) / "qwen3", *qwen3_layer(args.experts), 4)
        n_params = 3 * INTER * HIDDEN
        layer_mib = args.experts * n_params * 2 / 2**20
        flops = 2.0 * args.experts**2 * n_params
        print(f"layer: {args.experts} experts x {n_params:,} BF16 parameters = {layer_mib:.0f} MiB")
        jobs = [
            ("moetopo weight distances", ours, (str(model), args.chunk_mb)),
            ("plain numpy matmul float64", plain_matmul, (args.experts, n_params, "float64")),
            ("plain numpy matmul float32", plain_matmul, (args.experts, n_params, "float32")),
            ("plain numpy matmul bfloat16", plain_matmul, (args.experts, n_params, "bfloat16")),
        ]
        results = fastest_of(jobs, args.repeat)
        for label, m in results.items():
            print(
                f"{label:30s} {m.seconds:8.2f} s  {flops / m.seconds / 1e9:7.1f} "
                f"GFLOP/s-equivalent  peak RSS {m.peak_rss_mib:7.0f} MiB"
            )
        ours_m = results["moetopo weight distances"]
        ours_s, ours_rss = ours_m.seconds, ours_m.peak_rss_mib
        for label in list(results)[1:]:
            goal = " (goal >= 0.5)" if label.endswith("float64") else ""
            print(f"rate of moetopo / {label}: {results[label].seconds / ours_s:.2f}{goal}")
        print(
            "(float64 is the like-for-like baseline: the distances are float64 to within the"
            " stated bound; bfloat16 is the stored dtype, which numpy multiplies without BLAS)"
        )
        budget = args.chunk_mb + 0.2 * layer_mib
        print(
            f"peak RSS {ours_rss:.0f} MiB vs chunk + 20% of layer = {budget:.0f} MiB "
            "(RSS includes the interpreter and numpy, ~60 MiB)"
        )
        m = in_fresh_process(phases, str(model))
        print("where the time goes (cumulative, one run):")
        for phase, seconds in m.result.items():
            print(f"  {phase:10s} {seconds:6.2f} s")
        m = in_fresh_process(accuracy, str(model), args.chunk_mb)
        for label, error in m.result.items():
            print(f"largest distance error vs float64, {label}: {error:.1e}")
        m = in_fresh_process(function_time, str(model), args.tokens)
        print(
            f"function distances: {m.result:.2f} s for {args.tokens} tokens = "
            f"{m.result * 1000 / args.tokens:.2f} s per 1k probe tokens,"
            f" peak RSS {m.peak_rss_mib:.0f} MiB"
        )
    return 0
