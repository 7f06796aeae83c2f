"""Which rows of which tensors are a layer's q, k, v and o projections, in every family.

The attention diff compares weights row by row, and a row is an output unit of a
projection, so each projection is a set of rows of one or more stored tensors:

- separate projections (Llama-style ``q_proj`` ... ``o_proj``, GGUF ``attn_q``,
  ``attn_k``, ``attn_v``, ``attn_output``, GQA with fewer k/v rows): all rows of the
  tensor whose role is ``attn_q`` / ``attn_k`` / ``attn_v`` / ``attn_o``.
- fused q/k/v (phi-style ``qkv_proj``, DBRX ``Wqkv``, GGUF ``attn_qkv``): the first
  ``n_heads * head_dim`` rows are q, the next ``n_kv_heads * head_dim`` k, the rest v,
  with the head counts from config.json (``num_attention_heads`` /
  ``num_key_value_heads`` / ``head_dim``; DBRX ``n_heads`` / ``attn_config.kv_n_heads`` /
  ``d_model``; GGUF ``<arch>.attention.head_count[_kv]``). MiniMax's lightning
  attention packs q, k, v per head (``[q_h, k_h, v_h]`` blocks of ``head_dim`` rows).
- DeepSeek multi-head latent attention (MLA), whose low-rank factors have no plain
  q/k/v, maps as follows (rows of the stored [out, in] matrices):

  * q := ``q_proj`` (no q LoRA, V2-Lite), or the rows of ``q_a_proj`` plus the rows of
    ``q_b_proj`` (GGUF ``attn_q``, ``attn_q_a``, ``attn_q_b``);
  * k := the rows of ``kv_a_proj_with_mqa`` (the shared latent and the rope key; GGUF
    ``attn_kv_a_mqa``) plus, in ``kv_b_proj`` ([heads * (nope + v), kv_lora]), the first
    ``qk_nope_head_dim`` rows of each head (GGUF ``attn_k_b``);
  * v := the remaining ``v_head_dim`` rows of each head of ``kv_b_proj`` (GGUF ``attn_v_b``);
  * o := ``o_proj``.

Only weight matrices are compared; biases and ``attn_other`` tensors (sinks, gates,
state-space and convolution mixers) are not, and a layer without any q/k/v/o
(a Mamba or convolution layer) simply has no rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from moetopo.checkpoint.layout import ModelLayout
from moetopo.errors import CheckpointError
from moetopo.families.moe_rules import config_int

PROJECTIONS = ("q", "k", "v", "o")
_SEPARATE = {"attn_q": "q", "attn_k": "k", "attn_v": "v", "attn_o": "o"}
_MAPPED_ROLES = (*_SEPARATE, "attn_qkv", "attn_kv")
_PER_HEAD_QKV = {"minimax"}  # q, k, v interleaved per head in qkv_proj

_HEADS = ["num_attention_heads", "n_heads", "*.attention.head_count"]
_KV_HEADS = ["num_key_value_heads", "attn_config.kv_n_heads", "*.attention.head_count_kv"]
_HIDDEN = ["hidden_size", "d_model", "*.embedding_length"]
_HEAD_DIM = ["head_dim"]
_NOPE = ["qk_nope_head_dim"]
_V_DIM = ["v_head_dim", "*.attention.value_length_mla", "*.attention.value_length"]
_KEY_LENGTH = ["*.attention.key_length_mla", "*.attention.key_length"]
_ROPE = ["qk_rope_head_dim", "*.rope.dimension_count"]


@dataclass(frozen=True)
class RowSplit:
    """How the rows of one tensor divide among projections.

    Rows are counted flat over all but the last axis; ``segments`` are
    ``(start, stop, projection)`` ranges of a pattern that repeats every ``period`` rows
    (a whole tensor is one period; MLA's ``kv_b_proj`` repeats per head).
    """

    tensor: str
    layer: int
    rows: int
    cols: int
    segments: tuple[tuple[int, int, str], ...]
    period: int


def attention_splits(layout: ModelLayout, config: dict, layers: list[int]) -> list[RowSplit]:
    """The q/k/v/o row splits of ``layers``, in layer then tensor-name order."""
    wanted = set(layers)
    found = [
        r
        for r in layout.roles.values()
        if r.role in _MAPPED_ROLES
        and r.layer in wanted
        and not r.mtp
        and r.template is not None
        and r.template.part == "weight"
        and len(layout.logical[r.name].shape) >= 2
    ]
    found.sort(key=lambda r: (r.layer, r.name))
    return [_split(layout, config, r.name, r.role, r.layer) for r in found]


def unmapped_attention(layout: ModelLayout, layers: list[int]) -> list[str]:
    """Attention tensors of ``layers`` that the diff does not compare (``attn_other``)."""
    wanted = set(layers)
    return sorted(
        r.name
        for r in layout.roles.values()
        if r.role == "attn_other" and r.layer in wanted and not r.mtp
    )


def _split(layout: ModelLayout, config: dict, name: str, role: str, layer: int) -> RowSplit:
    shape = layout.logical[name].shape
    rows, cols = math.prod(shape[:-1]), shape[-1]
    if role in _SEPARATE:
        segments, period = ((0, rows, _SEPARATE[role]),), rows
    elif role == "attn_qkv":
        segments, period = _fused_qkv(layout, config, name, rows)
    else:
        segments, period = _mla_kv(layout, config, name, rows)
    return RowSplit(name, layer, rows, cols, segments, period)


def _heads(layout: ModelLayout, config: dict, name: str) -> tuple[int, int, int]:
    """(n_heads, n_kv_heads, head_dim) from config.json, or a clear error."""
    heads = config_int(config, _HEADS)
    hidden = config_int(config, _HIDDEN)
    if heads is None or (hidden is None and config_int(config, _HEAD_DIM) is None):
        raise CheckpointError(
            layout.root,
            "cannot split fused q/k/v: config.json gives no head count "
            f"({' / '.join(_HEADS)}) or no hidden size ({' / '.join(_HIDDEN)})",
            tensor=name,
        )
    kv = config_int(config, _KV_HEADS) or heads
    head_dim = config_int(config, _HEAD_DIM) or hidden // heads
    return heads, kv, head_dim


def _fused_qkv(layout: ModelLayout, config: dict, name: str, rows: int):
    heads, kv, head_dim = _heads(layout, config, name)
    if layout.family in _PER_HEAD_QKV and rows == 3 * heads * head_dim:
        d = head_dim
        return ((0, d, "q"), (d, 2 * d, "k"), (2 * d, 3 * d, "v")), 3 * d
    q, k = heads * head_dim, kv * head_dim
    if rows != q + 2 * k:
        raise CheckpointError(
            layout.root,
            f"fused q/k/v has {rows} rows but config.json gives {heads} heads and {kv} "
            f"key/value heads of dimension {head_dim} ({q + 2 * k} rows)",
            tensor=name,
        )
    return ((0, q, "q"), (q, q + k, "k"), (q + k, rows, "v")), rows


def _mla_kv(layout: ModelLayout, config: dict, name: str, rows: int):
    """kv_b_proj per head: nope key rows, then value rows (GGUF k_b / v_b are whole)."""
    if name.startswith("blk.") and ".attn_k_b." in name:
        return ((0, rows, "k"),), rows
    if name.startswith("blk.") and ".attn_v_b." in name:
        return ((0, rows, "v"),), rows
    heads = config_int(config, _HEADS)
    nope = config_int(config, _NOPE)
    if nope is None and config_int(config, _KEY_LENGTH) is not None and config_int(config, _ROPE):
        nope = config_int(config, _KEY_LENGTH) - config_int(config, _ROPE)
    if heads is None or nope is None or rows % heads:
        raise CheckpointError(
            layout.root,
            "cannot split MLA kv_b_proj into key and value rows: config.json needs the "
            f"head count ({' / '.join(_HEADS)}) and qk_nope_head_dim",
            tensor=name,
        )
    period = rows // heads
    v_dim = config_int(config, _V_DIM) or period - nope
    if nope + v_dim != period:
        raise CheckpointError(
            layout.root,
            f"kv_b_proj has {period} rows per head but qk_nope_head_dim {nope} + "
            f"v_head_dim {v_dim} = {nope + v_dim}",
            tensor=name,
        )
    return ((0, nope, "k"), (nope, period, "v")), period
