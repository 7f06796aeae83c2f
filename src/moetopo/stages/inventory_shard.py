"""The inventory_shard stage: one shard's header as rows, read once per shard."""

from __future__ import annotations

from pathlib import Path

from moetopo.checkpoint.header import entry_columns, read_shard_header


def shard_rows(shard_path: str | Path) -> tuple[dict[str, list], dict]:
    """One shard's header as columns, plus its name, size and header digest."""
    shard_path = Path(shard_path)
    header = read_shard_header(shard_path, shard_path.name)
    meta = {"shard": header.shard, "file_size": header.file_size, "digest": header.digest}
    return entry_columns(header.tensors.values()), meta
