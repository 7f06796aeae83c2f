"""Partial reads agree with the whole tensor: every slice the stages read of any tensor, in
any stored dtype and layout, equals the same slice of the tensor read in one piece.

The stages never read a whole expert tensor (experts.py, diff/rows.py and
geometry/distances.py read an expert, a row range or a flat row block, often as stored
into a reused buffer), so a wrong byte offset, scale row or block boundary would only
show as silently wrong weights. Tensors here hold arbitrary stored bytes (NaN and
infinite codes included) so that a misplaced read cannot hide among equal values.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from moetopo.checkpoint.experts import read_expert
from moetopo.checkpoint.model import open_model
from moetopo.checkpoint.reader import TensorReader
from moetopo.checkpoint.shards import open_checkpoint
from moetopo.fixtures import random_model, write_checkpoint, write_family

SETTINGS = settings(max_examples=60, deadline=None)

PLAIN = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "I32": np.dtype(np.int32),
}
FP8 = {"F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn), "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2)}
# How an FP8 weight [..., R, C] is scaled: per block (DeepSeek-V3), per row as [..., R] or
# [..., R, 1], or by one number for the whole tensor.
FP8_SCALES = ("blocks", "rows", "row_column", "tensor")
# Each encoding is its own test, so each gets its share of examples.
ENCODINGS = {
    "plain": tuple(PLAIN),
    "FP8": tuple(f"FP8 {scale}" for scale in FP8_SCALES),
    "MXFP4": ("MXFP4",),
}
OUT_DTYPES = (np.float32, np.float64)
SLICES_PER_TENSOR = 4  # writing the checkpoint costs more than reading it a few times

# transformers 5's fused name, and the hub's per-expert one
FUSED = "model.layers.0.mlp.experts.down_proj"
PER_EXPERT = "model.layers.0.mlp.experts.{x}.down_proj"


@dataclass
class StoredTensor:
    """A logical tensor as written: its physical tensors, config, and per-expert twins."""

    kind: str
    tensors: dict[str, np.ndarray]
    config: dict
    n_shards: int
    n_experts: int  # per-expert copies of the fused tensor's first axis (0: none)

    @property
    def plain(self) -> bool:
        return self.kind in PLAIN

    def lead_limit(self, ndim: int) -> int:
        """Leading indices a read may fix: a quantised read needs its last two axes."""
        return ndim - 1 if self.plain else ndim - 2


def stored_bytes(draw, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
    """Arbitrary stored bits of ``dtype``, NaN and infinity codes included."""
    size = math.prod(shape) * dtype.itemsize
    raw = draw(st.binary(min_size=size, max_size=size))
    return np.frombuffer(raw, dtype=dtype).reshape(shape).copy()


def scales(draw, shape: tuple[int, ...]) -> np.ndarray:
    """Distinct scales, so that a read meeting the wrong scale row or block shows."""
    elements = st.floats(-1e3, 1e3, width=32, allow_subnormal=False)
    return draw(hnp.arrays(np.float32, shape, elements=elements, unique=True))


@st.composite
def stored_tensors(draw, encoding: str) -> StoredTensor:
    """One fused tensor [*lead, R, C] of a drawn kind and shape, written after a pad of
    a few bytes (so its data start at any offset), with its experts also written as
    per-expert tensors, across one to three shards."""
    kind = draw(st.sampled_from(ENCODINGS[encoding]))
    lead = tuple(draw(st.lists(st.integers(1, 3), max_size=2)))
    rows = draw(st.integers(1, 8))
    cols = 32 * draw(st.integers(1, 2)) if kind == "MXFP4" else draw(st.integers(1, 6))
    shape = (*lead, rows, cols)
    config: dict = {}
    if kind in PLAIN:
        physical = {"": stored_bytes(draw, PLAIN[kind], shape)}
    elif kind == "MXFP4":
        groups = cols // 32
        physical = {
            "_blocks": stored_bytes(draw, np.dtype(np.uint8), (*lead, rows, groups, 16)),
            "_scales": stored_bytes(draw, np.dtype(np.uint8), (*lead, rows, groups)),
        }
    else:
        scaling = kind.removeprefix("FP8 ")
        if scaling == "blocks":
            block = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
            config = {"quantization_config": {"weight_block_size": list(block)}}
            scale_shape = (*lead, -(-rows // block[0]), -(-cols // block[1]))
        else:
            per_row = {"rows": (*lead, rows), "row_column": (*lead, rows, 1)}
            scale_shape = per_row.get(scaling, (1,))
        physical = {
            "": stored_bytes(draw, draw(st.sampled_from(list(FP8.values()))), shape),
            "_scale_inv": scales(draw, scale_shape),
        }
    tensors = {"padding": np.zeros(draw(st.integers(0, 7)), np.uint8)}
    tensors.update({FUSED + suffix: value for suffix, value in physical.items()})
    n_experts = lead[0] if lead else 0
    for x in range(n_experts):
        for suffix, value in physical.items():
            shared = kind == "FP8 tensor" and suffix == "_scale_inv"  # one number for all
            tensors[expert_name(x, kind) + suffix] = value if shared else value[x]
    return StoredTensor(kind, tensors, config, draw(st.integers(1, 3)), n_experts)


def expert_name(x: int, kind: str) -> str:
    """The logical name of expert ``x``'s own tensor (MXFP4 names the pair's stem)."""
    return PER_EXPERT.format(x=x) + ("" if kind == "MXFP4" else ".weight")


@st.composite
def slices(draw, shape: tuple[int, ...], lead_limit: int):
    """(lead, rows): fixed leading indices, then a row range (maybe empty) of the next
    axis. Half the slices fix every index but the matrix's, as the stages do (an expert,
    then its rows)."""
    k = draw(st.one_of(st.just(lead_limit), st.integers(0, lead_limit)))
    lead = tuple(draw(st.integers(0, shape[i] - 1)) for i in range(k))
    r0 = draw(st.integers(0, shape[k]))
    r1 = draw(st.integers(r0, shape[k]))
    return lead, (r0, r1)


def same(actual: np.ndarray, expected: np.ndarray) -> bool:
    """Exact equality of dtype, shape and values, NaN equal to NaN."""
    return (
        actual.dtype == expected.dtype
        and actual.shape == expected.shape
        and np.array_equal(actual, expected, equal_nan=True)
    )


def same_bits(actual: np.ndarray, expected: np.ndarray) -> bool:
    return actual.shape == expected.shape and actual.tobytes() == expected.tobytes()


def assert_partial_reads_match(reader: TensorReader, name: str, case: StoredTensor, data):
    """Every partial read of ``name``, at a few drawn slices, against the whole tensor."""
    lt = reader.tensor(name)
    wholes = {dtype: reader.read(name, dtype=dtype) for dtype in OUT_DTYPES}
    lead_limit = case.lead_limit(len(lt.shape))
    for _ in range(SLICES_PER_TENSOR):
        lead, (r0, r1) = data.draw(slices(lt.shape, lead_limit))
        for dtype, whole in wholes.items():
            expected = whole[lead][r0:r1]
            assert same(reader.read(name, lead, (r0, r1), dtype=dtype), expected), (lead, r0, r1)
            assert same(reader.read(name, lead, dtype=dtype), whole[lead]), lead
            out = np.full(expected.size, np.nan, dtype=dtype)
            assert reader.read_into(out, name, lead, (r0, r1)) is out
            assert same(out, expected.ravel()), (lead, r0, r1)
        stored = np.empty(expected.shape, dtype=reader.storage_dtype(name))
        reader.read_into(stored, name, lead, (r0, r1))
        assert same(stored.astype(np.float32), wholes[np.float32][lead][r0:r1]), (lead, r0, r1)
        if lt.kind == "plain":  # as stored means byte for byte what was written
            assert same_bits(stored, case.tensors[name][lead][r0:r1]), (lead, r0, r1)
    if lt.kind == "plain":
        flat = wholes[np.float32].reshape(-1, lt.shape[-1])
        for _ in range(SLICES_PER_TENSOR):
            start = data.draw(st.integers(0, len(flat)))
            stop = data.draw(st.integers(start, len(flat)))
            rows = np.empty((stop - start, flat.shape[1]), dtype=reader.storage_dtype(name))
            assert reader.read_flat_rows_into(rows, name, start, stop) is rows
            assert same(rows.astype(np.float32), flat[start:stop]), (start, stop)
            assert same_bits(rows, case.tensors[name].reshape(flat.shape)[start:stop])


# Arbitrary bits overflow (or are signalling NaNs) when F64 is read as float32, and an E8M0
# scale of 2**128 overflows a non-zero FP4 value: what numpy says those bits mean.
@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
@pytest.mark.filterwarnings("ignore:invalid value encountered in cast:RuntimeWarning")
@pytest.mark.parametrize("encoding", ENCODINGS)
@SETTINGS
@given(data=st.data())
def test_every_partial_read_equals_the_same_slice_of_the_whole_tensor(encoding, data):
    """Expert, row-range, into-buffer and flat-row reads of a fused tensor and of its
    per-expert twins all equal slices of one whole read, and each twin equals its expert."""
    case = data.draw(stored_tensors(encoding))
    with tempfile.TemporaryDirectory() as root:
        write_checkpoint(root, case.tensors, case.config, n_shards=case.n_shards)
        reader = TensorReader(open_checkpoint(root))
        assert_partial_reads_match(reader, FUSED, case, data)
        if case.n_experts:
            fused = reader.read(FUSED)
            for x in range(case.n_experts):
                assert same(reader.read(expert_name(x, case.kind)), fused[x]), x
            x = data.draw(st.integers(0, case.n_experts - 1))
            assert_partial_reads_match(reader, expert_name(x, case.kind), case, data)


# --- expert reads of real family checkpoints ----------------------------------------------

FAMILY_CASES = {
    "mixtral per-expert BF16": ("mixtral", "hub", "BF16", {}),
    "qwen3_moe fused F16": ("qwen3_moe", "fused", "F16", {"moe_layers": [0, 2]}),
    "deepseek_v3 fused FP8": ("deepseek_v3", "fused", "F8_E4M3", {"moe_layers": [1, 2]}),
    "gpt_oss MXFP4": ("gpt_oss", "mxfp4", "BF16", {"router_bias": True, "expert_bias": True}),
    "dbrx flat F32": ("dbrx", "hub", "F32", {"n_layers": 2}),
}


@pytest.fixture(scope="module")
def family_models(tmp_path_factory):
    """Each FAMILY_CASES checkpoint written once and opened, keyed like FAMILY_CASES."""
    models = {}
    for case, (family, layout, dtype, recipe) in FAMILY_CASES.items():
        model = random_model(n_experts=4, hidden=32, intermediate=32, vocab=32, **recipe)
        path = tmp_path_factory.mktemp(family)
        models[case] = open_model(write_family(model, family, path, layout, dtype=dtype))
    return models


def oriented(values: np.ndarray, orientation: str) -> np.ndarray:
    return values.T if values.ndim == 2 and orientation == "in_out" else values


@SETTINGS
@given(case=st.sampled_from(sorted(FAMILY_CASES)), data=st.data())
def test_expert_reads_of_family_checkpoints_equal_slices_of_the_whole_tensor(
    family_models, case, data
):
    """What read_expert returns, and the row blocks distances and diffs read as stored, are
    the expert's rows of the whole tensor, in every layout: per-expert, fused, flat, FP8, MXFP4."""
    om = family_models[case]
    reader = om.reader
    moe = om.layout.layers[data.draw(st.sampled_from(sorted(om.layout.layers)))]
    expert = data.draw(st.integers(0, moe.n_experts - 1))
    weights = read_expert(reader, moe, expert)
    for table, suffix in ((moe.experts, ""), (moe.expert_biases, "_bias")):
        for role, tensor in table.items():
            name, lead, row0 = tensor.locate(expert)
            whole = reader.read(name)
            rows = whole[lead][row0 : row0 + tensor.shape[0]]
            if role == "expert_gate_up":
                gate = oriented(getattr(weights, "gate" + suffix), tensor.orientation)
                up = oriented(getattr(weights, "up" + suffix), tensor.orientation)
                joined = np.empty_like(rows)
                if tensor.packing == "halves":
                    joined[: len(gate)], joined[len(gate) :] = gate, up
                else:
                    joined[0::2], joined[1::2] = gate, up
                assert same(joined, rows), role
            else:
                part = getattr(weights, role.removeprefix("expert_") + suffix)
                assert same(oriented(part, tensor.orientation), rows), role
            a = data.draw(st.integers(0, len(rows)))
            b = data.draw(st.integers(a, len(rows)))
            span = (row0 + a, row0 + b)
            assert same(reader.read(name, lead, span), rows[a:b]), (role, span)
            block = np.empty(rows[a:b].size, dtype=reader.storage_dtype(name))
            reader.read_into(block, name, lead, span)
            assert same(block.astype(np.float32), rows[a:b].ravel()), (role, span)
            if reader.tensor(name).kind == "plain" and whole.ndim >= 2:
                flat = whole.reshape(-1, whole.shape[-1])
                start = data.draw(st.integers(0, len(flat)))
                stop = data.draw(st.integers(start, min(len(flat), start + 3 * len(rows))))
                out = np.empty((stop - start, flat.shape[1]), dtype=reader.storage_dtype(name))
                reader.read_flat_rows_into(out, name, start, stop)
                assert same(out.astype(np.float32), flat[start:stop]), (role, start, stop)


def test_an_empty_fp8_range_over_experts_reads_as_an_empty_array(tmp_path):
    """rows=(1, 1) over the experts of a fused [E, R, C] FP8 tensor is an empty slice,
    as it is for every other dtype."""
    q = np.ones((3, 4, 5), dtype=ml_dtypes.float8_e4m3fn)
    write_checkpoint(tmp_path, {"x": q, "x_scale_inv": np.ones((3, 1, 1), np.float32)})
    reader = TensorReader(open_checkpoint(tmp_path))
    assert reader.read("x", (), (1, 1)).shape == (0, 4, 5)
