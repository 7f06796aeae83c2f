"""GGUF models read through the same header index and byte-range reader as safetensors.

Fixtures are written by ``gguf.GGUFWriter`` (llama.cpp's own Python writer) and every
value moetopo reads is checked against the same tensor read whole by ``gguf.GGUFReader``
and dequantised by ``gguf.quants``, then sliced.
"""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import gguf
import numpy as np
import pytest

from moetopo.checkpoint.gguf import gguf_header_end, read_gguf_header
from moetopo.checkpoint.header import entry_columns, read_shard_header
from moetopo.checkpoint.model import open_model
from moetopo.checkpoint.probes import function_probe
from moetopo.checkpoint.reader import TensorReader, read_exactly
from moetopo.checkpoint.shards import list_shards, open_checkpoint
from moetopo.errors import CheckpointError
from moetopo.fixtures import random_model
from moetopo.fixtures.writers.emit import Emitter
from moetopo.fixtures.writers.gguf import gguf as gguf_names
from moetopo.geometry.distances import (
    layer_function_distances,
    router_distances,
    weight_distances,
)
from moetopo.inspect import describe, inspect_model
from moetopo.stages.inventory import merge_inventory
from moetopo.topology.persistence import vietoris_rips_diagrams

from conftest import forget_remote_mirrors

Q = gguf.GGMLQuantizationType
ZOO_MODEL = Path(__file__).resolve().parents[1] / "resources" / "zoo" / "mixtral-e8k2-h64-s0"
ARCH = "deepseek2"
N_EXPERTS, HIDDEN = 4, 256  # hidden a multiple of 256, so K-quant rows run along it

# The tiny model's tensors by type: every float type, a 32-block and a K-quant of each
# kind of tensor a stage reads (routers, stacked experts, shared experts, embeddings).
TYPES = {
    "token_embd.weight": Q.Q8_0,
    "output.weight": Q.Q6_K,
    "blk.0.ffn_gate.weight": Q.BF16,
    "blk.0.ffn_up.weight": Q.Q4_0,
    "blk.0.ffn_down.weight": Q.F16,
    "blk.1.ffn_gate_inp.weight": Q.F32,
    "blk.2.ffn_gate_inp.weight": Q.F16,
    "blk.1.ffn_gate_exps.weight": Q.Q4_K,
    "blk.1.ffn_up_exps.weight": Q.Q8_0,
    "blk.1.ffn_down_exps.weight": Q.Q4_0,
    "blk.2.ffn_gate_exps.weight": Q.Q6_K,
    "blk.2.ffn_up_exps.weight": Q.BF16,
    "blk.2.ffn_down_exps.weight": Q.Q8_0,
    "blk.1.ffn_gate_shexp.weight": Q.Q4_0,
    "blk.1.ffn_up_shexp.weight": Q.BF16,
    "blk.1.attn_q.weight": Q.F16,
}


# Where a block of each K-quant type written here keeps its float16 scales (d, dmin)
K_QUANT_SCALES = {Q.Q4_K: slice(0, 4), Q.Q6_K: slice(-2, None)}


