"""safetensors element types and the dequantisers moetopo supports.

numpy cannot represent BF16 or FP8, so element types come from ml_dtypes; every
read ends as float32 (or float64 on request) after block scales are applied.
"""

from __future__ import annotations

from dataclasses import dataclass

import ml_dtypes
import numpy as np

from moetopo.checkpoint.logical import MXFP4_BLOCK


@dataclass(frozen=True)
class ElementType:
    """One safetensors dtype: its numpy element type and whether it holds weights."""

    name: str
    numpy: np.dtype
    floating: bool

    @property
    def itemsize(self) -> int:
        return self.numpy.itemsize


def _et(name: str, dtype, floating: bool) -> ElementType:
    return ElementType(name, np.dtype(dtype), floating)


ELEMENT_TYPES: dict[str, ElementType] = {
    t.name: t
    for t in (
        _et("F64", np.float64, True),
        _et("F32", np.float32, True),
        _et("F16", np.float16, True),
        _et("BF16", ml_dtypes.bfloat16, True),
        _et("F8_E4M3", ml_dtypes.float8_e4m3fn, True),
        _et("F8_E5M2", ml_dtypes.float8_e5m2, True),
        _et("F8_E8M0", ml_dtypes.float8_e8m0fnu, True),
        _et("BOOL", np.bool_, False),
        _et("U8", np.uint8, False),
        _et("I8", np.int8, False),
        _et("U16", np.uint16, False),
        _et("I16", np.int16, False),
        _et("U32", np.uint32, False),
        _et("I32", np.int32, False),
        _et("U64", np.uint64, False),
        _et("I64", np.int64, False),
    )
}

# FP4 E2M1 code points in nibble order (OCP Microscaling spec); low nibble first.
_FP4_VALUES = np.array(
    [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0],
    dtype=np.float32,
)
_E8M0_BIAS = 127


def dequantize_mxfp4(blocks: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """Unpack MXFP4 ``blocks[..., G, 16]`` (uint8) with ``scales[..., G]`` (E8M0) to float32.

    Returns ``[..., G * 32]``: each byte holds two FP4 values, low nibble first, and
    each group of 32 values shares the power-of-two scale ``2**(scale - 127)``.
    """
    if blocks.shape[:-1] != scales.shape or blocks.shape[-1] * 2 != MXFP4_BLOCK:
        raise ValueError(
            f"MXFP4 blocks {blocks.shape} and scales {scales.shape} do not pair up "
            f"(expected blocks [..., G, {MXFP4_BLOCK // 2}] and scales [..., G])"
        )
    out = np.empty(blocks.shape[:-1] + (MXFP4_BLOCK,), dtype=np.float32)
    out[..., 0::2] = _FP4_VALUES[blocks & 0x0F]
    out[..., 1::2] = _FP4_VALUES[blocks >> 4]
    exponent = scales.view(np.uint8).astype(np.int32) - _E8M0_BIAS
    out = np.ldexp(out, exponent[..., None])
    return out.reshape(blocks.shape[:-2] + (blocks.shape[-2] * MXFP4_BLOCK,))


def apply_block_scales(
    values: np.ndarray, scale_inv: np.ndarray, block: tuple[int, int], row_offset: int = 0
) -> np.ndarray:
    """Multiply FP8 ``values[..., R, C]`` by per-block ``scale_inv`` in place and return it.

    ``scale_inv[..., r // block_r, c // block_c]`` scales element (r, c) (DeepSeek-V3 and
    Kimi-K2 ship 128 x 128 blocks). ``row_offset`` is the absolute row of ``values[..., 0, :]``
    within the full tensor, so that a row slice meets the right scale rows; the caller
    passes only the scale rows covering the slice, starting at ``row_offset // block_r``.
    """
    block_r, block_c = block
    rows, cols = values.shape[-2:]
    r_index = (np.arange(rows) + row_offset) // block_r - row_offset // block_r
    c_index = np.arange(cols) // block_c
    scales = scale_inv.astype(np.float32, copy=False)
    values *= scales[..., r_index[:, None], c_index[None, :]]
    return values


def _fp8_table(dtype) -> np.ndarray:
    """The float32 value of each of the 256 codes of an FP8 type."""
    return np.arange(256, dtype=np.uint8).view(dtype).astype(np.float32)


_WIDEN_TABLES = {
    np.dtype(t): _fp8_table(t) for t in (ml_dtypes.float8_e4m3fn, ml_dtypes.float8_e5m2)
}


def widen_into(out: np.ndarray, values: np.ndarray) -> np.ndarray:
    """``values`` converted exactly into the float32 (or float64) ``out`` and returned.

    BF16 is the top half of a float32, so it widens by a 16-bit shift and FP8 by a
    256-entry table: one vectorised pass each, 2-3 times faster than the generic casts
    (ml_dtypes' element-by-element loops).
    """
    if values.dtype == ml_dtypes.bfloat16 and out.dtype == np.float32:
        np.left_shift(values.view(np.uint16), 16, out=out.view(np.uint32), dtype=np.uint32)
    elif values.dtype in _WIDEN_TABLES:
        np.take(_WIDEN_TABLES[values.dtype], values.view(np.uint8), out=out)
    else:
        np.copyto(out, values, casting="unsafe")
    return out
