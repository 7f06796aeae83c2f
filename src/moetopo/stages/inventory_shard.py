"""The inventory_shard stage: one shard's header as rows, read once per shard."""

from __future__ import annotations

from pathlib import Path

from moetopo.checkpoint import remote
from moetopo.checkpoint.header import entry_columns, read_shard_header


def shard_rows(model_path: str | Path, shard: str) -> tuple[dict[str, list], dict]:
    """One shard's header as columns, plus its name, size and header digest (and, for a
    remote model, where it came from)."""
    if remote.is_remote(model_path):
        shard_path = remote.mirror(model_path).root / shard
    else:
        model_path = Path(model_path)
        shard_path = (model_path.parent if model_path.is_file() else model_path) / shard
    header = read_shard_header(shard_path, shard)
    meta = {"shard": header.shard, "file_size": header.file_size, "digest": header.digest}
    return entry_columns(header.tensors.values()), meta | (remote.provenance(shard_path) or {})
