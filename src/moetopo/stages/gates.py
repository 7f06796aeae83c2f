"""The gates stage: every router row (and router bias) of every MoE layer."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from moetopo.artefacts.reopen import checkpoint_from_inventory
from moetopo.checkpoint import remote
from moetopo.checkpoint.model import OpenModel
from moetopo.checkpoint.prefetch import prefetched
from moetopo.checkpoint.reader import TensorReader


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
        """Only the router rows of the inventory: no classification of the other tensors."""
        layers = [
            (int(layer), info["router"], info["router_bias"])
            for layer, info in sorted(summary["layers"].items(), key=lambda kv: int(kv[0]))
        ]
        wanted = {name for _, router, bias in layers for name in (router, bias) if name}
        checkpoint = checkpoint_from_inventory(path, inventory, logical=wanted)
        return cls(TensorReader(checkpoint), layers, summary["routing"]["router_bias"])

    def prefetch(self) -> None:
        """Start fetching every router's bytes of a remote model, many requests in
        flight, while the layers are read and written in order (a no-op for a local
        model)."""
        names = [name for _, router, bias in self.layers for name in (router, bias) if name]
        stored = [self.reader.tensor(n) for n in names]
        remote.prefetch(
            (self.reader.checkpoint.shard_path(e.shard), e.begin, e.end, e.name)
            for lt in stored
            for e in (lt.data, lt.scale)
            if e is not None
        )


def gate_batches(routers: Routers, warnings: list[str]) -> Iterator[dict[str, np.ndarray]]:
    """Per MoE layer: rows (layer, expert, weight, bias, selection_bias, norm, finite).

    A router with NaN or Inf is kept, flagged per row and reported in ``warnings``,
    so the analysis can continue on the layers and experts that are sound. The next
    layer's router is read while the caller writes this one.
    """
    layers = routers.layers
    routers.prefetch()
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
