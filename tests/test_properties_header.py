"""The shard header parser on corrupted files: a CheckpointError, or a header it can stand by.

Every stage trusts the byte ranges a parsed header gives, so a damaged or hostile shard
must either be refused with the one error type the CLI turns into a message (anything else
is a traceback), or parse to ranges that lie inside the data section and hold exactly
dtype x shape bytes. Shards are real fixture checkpoints, mutated byte by byte (the length
field, the JSON, the file's end) and token by token (a JSON value or key swapped for another).
"""

from __future__ import annotations

import functools
import json
import math
import re
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import assume, event, given, settings
from hypothesis import strategies as st

from moetopo.checkpoint.dtypes import ELEMENT_TYPES
from moetopo.checkpoint.header import ShardHeader, read_shard_header
from moetopo.errors import CheckpointError
from moetopo.fixtures import random_model, write_family

TINY = {"n_layers": 2, "n_experts": 4, "hidden": 32, "intermediate": 32, "vocab": 32}
FAMILIES = {
    "mixtral": ("hub", "BF16", {}),
    "deepseek_v3": ("fused", "F8_E4M3", {"moe_layers": [1]}),
    "gpt_oss": ("mxfp4", "BF16", {"router_bias": True, "expert_bias": True}),
}
# Bytes that mean something to JSON, so that insertions and replacements often keep the
# header parseable rather than merely breaking it.
SYNTAX = b'[]{}",:-+.eE0123456789 \\tnul'
# Runs of one byte stay far below the nesting depth at which json.loads raises
# RecursionError (about 1000) and the 4300 digits at which int() raises ValueError (see
# the known failures at the end), even when all MAX_EDITS edits of a shard are such runs.
MAX_RUN = 128
MAX_EDITS = 4
# A JSON string or number: what a token edit replaces.
TOKEN = re.compile(rb'"(?:[^"\\]|\\.)*"|-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?')
LITERALS = (
    "-1", "0", "-0", "1.0", "1e400", "-1e400", "NaN", "Infinity", "true", "false", "null",
    '""', '"F32"', '"BF16"', '"F8_E4M3"', '"U8"', '"I64"', '"F4"', '"__metadata__"',
    '"\\ud800"', "[]", "[0]", "[1, 2]", "[0, 0]", "[-1, 4]", "[4, 2]", "[[]]",
    "[0, 18446744073709551616]", "{}", '{"dtype": "F32"}',
)  # fmt: skip


@functools.cache
def fixture_shards() -> dict[str, bytes]:
    """One single-shard checkpoint per family of FAMILIES, as the bytes of its file (not
    a fixture: hypothesis would print all of them with every failing example)."""
    out = {}
    with tempfile.TemporaryDirectory() as root:
        for family, (layout, dtype, recipe) in FAMILIES.items():
            model = random_model(**TINY, **recipe)
            write_family(model, family, Path(root, family), layout, dtype=dtype, n_shards=1)
            out[family] = Path(root, family, "model.safetensors").read_bytes()
    return out


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    """Where each example's mutated shard is written (one file, overwritten)."""
    return tmp_path_factory.mktemp("mutated") / "model.safetensors"


def parse(blob: bytes, path: Path) -> ShardHeader:
    path.write_bytes(blob)
    return read_shard_header(path)


def with_header(blob: bytes, header: bytes) -> bytes:
    """``blob`` with its JSON header replaced by ``header`` and the length field to match."""
    (n,) = struct.unpack("<Q", blob[:8])
    return struct.pack("<Q", len(header)) + header + blob[8 + n :]


# --- mutations ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Edit:
    """One mutation of a shard, shown as drawn when a test fails.

    ``at``/``end`` are positions in the JSON header (a bit, or a byte, of the file's first
    8 + n bytes for flip and replace; the new value of the length field for length);
    ``fix_length`` rewrites the length field to the edited header's length, so that the
    parser reads the edited JSON rather than a cut of it.
    """

    kind: str  # length | flip | replace | insert | delete | token
    at: int = 0
    end: int = 0
    value: bytes = b""
    fix_length: bool = False

    def apply(self, prefix: bytes, header: bytes) -> tuple[bytes, bytes]:
        if self.kind == "length":
            return struct.pack("<Q", self.at), header
        if self.kind in ("flip", "replace"):
            head = bytearray(prefix + header)
            if self.kind == "flip":
                head[self.at // 8] ^= 1 << (self.at % 8)
            else:
                head[self.at] = self.value[0]
            return bytes(head[:8]), bytes(head[8:])
        header = header[: self.at] + self.value + header[self.end :]  # insert, delete, token
        return (struct.pack("<Q", len(header)) if self.fix_length else prefix), header


def syntax_bytes(max_size: int) -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.binary(min_size=1, max_size=max_size),
        st.lists(st.sampled_from(SYNTAX), min_size=1, max_size=max_size).map(bytes),
    )


