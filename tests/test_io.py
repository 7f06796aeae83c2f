"""Reading checkpoints: dtypes, dequantisation, byte-exact slices, and every bad input."""

from __future__ import annotations

import json
import os
import pickle
import signal
import struct
import subprocess
import sys
import threading

import ml_dtypes
import numpy as np
import pytest

from moetopo.artefacts.views import gates_from_rows
from moetopo.checkpoint.dtypes import ELEMENT_TYPES
from moetopo.checkpoint.header import ITEMSIZE, entries_from_columns, entry_columns
from moetopo.checkpoint.model import open_model
from moetopo.checkpoint.prefetch import SlotBuffers, prefetched
from moetopo.checkpoint.reader import TensorReader
from moetopo.checkpoint.shards import checkpoint_from_entries, list_shards, open_checkpoint
from moetopo.errors import CheckpointError, NoMoELayersError
from moetopo.fixtures import random_model, write_checkpoint, write_family, write_safetensors
from moetopo.fixtures.quantize import quantize_fp8_blocks, quantize_mxfp4

from conftest import gate_rows


def reader_for(tmp_path, tensors, config=None, n_shards=1):
    write_checkpoint(tmp_path, tensors, config or {}, n_shards=n_shards)
    return TensorReader(open_checkpoint(tmp_path))


# --- element types and dequantisation -------------------------------------------------


def test_header_itemsizes_agree_with_the_numpy_element_types():
    """The header's numpy-free size table and io.dtypes describe the same dtypes."""
    assert set(ITEMSIZE) == set(ELEMENT_TYPES)
    for name, size in ITEMSIZE.items():
        assert ELEMENT_TYPES[name].numpy.itemsize == size, name


def test_inspect_never_imports_numpy(tmp_path):
    """Headers and layout are numpy-free, so ``moetopo inspect`` starts fast."""
    write_family(random_model(), "deepseek_v3", tmp_path, dtype="F8_E4M3")
    code = (
        "import sys, moetopo.__main__ as cli; cli.main(['inspect', sys.argv[1]]); "
        "print('numpy' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=True
    )
    assert "deepseek_v3" in out.stdout
    assert out.stdout.split()[-1] == "False"


def test_bf16_round_trips_exactly(tmp_path):
    values = np.random.default_rng(0).standard_normal((37, 19)).astype(ml_dtypes.bfloat16)
    reader = reader_for(tmp_path, {"w": values})
    np.testing.assert_array_equal(reader.read("w"), values.astype(np.float32))


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_plain_float_types_round_trip(tmp_path, dtype):
    values = np.random.default_rng(1).standard_normal((5, 7)).astype(dtype)
    reader = reader_for(tmp_path, {"w": values})
    np.testing.assert_array_equal(reader.read("w", dtype=np.float64), values.astype(np.float64))


def _fp8_reference(q: np.ndarray, scale: np.ndarray, block: int) -> np.ndarray:
    """Dequantise by expanding every scale over its block (independent of the reader)."""
    expanded = np.repeat(np.repeat(scale, block, axis=-2), block, axis=-1)
    rows, cols = q.shape[-2:]
    return q.astype(np.float32) * expanded[..., :rows, :cols]


def test_fp8_block_scales_match_independent_reference(tmp_path):
    w = np.random.default_rng(2).standard_normal((300, 260)).astype(np.float32)
    q, scale = quantize_fp8_blocks(w)
    assert scale.shape == (3, 3)
    reader = reader_for(tmp_path, {"x.weight": q, "x.weight_scale_inv": scale})
    expected = _fp8_reference(q, scale, 128)
    np.testing.assert_array_equal(reader.read("x.weight"), expected)
    # a row slice crossing block boundaries meets the right scale rows
    np.testing.assert_array_equal(reader.read("x.weight", rows=(100, 290)), expected[100:290])
    # and quantisation is faithful to the original weights (E4M3 keeps ~2 significant digits)
    assert np.abs(expected - w).max() < 0.07 * np.abs(w).max()


