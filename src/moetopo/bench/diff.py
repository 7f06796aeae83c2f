"""Benchmark: the attention_diff stage on a Mixtral-shaped BF16 pair of several GB each.

The base is written with real random bytes in every layer tensor (embeddings and head
are holes: the diff never reads them); the tuned model is a copy with the q and o rows
of layer 0 and one expert rewritten. Each measurement runs in a fresh process: the diff
stage over all layers (q/k/v/o, routers, every expert), against a plain loop of
positional reads of exactly the same byte ranges of both models into one reused buffer.
Both are timed cold (page cache dropped, as for checkpoints larger than memory) and
warm (files cached), in alternating order, several times; the fastest run counts.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path

import ml_dtypes
import numpy as np

from moetopo.bench.layouts import Spec, write_sparse
from moetopo.bench.measure import drop_page_cache_hint, fastest_of, in_fresh_process
from moetopo.checkpoint.model import open_model
from moetopo.diff.rows import RowMeasure
from moetopo.stages.attention_diff import check_pair, diff_layers, plan_diff
from moetopo.stages.scaffold import scaffold_table

HIDDEN, INTER, EXPERTS, HEADS, KV_HEADS, VOCAB = 4096, 14336, 8, 32, 8, 32000


def mixtral_config(n_layers: int) -> dict:
    return {
        "architectures": ["MixtralForCausalLM"],
        "model_type": "mixtral",
        "hidden_size": HIDDEN,
        "intermediate_size": INTER,
        "num_hidden_layers": n_layers,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "num_local_experts": EXPERTS,
        "num_experts_per_tok": 2,
        "vocab_size": VOCAB,
        "rms_norm_eps": 1e-5,
        "torch_dtype": "bfloat16",
    }


def mixtral_tensors(n_layers: int) -> list[Spec]:
    kv = KV_HEADS * HIDDEN // HEADS
    tensors = [Spec("model.embed_tokens.weight", "BF16", (VOCAB, HIDDEN))]
    for i in range(n_layers):
        p = f"model.layers.{i}."
        tensors += [
            Spec(p + "input_layernorm.weight", "BF16", (HIDDEN,), True),
            Spec(p + "post_attention_layernorm.weight", "BF16", (HIDDEN,), True),
            Spec(p + "self_attn.q_proj.weight", "BF16", (HIDDEN, HIDDEN), True),
            Spec(p + "self_attn.k_proj.weight", "BF16", (kv, HIDDEN), True),
            Spec(p + "self_attn.v_proj.weight", "BF16", (kv, HIDDEN), True),
            Spec(p + "self_attn.o_proj.weight", "BF16", (HIDDEN, HIDDEN), True),
            Spec(p + "block_sparse_moe.gate.weight", "BF16", (EXPERTS, HIDDEN), True),
        ]
        for e in range(EXPERTS):
            q = f"{p}block_sparse_moe.experts.{e}."
            tensors += [
                Spec(q + "w1.weight", "BF16", (INTER, HIDDEN), True),
                Spec(q + "w3.weight", "BF16", (INTER, HIDDEN), True),
                Spec(q + "w2.weight", "BF16", (HIDDEN, INTER), True),
            ]
    tensors += [Spec("model.norm.weight", "BF16", (HIDDEN,), True)]
    return tensors + [Spec("lm_head.weight", "BF16", (VOCAB, HIDDEN))]


def write_pair(base: Path, tuned: Path, n_layers: int) -> None:
    """The base with random bytes; the tuned copy with layer 0's q and o rows and half of
    expert 1's w1 rows moved (layer 0 is then the one scaffold layer)."""

    write_sparse(base, mixtral_config(n_layers), mixtral_tensors(n_layers), 4)
    shutil.copytree(base, tuned)
    model = open_model(tuned)
    rng = np.random.default_rng(1)
    for name, rows in (
        ("model.layers.0.self_attn.q_proj.weight", HIDDEN),
        ("model.layers.0.self_attn.o_proj.weight", HIDDEN),
        ("model.layers.0.block_sparse_moe.experts.1.w1.weight", INTER // 2),
    ):
        entry = model.reader.tensor(name).data
        values = model.reader.read(name, rows=(0, rows))
        values += 0.02 * rng.standard_normal(values.shape, dtype=np.float32)
        with open(model.checkpoint.shard_path(entry.shard), "r+b") as handle:
            handle.seek(entry.begin)
            handle.write(values.astype(ml_dtypes.bfloat16).tobytes())
    os.sync()


def byte_ranges(base_dir: str, tuned_dir: str) -> list[tuple[str, int, int]]:
    """(file, offset, bytes) of every row span the diff reads, in both models."""

    base, tuned = open_model(base_dir), open_model(tuned_dir)
    plan = plan_diff(base, tuned, list(range(base.layout.n_layers)))
    ranges = []
    for model in (base, tuned):
        for span in plan.spans:
            entry = model.reader.tensor(span.tensor).data
            row = entry.nbytes // max(1, np.prod(entry.shape[:-1], dtype=np.int64))
            path = str(model.checkpoint.shard_path(entry.shard))
            ranges.append((path, entry.begin + span.start * row, (span.stop - span.start) * row))
    return ranges


def plain_read(ranges: list[tuple[str, int, int]], block_bytes: int) -> int:
    """Positional reads of ``ranges`` into one reused buffer: the rate to compare against."""
    buffer = memoryview(bytearray(block_bytes))
    files: dict[str, int] = {}
    total = 0
    for path, offset, nbytes in ranges:
        fd = files.setdefault(path, os.open(path, os.O_RDONLY))
        end = offset + nbytes
        while offset < end:
            n = os.preadv(fd, [buffer[: min(block_bytes, end - offset)]], offset)
            offset += n
            total += n
    for fd in files.values():
        os.close(fd)
    return total


def ours(base_dir: str, tuned_dir: str, chunk_mb: int) -> int:
    """The stage as its job runs it: open both, check the pair, diff every layer."""

    base, tuned = open_model(base_dir), open_model(tuned_dir)
    check_pair(base, tuned, ("base", "tuned"))
    layers = list(range(base.layout.n_layers))
    diff = diff_layers(base, tuned, layers, RowMeasure(), chunk_mb << 20)
    found = int(scaffold_table(diff.attention, len(layers)).is_scaffold.sum())
    if found != 1:
        raise AssertionError(f"expected one scaffold layer (0), found {found}")
    return found


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m moetopo.bench diff", description=__doc__)
    parser.add_argument("--workdir", default="/tmp", help="where to write the pair")
    parser.add_argument("--layers", type=int, default=2, help="Mixtral layers (2.9 GB each)")
    parser.add_argument("--chunk-mb", type=int, default=256)
    parser.add_argument(
        "--repeat", type=int, default=2, help="runs of each job; the fastest counts"
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(dir=args.workdir, prefix="moetopo-bench-diff-") as tmp:
        base, tuned = Path(tmp) / "base", Path(tmp) / "tuned"
        in_fresh_process(write_pair, base, tuned, args.layers)
        ranges = byte_ranges(str(base), str(tuned))
        total = sum(n for _, _, n in ranges)
        files = sorted({p for p, _, _ in ranges})
        sizes = [sum(f.stat().st_size for f in d.iterdir()) / 1e9 for d in (base, tuned)]
        print(
            f"pair: {args.layers} Mixtral layers (BF16), {sizes[0]:.2f} + {sizes[1]:.2f} GB on "
            f"disk; the diff reads {total / 1e9:.2f} GB of both; chunk {args.chunk_mb} MiB"
        )
        floor = in_fresh_process(plain_read, [], 1).peak_rss_mib
        jobs = (
            ("plain read loop", plain_read, (ranges, (args.chunk_mb << 20) // 4)),
            ("moetopo attention_diff", ours, (str(base), str(tuned), args.chunk_mb)),
        )
        for cache in ("cold", "warm"):
            hint = (lambda: drop_page_cache_hint(files)) if cache == "cold" else None
            best = fastest_of(jobs, args.repeat, before_each=hint)
            rates = []
            for label, m in best.items():
                seconds, peak = m.seconds, m.peak_rss_mib
                rates.append(total / seconds / 1e9)
                print(
                    f"{cache} {label:24s} {seconds:7.2f} s  {rates[-1]:6.2f} GB/s  "
                    f"peak RSS {peak:6.0f} MiB ({peak - floor:+.0f} over the imports)"
                )
            print(f"{cache}: moetopo / plain read = {rates[1] / rates[0]:.2f} (goal >= 0.70)")
    return 0
