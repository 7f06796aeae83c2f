"""GGUF models (llama.cpp's format), read header-only and by byte range like safetensors.

A model is one ``.gguf`` file or a split set ``NAME-0000k-of-0000n.gguf`` in one
directory. Its header becomes one :class:`ShardHeader` per file, so every stage reads it
through :class:`~moetopo.checkpoint.reader.TensorReader` unchanged: a tensor's dtype is
its GGML type name (``F32``, ``BF16``, ``Q4_K``, ...), its shape is numpy's (GGUF's ``ne``
reversed: ``ne0`` varies fastest, so the router ``ne = [H, E]`` is ``(E, H)``), and its
byte range is absolute. Quantised types are block codes along the last numpy axis, so an
expert of a stacked tensor, or a range of its rows, is one contiguous byte range.

The header is walked here with :mod:`struct` over a memory map rather than by
``gguf.GGUFReader``, which builds numpy views of every element of every metadata array:
9 s for a 152k-token vocabulary, on every parse. Only the header's pages are touched;
the tensor data is never read while parsing, and string arrays (the tokenizer) are
skipped, not decoded. Format constants, block sizes and the dequantisers are the
``gguf`` package's own.
"""

from __future__ import annotations

import hashlib
import math
import mmap
import os
import re
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import gguf
import numpy as np

from moetopo.checkpoint.header import ShardHeader, TensorEntry, gc_paused
from moetopo.checkpoint.reader import read_exactly
from moetopo.checkpoint.shards import ShardList
from moetopo.errors import CheckpointError

# llama.cpp's split naming (llama_split_path): NAME-00001-of-00005.gguf
SPLIT_NAME = re.compile(r"(?P<stem>.+)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf")
SUPPORTED_VERSIONS = (2, 3)
GGML_MAX_DIMS = 4
# Elements dequantised per call of gguf.quants.dequantize, which holds several float
# temporaries of its whole input: this bounds them whatever the slice's size.
DEQUANTIZE_ELEMENTS = 1 << 20

_VT = gguf.GGUFValueType
_SCALARS = {
    _VT.UINT8: struct.Struct("<B"),
    _VT.INT8: struct.Struct("<b"),
    _VT.UINT16: struct.Struct("<H"),
    _VT.INT16: struct.Struct("<h"),
    _VT.UINT32: struct.Struct("<I"),
    _VT.INT32: struct.Struct("<i"),
    _VT.FLOAT32: struct.Struct("<f"),
    _VT.BOOL: struct.Struct("<?"),
    _VT.UINT64: struct.Struct("<Q"),
    _VT.INT64: struct.Struct("<q"),
    _VT.FLOAT64: struct.Struct("<d"),
}
_U32, _U64 = _SCALARS[_VT.UINT32], _SCALARS[_VT.UINT64]
# The smallest a metadata entry (key length, type, one byte) and a tensor info (name
# length, dimension count, type, offset) can be: bounds the counts a header may claim.
_MIN_KEY_BYTES, _MIN_INFO_BYTES = 8 + 4 + 1, 8 + 4 + 4 + 8


class _Short(Exception):
    """The header walk needs bytes up to ``needed``, past the end of the file."""

    def __init__(self, needed: int):
        super().__init__(needed)
        self.needed = needed


class _TensorInfo(NamedTuple):
    name: str
    dims: tuple[int, ...]  # GGUF's ne: fastest-varying first
    type_id: int
    offset: int  # relative to the data section


class _RawHeader(NamedTuple):
    metadata: list[tuple[str, object]]  # in file order, duplicates kept for the check
    infos: list[_TensorInfo]
    infos_end: int  # first byte after the tensor infos


class _Walk:
    """Sequential little-endian reads over a file's bytes, failing past their end.

    Not ``strict``, text is decoded leniently: a fetched prefix may end inside a
    multi-byte character.
    """

    def __init__(self, data, path: Path, strict: bool):
        self.data, self.path, self.pos = data, path, 0
        self.errors = "strict" if strict else "replace"

    def take(self, n: int) -> int:
        start, self.pos = self.pos, self.pos + n
        if self.pos > len(self.data):
            raise _Short(self.pos)
        return start

    def unpack(self, fmt: struct.Struct):
        return fmt.unpack_from(self.data, self.take(fmt.size))[0]

    def text(self, what: str) -> str:
        n = self.unpack(_U64)
        start = self.take(n)
        try:
            return self.data[start : start + n].decode("utf-8", self.errors)
        except UnicodeDecodeError:
            raise CheckpointError(self.path, f"{what} at byte {start} is not UTF-8") from None

    def value(self, vtype: int):
        """A metadata value; string arrays are skipped (None), numeric arrays are lists."""
        if vtype == _VT.STRING:
            return self.text("a metadata string")
        if vtype == _VT.ARRAY:
            item, count = self.unpack(_U32), self.unpack(_U64)
            if item in (_VT.STRING, _VT.ARRAY):
                for _ in range(count):
                    self.skip(item)
                return None
            fmt = self._scalar(item)
            start = self.take(count * fmt.size)
            dtype = np.dtype(fmt.format)
            return np.frombuffer(self.data, dtype, count, start).tolist()
        return self.unpack(self._scalar(vtype))

    def skip(self, vtype: int) -> None:
        if vtype == _VT.STRING:
            self.take(self.unpack(_U64))
        else:
            self.value(vtype)

    def _scalar(self, vtype: int) -> struct.Struct:
        fmt = _SCALARS.get(vtype)
        if fmt is None:
            raise CheckpointError(
                self.path, f"unknown GGUF value type {vtype} at byte {self.pos}: corrupt header"
            )
        return fmt