def test_fp8_block_size_from_config(tmp_path):
    w = np.random.default_rng(3).standard_normal((2, 70, 40)).astype(np.float32)
    q, scale = quantize_fp8_blocks(w, block=32)
    config = {"quantization_config": {"weight_block_size": [32, 32]}}
    reader = reader_for(tmp_path, {"e.weight": q, "e.weight_scale_inv": scale}, config)
    expected = _fp8_reference(q, scale, 32)
    np.testing.assert_array_equal(reader.read("e.weight", lead=(1,)), expected[1])
    np.testing.assert_array_equal(reader.read("e.weight"), expected)


def test_fp8_per_channel_scale(tmp_path):
    w = np.random.default_rng(4).standard_normal((6, 8)).astype(np.float32)
    scale = (np.abs(w).max(axis=1, keepdims=True) / 448).astype(np.float32)
    q = (w / scale).astype(ml_dtypes.float8_e4m3fn)
    reader = reader_for(tmp_path, {"p.weight": q, "p.weight_scale": scale})
    np.testing.assert_array_equal(reader.read("p.weight"), q.astype(np.float32) * scale)


def _mxfp4_reference(blocks: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """Unpack via ml_dtypes' own float4/e8m0 types, not the reader's lookup table."""
    low = (blocks & 0x0F).view(ml_dtypes.float4_e2m1fn).astype(np.float32)
    high = (blocks >> 4).view(ml_dtypes.float4_e2m1fn).astype(np.float32)
    values = np.stack([low, high], axis=-1).reshape(blocks.shape[:-1] + (32,))
    factor = scales.view(ml_dtypes.float8_e8m0fnu).astype(np.float32)
    return (values * factor[..., None]).reshape(blocks.shape[:-2] + (-1,))


def test_mxfp4_matches_independent_reference(tmp_path):
    w = np.random.default_rng(5).standard_normal((4, 24, 96)).astype(np.float32)
    blocks, scales = quantize_mxfp4(w)
    assert blocks.shape == (4, 24, 3, 16) and scales.shape == (4, 24, 3)
    reader = reader_for(tmp_path, {"m.proj_blocks": blocks, "m.proj_scales": scales})
    assert reader.tensor("m.proj").shape == (4, 24, 96)
    expected = _mxfp4_reference(blocks, scales)
    np.testing.assert_array_equal(reader.read("m.proj"), expected)
    np.testing.assert_array_equal(reader.read("m.proj", lead=(2,), rows=(5, 9)), expected[2, 5:9])
    assert np.abs(expected - w).max() <= 0.5 * np.abs(w).max()


def test_fused_expert_slice_reads_only_that_experts_bytes(tmp_path, monkeypatch):
    import moetopo.checkpoint.reader as reader_module

    stacked = np.arange(5 * 6 * 7, dtype=np.float32).reshape(5, 6, 7).astype(ml_dtypes.bfloat16)
    reader = reader_for(tmp_path, {"experts.gate_up_proj": stacked})
    read = []
    real = reader_module.read_exactly

    def recording(path, offset, out, tensor=None):
        read.append((offset, out.nbytes))
        return real(path, offset, out, tensor)

    monkeypatch.setattr(reader_module, "read_exactly", recording)
    out = reader.read("experts.gate_up_proj", lead=(3,))
    np.testing.assert_array_equal(out, stacked[3].astype(np.float32))
    entry = reader.tensor("experts.gate_up_proj").data
    assert read == [(entry.begin + 3 * 6 * 7 * 2, 6 * 7 * 2)]


def test_read_into_a_reused_buffer_equals_read(tmp_path):
    rng = np.random.default_rng(4)
    stacked = rng.standard_normal((4, 6, 7)).astype(ml_dtypes.bfloat16)
    q, scale = quantize_fp8_blocks(rng.standard_normal((300, 260)).astype(np.float32))
    reader = reader_for(tmp_path, {"e": stacked, "x.weight": q, "x.weight_scale_inv": scale})
    buffer = np.full(300 * 260, np.nan)
    for name, lead, rows in (("e", (2,), (1, 5)), ("x.weight", (), (100, 290))):
        expected = reader.read(name, lead, rows, dtype=np.float64)
        out = buffer[: expected.size]
        assert reader.read_into(out, name, lead, rows) is out
        np.testing.assert_array_equal(out, expected.ravel())
    stored = np.empty((4, 7), dtype=ml_dtypes.bfloat16)  # as stored: no conversion at all
    reader.read_into(stored, "e", (1,), (2, 6))
    np.testing.assert_array_equal(stored.view(np.uint16), stacked[1, 2:6].view(np.uint16))


def test_reads_as_stored_refuse_an_array_they_cannot_fill(tmp_path):
    """A strided ``out`` would be filled through a copy, a float32 ``out`` with BF16's
    bytes: both must be errors, never a silently wrong array."""
    values = np.arange(48, dtype=np.float32).reshape(8, 6).astype(ml_dtypes.bfloat16)
    reader = reader_for(tmp_path, {"w": values, "z": np.ones((2, 6), ml_dtypes.bfloat16)})
    strided = np.zeros((6, 8), dtype=ml_dtypes.bfloat16)[:, :6]
    with pytest.raises(ValueError, match="not C-contiguous"):
        reader.read_into(strided, "w", rows=(0, 6))
    with pytest.raises(ValueError, match="read as stored"):
        reader.read_flat_rows_into(np.empty((8, 6), np.float32), "w", 0, 8)
    with pytest.raises(ValueError, match="reading 48 elements into an array of 6"):
        reader.read_flat_rows_into(np.empty(6, ml_dtypes.bfloat16), "w", 0, 8)
    rows = reader.read_flat_rows_into(np.empty((3, 6), ml_dtypes.bfloat16), "w", 2, 5)
    np.testing.assert_array_equal(rows.view(np.uint16), values[2:5].view(np.uint16))


def test_read_into_a_shard_cut_short_after_opening_names_file_and_tensor(tmp_path):
    reader = reader_for(tmp_path, {"w": np.ones((64, 64), dtype=np.float32)})
    path = reader.checkpoint.shard_path(reader.tensor("w").data.shard)
    with open(path, "r+b") as handle:
        handle.truncate(path.stat().st_size - 1000)
    with pytest.raises(CheckpointError, match="file ends at byte .* inside tensor data") as error:
        reader.read_into(np.empty(64 * 64), "w")
    assert error.value.path == str(path) and error.value.tensor == "w"


# --- bad input --------------------------------------------------------------------------


def _shard(tmp_path, name="model.safetensors"):
    write_safetensors(
        tmp_path / name, {"a": np.ones((4, 4), np.float32), "b": np.ones(3, np.float32)}
    )
    return tmp_path / name


def _rewrite_header(path, header: dict | bytes, data: bytes | None = None):
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    body = data if data is not None else raw[8 + n :]
    blob = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + body)


