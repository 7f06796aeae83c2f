"""Stage artefacts: the registry of every artefact's columns and order, atomic Parquet
writes and reads, and the views later stages take of earlier artefacts."""

from moetopo.artefacts.parquet import (
    META_KEY,
    TableStream,
    atomic_path,
    gather_tables,
    read_columns,
    read_meta,
    read_table,
    stream_table,
    write_json,
    write_table,
)
from moetopo.artefacts.registry import (
    COLLABORATION_ARTEFACTS,
    COMPRESSION_ARTEFACTS,
    COMPRESSION_SUMMARY_ARTEFACTS,
    SCHEMAS,
    SORT_KEYS,
    STUDY_ARTEFACTS,
    SUPERPOSITION_ARTEFACTS,
    TOPOLOGY_ARTEFACTS,
    columns,
    schema,
)

__all__ = [
    "COLLABORATION_ARTEFACTS",
    "COMPRESSION_ARTEFACTS",
    "COMPRESSION_SUMMARY_ARTEFACTS",
    "STUDY_ARTEFACTS",
    "SUPERPOSITION_ARTEFACTS",
    "META_KEY",
    "SCHEMAS",
    "SORT_KEYS",
    "TOPOLOGY_ARTEFACTS",
    "TableStream",
    "atomic_path",
    "columns",
    "gather_tables",
    "read_columns",
    "read_meta",
    "read_table",
    "schema",
    "stream_table",
    "write_json",
    "write_table",
]