def _walk(data, path: Path, strict: bool = True) -> _RawHeader:
    """Magic, version, metadata and tensor infos, exactly as stored; no data is read."""
    walk = _Walk(data, path, strict)
    magic = walk.unpack(_U32)
    if magic != gguf.GGUF_MAGIC:
        raise CheckpointError(path, "not a GGUF file (its first 4 bytes are not 'GGUF')")
    version = walk.unpack(_U32)
    if version & 0xFFFF == 0:
        raise CheckpointError(path, "a big-endian GGUF file: only little-endian GGUF is read")
    if version not in SUPPORTED_VERSIONS:
        raise CheckpointError(
            path, f"GGUF version {version} is not supported (only {SUPPORTED_VERSIONS})"
        )
    n_tensors, n_keys = walk.unpack(_U64), walk.unpack(_U64)
    if n_keys * _MIN_KEY_BYTES + n_tensors * _MIN_INFO_BYTES > len(data):
        raise CheckpointError(
            path, f"{n_keys} metadata keys and {n_tensors} tensors cannot fit in the file"
        )
    metadata = []
    for _ in range(n_keys):
        key = walk.text("a metadata key")
        metadata.append((key, walk.value(walk.unpack(_U32))))
    infos = []
    for _ in range(n_tensors):
        name = walk.text("a tensor name")
        n_dims = walk.unpack(_U32)
        if n_dims > GGML_MAX_DIMS:
            raise CheckpointError(
                path, f"{n_dims} dimensions, more than GGML's {GGML_MAX_DIMS}", tensor=name
            )
        dims = tuple(walk.unpack(_U64) for _ in range(n_dims))
        infos.append(_TensorInfo(name, dims, walk.unpack(_U32), walk.unpack(_U64)))
    return _RawHeader(metadata, infos, walk.pos)


@contextmanager
def _mapped(path: Path) -> Iterator[mmap.mmap]:
    """The file's bytes, memory-mapped read-only (pages are read only where touched)."""
    if path.exists() and not path.is_file():  # a FIFO would block the read forever
        raise CheckpointError(path, "not a regular file (a FIFO, device or directory): refused")
    try:
        with open(path, "rb") as handle:
            if os.fstat(handle.fileno()).st_size == 0:
                raise CheckpointError(path, "empty file: not a GGUF model")
            with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
                yield data
    except OSError as exc:
        raise CheckpointError(path, f"cannot read GGUF file: {exc.strerror or exc}") from exc


def _alignment(metadata: dict, path: Path) -> int:
    value = metadata.get("general.alignment", gguf.GGUF_DEFAULT_ALIGNMENT)
    if type(value) is not int or value <= 0 or value & (value - 1):
        raise CheckpointError(path, f"general.alignment {value!r} is not a power of two")
    return value