def _header(path) -> dict:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + n])


def expect_error(path, *fragments, tensor=None):
    with pytest.raises(CheckpointError) as info:
        open_checkpoint(path)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, message
    if tensor:
        assert info.value.tensor == tensor
    return info.value


def test_truncated_shard(tmp_path):
    path = _shard(tmp_path)
    path.write_bytes(path.read_bytes()[:-10])
    error = expect_error(tmp_path, "truncated", "model.safetensors")
    assert error.tensor in {"a", "b"}


def test_file_shorter_than_length_field(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"\x01\x02")
    expect_error(tmp_path, "truncated shard", "too short")


def test_header_length_beyond_file(tmp_path):
    path = _shard(tmp_path)
    raw = path.read_bytes()
    path.write_bytes(struct.pack("<Q", len(raw) * 10) + raw[8:])
    expect_error(tmp_path, "header length", "beyond the file")


def test_header_not_json(tmp_path):
    path = _shard(tmp_path)
    _rewrite_header(path, b"{not json at all" + b" " * 7)
    expect_error(tmp_path, "not valid JSON", str(path))


def test_unknown_dtype(tmp_path):
    path = _shard(tmp_path)
    header = _header(path)
    header["b"]["dtype"] = "F4_MADEUP"
    _rewrite_header(path, header)
    expect_error(tmp_path, "unknown dtype 'F4_MADEUP'", tensor="b")


