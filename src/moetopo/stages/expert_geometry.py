"""The expert_geometry stage: all configured distance sources for one MoE layer."""

from __future__ import annotations

import numpy as np
import pandas as pd

from moetopo.artefacts.views import GateLayer, coactivation_matrix
from moetopo.checkpoint.model import OpenModel
from moetopo.checkpoint.probes import layer_inputs
from moetopo.geometry.distances import (
    coactivation_distances,
    layer_function_distances,
    router_distances,
    weight_distances,
)
from moetopo.geometry.sources import EXPERT_WEIGHT_SOURCES, SOURCES


def layer_distances(
    model: OpenModel,
    layer: int,
    sources: list[str],
    gates: dict[int, GateLayer],
    coactivation: pd.DataFrame | None,
    function_tokens: int = 256,
    seed: int = 0,
    chunk_bytes: int = 256 << 20,
    captured: str | None = None,
) -> tuple[dict[str, np.ndarray], list[str], dict[str, str]]:
    """Distance matrices of ``layer`` for each requested source, warnings, and what each
    source was computed from (:data:`moetopo.geometry.distances.INPUTS`; the function
    distance on the router inputs captured in ``captured`` where it holds them)."""
    unknown = sorted(set(sources) - set(SOURCES))
    if unknown:
        raise ValueError(f"unknown distance sources {unknown}; known: {list(SOURCES)}")
    moe = model.layout.layers[layer]
    matrices: dict[str, np.ndarray] = {}
    warnings: list[str] = []
    inputs: dict[str, str] = {}
    if any(s.startswith("router_") for s in sources):
        if gates[layer].nonfinite:
            warnings.append(
                f"layer {layer}: non-finite router values set to 0 for router distances"
            )
        router = router_distances(gates[layer].weight)
        matrices.update({k: v for k, v in router.items() if k in sources})
    wants_weights = any(s in sources for s in EXPERT_WEIGHT_SOURCES)
    if wants_weights and not moe.experts:
        warnings.append(f"layer {layer}: no expert weights recognised; weight sources skipped")
    elif wants_weights:
        if "weight_l2" in sources or "weight_cosine" in sources:
            found = weight_distances(model.reader, moe, chunk_bytes)
            matrices.update({k: v for k, v in found.items() if k in sources})
        if "function" in sources:
            *probe, inputs["function"] = layer_inputs(model, layer, function_tokens, seed, captured)
            matrices["function"] = layer_function_distances(model.reader, moe, *probe, chunk_bytes)
    if "coactivation" in sources:
        if coactivation is None:
            warnings.append(f"layer {layer}: no coactivation artefact; coactivation skipped")
        else:
            counts = coactivation_matrix(coactivation, layer, moe.n_experts)
            matrices["coactivation"] = coactivation_distances(counts)
    return matrices, warnings, inputs
