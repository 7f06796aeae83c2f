"""Opening a model for a stage: verified headers, classified layout, byte-range reader."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from moetopo.checkpoint.layout import ModelLayout, build_layout
from moetopo.checkpoint.reader import TensorReader
from moetopo.checkpoint.shards import Checkpoint, open_checkpoint


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
    checkpoint: Checkpoint | None = None,
) -> OpenModel:
    """Open ``path``, parsing every shard header, or from ``checkpoint`` when the caller
    already has it (a stage rebuilds it from the inventory artefact, which matters for
    checkpoints with hundreds of shards)."""
    if checkpoint is None:
        checkpoint = open_checkpoint(path)
    layout = build_layout(checkpoint, family=family or None, include_embeddings=include_embeddings)
    return OpenModel(checkpoint, layout, TensorReader(checkpoint, layout.logical))
