"""The inventory stage: shard headers -> one row per tensor, and model.json."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..io.checkpoint import ShardList, assemble_checkpoint, list_shards
from ..io.header import ShardHeader, TensorEntry, read_shard_header
from ..layout import ModelLayout, build_layout


def shard_rows(model_path: str | Path, shard: str) -> tuple[pd.DataFrame, dict]:
    """One shard's header as rows, plus its size and header digest."""
    listing = list_shards(model_path)
    header = read_shard_header(listing.root / shard, shard)
    rows = pd.DataFrame(
        {
            "tensor": list(header.tensors),
            "shard": shard,
            "dtype": [e.dtype for e in header.tensors.values()],
            "shape": [list(e.shape) for e in header.tensors.values()],
            "offset_begin": [e.begin for e in header.tensors.values()],
            "offset_end": [e.end for e in header.tensors.values()],
        }
    )
    return rows, {"shard": shard, "file_size": header.file_size, "digest": header.digest}


def headers_from_rows(frames: list[tuple[pd.DataFrame, dict]]) -> dict[str, ShardHeader]:
    """Rebuild shard headers from per-shard rows (the merge job never reopens the shards)."""
    headers = {}
    for frame, meta in frames:
        shard = meta["shard"]
        tensors = {
            row.tensor: TensorEntry(
                row.tensor,
                shard,
                row.dtype,
                tuple(int(d) for d in row.shape),
                int(row.offset_begin),
                int(row.offset_end),
            )
            for row in frame.itertuples(index=False)
        }
        headers[shard] = ShardHeader(shard, meta["file_size"], 0, tensors, {}, meta["digest"])
    return headers


def merge_inventory(
    model_path: str | Path,
    frames: list[tuple[pd.DataFrame, dict]],
    family: str | None = None,
    include_embeddings: bool = True,
) -> tuple[pd.DataFrame, dict, ModelLayout]:
    """Check the shards against the index, classify every tensor, summarise the model."""
    listing: ShardList = list_shards(model_path)
    headers = headers_from_rows(frames)
    absent = sorted(set(listing.shards) - set(headers))
    if absent:
        raise ValueError(f"{model_path}: no header rows for shards {absent}")
    checkpoint = assemble_checkpoint(listing, headers)
    layout = build_layout(checkpoint, family=family, include_embeddings=include_embeddings)
    return inventory_frame(checkpoint.tensors, layout), model_summary(checkpoint, layout), layout


def inventory_frame(tensors: dict[str, TensorEntry], layout: ModelLayout) -> pd.DataFrame:
    owner = {lt.scale.name: lt.name for lt in layout.logical.values() if lt.scale is not None}
    owner.update({lt.data.name: lt.name for lt in layout.logical.values()})
    rows = []
    for name, entry in tensors.items():
        logical = owner[name]
        role = layout.roles[logical]
        is_scale = name != layout.logical[logical].data.name
        template = role.template
        rows.append(
            {
                "tensor": name,
                "shard": entry.shard,
                "dtype": entry.dtype,
                "shape": list(entry.shape),
                "offset_begin": entry.begin,
                "offset_end": entry.end,
                "layer": role.layer,
                "role": "scale" if is_scale else role.role,
                "expert": role.expert,
                "fused": bool(template and (template.fused or template.flat)),
                "part": "scale" if is_scale else (template.part if template else "weight"),
                "logical": logical,
                "mtp": role.mtp,
            }
        )
    frame = pd.DataFrame(rows)
    for column in ("layer", "expert"):
        frame[column] = frame[column].astype("Int64")
    return frame


def model_summary(checkpoint, layout: ModelLayout) -> dict:
    """model.json: what the model is, which layers are MoE, how many parameters a token uses."""
    return {
        "path": str(checkpoint.root),
        "family": layout.family,
        "detected_by": layout.detected_by,
        "architecture": layout.architecture,
        "n_layers": layout.n_layers,
        "stacks": layout.stacks,
        "moe_layers": layout.moe_layers,
        "dense_layers": layout.dense_layers,
        "mtp_layers": layout.mtp_layers,
        "n_experts": layout.n_experts,
        "top_k": layout.top_k,
        "n_shared_experts": layout.n_shared_experts,
        "hidden_size": layout.hidden_size,
        "routing": layout.routing,
        "activation": layout.activation,
        **layout.params,
        "dtypes": layout.dtypes,
        "layers": {
            str(layer): {
                "n_experts": m.n_experts,
                "top_k": m.top_k,
                "router": m.router,
                "router_bias": m.router_bias,
                "expert_layout": {
                    role: ("fused" if t.fused else "per_expert") + f":{t.orientation}"
                    for role, t in sorted(m.experts.items())
                },
                "shared": sorted(m.shared),
                "shared_router": m.shared_router,
                "expert_params": m.expert_params,
            }
            for layer, m in sorted(layout.layers.items())
        },
        "shards": [
            {
                "name": s,
                "bytes": checkpoint.headers[s].file_size,
                "digest": checkpoint.headers[s].digest,
            }
            for s in checkpoint.shards
        ],
        "total_bytes": checkpoint.total_bytes,
        "warnings": layout.warnings,
    }
