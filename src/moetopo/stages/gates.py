"""The gates stage: every router row (and router bias) of every MoE layer."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from ..model import OpenModel


def gate_rows(model: OpenModel) -> tuple[dict[str, np.ndarray], list[str]]:
    """All gate rows in memory (tests and small models); the stage streams :func:`gate_batches`."""
    warnings: list[str] = []
    frames = list(gate_batches(model, warnings))
    return {k: np.concatenate([f[k] for f in frames]) for k in frames[0]}, warnings


def gate_batches(model: OpenModel, warnings: list[str]) -> Iterator[dict[str, np.ndarray]]:
    """Per MoE layer: rows (layer, expert, weight, bias, selection_bias, norm, finite).

    A router with NaN or Inf is kept, flagged per row and reported in ``warnings``,
    so the analysis can continue on the layers and experts that are sound.
    """
    layout, reader = model.layout, model.reader
    for layer in layout.moe_layers:
        moe = layout.layers[layer]
        weight = reader.read(moe.router)
        bias = np.full(moe.n_experts, np.nan, dtype=np.float32)
        selection = np.full(moe.n_experts, np.nan, dtype=np.float32)
        finite = np.isfinite(weight).all(axis=1)
        if moe.router_bias is not None:
            values = reader.read(moe.router_bias).reshape(-1)
            (selection if layout.routing["router_bias"] == "selection" else bias)[:] = values
            finite &= np.isfinite(values)
        if not finite.all():
            bad = np.flatnonzero(~finite).tolist()
            warnings.append(
                f"layer {layer}: router {moe.router} has non-finite values (NaN/Inf) in experts "
                f"{bad[:10]}{' ...' if len(bad) > 10 else ''}; they are flagged finite=false"
            )
        with np.errstate(invalid="ignore", over="ignore"):
            norm = np.linalg.norm(weight, axis=1).astype(np.float64)
        yield {
            "layer": np.full(moe.n_experts, layer),
            "expert": np.arange(moe.n_experts),
            "weight": weight,
            "bias": bias,  # NaN (stored as null) where the family has no logit bias
            "selection_bias": selection,
            "norm": norm,
            "finite": finite,
        }