json_literals = st.one_of(
    st.integers(-(2**70), 2**70).map(str),
    st.floats(allow_nan=False).map(json.dumps),
    st.sampled_from(LITERALS),
    st.text(max_size=8).map(json.dumps),
).map(lambda text: text.encode("utf-8", "surrogatepass"))
json_keys = st.one_of(
    st.sampled_from(["dtype", "shape", "data_offsets", "__metadata__", "format", ""]),
    st.text(max_size=8),
).map(lambda text: json.dumps(text).encode())


@st.composite
def edits(draw, header: bytes) -> Edit:
    """One edit of the shard whose JSON header is currently ``header``."""
    tokens = list(TOKEN.finditer(header))
    kinds = ["length", "flip", "replace", "insert"] + (["delete"] if header else [])
    # token edits thrice as often: most byte edits only make the JSON invalid
    kind = draw(st.sampled_from(kinds + (["token"] * 3 if tokens else [])))
    size = len(header)
    if kind == "length":
        near = st.integers(-64, 64).map(lambda d: max(0, size + d))
        return Edit(kind, at=draw(st.one_of(near, st.integers(0, 2**64 - 1))))
    if kind == "flip":
        return Edit(kind, at=draw(st.integers(0, 8 * (8 + size) - 1)))
    if kind == "replace":
        return Edit(kind, at=draw(st.integers(0, 8 + size - 1)), value=draw(syntax_bytes(1)))
    fix_length = draw(st.integers(0, 3)) > 0  # mostly: the parser then reads the edited JSON
    if kind == "insert":
        run = st.tuples(st.sampled_from(SYNTAX), st.integers(1, MAX_RUN))
        value = draw(st.one_of(syntax_bytes(16), run.map(lambda br: bytes([br[0]]) * br[1])))
        at = draw(st.integers(0, size))
        return Edit(kind, at, at, value, fix_length)
    if kind == "delete":
        at = draw(st.integers(0, size - 1))
        return Edit(kind, at, draw(st.integers(at + 1, size)), b"", fix_length)
    token = tokens[draw(st.integers(0, len(tokens) - 1))]
    key = header[token.end() :].lstrip().startswith(b":")
    literal = draw(json_keys if key else json_literals)  # a key must stay a string
    return Edit(kind, token.start(), token.end(), literal, fix_length)


def declares_unhashable_dtype(blob: bytes) -> bool:
    """Whether the header of ``blob`` gives a tensor a JSON array or object as its dtype,
    by whatever edits (a swapped value, a key renamed to "dtype"): the parser raises
    TypeError on it (see the known failures), so the property leaves it out."""
    try:
        (n,) = struct.unpack("<Q", blob[:8])
        header = json.loads(blob[8 : 8 + n].decode("utf-8"))
    except (struct.error, UnicodeDecodeError, ValueError):
        return False
    return isinstance(header, dict) and any(
        isinstance(spec, dict) and isinstance(spec.get("dtype"), list | dict)
        for name, spec in header.items()
        if name != "__metadata__"
    )


class Corrupted:
    """A mutated shard, shown as what was done to which shard rather than its 40 kB (a
    dataclass would be printed field by field, bytes and all)."""

    def __init__(self, family: str, edits: tuple[Edit, ...], truncate_to: int | None, blob):
        self.family, self.edits, self.truncate_to, self.blob = family, edits, truncate_to, blob

    def __repr__(self) -> str:
        return f"Corrupted({self.family!r}, edits={self.edits}, truncate_to={self.truncate_to})"


@st.composite
def corrupted_shards(draw) -> Corrupted:
    """A fixture shard after one to MAX_EDITS edits, each drawn against the header the
    previous ones left, and perhaps cut short."""
    family = draw(st.sampled_from(sorted(FAMILIES)))
    blob = fixture_shards()[family]
    (n,) = struct.unpack("<Q", blob[:8])
    prefix, header, data = blob[:8], blob[8 : 8 + n], blob[8 + n :]
    done = []
    for _ in range(draw(st.integers(1, MAX_EDITS))):
        edit = draw(edits(header))
        prefix, header = edit.apply(prefix, header)
        done.append(edit)
    blob = prefix + header + data
    truncate_to = None
    if draw(st.integers(0, 3)) == 0:  # a quarter of the shards end early, mostly in the data
        truncate_to = len(blob) - draw(st.integers(1, len(blob)))
    assume(not declares_unhashable_dtype(blob[:truncate_to]))
    return Corrupted(family, tuple(done), truncate_to, blob[:truncate_to])


