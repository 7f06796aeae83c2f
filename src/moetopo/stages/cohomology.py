"""The cohomology stage: persistent homology, sheaf, Hodge and HodgeCover of one MoE layer.

Inputs come from earlier artefacts (distances, coactivation, load, redundancy groups);
the expert weights are read again only for what needs them: sheaf stalks (each
expert's leading input directions) and the merge barriers of HodgeCover.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..experts import ExpertWeights, expert_output, merged, read_expert
from ..model import OpenModel
from ..probes import function_probe
from ..sources import cohomology_reads_expert_weights
from ..topology.layer import LayerTopology, TopologyParams, layer_topology
from ..topology.sheaf import leading_input_directions
from .clusters import distance_matrices
from .gates import GateLayer
from .geometry import coactivation_matrix


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

    @property
    def reads_expert_weights(self) -> bool:
        return cohomology_reads_expert_weights(self.merge_barriers, self.sheaf_stalks)


class WeightMergeBarrier:
    """Cost of merging a set of experts the way merging compressors do: average their weights.

    barrier(S) = sum_a mean_x ||f_a(x) - f_S(x)||^2 / sum_a mean_x ||f_a(x)||^2 over a in S,
    with f_S the expert whose weights are the mean of S's. Unlike averaging outputs (whose
    three-way cost is fixed by the pairwise ones), merging weights through the nonlinearity
    can make three pairwise-mergeable experts jointly unmergeable, which is the obstruction
    HodgeCover looks for. Expert weights and outputs are cached within a memory budget.
    """

    def __init__(self, read, tokens, activation, limit=None, cache_bytes=256 << 20):
        self.read, self.tokens, self.activation, self.limit = read, tokens, activation, limit
        self.cache_bytes = cache_bytes
        self.cache: OrderedDict[int, tuple[ExpertWeights, np.ndarray]] = OrderedDict()

    def _expert(self, e: int) -> tuple[ExpertWeights, np.ndarray]:
        if e in self.cache:
            self.cache.move_to_end(e)
            return self.cache[e]
        weights = self.read(e)
        entry = (weights, expert_output(weights, self.tokens, self.activation, self.limit))
        self.cache[e] = entry
        while (
            len(self.cache) > 3
            and sum(w.nbytes + o.nbytes for w, o in self.cache.values()) > self.cache_bytes
        ):
            self.cache.popitem(last=False)
        return entry

    def __call__(self, experts: tuple[int, ...]) -> float:
        members = [self._expert(e) for e in experts]
        combined = merged([w for w, _ in members])
        out = expert_output(combined, self.tokens, self.activation, self.limit)
        error = sum(float(np.sum((o - out) ** 2)) for _, o in members)
        scale = sum(float(np.sum(o**2)) for _, o in members)
        return error / scale if scale > 0 else 0.0


def expert_frames(model: OpenModel, layer: int, d: int, max_rows: int, seed: int) -> np.ndarray:
    """[n, hidden, d]: each expert's d leading input directions (SVD of its gate/up rows)."""
    moe = model.layout.layers[layer]
    rng = np.random.default_rng(seed)
    frames = []
    for e in range(moe.n_experts):
        w = read_expert(model.reader, moe, e)
        rows = w.up if w.gate is None else np.vstack([w.gate, w.up])
        if rows.shape[0] > max_rows:
            rows = rows[np.sort(rng.choice(rows.shape[0], max_rows, replace=False))]
        frames.append(leading_input_directions(rows, d))
    return np.stack(frames)


def router_frames(weight: np.ndarray, d: int) -> np.ndarray:
    """Router-row stalks for router-only runs: each expert's row as a 1-d frame, padded by
    the leading directions of the other rows so every stalk has dimension d."""
    n, hidden = weight.shape
    unit = weight / np.maximum(np.linalg.norm(weight, axis=1, keepdims=True), 1e-30)
    frames = np.zeros((n, hidden, d))
    basis = np.linalg.svd(weight, full_matrices=False)[2][:d].T  # shared principal directions
    for e in range(n):
        block = np.column_stack([unit[e], basis])
        q, _ = np.linalg.qr(block)
        frames[e] = q[:, :d]  # orthonormal whatever the row; a stalk's gauge changes nothing
    return frames


def layer_groups(clusters: pd.DataFrame | None, layer: int, source: str, spec: str):
    if clusters is None or clusters.empty:
        return None
    rows = clusters[
        (clusters.layer == layer)
        & (clusters.source == source)
        & (clusters.method == "components")
        & (clusters.threshold_spec == spec)
    ].sort_values("expert")
    return rows.cluster.to_numpy() if len(rows) else None


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
) -> LayerTopology:
    """Everything topological about ``layer``; ``model`` is needed only to read expert weights."""
    matrices = {source: m for lay, source, m in distance_matrices(distances) if lay == layer}
    n = len(next(iter(matrices.values())))
    rate = None if coactivation is None else coactivation_matrix(coactivation, layer, n, "rate")
    load = None
    if routing is not None:
        load = routing[routing.layer == layer].sort_values("expert").load.to_numpy()
    signal = params.signal_source(matrices)
    groups = layer_groups(clusters, layer, signal, settings.groups_threshold)
    frames = None
    if (
        settings.sheaf_stalks == "weights"
        and model is not None
        and model.layout.layers[layer].experts
    ):
        frames = expert_frames(model, layer, params.stalk_dim, settings.sheaf_rows, settings.seed)
    elif settings.sheaf_stalks == "router" and gates is not None:
        frames = router_frames(gates[layer].weight, params.stalk_dim)
    barrier = None
    if settings.merge_barriers and model is not None and model.layout.layers[layer].experts:
        moe = model.layout.layers[layer]
        barrier = WeightMergeBarrier(
            lambda e: read_expert(model.reader, moe, e),
            *function_probe(model, settings.function_tokens, settings.seed),
            cache_bytes=settings.chunk_bytes,
        )
    return layer_topology(
        layer,
        matrices,
        coactivation=rate,
        load=load,
        frames=frames,
        merge_barrier=barrier,
        groups=groups,
        params=params,
    )


def summary_rows(layer: int, summary: dict) -> pd.DataFrame:
    """The layer's headline figures as long rows (layer, source, metric, value)."""
    rows = []
    for key, value in sorted(summary.items()):
        source, metric = key.split(".", 1) if "." in key.split("@")[0] else ("", key)
        rows.append({"layer": layer, "source": source, "metric": metric, "value": float(value)})
    return pd.DataFrame(rows, columns=["layer", "source", "metric", "value"])
