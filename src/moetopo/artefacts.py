"""Writing and reading stage artefacts: Parquet with explicit schemas, written atomically.

Every artefact carries the package version, the stage, its parameters and any
warnings in the file metadata, has its rows sorted, and appears under its final
name only once complete (temporary file, fsync, rename), so a killed job never
leaves a file that looks finished.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from . import __version__

META_KEY = b"moetopo"
F32, F64, I64, STR, BOOL = pa.float32(), pa.float64(), pa.int64(), pa.string(), pa.bool_()

SCHEMAS: dict[str, list[tuple[str, pa.DataType]]] = {
    "shard_header": [
        ("tensor", STR),
        ("shard", STR),
        ("dtype", STR),
        ("shape", pa.list_(I64)),
        ("offset_begin", I64),
        ("offset_end", I64),
    ],
    "inventory": [
        ("tensor", STR),
        ("shard", STR),
        ("dtype", STR),
        ("shape", pa.list_(I64)),
        ("offset_begin", I64),
        ("offset_end", I64),
        ("layer", I64),
        ("role", STR),
        ("expert", I64),
        ("fused", BOOL),
        ("part", STR),
        ("logical", STR),
        ("mtp", BOOL),
    ],
    "gates": [
        ("layer", I64),
        ("expert", I64),
        ("weight", pa.list_(F32)),
        ("bias", F32),
        ("selection_bias", F32),
        ("norm", F64),
        ("finite", BOOL),
    ],
}


def schema(name: str) -> pa.Schema:
    return pa.schema(SCHEMAS[name])


@contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path beside ``path``; rename it into place only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_table(
    frame: pd.DataFrame,
    path: str | Path,
    kind: str,
    *,
    sort_by: Iterable[str] = (),
    stage: str | None = None,
    params: dict | None = None,
    warnings: Iterable[str] = (),
    extra: dict | None = None,
) -> None:
    """Write ``frame`` as artefact ``kind`` (a key of SCHEMAS) to ``path`` atomically."""
    target = schema(kind)
    missing = [c for c in target.names if c not in frame.columns]
    unknown = [c for c in frame.columns if c not in target.names]
    if missing or unknown:
        raise ValueError(f"{kind}: columns missing {missing}, not in schema {unknown}")
    sort_by = list(sort_by)
    if sort_by and len(frame):
        frame = frame.sort_values(sort_by, kind="stable")
    table = pa.Table.from_pandas(frame[target.names], schema=target, preserve_index=False)
    meta = {
        "version": __version__,
        "artefact": kind,
        "stage": stage or kind,
        "params": params or {},
        "warnings": list(warnings),
        **(extra or {}),
    }
    table = table.replace_schema_metadata(
        {META_KEY: json.dumps(meta, sort_keys=True, default=str).encode()}
    )
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")


def read_table(path: str | Path) -> tuple[pd.DataFrame, dict]:
    """An artefact as a DataFrame, and its moetopo metadata."""
    table = pq.read_table(path)
    meta = json.loads((table.schema.metadata or {}).get(META_KEY, b"{}"))
    return table.to_pandas(), meta


def write_json(data: dict, path: str | Path) -> None:
    """Write a JSON artefact atomically, keys sorted so reruns give identical bytes."""
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
