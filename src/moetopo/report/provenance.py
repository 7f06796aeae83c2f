"""What produced the report: software versions, the config, and each checkpoint's files.

Shard sizes and header digests come from model.json, written by the inventory
stage from the headers it parsed, so a reader can check that the report
describes the files they hold.
"""

from __future__ import annotations

import importlib.metadata
import platform

import yaml

from moetopo.report import fmt
from moetopo.report.data import ReportData
from moetopo.report.doc import Block, Heading, Para, Pre, Table

PACKAGES = (
    "moetopo",
    "numpy",
    "scipy",
    "pandas",
    "pyarrow",
    "ripser",
    "safetensors",
    "ml_dtypes",
    "matplotlib",
    "snakemake",
)


def package_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def versions() -> list[list[str]]:
    return [["python", platform.python_version()]] + [[p, package_version(p)] for p in PACKAGES]


def artefact_versions(data: ReportData) -> str:
    """Which moetopo versions wrote the artefacts; more than one means a mixed run."""
    seen: dict[str, list[str]] = {}
    for model in data.models:
        for version in set(model.versions.values()):
            seen.setdefault(version or "unknown", []).append(model.name)
    if len(seen) <= 1:
        return f"Every model's artefacts were written by moetopo {fmt.listing(seen)}."
    parts = [f"{v}: {fmt.listing(names)}" for v, names in sorted(seen.items())]
    return "Artefacts were written by several moetopo versions (" + "; ".join(parts) + ")."


def config_text(config: dict) -> str:
    return yaml.safe_dump(config, sort_keys=False, default_flow_style=None, width=88)


def file_tables(data: ReportData) -> tuple[Table, Table]:
    models, shards = [], []
    for model in data.models:
        summary = model.summary
        listed = summary.get("shards", [])
        models.append(
            [model.name, model.path, fmt.count(len(listed)), fmt.count(summary.get("total_bytes"))]
        )
        shards += [
            [model.name, s["name"], fmt.count(s["bytes"]), s.get("digest", ""), _fetched(s)]
            for s in listed
        ]
    columns = ["model", "shard", "bytes", "header sha256", "fetched at"]
    caption = "sha256 of each shard's header bytes"
    if any(row[-1] for row in shards):
        caption += "; a remote shard's revision (or its ETag, where the server names none)"
    else:
        columns, shards = columns[:-1], [row[:-1] for row in shards]
    return (
        Table(["model", "path", "shards", "bytes"], models, anchor="provenance-models"),
        Table(columns, shards, anchor="provenance-shards", caption=caption),
    )


def _fetched(shard: dict) -> str:
    """Which version of a remote shard was read: its revision, else its ETag."""
    return shard.get("revision") or shard.get("etag") or ""


def provenance_blocks(data: ReportData) -> list[Block]:
    models, shards = file_tables(data)
    return [
        Heading(2, "Provenance", "provenance"),
        Table(["package", "version"], versions(), anchor="provenance-versions"),
        Para(artefact_versions(data)),
        Heading(3, "Checkpoints"),
        models,
        shards,
        Heading(3, "Configuration"),
        Pre(config_text(data.config)),
    ]
