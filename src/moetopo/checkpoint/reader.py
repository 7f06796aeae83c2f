"""Byte-range reads of logical tensors (:mod:`.logical`), dequantised to float.

Reads take a fixed leading index (an expert of a fused tensor) and a
row range and read exactly those bytes by positional read (which releases the GIL),
so resident memory stays bounded by the slice asked for.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from moetopo.checkpoint import remote
from moetopo.checkpoint.dtypes import (
    ELEMENT_TYPES,
    apply_block_scales,
    dequantize_mxfp4,
    widen_into,
)
from moetopo.checkpoint.header import TensorEntry
from moetopo.checkpoint.logical import LogicalTensor, logical_tensors
from moetopo.checkpoint.shards import Checkpoint
from moetopo.errors import CheckpointError

DEFAULT_FP8_BLOCK = 128


class TensorReader:
    """Reads logical tensors of a checkpoint by exact byte range."""

    def __init__(self, checkpoint: Checkpoint, logical: dict[str, LogicalTensor] | None = None):
        """``logical``: the checkpoint's :func:`logical_tensors`, when already computed."""
        self.checkpoint = checkpoint
        self.logical = logical_tensors(checkpoint.tensors) if logical is None else logical
        qc = checkpoint.config.get("quantization_config") or {}
        block = qc.get("weight_block_size") if isinstance(qc, dict) else None
        self.fp8_block = tuple(block) if block else None

    def __contains__(self, name: str) -> bool:
        return name in self.logical

    def tensor(self, name: str) -> LogicalTensor:
        try:
            return self.logical[name]
        except KeyError:
            raise CheckpointError(self.checkpoint.root, "no such tensor", tensor=name) from None

    def read(
        self,
        name: str,
        lead: tuple[int, ...] = (),
        rows: tuple[int, int] | None = None,
        dtype=np.float32,
    ) -> np.ndarray:
        """Dequantised ``tensor[lead..., rows[0]:rows[1], ...]`` as ``dtype``.

        ``lead`` fixes the leading indices (an expert of a fused [E, R, C] tensor) and
        ``rows`` slices the next dimension; the bytes read are exactly that slice.
        """
        lt = self.tensor(name)
        if lt.kind == "ggml":
            return self._ggml(lt.data, lead, rows).astype(dtype, copy=False)
        if lt.kind == "mxfp4":
            blocks = self._raw(lt.data, lead, rows)
            scales = self._raw(lt.scale, lead, rows)
            return dequantize_mxfp4(blocks, scales).astype(dtype, copy=False)
        if lt.kind == "fp8" and lt.scale is not None and len(lead) < len(lt.shape) - 2:
            # one leading index at a time, so each meets its own block scales
            indices = range(*rows) if rows is not None else range(lt.shape[len(lead)])
            inner = lt.shape[len(lead) + 1 :]
            out = np.empty((len(indices), *inner), dtype=dtype)
            for k, i in enumerate(indices):
                out[k] = self.read(name, lead + (i,), None, dtype)
            return out
        values = self._raw(lt.data, lead, rows, dtype=np.float32 if lt.kind == "fp8" else dtype)
        if lt.kind == "fp8" and lt.scale is not None:
            values = self._scale_fp8(lt, values, lead, rows)
        return values.astype(dtype, copy=False)

    def storage_dtype(self, name: str) -> np.dtype:
        """The element type :meth:`read_into` reads without a conversion: the stored
        type of a plain tensor, float32 for a dequantised one."""
        lt = self.tensor(name)
        return ELEMENT_TYPES[lt.data.dtype].numpy if lt.kind == "plain" else np.dtype(np.float32)

    def read_into(
        self, out: np.ndarray, name: str, lead: tuple[int, ...] = (), rows=None
    ) -> np.ndarray:
        """:meth:`read` written into the C-contiguous ``out`` (its dtype; any shape of the
        same size). When ``out`` has the :meth:`storage_dtype`, the stored bytes go straight
        into it, so a caller reusing ``out`` allocates nothing per read."""
        if not self._takes_stored_bytes(out, name):
            out[...] = self.read(name, lead, rows, dtype=out.dtype).reshape(out.shape)
            return out
        path, offset, count, _ = self._locate(self.tensor(name).data, lead, rows)
        _check_count(name, count, out)
        read_exactly(path, offset, out, name)
        return out

    def read_flat_rows_into(self, out: np.ndarray, name: str, start: int, stop: int) -> np.ndarray:
        """Rows ``[start, stop)`` over all but the last axis of a plain tensor (so a block
        may cross a fused tensor's experts), as stored, into the C-contiguous ``out`` of
        the :meth:`storage_dtype`."""
        if not self._takes_stored_bytes(out, name):
            raise ValueError(
                f"{name}: flat rows are read as stored ({self.storage_dtype(name)}, plain "
                f"tensors only), not into {out.dtype}"
            )
        entry = self.tensor(name).data
        cols = entry.shape[-1] if entry.shape else 1
        n_rows = math.prod(entry.shape[:-1])
        path = self.checkpoint.shard_path(entry.shard)
        if not 0 <= start <= stop <= n_rows:
            raise CheckpointError(
                path, f"flat rows {start}:{stop} out of range for shape {list(entry.shape)}", name
            )
        _check_count(name, (stop - start) * cols, out)
        read_exactly(path, entry.begin + start * cols * out.itemsize, out, name)
        return out

    def _takes_stored_bytes(self, out: np.ndarray, name: str) -> bool:
        """Whether the stored bytes of ``name`` can go into ``out`` unconverted."""
        return self.tensor(name).kind == "plain" and out.dtype == self.storage_dtype(name)

    def _locate(self, entry: TensorEntry, lead, rows) -> tuple[Path, int, int, tuple]:
        """(shard path, byte offset, element count, shape) of ``entry[lead..., r0:r1, ...]``."""
        start, count, out_shape = self._elements(entry, lead, rows)
        itemsize = ELEMENT_TYPES[entry.dtype].itemsize
        path = self.checkpoint.shard_path(entry.shard)
        return path, entry.begin + start * itemsize, count, out_shape

    def _elements(self, entry: TensorEntry, lead, rows) -> tuple[int, int, tuple]:
        """(first element, element count, shape) of ``entry[lead..., r0:r1, ...]``, which
        is contiguous in row-major order."""
        shape = entry.shape
        k = len(lead)
        if k > len(shape) or any(not 0 <= i < d for i, d in zip(lead, shape, strict=False)):
            raise CheckpointError(
                self.checkpoint.shard_path(entry.shard),
                f"index {lead} out of range for shape {list(shape)}",
                tensor=entry.name,
            )
        if k == len(shape):
            r0, r1, inner, out_shape = 0, 1, 1, ()
        else:
            r0, r1 = rows if rows is not None else (0, shape[k])
            if not 0 <= r0 <= r1 <= shape[k]:
                raise CheckpointError(
                    self.checkpoint.shard_path(entry.shard),
                    f"rows {rows} out of range for shape {list(shape)}",
                    tensor=entry.name,
                )
            inner = math.prod(shape[k + 1 :])
            out_shape = (r1 - r0,) + shape[k + 1 :]
        start = (int(np.ravel_multi_index(lead, shape[:k])) if k else 0) * (
            math.prod(shape[k:]) if k < len(shape) else 1
        ) + r0 * inner
        return start, (r1 - r0) * inner, out_shape

    def _ggml(self, entry: TensorEntry, lead, rows) -> np.ndarray:
        """float32 ``entry[lead..., r0:r1, ...]`` of a GGUF tensor of a GGML block type:
        the blocks covering the slice are read and dequantised (an expert, or whole rows,
        are whole blocks: GGML blocks run along the last axis)."""
        from moetopo.checkpoint.gguf import read_ggml_elements  # gguf: GGUF models only

        start, count, out_shape = self._elements(entry, lead, rows)
        path = self.checkpoint.shard_path(entry.shard)
        return read_ggml_elements(path, entry, start, count).reshape(out_shape)

    def _raw(self, entry: TensorEntry, lead, rows, dtype=None) -> np.ndarray:
        path, offset, count, out_shape = self._locate(entry, lead, rows)
        stored = np.empty(out_shape, dtype=ELEMENT_TYPES[entry.dtype].numpy)
        if count:
            read_exactly(path, offset, stored, entry.name)
        if dtype is None or stored.dtype == dtype:
            return stored
        return widen_into(np.empty(out_shape, dtype=dtype), stored)

    def _scale_fp8(self, lt: LogicalTensor, values, lead, rows) -> np.ndarray:
        scale_shape = lt.scale.shape
        if math.prod(scale_shape) == 1:
            return values * float(self._raw(lt.scale, (), None, np.float32).reshape(-1)[0])
        if values.ndim < 2:
            raise CheckpointError(
                self.checkpoint.shard_path(lt.scale.shard),
                f"cannot apply scales {list(scale_shape)} to a 1-D FP8 tensor",
                tensor=lt.scale.name,
            )
        full_rows = lt.shape[-2]
        r0, r1 = rows if rows is not None else (0, full_rows)
        lead_dims = len(lt.shape) - 2
        if len(scale_shape) == lead_dims + 1 and scale_shape[-1] == full_rows:  # [..., R]
            per_row = self._raw(lt.scale, lead, (r0, r1), np.float32)
            return values * per_row.reshape(r1 - r0, 1)
        if len(scale_shape) != lead_dims + 2:
            raise CheckpointError(
                self.checkpoint.shard_path(lt.scale.shard),
                f"scale shape {list(scale_shape)} does not fit the weight {list(lt.shape)}",
                tensor=lt.scale.name,
            )
        if scale_shape[-1] == 1 and scale_shape[-2] == full_rows and full_rows > 1:  # [..., R, 1]
            return values * self._raw(lt.scale, lead, (r0, r1), np.float32)
        block = self._block(lt, scale_shape[-2:], lt.shape[-2:])
        s0, s1 = r0 // block[0], -(-r1 // block[0])
        scales = self._raw(lt.scale, lead, (s0, s1), np.float32)
        return apply_block_scales(values, scales, block, row_offset=r0)

    def _block(self, lt: LogicalTensor, scale_dims, dims) -> tuple[int, int]:
        candidates = [self.fp8_block] if self.fp8_block else []
        candidates.append((DEFAULT_FP8_BLOCK, DEFAULT_FP8_BLOCK))
        candidates.append(
            tuple(
                1 << max(0, math.ceil(math.log2(-(-d // s))))
                for d, s in zip(dims, scale_dims, strict=True)
            )
        )
        for block in candidates:
            if all(-(-d // b) == s for d, b, s in zip(dims, block, scale_dims, strict=True)):
                return block
        raise CheckpointError(
            self.checkpoint.shard_path(lt.scale.shard),
            f"scale shape {list(scale_dims)} does not tile the weight {list(dims)} in blocks",
            tensor=lt.scale.name,
        )


def _check_count(name: str, count: int, out: np.ndarray) -> None:
    if count != out.size:
        raise ValueError(f"{name}: reading {count} elements into an array of {out.size}")


def read_exactly(path: Path, offset: int, out: np.ndarray, tensor: str | None = None) -> None:
    """Fill the C-contiguous ``out`` with the bytes of ``path`` from ``offset``.

    Positional reads release the GIL (a thread reading ahead does not stall the thread
    computing, as a populating mmap does) and copy into memory the caller reuses.
    """
    if not out.flags.c_contiguous:  # reshape would copy, and the bytes land in the copy
        raise ValueError(f"{tensor}: reading into an array that is not C-contiguous")
    view = memoryview(out.reshape(-1).view(np.uint8))
    remote.ensure(path, offset, offset + len(view), tensor)
    fd = os.open(path, os.O_RDONLY)
    try:
        done = 0
        while done < len(view):
            n = os.preadv(fd, [view[done:]], offset + done)
            if n == 0:
                raise CheckpointError(
                    path, f"file ends at byte {offset + done}, inside tensor data", tensor
                )
            done += n
    finally:
        os.close(fd)