def k_quant_bytes(rng: np.random.Generator, values: np.ndarray, qtype: Q) -> np.ndarray:
    """Raw blocks of a K-quant type, which gguf.quants cannot quantise to: random codes
    under small finite scales, in ``values``' shape as GGUFWriter takes bytes."""
    block, type_size = gguf.GGML_QUANT_SIZES[qtype]
    n_blocks = values.size // block
    raw = rng.integers(0, 256, (n_blocks, type_size), dtype=np.uint8)
    where = K_QUANT_SCALES[qtype]
    scales = rng.uniform(1e-3, 1e-2, (n_blocks, 2)).astype(np.float16).view(np.uint8)
    raw[:, where] = scales[:, : raw[:, where].shape[1]]
    return raw.reshape(*values.shape[:-1], values.shape[-1] // block * type_size)


def encode(rng: np.random.Generator, values: np.ndarray, qtype: Q) -> np.ndarray:
    """``values`` as GGUFWriter.add_tensor takes them for ``qtype``."""
    if qtype == Q.F32:
        return values.astype(np.float32)
    if qtype == Q.F16:
        return values.astype(np.float16)
    if qtype in K_QUANT_SCALES:
        return k_quant_bytes(rng, values, qtype)
    return gguf.quants.quantize(values.astype(np.float32), qtype)


def finish(writer: gguf.GGUFWriter) -> None:
    """Write out what ``writer`` was given (header, metadata, tensors) and close it."""
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def write_gguf(
    path: Path,
    tensors: dict[str, np.ndarray],
    metadata: dict,
    arch: str,
    types: dict[str, Q] | None = None,
    split_max_tensors: int = 0,
) -> list[Path]:
    """A GGUF model as llama.cpp's writer lays it out; returns its files."""
    rng = np.random.default_rng(1)
    writer = gguf.GGUFWriter(path, arch, split_max_tensors=split_max_tensors)
    for key, value in metadata.items():
        if key == "general.architecture":
            continue
        if isinstance(value, bool):
            writer.add_bool(key, value)
        elif isinstance(value, int):
            writer.add_uint32(key, value)
        elif isinstance(value, float):
            writer.add_float32(key, value)
        else:
            writer.add_string(key, value)
    for name, values in tensors.items():
        qtype = (types or {}).get(name, Q.F32)
        data = encode(rng, np.asarray(values, dtype=np.float32), qtype)
        writer.add_tensor(name, data, raw_dtype=None if qtype in (Q.F32, Q.F16) else qtype)
    files = writer.format_shard_names(path)
    finish(writer)
    return files


def tiny_moe() -> tuple[dict[str, np.ndarray], dict]:
    """A 3-block MoE in GGUF naming: block 0 dense, blocks 1-2 routed (4 experts, top-2)
    with a shared expert and exp_probs_b, and its metadata."""
    model = random_model(
        n_layers=3,
        n_experts=N_EXPERTS,
        hidden=HIDDEN,
        intermediate=64,
        moe_layers=[1, 2],
        shared_intermediate=64,
        vocab=32,
        router_bias=True,
    )
    emitter = Emitter(dtype="F32")
    metadata = gguf_names(model, emitter, "hub", arch=ARCH)
    tensors = {name: np.asarray(v, dtype=np.float32) for name, v in emitter.tensors.items()}
    return tensors, metadata


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    """The tiny MoE as one file and split into three parts."""
    tensors, metadata = tiny_moe()
    root = tmp_path_factory.mktemp("gguf")
    (root / "single").mkdir()
    (root / "split").mkdir()
    single = write_gguf(root / "single" / "tiny.gguf", tensors, metadata, ARCH, TYPES)
    n = -(-len(tensors) // 3)
    parts = write_gguf(root / "split" / "tiny.gguf", tensors, metadata, ARCH, TYPES, n)
    assert len(parts) == 3
    return {"single": single[0], "split": parts[1]}  # a split model named by its 2nd part


def reference(files: list[Path]) -> dict[str, np.ndarray]:
    """Every tensor read whole by GGUFReader and dequantised by gguf.quants."""
    out = {}
    for file in files:
        for t in gguf.GGUFReader(file).tensors:
            out[t.name] = gguf.quants.dequantize(t.data, t.tensor_type).reshape(
                tuple(reversed(t.shape.tolist()))
            )
    return out


@pytest.mark.parametrize("kind", ["single", "split"])
def test_header_entries_match_gguf_reader(tiny, kind):
    listing = list_shards(tiny[kind])
    assert len(listing.shards) == (3 if kind == "split" else 1)
    for shard in listing.shards:
        file = listing.root / shard
        header, metadata = read_gguf_header(file, shard)
        reader = gguf.GGUFReader(file)
        assert header.data_start == reader.data_offset == gguf_header_end(file)
        assert header.file_size == file.stat().st_size
        assert [e.name for e in header.tensors.values()] == [t.name for t in reader.tensors]
        for t in reader.tensors:
            entry = header.tensors[t.name]
            assert entry.dtype == t.tensor_type.name
            assert entry.shape == tuple(reversed(t.shape.tolist()))
            assert (entry.begin, entry.end) == (t.data_offset, t.data_offset + t.n_bytes)
        scalars = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
        assert metadata == pytest.approx(scalars)


@pytest.mark.parametrize("kind", ["single", "split"])
def test_reads_equal_whole_tensor_dequantised_then_sliced(tiny, kind):
    listing = list_shards(tiny[kind])
    expected = reference([listing.root / s for s in listing.shards])
    reader = TensorReader(open_checkpoint(tiny[kind]))
    for name, full in expected.items():
        np.testing.assert_array_equal(reader.read(name), full, err_msg=name)
        if full.ndim == 3:  # a stacked expert tensor: one expert, then a range of its rows
            for e in (0, N_EXPERTS - 1):
                np.testing.assert_array_equal(reader.read(name, (e,)), full[e])
                np.testing.assert_array_equal(reader.read(name, (e,), (3, 9)), full[e, 3:9])
            # a slice inside one row, not on block boundaries
            np.testing.assert_array_equal(reader.read(name, (1, 2), (5, 40)), full[1, 2, 5:40])
        elif full.ndim == 2:
            np.testing.assert_array_equal(reader.read(name, rows=(1, 3)), full[1:3], name)
    assert reader.tensor("blk.1.ffn_gate_exps.weight").kind == "ggml"
    assert reader.tensor("blk.2.ffn_up_exps.weight").kind == "plain"  # BF16
    assert reader.storage_dtype("blk.1.ffn_gate_exps.weight") == np.float32
    out = np.empty((64, HIDDEN), dtype=np.float32)
    reader.read_into(out, "blk.1.ffn_gate_exps.weight", (2,))
    np.testing.assert_array_equal(out, expected["blk.1.ffn_gate_exps.weight"][2])
    with pytest.raises(ValueError, match="plain"):
        reader.read_flat_rows_into(out, "blk.1.ffn_gate_exps.weight", 0, 64)


@pytest.mark.parametrize("kind", ["single", "split"])
def test_layout_and_inventory_from_gguf_metadata(tiny, kind):
    listing = list_shards(tiny[kind])
    frames = []  # as the inventory_shard jobs record each part
    for shard in listing.shards:
        h = read_shard_header(listing.root / shard, shard)
        meta = {"shard": h.shard, "file_size": h.file_size, "digest": h.digest}
        frames.append((entry_columns(h.tensors.values()), meta))
    columns, summary, layout = merge_inventory(tiny[kind], frames)
    roles = zip(columns["role"], columns["layer"], strict=True)
    rows = dict(zip(columns["tensor"], roles, strict=True))
    assert rows["blk.1.ffn_gate_inp.weight"] == ("router", 1)
    assert rows["blk.2.exp_probs_b.bias"] == ("router_bias", 2)
    assert rows["blk.0.ffn_gate.weight"] == ("dense_ffn", 0)
    assert rows["blk.2.ffn_gate_exps.weight"] == ("expert_gate", 2)
    assert rows["blk.1.ffn_down_shexp.weight"] == ("shared_expert_down", 1)
    assert summary["family"] == "gguf" and summary["architecture"] == ARCH
    assert (summary["moe_layers"], summary["dense_layers"]) == ([1, 2], [0])
    assert (summary["n_experts"], summary["top_k"], summary["n_shared_experts"]) == (4, 2, 1)
    assert {"Q4_K", "Q6_K", "Q8_0", "Q4_0", "BF16", "F16", "F32"} <= set(summary["dtypes"])
    assert not [w for w in layout.warnings if "config places" in w]
    expert = layout.layers[1].experts["expert_gate"]
    assert (expert.fused, expert.shape, expert.orientation) == (
        "blk.1.ffn_gate_exps.weight",
        (64, HIDDEN),
        "out_in",
    )


def test_expert_reads_touch_only_that_experts_bytes(tiny, monkeypatch):
    import moetopo.checkpoint.gguf as gguf_module

    reads = []

    def recorded(path, offset, out, tensor=None):
        reads.append((offset, out.nbytes))
        read_exactly(path, offset, out, tensor)

    monkeypatch.setattr(gguf_module, "read_exactly", recorded)
    reader = TensorReader(open_checkpoint(tiny["single"]))
    entry = reader.tensor("blk.1.ffn_gate_exps.weight").data  # Q4_K, [4, 64, 256]
    slab, row = entry.nbytes // N_EXPERTS, entry.nbytes // (N_EXPERTS * 64)
    reader.read(entry.name, (2,))
    reader.read(entry.name, (3,), (10, 20))
    assert reads == [(entry.begin + 2 * slab, slab), (entry.begin + 3 * slab + 10 * row, 10 * row)]


def test_expert_distances_of_quantised_experts(tiny):
    """Weight distances stream quantised experts through read_into; they equal the
    distances between the experts dequantised whole by gguf."""
    model = open_model(tiny["split"])
    listing = list_shards(tiny["split"])
    expected = reference([listing.root / s for s in listing.shards])
    for layer in (1, 2):
        flat = np.concatenate(
            [
                expected[f"blk.{layer}.ffn_{part}_exps.weight"].reshape(N_EXPERTS, -1)
                for part in ("down", "gate", "up")
            ],
            axis=1,
        ).astype(np.float64)
        exact = np.sqrt(((flat[:, None] - flat[None]) ** 2).sum(axis=-1))
        found = weight_distances(model.reader, model.layout.layers[layer])["weight_l2"]
        np.testing.assert_allclose(found, exact, rtol=1e-5)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # random scales overflow to inf
def test_every_dequantisable_type_reads_by_slice(tmp_path):
    """Every GGML block type gguf.quants dequantises, from random bytes (NaN included:
    the slices must equal the whole tensor's dequantisation bit for bit)."""
    rng = np.random.default_rng(0)
    readable = []
    writer = gguf.GGUFWriter(tmp_path / "types.gguf", "llama")
    for qtype in Q:
        block, type_size = gguf.GGML_QUANT_SIZES.get(qtype, (1, 0))
        if block == 1:  # the plain types: F32, F16, BF16, F64, integers
            continue
        try:
            gguf.quants.dequantize(np.zeros(type_size, dtype=np.uint8), qtype)
        except NotImplementedError:
            continue
        readable.append(qtype)
        raw = rng.integers(0, 256, (3, 5, 2 * type_size), dtype=np.uint8)  # [3, 5, 2 blocks]
        writer.add_tensor(f"t.{qtype.name}", raw, raw_dtype=qtype)
    finish(writer)
    assert {Q.Q4_0, Q.Q8_0, Q.Q2_K, Q.Q4_K, Q.Q6_K, Q.IQ4_XS, Q.TQ2_0} <= set(readable)
    expected = reference([tmp_path / "types.gguf"])
    reader = TensorReader(open_checkpoint(tmp_path / "types.gguf"))
    for qtype in readable:
        name, full = f"t.{qtype.name}", expected[f"t.{qtype.name}"]
        assert reader.tensor(name).data.dtype == qtype.name
        np.testing.assert_array_equal(reader.read(name), full, err_msg=name)
        np.testing.assert_array_equal(reader.read(name, (2,), (1, 4)), full[2, 1:4])
        np.testing.assert_array_equal(reader.read(name, (1, 3), (7, 9)), full[1, 3, 7:9])


def test_type_without_dequantiser_is_refused_by_name(tmp_path):
    path = tmp_path / "q8k.gguf"
    block, type_size = gguf.GGML_QUANT_SIZES[Q.Q8_K]
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_tensor("blk.0.odd.weight", np.zeros((2, type_size), np.uint8), raw_dtype=Q.Q8_K)
    finish(writer)
    reader = TensorReader(open_checkpoint(path))
    assert reader.tensor("blk.0.odd.weight").shape == (2, block)
    with pytest.raises(CheckpointError, match="Q8_K cannot be dequantised") as error:
        reader.read("blk.0.odd.weight")
    assert error.value.tensor == "blk.0.odd.weight" and error.value.path == str(path)


def test_truncated_file_names_file_and_first_tensor_cut(tiny, tmp_path):
    cut = tmp_path / "tiny.gguf"
    shutil.copy(tiny["single"], cut)
    header, _ = read_gguf_header(cut)
    last = max(header.tensors.values(), key=lambda e: e.end)
    with open(cut, "r+b") as handle:
        handle.truncate(last.begin + 10)
    with pytest.raises(CheckpointError, match="truncated GGUF file") as error:
        open_checkpoint(cut)
    assert error.value.tensor == last.name and error.value.path == str(cut)
    with open(cut, "r+b") as handle:
        handle.truncate(header.data_start // 2)
    with pytest.raises(CheckpointError, match="truncated GGUF file: its header runs to byte"):
        open_checkpoint(cut)
    cut.write_bytes(b"GGUF")
    with pytest.raises(CheckpointError, match="truncated"):
        read_shard_header(cut)
    cut.write_bytes(b"PK\x03\x04" + bytes(40))
    with pytest.raises(CheckpointError, match="not a GGUF file"):
        read_shard_header(cut)


def test_split_parts_are_all_listed_and_checked(tiny, tmp_path):
    source = tiny["split"].parent
    parts = sorted(p.name for p in source.glob("*.gguf"))
    by_dir, by_first = list_shards(source), list_shards(source / parts[0])
    assert by_dir.shards == by_first.shards == list_shards(tiny["split"]).shards == tuple(parts)
    model = tmp_path / "m"
    shutil.copytree(source, model)
    (model / parts[1]).unlink()
    for given in (model, model / parts[0], model / parts[2]):
        with pytest.raises(CheckpointError, match="part 2 of the 3-part GGUF model") as error:
            open_checkpoint(given)
        assert error.value.path == str(model / parts[1])
    shutil.copy(source / parts[2], model / parts[1])  # part 3's bytes under part 2's name
    with pytest.raises(CheckpointError, match="split.no 2 of split.count 3"):
        open_checkpoint(model)
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(source / parts[0], alone / "renamed.gguf")
    with pytest.raises(CheckpointError, match="part 1 of a 3-part split GGUF model"):
        open_checkpoint(alone)


def test_directory_with_two_gguf_models_asks_for_one(tiny, tmp_path):
    shutil.copy(tiny["single"], tmp_path / "a.gguf")
    shutil.copy(tiny["single"], tmp_path / "b-Q4_K_M.gguf")
    with pytest.raises(CheckpointError, match="2 GGUF models in this directory"):
        list_shards(tmp_path)
    assert list_shards(tmp_path / "a.gguf").shards == ("a.gguf",)


def test_unknown_safetensors_dtype_is_still_refused(tmp_path):
    header = json.dumps({"w": {"dtype": "Q4_K", "shape": [256], "data_offsets": [0, 144]}})
    path = tmp_path / "model.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header.encode() + bytes(144))
    with pytest.raises(CheckpointError, match="unknown dtype 'Q4_K'"):
        open_checkpoint(path)


def test_header_end_converges_on_a_sparse_prefix(tmp_path):
    """A remote layer fetches a prefix into a sparse file of the full size and asks again
    while the header runs past it; the zeros beyond never end the walk early."""
    original = tmp_path / "vocab.gguf"
    writer = gguf.GGUFWriter(original, "llama")
    writer.add_token_list([f"token{i}" for i in range(20_000)])
    writer.add_block_count(1)
    writer.add_tensor("blk.0.ffn_gate_inp.weight", np.ones((4, 32), dtype=np.float32))
    finish(writer)
    data = original.read_bytes()
    true_end = read_gguf_header(original)[0].data_start
    sparse, fetched, rounds = tmp_path / "sparse.gguf", 4096, 0
    while True:
        sparse.write_bytes(data[:fetched] + bytes(len(data) - fetched))
        end = gguf_header_end(sparse)
        rounds += 1
        if end <= fetched:
            break
        assert end > fetched
        fetched = min(len(data), max(2 * fetched, end))
    assert end == true_end and rounds > 2
    header, metadata = read_gguf_header(sparse)
    assert header.tensors == read_gguf_header(original, "sparse.gguf")[0].tensors
    assert metadata["llama.block_count"] == 1 and "tokenizer.ggml.tokens" not in metadata


def test_gating_function_selects_the_routing_rule(tmp_path):
    tensors, metadata = tiny_moe()
    deepseek_v3 = {
        "expert_gating_func": 2,
        "expert_weights_norm": True,
        "expert_weights_scale": 2.5,
        "expert_group_count": 2,
        "expert_group_used_count": 1,
    }
    metadata |= {f"{ARCH}.{key}": value for key, value in deepseek_v3.items()}
    write_gguf(tmp_path / "v3.gguf", tensors, metadata, ARCH)
    routing = open_model(tmp_path / "v3.gguf").layout.routing
    assert routing["rule"] == "sigmoid_group_topk" and routing["router_bias"] == "selection"
    assert (routing["n_group"], routing["topk_group"]) == (2, 1)
    assert routing["norm_topk_prob"] is True and routing["routed_scaling_factor"] == 2.5


def test_inspect_describes_a_gguf_file(tiny):
    text = describe(inspect_model(tiny["single"]))
    assert "family       gguf" in text and "4 routed, top-2, 1 shared" in text
    assert "Q4_K" in text


def zoo_as_gguf(target: Path) -> Path:
    """The zoo's Mixtral converted as llama.cpp's converter does (its arch "llama", its
    name map, experts stacked on a leading axis), unquantised F32. Rotary q/k rows are
    not permuted: no stage here reads attention."""
    config = json.loads((ZOO_MODEL / "config.json").read_text())
    reader = TensorReader(open_checkpoint(ZOO_MODEL))
    n_layers = config["num_hidden_layers"]
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, n_layers)
    tensors = {}
    for name in sorted(reader.logical):
        if ".experts." in name:
            continue
        tensors[names.get_name(name, try_suffixes=(".weight",))] = reader.read(name)
    for layer in range(n_layers):
        for w in ("w1", "w2", "w3"):
            stem = f"model.layers.{layer}.block_sparse_moe.experts"
            stacked = np.stack(
                [reader.read(f"{stem}.{e}.{w}.weight") for e in range(config["num_local_experts"])]
            )
            tensors[names.get_name(f"{stem}.{w}.weight", try_suffixes=(".weight",))] = stacked
    metadata = {
        "llama.block_count": n_layers,
        "llama.context_length": config["max_position_embeddings"],
        "llama.embedding_length": config["hidden_size"],
        "llama.feed_forward_length": config["intermediate_size"],
        "llama.attention.head_count": config["num_attention_heads"],
        "llama.attention.head_count_kv": config["num_key_value_heads"],
        "llama.attention.layer_norm_rms_epsilon": config["rms_norm_eps"],
        "llama.expert_count": config["num_local_experts"],
        "llama.expert_used_count": config["num_experts_per_tok"],
    }
    return write_gguf(target / "zoo.gguf", tensors, metadata, "llama")[0]


def test_zoo_model_as_gguf_has_the_same_geometry_and_persistence(tmp_path):
    original = open_model(ZOO_MODEL)
    converted = open_model(zoo_as_gguf(tmp_path))
    assert converted.layout.family == "gguf" and converted.layout.architecture == "llama"
    for attribute in ("moe_layers", "n_experts", "top_k", "hidden_size"):
        assert getattr(converted.layout, attribute) == getattr(original.layout, attribute)
    assert converted.layout.routing["rule"] == original.layout.routing["rule"]
    probes = [function_probe(model, 64, 0) for model in (original, converted)]
    for layer in original.layout.moe_layers:
        found = []
        for model, probe in zip((original, converted), probes, strict=True):
            moe = model.layout.layers[layer]
            router = model.reader.read(moe.router)
            distances = router_distances(router) | weight_distances(model.reader, moe)
            distances["function"] = layer_function_distances(model.reader, moe, *probe)
            found.append((router, distances))
        (router_a, a), (router_b, b) = found
        np.testing.assert_array_equal(router_b, router_a)
        for source in ("router_l1", "router_cosine", "weight_l2", "weight_cosine", "function"):
            np.testing.assert_allclose(b[source], a[source], rtol=1e-6, atol=1e-9)
            bars_a = vietoris_rips_diagrams(a[source])
            bars_b = vietoris_rips_diagrams(b[source])
            assert list(bars_b.dim) == list(bars_a.dim), source
            np.testing.assert_allclose(bars_b.death, bars_a.death, rtol=1e-5)


@pytest.mark.parametrize("kind", ["single", "split"])
def test_a_served_gguf_model_reads_as_the_local_one(tiny, kind, tmp_path, monkeypatch):
    """hf://ORG/NAME/FILE.gguf: the header grown from a small prefix until it parses
    whole, a split set fetched from any part's name, quantised slices by byte range."""
    from moetopo.checkpoint import remote
    from moetopo.fixtures.http_server import CheckpointServer

    monkeypatch.setenv("MOETOPO_CACHE", str(tmp_path / "cache"))
    forget_remote_mirrors(monkeypatch)
    monkeypatch.setattr(remote, "GGUF_PREFIX", 256)  # far shorter than a header
    local = open_checkpoint(tiny[kind])
    with CheckpointServer() as server:
        server.add("org/tiny", tiny[kind].parent)
        monkeypatch.setenv("HF_ENDPOINT", server.endpoint)
        served = open_checkpoint(f"hf://org/tiny/{tiny[kind].name}")
        assert served.shards == local.shards
        assert {n: e[2:] for n, e in served.tensors.items()} == {
            n: e[2:] for n, e in local.tensors.items()
        }
        headers = remote.FETCHED.bytes
        assert headers < local.total_bytes / 2
        ours, theirs = TensorReader(served), TensorReader(local)
        for name in theirs.logical:
            lead = (1,) if len(theirs.tensor(name).shape) == 3 else ()
            np.testing.assert_array_equal(ours.read(name, lead), theirs.read(name, lead))
