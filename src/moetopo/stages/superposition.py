"""The superposition stage: how each expert of each MoE layer packs a feature basis into its
hidden units (:mod:`moetopo.geometry.superposition`), weighted by how often the router
sends tokens to it.

An expert's image of the basis is W = F Win^T, Win its input projections stacked (gate
rows, then up rows; the toy model's one matrix). Gate and up together are every
pre-activation the expert computes from a token before its nonlinearity, so two features
it can tell apart differ there; the down projection only maps the hidden units back.
Experts are read one at a time, input projections only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from moetopo.artefacts import columns
from moetopo.artefacts.views import GateLayer
from moetopo.checkpoint.experts import read_expert_inputs
from moetopo.checkpoint.model import OpenModel
from moetopo.families.moe_rules import config_value, is_finite_number
from moetopo.geometry.basis import Basis, file_basis, identity_basis, unit_rows
from moetopo.geometry.superposition import (
    CLASSES,
    Thresholds,
    expert_features,
    layer_aggregates,
    usage_weights,
)


@dataclass
class SuperpositionResult:
    experts: list[dict] = field(default_factory=list)
    features: list[pd.DataFrame] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def tables(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        """(superposition, superposition_features); empty tables where nothing was measurable."""
        experts = pd.DataFrame(self.experts, columns=columns("superposition"))
        if not self.features:
            return experts, pd.DataFrame(columns=columns("superposition_features"))
        return experts, pd.concat(self.features, ignore_index=True)


def default_basis(model: OpenModel, choice: str) -> str:
    """``choice``, or for "auto" the family's known basis (the toy models': identity),
    else the router's rows."""
    if choice != "auto":
        return choice
    return model.layout.spec.defaults.get("feature_basis", "router")


def layer_basis(
    model: OpenModel,
    layer: int,
    router: GateLayer,
    choice: str,
    basis_file: str | None,
    warnings: list[str],
) -> Basis:
    """The basis of ``layer``: the file's array for it when given and present, else the
    data-free ``choice`` (:func:`default_basis`)."""
    hidden = model.layout.hidden_size
    kind = default_basis(model, choice)
    if basis_file:
        found = file_basis(basis_file, layer, hidden)
        if found is not None:
            return found
        warnings.append(f"{basis_file}: no array layer_{layer}; the {kind} basis used there")
    if kind == "identity":
        return identity_basis(hidden)
    basis, zero = unit_rows(router.weight, "router")
    if zero:
        warnings.append(f"layer {layer}: router rows {zero} are zero; left out of the basis")
    return basis


def superposition_tables(
    model: OpenModel,
    gates: Mapping[int, GateLayer],
    routing: pd.DataFrame,
    basis: str = "auto",
    basis_file: str | None = None,
    thresholds: Thresholds | None = None,
) -> SuperpositionResult:
    """Per layer and expert the packing of the layer's basis, and per layer and feature its
    usage-weighted figures (routing load: captured where the routing stage had it)."""
    thresholds = thresholds or Thresholds()
    result = SuperpositionResult()
    layout = model.layout
    sparsity = config_value(model.checkpoint.config, layout.spec.config.get("feature_sparsity", []))
    for layer in layout.moe_layers:
        moe = layout.layers[layer]
        if not moe.experts:
            result.warnings.append(
                f"layer {layer}: no expert weights recognised; superposition not measurable here"
            )
            continue
        found = layer_basis(model, layer, gates[layer], basis, basis_file, result.warnings)
        load, source = _layer_load(routing, layer, moe.n_experts, result.warnings)
        weights = usage_weights(load)
        experts = [
            expert_features(
                found.directions @ read_expert_inputs(model.reader, moe, e).T, thresholds
            )
            for e in range(moe.n_experts)
        ]
        totals = layer_aggregates(experts, weights)
        common = {"layer": layer, "basis": found.name}
        for e, features in enumerate(experts):
            result.experts.append(
                {
                    **common,
                    "expert": e,
                    **features.summary(),
                    "top_k": moe.top_k,
                    "n_experts": moe.n_experts,
                    "load": load[e],
                    "weight": weights[e],
                    "load_source": source,
                    "layer_dimensionality": totals["layer_dimensionality"],
                    "layer_dims_per_feature": totals["layer_dims_per_feature"],
                    "layer_monosemanticity": totals["layer_monosemanticity"],
                    "feature_sparsity": sparsity if is_finite_number(sparsity) else np.nan,
                }
            )
        result.features.append(
            pd.DataFrame(
                {
                    **common,
                    "feature": found.features,
                    "global_dimensionality": totals["global_dimensionality"],
                    "max_norm": totals["max_norm"],
                    "dedicated_weight": totals["dedicated_weight"],
                    "represented_weight": totals["represented_weight"],
                    **{f"experts_{c}": totals["experts"][c] for c in CLASSES},
                }
            )
        )
    return result


def _layer_load(
    routing: pd.DataFrame, layer: int, n_experts: int, warnings: list[str]
) -> tuple[np.ndarray, str]:
    """(load per expert, its source: captured or probe) of ``layer`` from the routing table."""
    rows = routing[routing.layer == layer].sort_values("expert")
    if len(rows) != n_experts:
        warnings.append(f"layer {layer}: no routing load; experts weighted equally")
        return np.full(n_experts, np.nan), "none"
    return rows.load.to_numpy(dtype=np.float64), str(rows.source.iloc[0])
