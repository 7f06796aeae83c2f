"""Reopening a checkpoint from its inventory artefact: the one way every later stage does.

The inventory stage parsed and cross-checked every shard header; later stages rebuild
the checkpoint from its rows instead of parsing 163 headers again, after checking that
each shard on disk still has the size the inventory recorded.
"""

from __future__ import annotations

import json
import os
from collections.abc import Collection
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from moetopo.artefacts.parquet import META_KEY
from moetopo.checkpoint.header import ENTRY_COLUMNS, entries_from_columns
from moetopo.checkpoint.model import OpenModel, open_model
from moetopo.checkpoint.shards import Checkpoint, checkpoint_from_entries, list_shards
from moetopo.errors import CheckpointError


def checkpoint_from_inventory(
    path: str | Path, inventory: str | Path, logical: Collection[str] | None = None
) -> Checkpoint:
    """The verified checkpoint as the inventory recorded it; with ``logical``, only the
    stored tensors of those logical tensors (the gates stage reads routers only, so its
    cost follows the routers, not the 100k tensors of a large model)."""
    parquet = pq.ParquetFile(inventory)
    columns = list(ENTRY_COLUMNS) if logical is None else [*ENTRY_COLUMNS, "logical"]
    table = parquet.read(columns=columns)
    if logical is not None:
        wanted = pa.array(sorted(logical), pa.string())
        table = table.filter(pc.is_in(table["logical"], value_set=wanted))
    meta = read_shard_records(parquet)
    listing = list_shards(path)
    for shard in listing.shards:
        recorded, found = meta.get(shard, (None,))[0], _size(listing.root / shard)
        if recorded is not None and found != recorded:
            now = "is missing" if found is None else f"is {found} bytes"
            raise CheckpointError(
                listing.root / shard,
                f"shard {now} but the inventory {inventory} recorded {recorded} bytes: "
                "the checkpoint changed since; re-run the inventory",
            )
    entries = entries_from_columns(table.to_pydict())
    return checkpoint_from_entries(listing, entries, meta, complete=logical is None)


def reopen_model(
    path: str | Path, family: str | None, inventory: str | Path, include_embeddings: bool = True
) -> OpenModel:
    """The model as :func:`moetopo.checkpoint.open_model` opens it, from its inventory."""
    checkpoint = checkpoint_from_inventory(path, inventory)
    return open_model(path, family, include_embeddings, checkpoint=checkpoint)


def read_shard_records(parquet: pq.ParquetFile) -> dict[str, tuple[int, str]]:
    """Shard -> (file size, header digest) as the inventory recorded them."""
    meta = json.loads((parquet.metadata.metadata or {}).get(META_KEY, b"{}"))
    return {s["name"]: (s["bytes"], s["digest"]) for s in meta.get("shards", [])}


def _size(path: Path) -> int | None:
    try:
        return os.path.getsize(path)
    except OSError:
        return None
