"""The inventory stage: shard headers -> one row per tensor, and model.json."""

from __future__ import annotations

from pathlib import Path

from ..inspect import model_summary
from ..io.checkpoint import ShardList, assemble_checkpoint, list_shards
from ..io.header import ShardHeader, TensorEntry, read_shard_header
from ..layout import ModelLayout, build_layout


def shard_rows(shard_path: str | Path) -> tuple[dict[str, list], dict]:
    """One shard's header as columns, plus its name, size and header digest."""
    shard_path = Path(shard_path)
    header = read_shard_header(shard_path, shard_path.name)
    entries = list(header.tensors.values())
    rows = {
        "tensor": [e.name for e in entries],
        "shard": [e.shard for e in entries],
        "dtype": [e.dtype for e in entries],
        "shape": [list(e.shape) for e in entries],
        "offset_begin": [e.begin for e in entries],
        "offset_end": [e.end for e in entries],
    }
    return rows, {"shard": header.shard, "file_size": header.file_size, "digest": header.digest}


def headers_from_rows(frames: list[tuple[dict[str, list], dict]]) -> dict[str, ShardHeader]:
    """Rebuild shard headers from per-shard columns (the merge job never reopens the shards)."""
    headers = {}
    for columns, meta in frames:
        shard = meta["shard"]
        tensors = {
            name: TensorEntry(name, shard, dtype, tuple(shape), begin, end)
            for name, dtype, shape, begin, end in zip(
                columns["tensor"],
                columns["dtype"],
                columns["shape"],
                columns["offset_begin"],
                columns["offset_end"],
                strict=True,
            )
        }
        headers[shard] = ShardHeader(shard, meta["file_size"], 0, tensors, {}, meta["digest"])
    return headers


def merge_inventory(
    model_path: str | Path,
    frames: list[tuple[dict[str, list], dict]],
    family: str | None = None,
    include_embeddings: bool = True,
) -> tuple[dict[str, list], dict, ModelLayout]:
    """Check the shards against the index, classify every tensor, summarise the model."""
    listing: ShardList = list_shards(model_path)
    headers = headers_from_rows(frames)
    absent = sorted(set(listing.shards) - set(headers))
    if absent:
        raise ValueError(f"{model_path}: no header rows for shards {absent}")
    checkpoint = assemble_checkpoint(listing, headers)
    layout = build_layout(checkpoint, family=family, include_embeddings=include_embeddings)
    return inventory_frame(checkpoint.tensors, layout), model_summary(checkpoint, layout), layout


def inventory_frame(tensors: dict[str, TensorEntry], layout: ModelLayout) -> dict[str, list]:
    """Inventory columns: one row per stored tensor, scale companions included."""
    owner = {lt.data.name: lt.name for lt in layout.logical.values()}
    owner.update({lt.scale.name: lt.name for lt in layout.logical.values() if lt.scale})
    columns: dict[str, list] = {
        k: []
        for k in (
            "tensor",
            "shard",
            "dtype",
            "shape",
            "offset_begin",
            "offset_end",
            "layer",
            "role",
            "expert",
            "fused",
            "part",
            "logical",
            "mtp",
        )
    }
    for name, entry in tensors.items():
        logical = owner[name]
        role = layout.roles[logical]
        is_scale = name != layout.logical[logical].data.name
        template = role.template
        columns["tensor"].append(name)
        columns["shard"].append(entry.shard)
        columns["dtype"].append(entry.dtype)
        columns["shape"].append(list(entry.shape))
        columns["offset_begin"].append(entry.begin)
        columns["offset_end"].append(entry.end)
        columns["layer"].append(role.layer)
        columns["role"].append("scale" if is_scale else role.role)
        columns["expert"].append(role.expert)
        columns["fused"].append(bool(template and (template.fused or template.flat)))
        columns["part"].append("scale" if is_scale else (template.part if template else "weight"))
        columns["logical"].append(logical)
        columns["mtp"].append(role.mtp)
    return columns
