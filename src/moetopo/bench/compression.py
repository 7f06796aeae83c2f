"""Benchmark: layer-wise compression evaluation of one Qwen3-30B-A3B-shaped layer.

128 experts, hidden 2048, expert width 768 (SwiGLU gate/up/down), top-8 softmax routing
with norm_topk_prob, BF16 weights written to real safetensors shards (1.2 GB of random
bytes), 4,096 Gaussian float32 tokens (the scale of an RMS-normed hidden state). moetopo's
``evaluate_layer`` runs every method at 3 budgets with the experts read from the shards
through ``routed_block(open_model(dir), 0)``, within the block's expert cache.

The floor, measured in the same run: one full MoE forward of the same 4,096 tokens in
plain numpy (route, then per expert the gate/up/down matmuls on its tokens, float32
matmuls summed in float64 as moetopo computes) with every expert already in memory.
The evaluation runs about budgets x methods such forwards on half the tokens, plus the
calibration barriers; the goal is ours / (budgets x methods x floor) <= 3. Each
measurement is a fresh process; jobs alternate and the fastest run of each counts.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from moetopo.bench.layouts import qwen3_moe_config, qwen3_moe_tensors, write_sparse
from moetopo.bench.measure import fastest_of

EXPERTS, HIDDEN, WIDTH, TOKENS, TOP_K = 128, 2048, 768, 4096, 8


def qwen3_layer(n_experts: int, hidden: int, width: int) -> tuple[dict, list]:
    """One Qwen3-30B-A3B-shaped MoE layer with real expert and router bytes."""
    config = qwen3_moe_config() | {
        "hidden_size": hidden,
        "moe_intermediate_size": width,
        "num_hidden_layers": 1,
        "num_attention_heads": 32,
        "num_experts": n_experts,
        "num_experts_per_tok": TOP_K,
        "vocab_size": 4096,
    }
    return config, list(qwen3_moe_tensors(config, real_embeddings=False, real_experts=True))


def tokens(n: int, hidden: int, seed: int = 0) -> np.ndarray:
    """Gaussian rows: unit RMS, as an RMS-normed hidden state with norm weights near one."""
    return np.random.default_rng(seed).standard_normal((n, hidden), dtype=np.float32)


class Timed(float):
    """Seconds on the job's own clock (``fastest_of`` keeps a float's own clock), with what
    the run did in ``info``."""

    def __new__(cls, seconds: float, info: dict):
        value = super().__new__(cls, seconds)
        value.info = info
        return value

    def __reduce__(self):
        return Timed, (float(self), self.info)


def ours(model_dir: str, n_tokens: int, cache_mb: int) -> Timed:
    """Seconds of ``evaluate_layer`` on the layer; opening the model and drawing the tokens
    are outside the clock."""
    from moetopo.checkpoint.model import open_model
    from moetopo.compression.evaluate import CompressionParams, evaluate_layer
    from moetopo.compression.model import routed_block
    from moetopo.stages import peak_rss_mib

    block = routed_block(open_model(model_dir), 0, cache_bytes=cache_mb << 20)
    x = tokens(n_tokens, block.router.shape[1])
    before = peak_rss_mib()
    start = time.perf_counter()
    result = evaluate_layer(block, x, CompressionParams(tokens=n_tokens))
    seconds = time.perf_counter() - start
    table = result.table
    if not np.isfinite(table[table.metric == "relative_error"].value).all():
        raise AssertionError("non-finite relative errors")
    runs = table[["method", "draw", "keep"]].drop_duplicates()
    merges = result.selections[result.selections.merged]
    merged = merges.groupby(["method", "draw", "keep"]).target.nunique()
    return Timed(
        seconds,
        {
            "runs": len(runs),
            "budgets": sorted(runs.keep.unique().tolist()),
            "methods": runs.groupby("method").draw.nunique().to_dict(),
            "rss_before": before,
            "memo_slots": getattr(block, "memo_slots", 0.0),
            "merged": int(merged.max()) if len(merged) else 0,  # merged experts of a reduction
        },
    )


def moe_forward(x: np.ndarray, router: np.ndarray, experts: list, top_k: int) -> np.ndarray:
    """The plain MoE forward: softmax routing, top-k renormalised, and per expert SwiGLU
    on its tokens; ``experts`` holds (gate, up, down) float32 matrices."""
    logits = x.astype(np.float64) @ router.T.astype(np.float64)
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    chosen = np.argpartition(-probs, top_k - 1, axis=1)[:, :top_k]
    weights = np.take_along_axis(probs, chosen, 1)
    weights /= weights.sum(axis=1, keepdims=True)
    out = np.zeros(x.shape, dtype=np.float64)
    for e, (gate, up, down) in enumerate(experts):
        rows, slot = np.nonzero(chosen == e)
        if len(rows):
            xs = x[rows]
            g = xs @ gate.T
            h = g / (1.0 + np.exp(-g)) * (xs @ up.T)
            out[rows] += weights[rows, slot][:, None] * (h @ down.T)
    return out


def read_layer(model_dir: str) -> tuple[np.ndarray, list]:
    """Router and every expert (gate, up, down) as float32, in memory."""
    from moetopo.checkpoint.experts import read_expert
    from moetopo.checkpoint.model import open_model

    model = open_model(model_dir)
    moe = model.layout.layers[0]
    router = model.reader.read(moe.router).astype(np.float32)
    experts = []
    for e in range(router.shape[0]):
        w = read_expert(model.reader, moe, e)
        experts.append((w.gate, w.up, w.down))
    return router, experts


def floor(model_dir: str, n_tokens: int) -> Timed:
    """Seconds of one full forward of the tokens with the weights already in memory."""
    router, experts = read_layer(model_dir)
    x = tokens(n_tokens, router.shape[1])
    start = time.perf_counter()
    out = moe_forward(x, router, experts, TOP_K)
    seconds = time.perf_counter() - start
    return Timed(seconds, {"norm": float(np.linalg.norm(out))})


def profile(model_dir: str, n_tokens: int, cache_mb: int, top: int) -> None:
    """One run of ``ours`` in this process under cProfile: the ``top`` entries by
    cumulative and by own time."""
    import cProfile
    import pstats

    profiler = cProfile.Profile()
    profiler.enable()
    ours(model_dir, n_tokens, cache_mb)
    profiler.disable()
    stats = pstats.Stats(profiler).strip_dirs()
    stats.sort_stats("cumulative").print_stats(top)
    stats.sort_stats("tottime").print_stats(top)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m moetopo.bench compression",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--workdir", help="where to write the layer (default: a temp dir)")
    parser.add_argument("--experts", type=int, default=EXPERTS)
    parser.add_argument("--hidden", type=int, default=HIDDEN)
    parser.add_argument("--width", type=int, default=WIDTH, help="expert intermediate size")
    parser.add_argument("--tokens", type=int, default=TOKENS)
    parser.add_argument("--chunk-mb", type=int, default=256, help="the block's expert cache")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each; the fastest counts")
    parser.add_argument(
        "--profile", type=int, default=0, metavar="N",
        help="instead, profile one run in this process and print the top N entries",
    )  # fmt: skip
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(dir=args.workdir, prefix="moetopo-bench-") as tmp:
        model = str(write_sparse(Path(tmp) / "qwen3", *qwen3_layer(
            args.experts, args.hidden, args.width), 4))  # fmt: skip
        if args.profile:
            profile(model, args.tokens, args.chunk_mb, args.profile)
            return 0
        expert_bytes = 3 * args.width * args.hidden * 2
        layer_mib = args.experts * expert_bytes / 2**20
        print(
            f"layer: {args.experts} experts x hidden {args.hidden} x width {args.width}, "
            f"top-{TOP_K}, BF16 {layer_mib:.0f} MiB ({2 * layer_mib:.0f} MiB as float32); "
            f"{args.tokens} tokens; expert cache {args.chunk_mb} MiB",
            flush=True,
        )
        jobs = [
            ("ours", ours, (model, args.tokens, args.chunk_mb)),
            ("floor", floor, (model, args.tokens)),
        ]
        best = fastest_of(jobs, args.repeats)
    ours_m, floor_m = best["ours"], best["floor"]
    info = ours_m.result.info
    runs = info["runs"]
    ratio = ours_m.seconds / (runs * floor_m.seconds)
    methods = ", ".join(f"{m} x{d}" if d > 1 else m for m, d in info["methods"].items())
    print(f"ours:  evaluate_layer  {ours_m.seconds:8.2f} s  (best of {args.repeats})")
    print(f"floor: one MoE forward {floor_m.seconds:8.2f} s  of {args.tokens} tokens, in memory")
    print(
        f"budgets x methods: {len(info['budgets'])} x {runs // len(info['budgets'])} = {runs}"
        f"  (keep {info['budgets']}; {methods})"
    )
    print(f"ratio ours / (budgets x methods x floor): {ratio:.2f}  (goal <= 3)")
    before, peak = info["rss_before"], ours_m.peak_rss_mib
    half = args.tokens // 2
    slots = half * TOP_K * args.hidden * 4 / 2**20  # a float32 output per slot of half the tokens
    parts = {
        "expert cache": args.chunk_mb,
        "2 experts beyond it": 2 * expert_bytes * 2 / 2**20,
        f"slot outputs (barrier + memo {info['memo_slots']:g}) x {slots:.0f}": (
            (1 + info["memo_slots"]) * slots
        ),
        "~8 float64 [T/2, H] buffers": 8 * half * args.hidden * 8 / 2**20,
        "pairwise mean-output distances (experts^2 x hidden)": (
            args.experts**2 * args.hidden * 8 / 2**20
        ),
        f"{info['merged']} merged experts of one HC-SMoE reduction": (
            info["merged"] * expert_bytes * 2 / 2**20
        ),
    }
    bound = before + sum(parts.values())
    print(
        f"peak RSS: ours {peak:.0f} MiB, {before:.0f} MiB of it before the evaluation; "
        f"floor {floor_m.peak_rss_mib:.0f} MiB (the layer in memory as float32)"
    )
    print(
        "  the evaluation's bound: "
        + " + ".join(f"{name} {mib:.0f}" for name, mib in parts.items())
        + f" = {bound - before:.0f} MiB"
    )
    print(
        f"  peak {peak:.0f} {'<=' if peak <= bound else '>'} before + bound = {bound:.0f} MiB;"
        f" the layer is {layer_mib:.0f} MiB BF16. Expert bytes: the cache, and the merged "
        "experts (at most keep of them); the distances grow with experts^2 x hidden, the "
        "rest with tokens x top_k x hidden"
    )
    return 0
