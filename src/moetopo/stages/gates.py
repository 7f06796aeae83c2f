"""The gates stage: every router row (and router bias) of every MoE layer."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..io.checkpoint import Checkpoint, list_shards, read_config
from ..io.header import ENTRY_COLUMNS, entries_from_columns
from ..io.prefetch import prefetched
from ..io.reader import TensorReader
from ..model import OpenModel


@dataclass
class Routers:
    """What the gates stage reads: each MoE layer's router (and bias) and a reader for them."""

    reader: TensorReader
    layers: list[tuple[int, str, str | None]]  # (layer, router, router bias)
    bias_kind: str  # "logit" or "selection"

    @classmethod
    def of_model(cls, model: OpenModel) -> Routers:
        layout = model.layout
        layers = [
            (m.layer, m.router, m.router_bias) for m in map(layout.layers.get, layout.moe_layers)
        ]
        return cls(model.reader, layers, layout.routing["router_bias"])

    @classmethod
    def from_inventory(cls, path: str | Path, inventory: str | Path, summary: dict) -> Routers:
        """Only the router rows of the inventory: no header parsing, no classification, so
        the cost follows the number of routers, not the 100k tensors of a large model."""
        layers = [
            (int(layer), info["router"], info["router_bias"])
            for layer, info in sorted(summary["layers"].items(), key=lambda kv: int(kv[0]))
        ]
        wanted = {name for _, router, bias in layers for name in (router, bias) if name}
        table = pq.read_table(inventory, columns=[*ENTRY_COLUMNS, "logical"])
        table = table.filter(
            pc.is_in(table["logical"], value_set=pa.array(sorted(wanted), pa.string()))
        )
        tensors = {e.name: e for e in entries_from_columns(table.to_pydict())}
        listing = list_shards(path)
        checkpoint = Checkpoint(
            listing.root, listing.shards, {}, tensors, read_config(listing.root)
        )
        return cls(TensorReader(checkpoint), layers, summary["routing"]["router_bias"])


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
    """Layer -> router, from gate rows (the artefact's columns, or :func:`gate_rows`)."""
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


def gate_rows(model: OpenModel) -> tuple[dict[str, np.ndarray], list[str]]:
    """All gate rows in memory (tests and small models); the stage streams :func:`gate_batches`."""
    warnings: list[str] = []
    frames = list(gate_batches(Routers.of_model(model), warnings))
    return {k: np.concatenate([f[k] for f in frames]) for k in frames[0]}, warnings


def gate_batches(routers: Routers, warnings: list[str]) -> Iterator[dict[str, np.ndarray]]:
    """Per MoE layer: rows (layer, expert, weight, bias, selection_bias, norm, finite).

    A router with NaN or Inf is kept, flagged per row and reported in ``warnings``,
    so the analysis can continue on the layers and experts that are sound. The next
    layer's router is read while the caller writes this one.
    """
    layers = routers.layers
    for _, (batch, warning) in prefetched(layers, lambda item, _: _gate_batch(routers, *item)):
        if warning:
            warnings.append(warning)
        yield batch


def _gate_batch(
    routers: Routers, layer: int, router: str, router_bias: str | None
) -> tuple[dict[str, np.ndarray], str | None]:
    reader = routers.reader
    weight = reader.read(router)
    n_experts = weight.shape[0]
    bias = np.full(n_experts, np.nan, dtype=np.float32)
    selection = np.full(n_experts, np.nan, dtype=np.float32)
    finite = np.isfinite(weight).all(axis=1)
    if router_bias is not None:
        values = reader.read(router_bias).reshape(-1)
        (selection if routers.bias_kind == "selection" else bias)[:] = values
        finite &= np.isfinite(values)
    warning = None
    if not finite.all():
        bad = np.flatnonzero(~finite).tolist()
        warning = (
            f"layer {layer}: router {router} has non-finite values (NaN/Inf) in experts "
            f"{bad[:10]}{' ...' if len(bad) > 10 else ''}; they are flagged finite=false"
        )
    with np.errstate(invalid="ignore", over="ignore"):
        norm = np.linalg.norm(weight, axis=1).astype(np.float64)
    batch = {
        "layer": np.full(n_experts, layer),
        "expert": np.arange(n_experts),
        "weight": weight,
        "bias": bias,  # NaN (stored as null) where the family has no logit bias
        "selection_bias": selection,
        "norm": norm,
        "finite": finite,
    }
    return batch, warning
