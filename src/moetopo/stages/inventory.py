"""The inventory stage: the shards' header rows -> one classified row per tensor, and
model.json."""

from __future__ import annotations

from itertools import chain
from pathlib import Path

from moetopo.checkpoint.header import (
    TensorEntry,
    entries_from_columns,
    entry_columns,
    gc_paused,
)
from moetopo.checkpoint.layout import ModelLayout, build_layout
from moetopo.checkpoint.shards import checkpoint_from_entries, list_shards
from moetopo.checkpoint.summary import model_summary


@gc_paused()
def merge_inventory(
    model_path: str | Path,
    frames: list[tuple[dict[str, list], dict]],
    family: str | None = None,
    include_embeddings: bool = True,
) -> tuple[dict[str, list], dict, ModelLayout]:
    """Check the shards against the index, classify every tensor, summarise the model."""
    entries = chain.from_iterable(entries_from_columns(columns) for columns, _ in frames)
    shards = {meta["shard"]: (meta["file_size"], meta["digest"]) for _, meta in frames}
    checkpoint = checkpoint_from_entries(list_shards(model_path), entries, shards)
    layout = build_layout(checkpoint, family=family, include_embeddings=include_embeddings)
    return inventory_frame(checkpoint.tensors, layout), model_summary(checkpoint, layout), layout


def inventory_frame(tensors: dict[str, TensorEntry], layout: ModelLayout) -> dict[str, list]:
    """Inventory columns: one row per stored tensor, scale companions included."""
    owner = {lt.data.name: lt.name for lt in layout.logical.values()}
    owner.update({lt.scale.name: lt.name for lt in layout.logical.values() if lt.scale})
    columns = entry_columns(tensors.values())
    columns |= {k: [] for k in ("layer", "role", "expert", "fused", "part", "logical", "mtp")}
    for name in tensors:
        logical = owner[name]
        role = layout.roles[logical]
        is_scale = name != layout.logical[logical].data.name
        template = role.template
        columns["layer"].append(role.layer)
        columns["role"].append("scale" if is_scale else role.role)
        columns["expert"].append(role.expert)
        columns["fused"].append(bool(template and (template.fused or template.flat)))
        columns["part"].append("scale" if is_scale else (template.part if template else "weight"))
        columns["logical"].append(logical)
        columns["mtp"].append(role.mtp)
    return columns
