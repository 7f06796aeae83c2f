"""Writing and reading stage artefacts: Parquet with explicit schemas, written atomically.

Every artefact carries the package version, the stage, its parameters and any
warnings in the file metadata, has its rows sorted, and appears under its final
name only once complete (temporary file, fsync, rename), so a killed job never
leaves a file that looks finished.
"""

from __future__ import annotations

import glob
import json
import os
import tempfile
from collections.abc import Iterable
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from moetopo import __version__
from moetopo.artefacts.registry import SORT_KEYS, schema

META_KEY = b"moetopo"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path beside ``path``; rename it into place only on success.

    Temporary files a killed writer of the same artefact left behind are removed first
    (Snakemake runs one job per output, so none is still being written), and the file
    gets the permissions of the user's umask, as any other tool's output does.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        stale.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_table(
    frame: pd.DataFrame | dict[str, list],
    path: str | Path,
    kind: str,
    *,
    stage: str | None = None,
    params: dict | None = None,
    warnings: Iterable[str] = (),
    extra: dict | None = None,
) -> None:
    """Write ``frame`` (a DataFrame or a dict of columns) as artefact ``kind`` atomically,
    rows in the registry's order."""
    table = _table(frame, kind)
    sort_by = SORT_KEYS[kind]
    if sort_by and table.num_rows:
        order = pc.sort_indices(table.select(sort_by), [(c, "ascending") for c in sort_by])
        if not pc.all(pc.equal(order, pa.array(np.arange(table.num_rows)))).as_py():
            table = table.take(order)
    with stream_table(path, kind, stage=stage, params=params, extra=extra) as out:
        out.warnings.extend(warnings)
        out.write(table)


class TableStream:
    """Row batches of one artefact, appended in order (rows must arrive sorted)."""

    def __init__(self, writer: pq.ParquetWriter, kind: str, meta: dict):
        self.writer, self.kind, self.meta = writer, kind, meta
        self.warnings: list[str] = []

    def write(self, batch: pd.DataFrame | dict | pa.Table) -> None:
        table = batch if isinstance(batch, pa.Table) else _table(batch, self.kind)
        self.writer.write_table(table.replace_schema_metadata(None))


@contextmanager
def stream_table(
    path: str | Path,
    kind: str,
    *,
    stage: str | None = None,
    params: dict | None = None,
    extra: dict | None = None,
):
    """Write an artefact batch by batch, so memory stays bounded by one batch.

    The file appears under its name only when the block exits cleanly; warnings added
    to ``stream.warnings`` land in the metadata.
    """
    target = schema(kind)
    meta = {
        "version": __version__,
        "artefact": kind,
        "stage": stage or kind,
        "params": params or {},
        **(extra or {}),
    }
    with atomic_path(path) as tmp:
        writer = pq.ParquetWriter(tmp, target, compression="zstd", **_encodings(target))
        stream = TableStream(writer, kind, meta)
        try:
            yield stream
            meta["warnings"] = list(stream.warnings)
            writer.add_key_value_metadata({META_KEY: json.dumps(meta, sort_keys=True, default=str)})
        finally:
            writer.close()


def _table(frame, kind: str) -> pa.Table:
    target = schema(kind)
    columns = list(frame.columns if isinstance(frame, pd.DataFrame) else frame)
    missing = [c for c in target.names if c not in columns]
    unknown = [c for c in columns if c not in target.names]
    if missing or unknown:
        raise ValueError(f"{kind}: columns missing {missing}, not in schema {unknown}")
    if isinstance(frame, pd.DataFrame):
        return pa.Table.from_pandas(frame[target.names], schema=target, preserve_index=False)
    return pa.Table.from_arrays([_column(frame[f.name], f.type) for f in target], schema=target)


def _column(values, dtype: pa.DataType) -> pa.Array:
    """An Arrow column; a 2-D numpy array fills a list column without a per-row copy."""
    if isinstance(values, np.ndarray) and values.ndim == 2 and pa.types.is_list(dtype):
        flat = pa.array(values.reshape(-1), type=dtype.value_type)
        offsets = pa.array(np.arange(0, values.size + 1, values.shape[1], dtype=np.int32))
        return pa.ListArray.from_arrays(offsets, flat, type=dtype)
    if isinstance(values, np.ndarray) and np.issubdtype(values.dtype, np.floating):
        return pa.array(values, type=dtype, from_pandas=True)  # NaN -> null
    return pa.array(values, type=dtype)


def _encodings(target: pa.Schema) -> dict:
    """Dictionary-encode strings; byte-stream-split floats (weights compress faster);
    min/max statistics only for scalar columns, which filters prune row groups by (a
    weight list's statistics cost time to write and serve no query)."""
    strings, floats, scalars = [], [], []
    for field in target:
        listed = pa.types.is_list(field.type)
        kind = field.type.value_type if listed else field.type
        path = f"{field.name}.list.element" if listed else field.name
        if pa.types.is_string(kind):
            strings.append(path)
        elif pa.types.is_floating(kind):
            floats.append(path)
        if not listed:
            scalars.append(field.name)
    return {
        "use_dictionary": strings,
        "use_byte_stream_split": floats,
        "write_statistics": scalars,
    }


def read_columns(
    path: str | Path, columns: Iterable[str] | None = None
) -> tuple[dict[str, list], dict]:
    """An artefact (or only ``columns`` of it) as plain Python column lists (cheaper
    than pandas for row loops), and its moetopo metadata."""
    table, meta = _read(path, columns)
    return table.to_pydict(), meta


def read_table(path: str | Path) -> tuple[pd.DataFrame, dict]:
    """An artefact as a DataFrame, and its moetopo metadata."""
    table, meta = _read(path)
    return table.to_pandas(), meta


def read_meta(path: str | Path) -> dict:
    """Only the moetopo metadata of an artefact (stage, parameters, warnings)."""
    raw = (pq.read_metadata(path).metadata or {}).get(META_KEY, b"{}")
    return json.loads(raw)


def _read(path: str | Path, columns: Iterable[str] | None = None) -> tuple[pa.Table, dict]:
    parquet = pq.ParquetFile(path)
    raw = (parquet.metadata.metadata or {}).get(META_KEY, b"{}")
    return parquet.read(columns=None if columns is None else list(columns)), json.loads(raw)


def gather_tables(paths: list[str | Path], output: str | Path) -> None:
    """Concatenate per-layer artefacts (each sorted, given in layer order) into one file.

    Warnings are kept once each, in order; a pair diff's ``pair`` metadata covers the
    layers and uncompared tensors of all parts.
    """
    first = read_meta(paths[0])
    pair = dict(first["pair"]) if "pair" in first else None
    warnings: list[str] = []
    layers: list[int] = []
    not_compared: list[str] = []
    with stream_table(
        output, first["artefact"], stage=first.get("stage"), params=first.get("params")
    ) as out:
        for path in paths:
            table, meta = _read(path)
            warnings += [w for w in meta.get("warnings", []) if w not in warnings]
            if pair is not None:
                layers += meta["pair"]["layers"]
                not_compared += meta["pair"]["not_compared"]
            out.write(table)
        out.warnings.extend(warnings)
        if pair is not None:
            out.meta["pair"] = pair | {
                "layers": sorted(layers),
                "not_compared": sorted(not_compared),
            }


def write_json(data: dict, path: str | Path) -> None:
    """Write a JSON artefact atomically, keys sorted so reruns give identical bytes."""
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