def test_byte_range_outside_data_section(tmp_path):
    path = _shard(tmp_path)
    header = _header(path)
    header["b"]["data_offsets"] = [64, 64 + 12 + 1000]
    header["b"]["shape"] = [253]
    _rewrite_header(path, header)
    expect_error(tmp_path, "outside the data section", tensor="b")


def test_overlapping_byte_ranges(tmp_path):
    path = _shard(tmp_path)
    header = _header(path)
    header["b"]["data_offsets"] = [60, 72]
    _rewrite_header(path, header)
    expect_error(tmp_path, "overlaps tensor 'a'")


def test_shape_does_not_match_byte_range(tmp_path):
    path = _shard(tmp_path)
    header = _header(path)
    header["a"]["shape"] = [4, 5]
    _rewrite_header(path, header)
    expect_error(tmp_path, "needs 80 bytes", "holds 64", tensor="a")


def _two_shards(tmp_path):
    tensors = {f"t{i}": np.full((8,), i, np.float32) for i in range(4)}
    write_checkpoint(tmp_path, tensors, {}, n_shards=2)
    index_path = tmp_path / "model.safetensors.index.json"
    return index_path, json.loads(index_path.read_text())


def test_index_names_missing_shard(tmp_path):
    index_path, index = _two_shards(tmp_path)
    index["weight_map"]["t3"] = "model-00009-of-00009.safetensors"
    index_path.write_text(json.dumps(index))
    expect_error(tmp_path, "model-00009-of-00009.safetensors", "does not exist")


def test_index_path_escaping_directory(tmp_path):
    model = tmp_path / "model"
    index_path, index = _two_shards(model)
    index["weight_map"]["t3"] = "../elsewhere.safetensors"
    index_path.write_text(json.dumps(index))
    expect_error(model, "'../elsewhere.safetensors'", "outside the model directory")


def test_index_symlink_leaving_directory(tmp_path):
    model = tmp_path / "model"
    index_path, index = _two_shards(model)
    outside = tmp_path / "outside"
    outside.mkdir()
    shard = index["weight_map"]["t3"]
    (model / shard).rename(outside / shard)
    (model / shard).symlink_to(outside / shard)
    expect_error(model, "symlink leaves it", shard)


def test_hub_cache_snapshot_symlinks_are_allowed(tmp_path):
    repo = tmp_path / "models--org--tiny"
    snapshot = repo / "snapshots" / "abc123"
    _, index = _two_shards(snapshot)
    (repo / "blobs").mkdir()
    for i, shard in enumerate(sorted(set(index["weight_map"].values()))):
        (snapshot / shard).rename(repo / "blobs" / f"blob{i}")
        (snapshot / shard).symlink_to(f"../../blobs/blob{i}")
    assert len(open_checkpoint(snapshot).tensors) == 4


def test_index_and_header_disagree(tmp_path):
    index_path, index = _two_shards(tmp_path)
    shards = sorted(set(index["weight_map"].values()))
    index["weight_map"]["t0"] = shards[1]
    index_path.write_text(json.dumps(index))
    expect_error(tmp_path, "index maps the tensor to", tensor="t0")


def test_tensor_stored_twice(tmp_path):
    write_safetensors(tmp_path / "a.safetensors", {"w": np.ones(2, np.float32)})
    write_safetensors(tmp_path / "b.safetensors", {"w": np.ones(2, np.float32)})
    expect_error(tmp_path, "stored twice", tensor="w")


def test_broken_index_json(tmp_path):
    index_path, _ = _two_shards(tmp_path)
    index_path.write_text("{ broken")
    expect_error(tmp_path, "index is not readable JSON", index_path.name)


