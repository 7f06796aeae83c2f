"""Header-only view of one safetensors shard: names, dtypes, shapes, byte ranges.

Parsing reads the 8-byte length and the JSON header, nothing else, and checks
every claim the header makes against the file so that later byte-range reads
cannot run off the end of a truncated shard or into another tensor.
"""

from __future__ import annotations

import gc
import hashlib
import json
import math
import os
import struct
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from moetopo.checkpoint import remote
from moetopo.errors import CheckpointError

# Bytes per element of every safetensors dtype moetopo reads. Kept here, free of numpy,
# so header parsing (and ``moetopo inspect``) never imports it; io.dtypes maps the same
# names to numpy element types.
ITEMSIZE = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "F8_E8M0": 1,
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "U16": 2,
    "I16": 2,
    "U32": 4,
    "I32": 4,
    "U64": 8,
    "I64": 8,
}
# The format caps headers at 100 MB; a larger claim means a corrupt length field.
MAX_HEADER_BYTES = 100_000_000


class TensorEntry(NamedTuple):
    """One tensor as a shard header describes it; offsets are absolute file positions.

    A NamedTuple rather than a dataclass: checkpoints hold 100k+ tensors and this is
    built for each of them on every parse.
    """

    name: str
    shard: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@contextmanager
def gc_paused():
    """Pause the cyclic garbage collector while header objects are built in bulk.

    Parsing DeepSeek-V3's 163 headers allocates about a million dicts, lists and tuples
    with no cycles among them; with the collector on, its passes over that growing heap
    slow JSON decoding down for nothing. Usable as a decorator; nests.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


# How the inventory artefacts store a header entry, one column per field.
ENTRY_COLUMNS = ("tensor", "shard", "dtype", "shape", "offset_begin", "offset_end")


def entry_columns(entries: Iterable[TensorEntry]) -> dict[str, list]:
    """Header entries as :data:`ENTRY_COLUMNS` column lists."""
    rows = [(e.name, e.shard, e.dtype, list(e.shape), e.begin, e.end) for e in entries]
    return {name: [row[k] for row in rows] for k, name in enumerate(ENTRY_COLUMNS)}


def entries_from_columns(columns: Mapping[str, Sequence]) -> Iterator[TensorEntry]:
    """Header entries back from :data:`ENTRY_COLUMNS` columns (extra columns ignored)."""
    for name, shard, dtype, shape, begin, end in zip(
        *(columns[c] for c in ENTRY_COLUMNS), strict=True
    ):
        yield TensorEntry(name, shard, dtype, tuple(shape), begin, end)


@dataclass(frozen=True)
class ShardHeader:
    """Parsed header of one shard: where its data section starts and what it holds."""

    shard: str
    file_size: int
    data_start: int
    tensors: dict[str, TensorEntry]
    metadata: dict[str, str]
    digest: str  # sha256 of the raw header bytes, for provenance


@gc_paused()
def read_shard_header(path: str | Path, shard: str | None = None) -> ShardHeader:
    """Parse and validate the header of ``path``; ``shard`` is the name recorded for it.
    A ``.gguf`` file is parsed as GGUF (:func:`moetopo.checkpoint.gguf.read_gguf_header`)."""
    path = Path(path)
    shard = shard if shard is not None else path.name
    if path.suffix == ".gguf":
        from moetopo.checkpoint.gguf import read_gguf_header  # imports numpy: GGUF only

        return read_gguf_header(path, shard)[0]
    if path.exists() and not path.is_file():  # a FIFO would block the read forever
        raise CheckpointError(path, "not a regular file (a FIFO, device or directory): refused")
    try:
        file_size = os.path.getsize(path)
        remote.ensure(path, 0, min(8, file_size))
        with open(path, "rb") as handle:
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise CheckpointError(
                    path,
                    f"truncated shard: {file_size} bytes, too short for the 8-byte header length",
                )
            (header_len,) = struct.unpack("<Q", prefix)
            if header_len > MAX_HEADER_BYTES or 8 + header_len > file_size:
                raise CheckpointError(
                    path,
                    f"header length {header_len} runs beyond the file ({file_size} bytes): "
                    "truncated or not a safetensors file",
                )
            remote.ensure(path, 8, 8 + header_len)
            raw = handle.read(header_len)
    except OSError as exc:
        raise CheckpointError(path, f"cannot read shard: {exc.strerror or exc}") from exc
    return parse_header_bytes(raw, path=path, shard=shard, file_size=file_size)


# A dimension numpy (and the safetensors format's u64 arithmetic) can hold; a zero-element
# tensor would otherwise pass the size check with any other dimension.
MAX_DIM = 1 << 63


def parse_header_bytes(raw: bytes, *, path: str | Path, shard: str, file_size: int) -> ShardHeader:
    """Validate a raw JSON header against the size of the file it came from."""
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:  # ValueError: JSON, or an int too long
        raise CheckpointError(path, f"header is not valid JSON ({exc})") from exc
    except RecursionError as exc:
        raise CheckpointError(
            path, "header nests JSON too deeply to be a safetensors header"
        ) from exc
    if not isinstance(header, dict):
        raise CheckpointError(path, "header is JSON but not an object of tensors")
    data_start = 8 + len(raw)
    data_size = file_size - data_start
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict):
        raise CheckpointError(path, "__metadata__ is not an object")
    tensors = {}
    for name, spec in header.items():
        try:  # fast path for a well-formed entry; anything odd gets the detailed check
            dtype, shape, (begin, end) = spec["dtype"], spec["shape"], spec["data_offsets"]
            size = ITEMSIZE[dtype]
            for d in shape:
                if type(d) is not int or not 0 <= d < MAX_DIM:
                    raise TypeError
                size *= d
            ok = type(begin) is int and type(end) is int and 0 <= begin <= end <= data_size
            ok = ok and end - begin == size
        except (KeyError, TypeError, ValueError):
            ok = False
        if not ok:
            _entry(path, shard, name, spec, data_start, data_size)  # raises the precise error
        tensors[name] = TensorEntry(
            name, shard, dtype, tuple(shape), data_start + begin, data_start + end
        )
    _check_tiling(path, tensors.values(), data_start, file_size)
    return ShardHeader(
        shard=shard,
        file_size=file_size,
        data_start=data_start,
        tensors=tensors,
        metadata={str(k): str(v) for k, v in metadata.items()},
        digest=hashlib.sha256(raw).hexdigest(),
    )


def _entry(path, shard, name, spec, data_start: int, data_size: int) -> TensorEntry:
    if not isinstance(spec, dict):
        raise CheckpointError(path, "header entry is not an object", tensor=name)
    dtype = spec.get("dtype")
    if type(dtype) is not str or dtype not in ITEMSIZE:
        known = ", ".join(sorted(ITEMSIZE))
        raise CheckpointError(path, f"unknown dtype {dtype!r} (supported: {known})", tensor=name)
    shape = spec.get("shape")
    offsets = spec.get("data_offsets")
    if not _is_int_list(shape) or any(not 0 <= d < MAX_DIM for d in shape):
        raise CheckpointError(
            path, f"shape {shape!r} is not a list of sizes (0 to 2^63 - 1)", tensor=name
        )
    if not _is_int_list(offsets) or len(offsets) != 2:
        raise CheckpointError(path, f"data_offsets {offsets!r} is not [begin, end]", tensor=name)
    begin, end = offsets
    if not 0 <= begin <= end:
        raise CheckpointError(path, f"data_offsets {offsets} are not ordered", tensor=name)
    if end > data_size:
        raise CheckpointError(
            path,
            f"byte range [{begin}, {end}) lies outside the data section of {data_size} bytes: "
            "truncated shard or corrupt header",
            tensor=name,
        )
    expected = math.prod(shape) * ITEMSIZE[dtype]
    if end - begin != expected:
        raise CheckpointError(
            path,
            f"shape {list(shape)} x {dtype} needs {expected} bytes but the byte range holds "
            f"{end - begin}",
            tensor=name,
        )
    return TensorEntry(name, shard, dtype, tuple(shape), data_start + begin, data_start + end)


def _is_int_list(value) -> bool:
    return isinstance(value, list) and all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    )


def _check_tiling(path, entries, data_start: int, file_size: int) -> None:
    """The byte ranges tile the data section exactly, as the safetensors format requires:
    in offset order each starts where the previous ended, from the section's start to the
    end of the file. A gap, an overlap or uncovered trailing bytes mean a corrupt header
    (a header length moved into the header's padding would read every tensor off by a
    few bytes), so the shard is refused rather than read."""
    cursor, previous = data_start, None
    for begin, end, name in sorted((e.begin, e.end, e.name) for e in entries):
        if begin != cursor:
            what = f"overlaps tensor {previous!r}" if begin < cursor else "leaves a gap after"
            after = "the header" if previous is None else repr(previous)
            raise CheckpointError(
                path,
                f"byte range [{begin - data_start}, {end - data_start}) "
                + (what if begin < cursor else f"{what} {after}")
                + f" (the previous range ends at {cursor - data_start}): corrupt header",
                tensor=name,
            )
        cursor, previous = end, name
    if cursor != file_size:
        raise CheckpointError(
            path,
            f"{file_size - cursor} bytes at the end of the data section belong to no tensor: "
            "corrupt header length or header",
        )
