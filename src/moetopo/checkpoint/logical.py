"""Logical tensors: what a model means by a weight, folded from header entries.

A logical tensor is a plain tensor, an FP8 tensor with its ``*_scale_inv`` /
``*_scale`` companion, an MXFP4 pair ``X_blocks`` + ``X_scales``, or a GGUF tensor of a
GGML block-quantised type (``Q4_K``, ...). Header-only like :mod:`.header` (no numpy), so
``moetopo inspect`` starts fast.
"""

from __future__ import annotations

import math
from typing import NamedTuple

from moetopo.checkpoint.header import ITEMSIZE, TensorEntry

FP8_TYPES = frozenset({"F8_E4M3", "F8_E5M2"})
MXFP4_BLOCK = 32  # values per shared E8M0 scale; 16 bytes of packed nibbles


class LogicalTensor(NamedTuple):
    """A weight as the model uses it, with the physical tensors that encode it."""

    name: str
    kind: str  # "plain" | "fp8" | "mxfp4" | "ggml"
    data: TensorEntry
    scale: TensorEntry | None
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.data.nbytes + (self.scale.nbytes if self.scale else 0)


def logical_tensors(tensors: dict[str, TensorEntry]) -> dict[str, LogicalTensor]:
    """Fold scale companions and MXFP4 block/scale pairs into logical tensors."""
    out: dict[str, LogicalTensor] = {}
    companions: set[str] = set()
    get = tensors.get
    for name, entry in tensors.items():
        dtype = entry.dtype
        if dtype in FP8_TYPES:
            scale = get(name + "_scale_inv") or get(name + "_scale")
            if scale is not None:
                companions.add(scale.name)
            out[name] = LogicalTensor(name, "fp8", entry, scale, entry.shape)
        elif dtype == "U8" and name.endswith("_blocks") and name[:-7] + "_scales" in tensors:
            stem = name[:-7]
            scales = tensors[stem + "_scales"]
            shape = entry.shape[:-2] + (entry.shape[-2] * MXFP4_BLOCK,)
            out[stem] = LogicalTensor(stem, "mxfp4", entry, scales, shape)
            companions.add(scales.name)
        elif dtype not in ITEMSIZE:  # a GGML block type: only a GGUF header admits one
            out[name] = LogicalTensor(name, "ggml", entry, None, entry.shape)
        else:
            out[name] = LogicalTensor(name, "plain", entry, None, entry.shape)
    if companions:
        out = {name: lt for name, lt in out.items() if name not in companions}
    return out