def test_checkpoint_rebuilt_from_stored_rows_equals_the_read_one_or_names_what_is_missing(
    tmp_path,
):
    _two_shards(tmp_path)
    read = open_checkpoint(tmp_path)
    listing = list_shards(tmp_path)
    shards = {s: (h.file_size, h.digest) for s, h in read.headers.items()}
    columns = entry_columns(read.tensors.values())
    rebuilt = checkpoint_from_entries(listing, entries_from_columns(columns), shards)
    assert rebuilt.tensors == read.tensors
    assert {s: (h.file_size, h.digest) for s, h in rebuilt.headers.items()} == shards
    first = listing.shards[0]
    with pytest.raises(CheckpointError, match=f"no header rows for shards .*{first}"):
        checkpoint_from_entries(listing, [], {s: v for s, v in shards.items() if s != first})
    stray = [read.tensors["t0"]._replace(shard="elsewhere.safetensors")]
    with pytest.raises(CheckpointError, match="elsewhere.safetensors"):
        checkpoint_from_entries(listing, stray, shards)


@pytest.mark.parametrize("weight_map", [["a"], {"t0": ["x.safetensors"]}, {"t0": 3}])
def test_index_weight_map_of_the_wrong_shape(tmp_path, weight_map):
    index_path, index = _two_shards(tmp_path)
    index_path.write_text(json.dumps({**index, "weight_map": weight_map}))
    expect_error(tmp_path, "index has no 'weight_map' object", index_path.name)


