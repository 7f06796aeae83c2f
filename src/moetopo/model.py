"""Opening a model for a stage: verified headers, classified layout, byte-range reader."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .artefacts import read_columns
from .io.checkpoint import Checkpoint, assemble_checkpoint, list_shards, open_checkpoint
from .io.header import ShardHeader, TensorEntry
from .io.reader import TensorReader
from .layout import ModelLayout, build_layout


@dataclass
class OpenModel:
    """A checkpoint ready for reading: what its tensors are and how to read them."""

    checkpoint: Checkpoint
    layout: ModelLayout
    reader: TensorReader


def open_model(
    path: str | Path,
    family: str | None = None,
    include_embeddings: bool = True,
    inventory: str | Path | None = None,
) -> OpenModel:
    """Open ``path``; with ``inventory`` (the inventory stage's artefact) skip re-parsing
    every shard header, which matters for checkpoints with hundreds of shards."""
    if inventory is not None:
        checkpoint = checkpoint_from_inventory(path, inventory)
    else:
        checkpoint = open_checkpoint(path)
    layout = build_layout(checkpoint, family=family or None, include_embeddings=include_embeddings)
    return OpenModel(checkpoint, layout, TensorReader(checkpoint))


def checkpoint_from_inventory(path: str | Path, inventory: str | Path) -> Checkpoint:
    """The verified checkpoint as the inventory recorded it (rows are all scale-inclusive)."""
    columns, meta = read_columns(inventory)
    listing = list_shards(path)
    by_shard: dict[str, dict[str, TensorEntry]] = {s: {} for s in listing.shards}
    for name, shard, dtype, shape, begin, end in zip(
        columns["tensor"],
        columns["shard"],
        columns["dtype"],
        columns["shape"],
        columns["offset_begin"],
        columns["offset_end"],
        strict=True,
    ):
        by_shard.setdefault(shard, {})[name] = TensorEntry(
            name, shard, dtype, tuple(shape), begin, end
        )
    shards = {s["name"]: s for s in meta.get("shards", [])}
    headers = {
        s: ShardHeader(
            s, shards.get(s, {}).get("bytes", 0), 0, t, {}, shards.get(s, {}).get("digest", "")
        )
        for s, t in by_shard.items()
    }
    return assemble_checkpoint(listing, headers)
