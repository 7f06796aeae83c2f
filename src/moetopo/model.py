"""Opening a model for a stage: verified headers, classified layout, byte-range reader."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .artefacts import read_columns
from .io.checkpoint import Checkpoint, checkpoint_from_entries, list_shards, open_checkpoint
from .io.header import ENTRY_COLUMNS, entries_from_columns
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
    return OpenModel(checkpoint, layout, TensorReader(checkpoint, layout.logical))


def checkpoint_from_inventory(path: str | Path, inventory: str | Path) -> Checkpoint:
    """The verified checkpoint as the inventory recorded it (rows are all scale-inclusive)."""
    columns, meta = read_columns(inventory, ENTRY_COLUMNS)
    shards = {s["name"]: (s["bytes"], s["digest"]) for s in meta["shards"]}
    entries = entries_from_columns(columns)
    return checkpoint_from_entries(list_shards(path), entries, shards)
