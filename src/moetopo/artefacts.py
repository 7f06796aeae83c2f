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

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from . import __version__

META_KEY = b"moetopo"
F32, F64, I64, STR, BOOL = pa.float32(), pa.float64(), pa.int64(), pa.string(), pa.bool_()

# The row statistics of a compared tensor group (moetopo.rowdiff.RowTotals.summary).
ROW_DIFF = [
    ("rows", I64),
    ("shifted_rows", I64),
    ("shifted_fraction", F64),
    ("mean_shift", F64),
    ("max_shift", F64),
    ("relative_change", F64),
    ("frobenius_base", F64),
    ("frobenius_diff", F64),
]
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
        # elements are never null (NaN stays NaN): a non-null element type spares the
        # writer a definition level per value, a fifth of writing DeepSeek-V3's gates
        ("weight", pa.list_(pa.field("element", F32, nullable=False))),
        ("bias", F32),
        ("selection_bias", F32),
        ("norm", F64),
        ("finite", BOOL),
    ],
    "routing": [
        ("layer", I64),
        ("expert", I64),
        ("load", F64),
        ("mean_prob", F64),
        ("source", STR),
        ("count", I64),
        ("tokens", I64),
    ],
    "coactivation": [("layer", I64), ("i", I64), ("j", I64), ("count", I64), ("rate", F64)],
    "routing_agreement": [
        ("layer", I64),
        ("n_tokens", I64),
        ("load_spearman", F64),
        ("topk_overlap", F64),
        ("same_tokens", BOOL),
    ],
    "expert_distances": [
        ("layer", I64),
        ("source", STR),
        ("i", I64),
        ("j", I64),
        ("distance", F64),
    ],
    "clusters": [
        ("layer", I64),
        ("source", STR),
        ("method", STR),
        ("threshold_spec", STR),
        ("threshold", F64),
        ("expert", I64),
        ("cluster", I64),
    ],
    "redundancy": [
        ("layer", I64),
        ("source", STR),
        ("threshold_spec", STR),
        ("threshold", F64),
        ("n_experts", I64),
        ("redundant_pairs", I64),
        ("total_pairs", I64),
        ("redundancy", F64),
        ("n_groups", I64),
        ("largest_group", I64),
        ("mean_distance", F64),
        ("n_clusters", I64),
    ],
    "attention_diff": [("layer", I64), ("projection", STR), *ROW_DIFF, ("n_tensors", I64)],
    "moe_diff": [("layer", I64), ("kind", STR), ("expert", I64), *ROW_DIFF],
    "scaffold": [
        ("layer", I64),
        ("q_fraction", F64),
        ("k_fraction", F64),
        ("o_fraction", F64),
        ("is_scaffold", BOOL),
        ("v_fraction", F64),
        ("relative_depth", F64),
        ("q_change", F64),
        ("k_change", F64),
        ("v_change", F64),
        ("o_change", F64),
    ],
    "crossref": [
        ("layer", I64),
        ("is_scaffold", BOOL),
        ("is_moe", BOOL),
        ("redundancy", F64),
        ("routing_dominated", BOOL),
        ("router_change", F64),
        ("expert_change", F64),
        ("expert_change_max", F64),
        ("router_to_expert", F64),
    ],
    "pairs_summary": [
        ("scope", STR),
        ("statistic", STR),
        ("projection", STR),
        ("depth_low", F64),
        ("depth_high", F64),
        ("estimate", F64),
        ("ci_low", F64),
        ("ci_high", F64),
        ("ci_method", STR),
        ("n_pairs", I64),
        ("n_values", I64),
        ("reason", STR),
    ],
    "persistence": [
        ("layer", I64),
        ("source", STR),
        ("dim", I64),
        ("birth", F64),
        ("death", F64),
        ("persistence", F64),
        ("significant", BOOL),
        ("noise_floor", F64),
    ],
    "sheaf": [
        ("layer", I64),
        ("source", STR),
        ("quantile", F64),
        ("epsilon", F64),
        ("stalk_dim", I64),
        ("h0", I64),
        ("h1", I64),
        ("eigenvalues", pa.list_(F64)),
        ("rtol", F64),
        ("n_edges", I64),
    ],
    "hodge": [
        ("layer", I64),
        ("source", STR),
        ("quantile", F64),
        ("epsilon", F64),
        ("signal_source", STR),
        ("gradient_energy", F64),
        ("curl_energy", F64),
        ("harmonic_energy", F64),
        ("harmonic_fraction", F64),
        ("betti1", I64),
        ("n_edges", I64),
        ("n_triangles", I64),
        ("orthogonality", F64),
        ("iterations", I64),
    ],
    "hodge_edges": [
        ("layer", I64),
        ("source", STR),
        ("quantile", F64),
        ("epsilon", F64),
        ("rank", I64),
        ("tail", I64),
        ("head", I64),
        ("signal", F64),
        ("harmonic", F64),
    ],
    "hodgecover": [
        ("layer", I64),
        ("method", STR),
        ("keep", I64),
        ("expert", I64),
        ("kept", BOOL),
        ("rank", I64),
    ],
    "layer_summary": [("layer", I64), ("source", STR), ("metric", STR), ("value", F64)],
    "stats_models": [
        ("model", STR),
        ("source", STR),
        ("metric", STR),
        ("score", F64),
        ("h1_total", F64),
        ("h1_per_active_param", F64),
        ("activated_params", I64),
        ("total_params", I64),
        ("n_moe_layers", I64),
        ("n_experts", I64),
        ("top_k", I64),
        ("family", STR),
    ],
    "stats_layers": [
        ("model", STR),
        ("layer", I64),
        ("source", STR),
        ("metric", STR),
        ("score", F64),
        ("value", F64),
        ("per_active_param", F64),
    ],
    "conjecture": [
        ("level", STR),
        ("metric", STR),
        ("source", STR),
        ("statistic", STR),
        ("estimate", F64),
        ("ci_low", F64),
        ("ci_high", F64),
        ("ci_method", STR),
        ("p_value", F64),
        ("p_adjusted", F64),
        ("n_models", I64),
        ("n_layers", I64),
        ("verdict", STR),
        ("reason", STR),
    ],
    "bottleneck": [
        ("layer", I64),
        ("source", STR),
        ("dim", I64),
        ("distance", F64),
        ("base_bars", I64),
        ("tuned_bars", I64),
        ("base_significant", I64),
        ("tuned_significant", I64),
    ],
}

