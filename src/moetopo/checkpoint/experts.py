"""One expert's weights in canonical form, and what it computes.

Whatever the layout (per-expert tensors, fused [E, out, in] or [E, in, out], gate
and up as halves or interleaved, experts flattened into rows), an expert becomes
gate [I, H], up [I, H], down [H, I] in nn.Linear orientation, plus optional biases.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moetopo.checkpoint.layout import ExpertTensor, MoELayer
from moetopo.checkpoint.reader import TensorReader

GPT_OSS_ALPHA = 1.702


@dataclass
class ExpertWeights:
    """A routed expert: ``gate`` is None for non-gated MLPs (Switch, NLLB)."""

    up: np.ndarray
    down: np.ndarray
    gate: np.ndarray | None = None
    up_bias: np.ndarray | None = None
    down_bias: np.ndarray | None = None
    gate_bias: np.ndarray | None = None

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in vars(self).values() if a is not None)


def _matrix(reader: TensorReader, tensor: ExpertTensor, expert: int, dtype) -> np.ndarray:
    name, lead, row0 = tensor.locate(expert)
    if tensor.fused is not None and not tensor.flat:
        values = reader.read(name, lead, dtype=dtype)
    else:
        values = reader.read(name, lead, (row0, row0 + tensor.shape[0]), dtype=dtype)
    if values.ndim == 2 and tensor.orientation == "in_out":
        values = values.T
    return values


def _split(values: np.ndarray, packing: str) -> tuple[np.ndarray, np.ndarray]:
    """(gate, up) halves of a fused gate_up array along its first axis."""
    if packing == "interleaved":
        return values[0::2], values[1::2]
    half = values.shape[0] // 2
    return values[:half], values[half:]


def read_expert(
    reader: TensorReader, moe: MoELayer, expert: int, dtype=np.float32
) -> ExpertWeights:
    """Expert ``expert`` of ``moe`` in canonical orientation."""
    parts = _parts(reader, moe.experts, expert, dtype)
    parts |= _parts(reader, moe.expert_biases, expert, dtype, suffix="_bias")
    if moe.tied_down and "up" in parts and "down" not in parts:
        parts["down"] = parts["up"].T
    if "up" not in parts or "down" not in parts:
        raise ValueError(f"layer {moe.layer}: expert weights incomplete ({sorted(parts)})")
    return ExpertWeights(**{k: np.ascontiguousarray(v) for k, v in parts.items()})


def read_expert_inputs(
    reader: TensorReader, moe: MoELayer, expert: int, dtype=np.float32
) -> np.ndarray:
    """Expert ``expert``'s input projections stacked, gate rows then up rows [rows, H]:
    every pre-activation it computes from its input. The down projection is not read."""
    inputs = {r: t for r, t in moe.experts.items() if r != "expert_down"}
    parts = _parts(reader, inputs, expert, dtype)
    stacked = [parts[name] for name in ("gate", "up") if name in parts]
    if not stacked:
        raise ValueError(f"layer {moe.layer}: no expert input projection (gate or up) found")
    return np.concatenate(stacked, axis=0)


def _parts(reader: TensorReader, tensors: dict, expert: int, dtype, suffix: str = "") -> dict:
    """Each role's matrix of one expert by its short name (a fused gate_up split in two)."""
    parts: dict[str, np.ndarray] = {}
    for role, tensor in tensors.items():
        values = _matrix(reader, tensor, expert, dtype)
        if role == "expert_gate_up":
            parts["gate" + suffix], parts["up" + suffix] = _split(values, tensor.packing)
        else:
            parts[role.removeprefix("expert_") + suffix] = values
    return parts


def activate(gate, up, activation: str, limit: float | None = None) -> np.ndarray:
    """The hidden activation of one expert, by family convention."""
    if activation == "swiglu":
        return gate / (1.0 + np.exp(-gate)) * up
    if activation == "clamped_swiglu":  # gpt-oss
        limit = 7.0 if limit is None else limit
        gate = np.minimum(gate, limit)
        up = np.clip(up, -limit, limit)
        return gate / (1.0 + np.exp(-GPT_OSS_ALPHA * gate)) * (up + 1.0)
    if activation == "geglu":
        return _gelu(gate) * up
    if activation == "relu":
        return np.maximum(up, 0.0)
    if activation == "relu_output":  # linear hidden layer; the ReLU acts on the output
        return up
    if activation == "gelu":
        return _gelu(up)
    raise ValueError(f"unknown activation {activation!r}")


def _gelu(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + np.tanh(0.7978845608028654 * (x + 0.044715 * x**3)))


def expert_output(
    weights: ExpertWeights, x: np.ndarray, activation: str, limit: float | None = None
) -> np.ndarray:
    """f(x) for tokens x [T, H] -> [T, H]."""
    up = x @ weights.up.T
    if weights.up_bias is not None:
        up += weights.up_bias
    gate = None
    if weights.gate is not None:
        gate = x @ weights.gate.T
        if weights.gate_bias is not None:
            gate += weights.gate_bias
    out = activate(gate, up, activation, limit) @ weights.down.T
    if weights.down_bias is not None:
        out += weights.down_bias
    if activation == "relu_output":  # the toy model of superposition: ReLU(x W W^T + b)
        out = np.maximum(out, 0.0)
    return out


def merged(experts: list[ExpertWeights]) -> ExpertWeights:
    """The expert whose weights are the mean of ``experts`` (how merging compressors merge)."""
    fields = vars(experts[0])
    return ExpertWeights(
        **{
            k: None if v is None else np.mean([vars(e)[k] for e in experts], axis=0)
            for k, v in fields.items()
        }
    )
