"""What later stages read of earlier artefacts: routers from the gates artefact, square
matrices from the long pair tables (distances, coactivation).

One reading of each, so every stage sees a router or a distance matrix the same way.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq


def symmetric_matrix(i, j, values, n: int | None = None) -> np.ndarray:
    """[n, n] from upper-triangle entries (i <= j), mirrored; ``n`` defaults to the
    largest index + 1. The long pair artefacts store each unordered pair once."""
    i, j, values = np.asarray(i), np.asarray(j), np.asarray(values)
    if n is None:
        n = int(max(i.max(), j.max())) + 1
    matrix = np.zeros((n, n), dtype=values.dtype)
    matrix[i, j] = values
    return np.triu(matrix) + np.triu(matrix, 1).T


def distance_matrices(distances: pd.DataFrame) -> Iterator[tuple[int, str, np.ndarray]]:
    """(layer, source, square matrix) from the long expert_distances table."""
    for (layer, source), group in distances.groupby(["layer", "source"], sort=True):
        yield int(layer), str(source), symmetric_matrix(group.i, group.j, group.distance)


def coactivation_matrix(
    coactivation: pd.DataFrame, layer: int, n_experts: int, column: str = "count"
) -> np.ndarray:
    """Symmetric [E, E] ``column`` (count or rate) of one layer of the coactivation
    artefact."""
    rows = coactivation[coactivation.layer == layer]
    return symmetric_matrix(rows.i, rows.j, rows[column].to_numpy(), n_experts)


def redundancy_groups(
    clusters: pd.DataFrame | None, layer: int, source: str, spec: str
) -> np.ndarray | None:
    """Each expert's group (connected component) of ``layer`` at threshold ``spec``, from
    the clusters artefact; None where it has no such rows."""
    if clusters is None or clusters.empty:
        return None
    rows = clusters[
        (clusters.layer == layer)
        & (clusters.source == source)
        & (clusters.method == "components")
        & (clusters.threshold_spec == spec)
    ].sort_values("expert")
    return rows.cluster.to_numpy() if len(rows) else None


@dataclass(frozen=True)
class GateLayer:
    """One layer's router as later stages use it: weight [E, H], logit and selection biases.

    Non-finite router weights are zeroed once, by :func:`gates_from_rows`, for every
    stage that reads the router; ``nonfinite`` lists the experts whose weight rows had any.
    """

    weight: np.ndarray
    bias: np.ndarray | None
    selection: np.ndarray | None
    nonfinite: tuple[int, ...] = ()


def gates_from_rows(columns: dict[str, np.ndarray]) -> dict[int, GateLayer]:
    """Layer -> router, from gate rows (the artefact's columns, or rows in memory)."""
    out = {}
    layers = np.asarray(columns["layer"])
    for layer in np.unique(layers):
        pick = np.flatnonzero(layers == layer)
        pick = pick[np.argsort(np.asarray(columns["expert"])[pick], kind="stable")]
        weight = np.asarray(columns["weight"])[pick].astype(np.float64)
        finite = np.isfinite(weight)
        nonfinite = tuple(np.flatnonzero(~finite.all(axis=1)).tolist())
        if nonfinite:
            weight = np.where(finite, weight, 0.0)
        biases = []
        for name in ("bias", "selection_bias"):
            values = np.asarray(columns[name], dtype=np.float64)[pick]
            biases.append(None if np.isnan(values).all() else np.nan_to_num(values))
        out[int(layer)] = GateLayer(weight, *biases, nonfinite)
    return out


def load_gates(path: str | Path, layers: list[int] | None = None) -> dict[int, GateLayer]:
    """Routers from the gates artefact, reading only ``layers`` (all when None); the
    weight column becomes one [rows, hidden] array without a per-row copy."""
    filters = [("layer", "in", list(layers))] if layers is not None else None
    table = pq.read_table(path, filters=filters)
    weight = table["weight"].combine_chunks()
    hidden = weight.value_lengths()[0].as_py() if len(weight) else 0
    matrix = weight.flatten().to_numpy(zero_copy_only=False).reshape(len(weight), hidden)
    columns = {name: table[name].to_numpy() for name in ("layer", "expert")}
    for name in ("bias", "selection_bias"):
        columns[name] = table[name].to_numpy(zero_copy_only=False).astype(np.float64)
    columns["weight"] = matrix
    return gates_from_rows(columns)


class LazyGates(Mapping):
    """Routers read from the gates artefact one layer at a time, so a stage that walks all
    layers (routing) holds one router, not 60 x 384 x 7168 floats."""

    def __init__(self, path: str | Path, layers: list[int]):
        self.path, self.layers = path, list(layers)

    def __getitem__(self, layer: int) -> GateLayer:
        if layer not in self.layers:
            raise KeyError(layer)
        return load_gates(self.path, [layer])[layer]

    def __iter__(self):
        return iter(self.layers)

    def __len__(self) -> int:
        return len(self.layers)
