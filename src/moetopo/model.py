"""Opening a model for a stage: verified headers, classified layout, byte-range reader."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .io.checkpoint import Checkpoint, open_checkpoint
from .io.reader import TensorReader
from .layout import ModelLayout, build_layout


@dataclass
class OpenModel:
    """A checkpoint ready for reading: what its tensors are and how to read them."""

    checkpoint: Checkpoint
    layout: ModelLayout
    reader: TensorReader


def open_model(
    path: str | Path, family: str | None = None, include_embeddings: bool = True
) -> OpenModel:
    checkpoint = open_checkpoint(path)
    layout = build_layout(checkpoint, family=family or None, include_embeddings=include_embeddings)
    return OpenModel(checkpoint, layout, TensorReader(checkpoint))