def _aligned(offset: int, alignment: int) -> int:
    return -(-offset // alignment) * alignment


def gguf_header_end(path: str | Path) -> int:
    """Where the header of the GGUF file at ``path`` ends and its data section starts,
    walked over the file's current bytes without validating them.

    For a file being fetched into a sparse local copy: when the header runs past the
    bytes fetched so far, the walk reads the zeros beyond them as empty strings and
    arrays, each of which still takes some bytes, so it ends past the fetched prefix
    (or past the end of the file). Fetching up to the returned end and asking again
    converges on the true end; then :func:`read_gguf_header` parses it strictly.
    """
    path = Path(path)
    with _mapped(path) as data:
        try:
            raw = _walk(data, path, strict=False)
        except _Short as short:
            return short.needed
    try:
        alignment = _alignment(dict(raw.metadata), path)
    except CheckpointError:  # zeros where the header is not fetched yet
        alignment = gguf.GGUF_DEFAULT_ALIGNMENT
    return _aligned(raw.infos_end, alignment)


@gc_paused()
def read_gguf_header(path: str | Path, shard: str | None = None) -> tuple[ShardHeader, dict]:
    """Parse and validate the header of the GGUF file ``path`` (``shard`` is the name
    recorded for it): its :class:`ShardHeader` and its metadata (string arrays left out).

    Every tensor's byte range is checked against the file, so a truncated file fails
    here, naming the first tensor it cuts; a split part's name is checked against its
    ``split.no`` / ``split.count``. Bytes past the data section's start are never read.
    """
    path = Path(path)
    shard = shard if shard is not None else path.name
    with _mapped(path) as data:
        file_size = len(data)
        try:
            raw = _walk(data, path)
        except _Short as short:
            raise CheckpointError(
                path,
                f"truncated GGUF file: its header runs to byte {short.needed}, past the end "
                f"of the file ({file_size} bytes)",
            ) from None
        metadata, seen = {}, set()
        for key, value in raw.metadata:
            if key in seen:
                raise CheckpointError(path, f"metadata key {key!r} is stored twice")
            seen.add(key)
            if value is not None:  # None: a string array, skipped
                metadata[key] = value
        alignment = _alignment(metadata, path)
        data_start = _aligned(raw.infos_end, alignment)
        digest = hashlib.sha256(data[: min(data_start, file_size)]).hexdigest()
    tensors: dict[str, TensorEntry] = {}
    for info in raw.infos:
        if info.name in tensors:
            raise CheckpointError(path, "tensor is stored twice", tensor=info.name)
        tensors[info.name] = _entry(path, shard, info, data_start, alignment, file_size)
    _check_disjoint(path, tensors.values(), data_start)
    _check_split_name(path, metadata)
    header = ShardHeader(shard, file_size, data_start, tensors, {}, digest)
    return header, metadata


def _entry(
    path: Path, shard: str, info: _TensorInfo, data_start: int, alignment: int, file_size: int
) -> TensorEntry:
    name, dims = info.name, info.dims
    try:
        qtype = gguf.GGMLQuantizationType(info.type_id)
        block, type_size = gguf.GGML_QUANT_SIZES[qtype]
    except (ValueError, KeyError):
        raise CheckpointError(
            path,
            f"GGML type id {info.type_id} is unknown to gguf {_gguf_version()}: "
            "a newer gguf package may read it",
            tensor=name,
        ) from None
    row = dims[0] if dims else 1
    if row % block:
        raise CheckpointError(
            path,
            f"rows of {row} values do not split into {qtype.name} blocks of {block}",
            tensor=name,
        )
    if info.offset % alignment:
        raise CheckpointError(
            path, f"data offset {info.offset} is not a multiple of the alignment {alignment}", name
        )
    begin = data_start + info.offset
    end = begin + math.prod(dims) // block * type_size
    if end > file_size:
        raise CheckpointError(
            path,
            f"truncated GGUF file: the tensor's bytes [{begin}, {end}) run past the end of "
            f"the file ({file_size} bytes)",
            tensor=name,
        )
    return TensorEntry(name, shard, qtype.name, tuple(reversed(dims)), begin, end)


def _check_disjoint(path: Path, entries, data_start: int) -> None:
    """No two tensors share a byte (GGUF aligns each, so gaps of padding are allowed)."""
    previous = None
    for entry in sorted(entries, key=lambda e: (e.begin, e.end)):
        if previous is not None and entry.begin < previous.end and entry.nbytes:
            raise CheckpointError(
                path,
                f"bytes [{entry.begin - data_start}, {entry.end - data_start}) of the data "
                f"section overlap tensor {previous.name!r}: corrupt header",
                tensor=entry.name,
            )
        previous = entry if previous is None or entry.end > previous.end else previous


def _check_split_name(path: Path, metadata: dict) -> None:
    """A part's name (NAME-0000k-of-0000n.gguf) and its split keys must agree."""
    count, no = metadata.get("split.count"), metadata.get("split.no")
    named = SPLIT_NAME.fullmatch(path.name)
    if named:
        k, n = int(named["no"]), int(named["count"])
        if (count, no) != (n, k - 1):
            said = "no split keys" if count is None else f"split.no {no} of split.count {count}"
            raise CheckpointError(
                path,
                f"named as part {k} of {n} of a split GGUF model, but its metadata has {said} "
                "(llama.cpp numbers split.no from 0)",
            )
    elif isinstance(count, int) and count > 1:
        raise CheckpointError(
            path,
            f"part {(no or 0) + 1} of a {count}-part split GGUF model, but its name does not "
            "say so: llama.cpp finds the parts by their names NAME-0000k-of-0000n.gguf; "
            "restore those names",
        )


def list_gguf_parts(path: Path) -> ShardList:
    """The files of the GGUF model at ``path``: a single file, any part of a split set
    (every part is then listed), or a directory holding exactly one such model."""
    root, names = (path.parent, [path.name]) if path.is_file() else (path, _gguf_names(path))
    models: set[tuple[str, int]] = set()  # (file name, 0) or (split stem, part count)
    for name in names:
        named = SPLIT_NAME.fullmatch(name)
        if named is None:
            models.add((name, 0))
            continue
        no, count = int(named["no"]), int(named["count"])
        if not 1 <= no <= count:
            raise CheckpointError(root / name, f"part {no} of {count} is not a part number")
        models.add((named["stem"], count))
    if not models:
        raise CheckpointError(path, "no .gguf file in this directory")
    if len(models) > 1:
        found = ", ".join(_model_name(stem, count) for stem, count in sorted(models))
        raise CheckpointError(
            path, f"{len(models)} GGUF models in this directory ({found}): name the file to read"
        )
    stem, count = models.pop()
    if count == 0:
        return ShardList(root, (stem,), None)
    parts = tuple(f"{stem}-{k:05d}-of-{count:05d}.gguf" for k in range(1, count + 1))
    missing = [k for k, part in enumerate(parts, 1) if not (root / part).is_file()]
    if missing:
        raise CheckpointError(
            root / parts[missing[0] - 1],
            f"part {missing[0]} of the {count}-part GGUF model {stem} is missing "
            f"({len(missing)} of {count} parts absent; all must be in {root})",
        )
    return ShardList(root, parts, None)


def _gguf_names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.glob("*.gguf"))