# --- the property -------------------------------------------------------------------------


def assert_consistent(parsed: ShardHeader, blob: bytes) -> None:
    """What a successful parse promises about the file it parsed."""
    (n,) = struct.unpack("<Q", blob[:8])
    assert parsed.file_size == len(blob)
    assert parsed.data_start == 8 + n <= len(blob)
    raw = json.loads(blob[8 : 8 + n].decode("utf-8"))
    assert set(parsed.tensors) == set(raw) - {"__metadata__"}
    ranges = []
    for name, entry in parsed.tensors.items():
        assert entry.name == name
        assert all(type(d) is int and d >= 0 for d in entry.shape), entry
        assert parsed.data_start <= entry.begin <= entry.end <= parsed.file_size, entry
        itemsize = ELEMENT_TYPES[entry.dtype].itemsize
        assert entry.end - entry.begin == math.prod(entry.shape) * itemsize, entry
        if entry.end > entry.begin:
            ranges.append((entry.begin, entry.end))
    ranges.sort()
    assert all(end <= begin for (_, end), (begin, _) in zip(ranges, ranges[1:], strict=False))


def test_the_fixture_shards_satisfy_the_consistency_the_property_checks(tmp_path):
    """The success branch is not vacuous: unmutated shards parse, and consistently."""
    for family, blob in fixture_shards().items():
        parsed = parse(blob, tmp_path / f"{family}.safetensors")
        assert len(parsed.tensors) > 10
        assert_consistent(parsed, blob)


@settings(max_examples=1000, deadline=None)
@given(data=st.data())
def test_a_mutated_header_raises_checkpoint_error_or_parses_consistently(scratch, data):
    """Nothing but CheckpointError escapes the parser, and whatever it accepts is sound."""
    corrupted = data.draw(corrupted_shards(), label="corrupted")
    try:
        parsed = parse(corrupted.blob, scratch)
    except CheckpointError as error:
        assert error.path == str(scratch)
        event("refused: " + re.sub(r"[\[(\d'].*", "", error.problem).strip())
        return
    event("parsed")
    assert_consistent(parsed, corrupted.blob)


# --- known failures -----------------------------------------------------------------------


def _first(header: bytes, old: bytes, new: bytes) -> bytes:
    assert old in header
    return header.replace(old, new, 1)


# Edits the mutation strategy keeps out (it caps runs and filters unhashable dtypes, to stay
# fast): nesting and integer literals beyond Python's limits, a dtype that is no string.
NESTED = b"[" * 100_000 + b"]" * 100_000
KEPT_OUT = [
    pytest.param(
        lambda h: _first(h, b'"format":"pt"', b'"format":' + NESTED),
        id="deeply-nested-metadata-value",
    ),
    pytest.param(
        lambda h: _first(h, b'"shape":[', b'"shape":[' + b"1" * 4301 + b","),
        id="integer-of-4301-digits-in-a-shape",
    ),
    pytest.param(
        lambda h: _first(h, b'"dtype":"BF16"', b'"dtype":[]'),
        id="array-as-dtype",
    ),
    pytest.param(  # as the property found it: {"dtype":"BF16","dtype":[32,32],...}
        lambda h: _first(h, b'"shape":[32,32]', b'"dtype":[32,32]'),
        id="shape-key-renamed-to-dtype",
    ),
    pytest.param(
        lambda h: _first(h, b'"dtype":"BF16"', b'"dtype":{}'),
        id="object-as-dtype",
    ),
]


@pytest.mark.parametrize("corrupt", KEPT_OUT)
def test_a_header_the_property_keeps_out_is_refused_with_checkpoint_error(tmp_path, corrupt):
    """Each edit the mutation strategy avoids, applied to a real shard's header."""
    blob = fixture_shards()["mixtral"]
    (n,) = struct.unpack("<Q", blob[:8])
    with pytest.raises(CheckpointError):
        parse(with_header(blob, corrupt(blob[8 : 8 + n])), tmp_path / "model.safetensors")