class _Detonator:
    """Unpickling this creates a marker file: proof that something unpickled it."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("name", ["pytorch_model.bin", "model.pt", "consolidated.pth"])
def test_pickle_checkpoint_refused_and_never_unpickled(tmp_path, name):
    marker = tmp_path / "unpickled"
    (tmp_path / name).write_bytes(pickle.dumps(_Detonator(marker)))
    (tmp_path / "config.json").write_text("{}")
    error = expect_error(tmp_path, "pickle checkpoint refused", "safetensors")
    assert name in str(error)
    expect_error(tmp_path / name, "pickle checkpoint refused")
    assert not marker.exists()


def test_pickle_renamed_to_safetensors_is_explained(tmp_path):
    marker = tmp_path / "unpickled"
    (tmp_path / "model.safetensors").write_bytes(pickle.dumps(_Detonator(marker), protocol=4))
    expect_error(tmp_path, "pickle/torch archive")
    assert not marker.exists()


def test_model_without_moe_layers_names_family(tmp_path):
    model = random_model(n_layers=2, moe_layers=[])
    write_family(model, "qwen2_moe", tmp_path, config_overrides={"num_experts": 0})
    with pytest.raises(NoMoELayersError, match="no MoE layer found.*qwen2_moe"):
        open_model(tmp_path)


def test_nan_router_is_a_recorded_warning(tmp_path):
    model = random_model(n_layers=2, n_experts=4)
    model.layers[1].router[2, 5] = np.nan
    model.layers[1].router[3, 0] = np.inf
    write_family(model, "mixtral", tmp_path)
    rows, warnings = gate_rows(open_model(tmp_path))
    bad = ~rows["finite"]
    assert np.column_stack([rows["layer"][bad], rows["expert"][bad]]).tolist() == [[1, 2], [1, 3]]
    assert len(warnings) == 1 and "layer 1" in warnings[0] and "[2, 3]" in warnings[0]
    assert rows["finite"][rows["layer"] == 0].all()
    # later stages get the router with those values zeroed, and the experts named
    gates = gates_from_rows(rows)
    assert gates[1].nonfinite == (2, 3) and gates[0].nonfinite == ()
    assert np.isfinite(gates[1].weight).all()
    assert gates[1].weight[2, 5] == 0 and gates[1].weight[3, 0] == 0
    np.testing.assert_array_equal(gates[1].weight[:2], rows["weight"][rows["layer"] == 1][:2])


def test_reads_out_of_range_are_clear_errors(tmp_path):
    reader = reader_for(tmp_path, {"w": np.ones((3, 4), np.float32)})
    with pytest.raises(CheckpointError, match="rows .* out of range"):
        reader.read("w", rows=(2, 9))
    with pytest.raises(CheckpointError, match="no such tensor"):
        reader.read("missing")


# --- read-ahead -------------------------------------------------------------------------


def test_prefetched_yields_in_order_and_reads_the_next_item_meanwhile():
    buffers = [None, None]
    loaded = {k: threading.Event() for k in range(6)}

    def load(item, slot):
        buffers[slot] = item
        loaded[item].set()
        return slot

    seen = []
    for item, slot in prefetched(list(range(6)), load):
        if item + 1 < 6:  # the next item is read while this one is being worked on ...
            assert loaded[item + 1].wait(timeout=10)
        assert buffers[slot] == item  # ... into the other buffer, so this one is intact
        seen.append((item, slot))
    assert seen == [(k, k % 2) for k in range(6)]


def test_prefetched_raises_the_loaders_error_to_the_caller():
    def load(item, slot):
        if item == 2:
            raise CheckpointError("shard.safetensors", "file ends inside tensor data", "w")
        return item

    got = []
    with pytest.raises(CheckpointError, match="file ends inside tensor data"):
        for item, _ in prefetched([0, 1, 2, 3], load):
            got.append(item)
    assert got == [0, 1]


def test_slot_buffers_reuse_their_memory_and_keep_the_two_slots_apart():
    buffers = SlotBuffers(min_bytes=64)
    a = buffers.take(0, np.float32, (2, 3))
    a[:] = 7
    b = buffers.take(1, ml_dtypes.bfloat16, (4,))
    assert a.shape == (2, 3) and b.dtype == ml_dtypes.bfloat16 and (a == 7).all()
    again = buffers.take(0, np.uint8, (16,))  # smaller: same memory, no allocation
    assert np.shares_memory(again, a) and not np.shares_memory(a, b)
    grown = buffers.take(0, np.float64, (100,))
    assert grown.shape == (100,) and not np.shares_memory(grown, a)


def test_the_header_entry_columns_are_the_registry_ones():
    from moetopo.artefacts import columns
    from moetopo.checkpoint.header import ENTRY_COLUMNS

    assert columns("shard_header") == list(ENTRY_COLUMNS) == columns("inventory")[:6]


@pytest.mark.parametrize("as_model", [False, True])
def test_a_fifo_is_refused_as_not_a_regular_file_without_blocking(tmp_path, as_model):

    write_family(random_model(n_layers=1, n_experts=4), "mixtral", tmp_path / "m", n_shards=2)
    shard = sorted((tmp_path / "m").glob("*.safetensors"))[0]
    target = tmp_path / "pipe.safetensors" if as_model else shard
    if not as_model:
        shard.unlink()
    os.mkfifo(target)

    def blocked(*_):
        raise TimeoutError("opening the checkpoint blocked on the FIFO")

    previous = signal.signal(signal.SIGALRM, blocked)
    signal.alarm(20)
    try:
        with pytest.raises(CheckpointError, match="not a regular file"):
            open_checkpoint(target if as_model else tmp_path / "m")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _shard_with_padding(path, pad: int = 16) -> bytes:
    """A shard whose header JSON is followed by ``pad`` spaces, as writers align it."""
    header = {"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}
    raw = json.dumps(header).encode() + b" " * pad
    data = np.arange(4, dtype=np.float32).tobytes()
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + data)
    return raw


@pytest.mark.parametrize(
    "mutation, message",
    [
        ("length into padding", "belong to no tensor"),
        ("gap", "leaves a gap"),
        ("trailing bytes", "belong to no tensor"),
        ("overlap", "overlaps tensor"),
    ],
)
def test_byte_ranges_must_tile_the_data_section_as_safetensors_requires(
    tmp_path, mutation, message
):
    from safetensors import safe_open

    path = tmp_path / "m.safetensors"
    raw = _shard_with_padding(path)
    blob = path.read_bytes()
    if mutation == "length into padding":  # still valid JSON; every tensor would read 8 off
        blob = (len(raw) - 8).to_bytes(8, "little") + blob[8:]
    elif mutation == "trailing bytes":
        blob += b"\0" * 8
    else:
        entries = {
            "gap": {"a": [0, 16], "b": [24, 24]},
            "overlap": {"a": [0, 16], "b": [8, 12]},
        }[mutation]
        header = {
            name: {"dtype": "F32", "shape": [(e - b) // 4], "data_offsets": [b, e]}
            for name, (b, e) in entries.items()
        }
        raw = json.dumps(header).encode()
        blob = len(raw).to_bytes(8, "little") + raw + np.zeros(6, np.float32).tobytes()
    path.write_bytes(blob)
    with pytest.raises(CheckpointError, match=message):
        list(open_checkpoint(path).tensors)
    with pytest.raises(Exception):  # noqa: B017 (the reference reader refuses it too)
        safe_open(str(path), "numpy")


def test_a_padded_header_is_read_as_safetensors_reads_it(tmp_path):
    from safetensors import safe_open

    path = tmp_path / "m.safetensors"
    _shard_with_padding(path)
    entry = open_checkpoint(path).tensors["a"]
    with safe_open(str(path), "numpy") as handle:
        expected = handle.get_tensor("a")
    got = np.frombuffer(path.read_bytes()[entry.begin : entry.end], np.float32)
    assert np.array_equal(got, expected)


@pytest.mark.parametrize(
    "override, message",
    [
        ({"architectures": {"a": 1}}, "architectures is {'a': 1}, not a list of names"),
        ({"architectures": [1]}, "architectures is \\[1\\], not a list of names"),
        ({"model_type": ["x"]}, "model_type is \\['x'\\], not a name"),
        ({"text_config": "x"}, "text_config is 'x', not an object"),
        ({"text_config": {"model_type": 3}}, "text_config.model_type is 3, not a name"),
        ({"num_hidden_layers": 10**12}, "num_hidden_layers = 1000000000000 is not a layer count"),
        ({"num_hidden_layers": -2}, "is not a layer count"),
    ],
)
def test_config_json_values_are_checked_by_type_and_range_before_use(tmp_path, override, message):
    write_family(random_model(n_layers=2, n_experts=4), "mixtral", tmp_path)
    config = json.loads((tmp_path / "config.json").read_text()) | override
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=message) as caught:
        open_model(tmp_path)
    assert str(tmp_path / "config.json") in str(caught.value)


@pytest.mark.parametrize(
    "family, override, message",
    [
        ("deepseek_v3", {"n_group": "x"}, "n_group is 'x', expected a whole number of groups"),
        ("deepseek_v3", {"n_group": 3}, "n_group is 3, expected .* dividing the 8 experts"),
        ("deepseek_v3", {"n_group": 0}, "n_group is 0"),
        (
            "deepseek_v3",
            {"topk_group": 5},
            "topk_group is 5, expected .* from 1 to n_group \\(2\\)",
        ),
        ("deepseek_v3", {"routed_scaling_factor": "x"}, "routed_scaling_factor is 'x'"),
        ("deepseek_v3", {"routed_scaling_factor": float("inf")}, "a finite number above 0"),
        ("qwen2_moe", {"norm_topk_prob": "yes"}, "norm_topk_prob is 'yes', expected true or false"),
        ("phimoe", {"router_jitter_noise": -1}, "router_jitter_noise is -1"),
    ],
)
def test_routing_parameters_in_config_json_are_checked(tmp_path, family, override, message):
    """The routing rule's parameters, read from config.json, by type and range: a bad one
    names the file and the key instead of failing later inside numpy."""
    write_family(random_model(n_layers=2, n_experts=8, top_k=2), family, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text()) | override
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=message) as caught:
        open_model(tmp_path)
    assert str(tmp_path / "config.json") in str(caught.value)


@pytest.mark.parametrize("skip", [-1, "x", {"a": 1}])
def test_a_malformed_mlp_only_layers_leaves_the_routers_to_decide(tmp_path, skip):
    write_family(random_model(n_layers=2, n_experts=8, top_k=2), "qwen2_moe", tmp_path)
    config = json.loads((tmp_path / "config.json").read_text()) | {"mlp_only_layers": skip}
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert open_model(tmp_path).layout.moe_layers == [0, 1]


@pytest.mark.parametrize("name", ["config.json", "model.safetensors.index.json"])
def test_a_config_or_index_linking_outside_the_model_is_refused(tmp_path, name):
    model = tmp_path / "model"
    _two_shards(model)
    if name == "config.json":
        (model / name).write_text("{}")
    outside = tmp_path / "elsewhere.json"
    (model / name).rename(outside)
    (model / name).symlink_to(outside)
    with pytest.raises(CheckpointError, match="symlink leaves it"):
        open_checkpoint(model)


def test_a_hub_cache_whose_blobs_folder_links_elsewhere_is_refused(tmp_path):
    repo = tmp_path / "models--org--tiny"
    snapshot = repo / "snapshots" / "abc123"
    _, index = _two_shards(snapshot)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (repo / "blobs").symlink_to(elsewhere)
    for i, shard in enumerate(sorted(set(index["weight_map"].values()))):
        (snapshot / shard).rename(elsewhere / f"blob{i}")
        (snapshot / shard).symlink_to(f"../../blobs/blob{i}")
    with pytest.raises(CheckpointError, match="symlink leaves it"):
        open_checkpoint(snapshot)


def test_an_artefact_has_the_umask_permissions_and_stale_temporaries_go(tmp_path):
    from moetopo.artefacts import write_json

    target = tmp_path / "out" / "model.json"
    target.parent.mkdir()
    stale = target.parent / ".model.json.k3j2.tmp"  # as a SIGKILLed writer leaves it
    stale.write_text("half")
    other = target.parent / ".other.json.x.tmp"
    other.write_text("another artefact's")
    previous = os.umask(0o022)
    try:
        write_json({"a": 1}, target)
    finally:
        os.umask(previous)
    assert target.stat().st_mode & 0o777 == 0o644
    assert not stale.exists() and other.exists()
    assert sorted(p.name for p in target.parent.iterdir()) == [".other.json.x.tmp", "model.json"]


def test_a_zero_element_tensor_with_a_dimension_beyond_int64_is_refused(tmp_path):
    """Zero elements fit an empty byte range whatever the other dimension, so the size
    check alone would pass a shape numpy cannot hold."""
    header = {"a": {"dtype": "F32", "shape": [0, 2**64 + 1], "data_offsets": [0, 0]}}
    raw = json.dumps(header).encode()
    path = tmp_path / "m.safetensors"
    path.write_bytes(len(raw).to_bytes(8, "little") + raw)
    with pytest.raises(CheckpointError, match="not a list of sizes"):
        open_checkpoint(path)


def test_reopening_from_an_inventory_refuses_a_shard_that_changed_since(tmp_path):
    from moetopo.artefacts import write_table
    from moetopo.artefacts.reopen import checkpoint_from_inventory, reopen_model
    from moetopo.stages.inventory import merge_inventory
    from moetopo.stages.inventory_shard import shard_rows

    model = write_family(
        random_model(n_layers=2, n_experts=4), "mixtral", tmp_path / "m", n_shards=2
    )
    frames = [shard_rows(model, p.name) for p in sorted(model.glob("*.safetensors"))]
    columns, summary, _ = merge_inventory(model, frames)
    inventory = tmp_path / "inventory.parquet"
    write_table(columns, inventory, "inventory", extra={"shards": summary["shards"]})
    reopened = reopen_model(model, None, inventory)
    assert reopened.checkpoint.tensors == open_checkpoint(model).tensors
    routers = {reopened.layout.layers[layer].router for layer in reopened.layout.moe_layers}
    assert set(checkpoint_from_inventory(model, inventory, routers).tensors) == routers
    shard = sorted(model.glob("*.safetensors"))[1]
    with open(shard, "ab") as handle:
        handle.write(b"\0" * 8)
    with pytest.raises(CheckpointError, match="the checkpoint changed since"):
        reopen_model(model, None, inventory)