def _model_name(stem: str, count: int) -> str:
    return stem if count == 0 else f"{stem}-*-of-{count:05d}.gguf"


def gguf_model_config(listing: ShardList, n_tensors: int | None = None) -> dict:
    """The model's config, from the metadata of its first part (GGUF has no config.json).

    Its ``{arch}.*`` keys are kept as GGUF spells them (the gguf family spec reads
    ``*.expert_count`` and the like), with ``general.architecture`` and ``architectures``
    naming the architecture; no ``model_type`` is set, as GGUF architecture names such as
    ``dbrx`` or ``olmoe`` would select the safetensors family of that name. With
    ``n_tensors`` (all the model's tensors), the split's ``split.tensors.count`` is checked.
    """
    first = listing.root / listing.shards[0]
    _, metadata = read_gguf_header(first, listing.shards[0])
    expected = metadata.get("split.tensors.count")
    if n_tensors is not None and expected is not None and expected != n_tensors:
        raise CheckpointError(
            first,
            f"split.tensors.count says the model has {expected} tensors, but its "
            f"{len(listing.shards)} part(s) hold {n_tensors}",
        )
    arch = metadata.get("general.architecture")
    if not isinstance(arch, str) or not arch:
        raise CheckpointError(first, "no general.architecture in the GGUF metadata")
    config = {k: v for k, v in metadata.items() if k.startswith(f"{arch}.")}
    return {"architectures": [arch], "general.architecture": arch, **config}


def read_ggml_elements(path: Path, entry: TensorEntry, start: int, count: int) -> np.ndarray:
    """Elements ``[start, start + count)`` (row-major) of the block-quantised tensor
    ``entry``, dequantised to float32: the whole blocks covering them are read, at most
    one partial block at each end beyond the slice."""
    qtype = gguf.GGMLQuantizationType.__members__.get(entry.dtype)
    if qtype is None:
        raise CheckpointError(
            path, f"GGML type {entry.dtype} is unknown to gguf {_gguf_version()}", entry.name
        )
    block, type_size = gguf.GGML_QUANT_SIZES[qtype]
    first, stop = start // block, -(-(start + count) // block)
    raw = np.empty((stop - first) * type_size, dtype=np.uint8)
    if raw.size:
        read_exactly(path, entry.begin + first * type_size, raw, entry.name)
    values = np.empty((stop - first) * block, dtype=np.float32)
    step = max(1, DEQUANTIZE_ELEMENTS // block)  # blocks per call
    for b0 in range(0, stop - first, step):
        b1 = min(stop - first, b0 + step)
        values[b0 * block : b1 * block] = _dequantize(
            raw[b0 * type_size : b1 * type_size], qtype, path, entry
        )
    skip = start - first * block
    return values[skip : skip + count]


def _dequantize(raw: np.ndarray, qtype, path: Path, entry: TensorEntry) -> np.ndarray:
    try:
        return gguf.quants.dequantize(raw, qtype)
    except NotImplementedError:
        raise CheckpointError(
            path,
            f"GGML type {entry.dtype} cannot be dequantised (gguf {_gguf_version()} has no "
            "dequantiser for it); moetopo reads every type gguf.quants.dequantize does",
            tensor=entry.name,
        ) from None


def _gguf_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("gguf")
    except PackageNotFoundError:
        return "(version unknown)"
