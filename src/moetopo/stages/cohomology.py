"""The cohomology stage: persistent homology, sheaf, Hodge and HodgeCover of one MoE layer.

Inputs come from earlier artefacts (distances, coactivation, load, redundancy groups);
the expert weights are read again only for what needs them: sheaf stalks (each
expert's leading input directions) and the merge barriers of HodgeCover.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from moetopo.artefacts import columns
from moetopo.artefacts.views import (
    GateLayer,
    coactivation_matrix,
    distance_matrices,
    redundancy_groups,
)
from moetopo.checkpoint.experts import read_expert
from moetopo.checkpoint.model import OpenModel
from moetopo.checkpoint.probes import layer_inputs
from moetopo.geometry.merging import WeightMergeBarrier
from moetopo.geometry.sources import NULL_KINDS, cohomology_reads_expert_weights
from moetopo.geometry.stalks import expert_frames, router_frames
from moetopo.topology.layer import LayerTopology, TopologyParams, layer_topology


@dataclass(frozen=True)
class CohomologySettings:
    """Config of the stage beyond the topology parameters."""

    sheaf_stalks: str = "weights"  # "weights" | "router" | "none"
    sheaf_rows: int = 2048  # rows of gate/up sampled per expert for its input directions
    groups_threshold: str = "r0.25"  # redundancy groups for the group-based selection
    merge_barriers: bool = True  # weight-merge barriers for HodgeCover's triangles
    function_tokens: int = 256
    seed: int = 0
    chunk_bytes: int = 256 << 20

    @classmethod
    def split(cls, values: Mapping, chunk_bytes: int) -> tuple[TopologyParams, CohomologySettings]:
        """The rule's params (the cohomology section plus the probe's tokens and seed) as the
        topology parameters and the stage settings, each field taken by its name."""

        def pick(kind):
            names = {f.name for f in dataclasses.fields(kind)} & set(values)
            return {
                k: tuple(values[k]) if isinstance(values[k], list) else values[k] for k in names
            }

        return TopologyParams(**pick(TopologyParams)), cls(**pick(cls), chunk_bytes=chunk_bytes)

    @property
    def reads_expert_weights(self) -> bool:
        return cohomology_reads_expert_weights(self.merge_barriers, self.sheaf_stalks)


def layer_cohomology(
    model: OpenModel | None,
    layer: int,
    distances: pd.DataFrame,
    *,
    coactivation: pd.DataFrame | None,
    routing: pd.DataFrame | None,
    gates: Mapping[int, GateLayer] | None,
    clusters: pd.DataFrame | None,
    params: TopologyParams,
    settings: CohomologySettings,
    captured: str | None = None,
) -> dict[str, pd.DataFrame]:
    """Every topology artefact of ``layer`` (TOPOLOGY_ARTEFACTS -> table); ``model`` is
    needed only to read expert weights. The merge barriers measure the experts on the
    router inputs captured in ``captured`` where it holds them for the layer, else on the
    probe; the tables say which."""
    matrices = {source: m for lay, source, m in distance_matrices(distances) if lay == layer}
    n = len(next(iter(matrices.values())))
    rate = None if coactivation is None else coactivation_matrix(coactivation, layer, n, "rate")
    load = None
    if routing is not None:
        load = routing[routing.layer == layer].sort_values("expert").load.to_numpy()
    signal = params.signal_source(matrices)
    groups = redundancy_groups(clusters, layer, signal, settings.groups_threshold)
    frames = None
    if (
        settings.sheaf_stalks == "weights"
        and model is not None
        and model.layout.layers[layer].experts
    ):
        frames = expert_frames(model, layer, params.stalk_dim, settings.sheaf_rows, settings.seed)
    elif settings.sheaf_stalks == "router" and gates is not None:
        frames = router_frames(gates[layer].weight, params.stalk_dim)
    barrier, barrier_inputs = None, "none"
    if settings.merge_barriers and model is not None and model.layout.layers[layer].experts:
        moe = model.layout.layers[layer]
        *tokens, barrier_inputs = layer_inputs(
            model, layer, settings.function_tokens, settings.seed, captured
        )
        barrier = WeightMergeBarrier(
            lambda e: read_expert(model.reader, moe, e), *tokens, cache_bytes=settings.chunk_bytes
        )
    result = layer_topology(
        matrices,
        coactivation=rate,
        load=load,
        frames=frames,
        merge_barrier=barrier,
        groups=groups,
        params=params,
        layer=layer,
        null_kinds=NULL_KINDS,
    )
    signal_rows = distances[(distances.layer == layer) & (distances.source == signal)]
    signal_inputs = str(signal_rows.inputs.iloc[0]) if "inputs" in signal_rows else ""
    return topology_tables(layer, result, signal_inputs, barrier_inputs)


def topology_tables(
    layer: int, result: LayerTopology, signal_inputs: str = "", barrier_inputs: str = "none"
) -> dict[str, pd.DataFrame]:
    """The layer's topology as the artefacts' tables, rows in the registry's order;
    ``signal_inputs`` and ``barrier_inputs`` say what the Hodge signal's distances and
    the merge barriers were computed on."""
    persistence = [
        bars.assign(layer=layer, source=source) for source, bars in result.diagrams.items()
    ]
    sheaf, hodge, critical = [], [], []
    for scale in result.scales:
        key = {"layer": layer, "source": scale.source, "quantile": scale.quantile}
        key["epsilon"] = scale.epsilon
        source = {"signal_source": result.signal_source, "signal_inputs": signal_inputs}
        hodge.append(key | scale.hodge | source)
        critical.append(pd.DataFrame(scale.critical).assign(**key))
        if scale.sheaf is not None:
            sheaf.append(key | scale.sheaf)
    scale = {"quantile": result.cover_quantile, "barrier_inputs": barrier_inputs}
    cover = [rows.assign(**scale) for rows in _cover_rows(layer, result)]
    return {
        "persistence": _frame(persistence, "persistence", ["source", "dim"]),
        "sheaf": pd.DataFrame(sheaf, columns=columns("sheaf")),
        "hodge": pd.DataFrame(hodge, columns=columns("hodge")),
        "hodge_edges": _frame(critical, "hodge_edges", ["source", "quantile", "rank"]),
        "hodgecover": _frame(cover, "hodgecover", ["method", "keep", "expert"]),
        "layer_summary": summary_rows(layer, result.summary),
    }


def _cover_rows(layer: int, result: LayerTopology) -> list[pd.DataFrame]:
    """Per method and budget: which experts are kept, and each expert's rank."""
    rows = []
    for method, order in result.rankings.items():
        n = len(order)
        rank = np.empty(n, dtype=np.int64)
        rank[order] = np.arange(n)
        for keep in result.budgets:
            rows.append(
                pd.DataFrame(
                    {
                        "layer": layer,
                        "method": method,
                        "keep": keep,
                        "expert": np.arange(n),
                        "kept": rank < keep,
                        "rank": rank,
                    }
                )
            )
    return rows


def _frame(parts: list[pd.DataFrame], artefact: str, sort_by: list[str]) -> pd.DataFrame:
    names = columns(artefact)
    if not parts:
        return pd.DataFrame(columns=names)
    table = pd.concat(parts, ignore_index=True)[names]
    return table.sort_values(sort_by, kind="stable").reset_index(drop=True)


def summary_rows(layer: int, summary: dict) -> pd.DataFrame:
    """The layer's headline figures as long rows (layer, source, metric, value)."""
    rows = []
    for key, value in sorted(summary.items()):
        source, metric = key.split(".", 1) if "." in key.split("@")[0] else ("", key)
        rows.append({"layer": layer, "source": source, "metric": metric, "value": float(value)})
    return pd.DataFrame(rows, columns=columns("layer_summary"))