TOPOLOGY_ARTEFACTS = ("persistence", "sheaf", "hodge", "hodge_edges", "hodgecover", "layer_summary")


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
    frame: pd.DataFrame | dict[str, list],
    path: str | Path,
    kind: str,
    *,
    sort_by: Iterable[str] = (),
    stage: str | None = None,
    params: dict | None = None,
    warnings: Iterable[str] = (),
    extra: dict | None = None,
) -> None:
    """Write ``frame`` (a DataFrame or a dict of columns) as artefact ``kind`` atomically."""
    table = _table(frame, kind)
    sort_by = list(sort_by)
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
    """Dictionary-encode strings; byte-stream-split floats (weights compress 2x faster);
    min/max statistics only for scalar columns, which filters prune row groups by (a
    weight list's statistics cost a tenth of writing it and serve no query)."""
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
    """Concatenate per-layer artefacts (each sorted, given in layer order) into one file."""
    first = read_meta(paths[0])
    warnings: list[str] = []
    with stream_table(
        output, first["artefact"], stage=first.get("stage"), params=first.get("params")
    ) as out:
        for path in paths:
            table, meta = _read(path)
            warnings.extend(meta.get("warnings", []))
            out.write(table)
        out.warnings.extend(warnings)


def write_json(data: dict, path: str | Path) -> None:
    """Write a JSON artefact atomically, keys sorted so reruns give identical bytes."""
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
