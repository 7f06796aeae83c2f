"""The routing stage: per-expert load and mean probability, coactivation, probe agreement."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from moetopo.artefacts import columns
from moetopo.artefacts.views import GateLayer
from moetopo.checkpoint.captured import check_layers, load_captured
from moetopo.checkpoint.model import OpenModel
from moetopo.checkpoint.probes import normalised_embeddings, probe_token_ids
from moetopo.errors import MoetopoError
from moetopo.routing.rule import RoutingRule, coactivation_counts, route, selection_matrix


@dataclass
class RoutingResult:
    routing: list[dict] = field(default_factory=list)
    coactivation: list[dict] = field(default_factory=list)
    agreement: list[dict] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def tables(self) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
        return (
            pd.concat([pd.DataFrame(r) for r in self.routing], ignore_index=True),
            pd.concat([pd.DataFrame(r) for r in self.coactivation], ignore_index=True),
            pd.DataFrame(self.agreement, columns=columns("routing_agreement")),
        )


def layer_rule(model: OpenModel, layer: int) -> RoutingRule:
    moe = model.layout.layers[layer]
    return RoutingRule.from_summary(model.layout.routing, top_k=moe.top_k)


def routing_tables(
    model: OpenModel,
    gates: Mapping[int, GateLayer],
    probe_tokens: int,
    seed: int,
    captured: str | None = None,
) -> RoutingResult:
    """Route every MoE layer with captured logits when given, probe tokens otherwise."""
    result = RoutingResult()
    layers = model.layout.moe_layers
    logits_by_layer, token_ids = {}, None
    if captured:
        logits_by_layer, token_ids, _ = load_captured(captured)
        _check_captured(model, logits_by_layer, captured, result.warnings)
    probe_ids = probe_token_ids(model, probe_tokens, seed)
    probe_x = normalised_embeddings(model, probe_ids)
    same_x = normalised_embeddings(model, token_ids) if token_ids is not None else None
    for layer in layers:
        gate = gates[layer]  # one read of the layer's router, whatever holds the gates
        weight, bias, selection = gate.weight, gate.bias, gate.selection
        rule = layer_rule(model, layer)
        if gate.nonfinite:
            result.warnings.append(
                f"layer {layer}: non-finite router rows {list(gate.nonfinite)} "
                "were zeroed for routing"
            )
        probe = route(probe_x @ weight.T, rule, bias, selection)
        if layer in logits_by_layer:
            # captured logits are the router's output, its linear's bias already in them;
            # a selection bias (DeepSeek's correction) is outside the linear and still added
            used = route(logits_by_layer[layer], rule, None, selection)
            source = "captured"
            reference = (
                route(same_x @ weight.T, rule, bias, selection) if same_x is not None else probe
            )
            result.agreement.append(_agreement(layer, used, reference, same_x is not None))
        else:
            used, source = probe, "probe"
        _add_layer(result, layer, used, source, weight.shape[0])
    return result


def _check_captured(model, logits_by_layer, path, warnings) -> None:
    layout = model.layout
    for layer, logits in logits_by_layer.items():
        if logits.ndim != 2:
            raise MoetopoError(f"{path}: layer {layer} logits are not [tokens, experts]")
    shapes = {layer: logits.shape for layer, logits in logits_by_layer.items()}
    experts = {layer: layout.layers[layer].n_experts for layer in layout.moe_layers}
    warnings.extend(check_layers(shapes, experts, path))
    for layer, logits in logits_by_layer.items():
        if not np.isfinite(logits).all():
            raise MoetopoError(f"{path}: layer {layer} logits contain NaN or Inf")


def _add_layer(result: RoutingResult, layer: int, routed, source: str, n_experts: int) -> None:
    counts = coactivation_counts(routed.experts, n_experts)
    tokens = routed.experts.shape[0]
    load = np.diag(counts) / tokens
    result.routing.append(
        {
            "layer": layer,
            "expert": np.arange(n_experts),
            "load": load,
            "mean_prob": routed.scores.mean(axis=0),
            "source": source,
            "count": np.diag(counts),
            "tokens": tokens,
        }
    )
    i, j = np.triu_indices(n_experts)
    result.coactivation.append(
        {"layer": layer, "i": i, "j": j, "count": counts[i, j], "rate": counts[i, j] / tokens}
    )


def _agreement(layer: int, captured, probe, same_tokens: bool) -> dict:
    """How far the weights-only probe reproduces captured routing."""
    from scipy.stats import spearmanr  # imported here: scipy.stats is slow to import

    n_experts = captured.scores.shape[1]
    load_c = selection_matrix(captured.experts, n_experts).mean(axis=0)
    load_p = selection_matrix(probe.experts, n_experts).mean(axis=0)
    rho = spearmanr(load_c, load_p).statistic if np.ptp(load_c) and np.ptp(load_p) else np.nan
    overlap = np.nan
    if same_tokens:
        hits = selection_matrix(captured.experts, n_experts) & selection_matrix(
            probe.experts, n_experts
        )
        overlap = hits.sum(axis=1).mean() / captured.experts.shape[1]
    return {
        "layer": layer,
        "n_tokens": captured.experts.shape[0],
        "load_spearman": float(rho),
        "topk_overlap": float(overlap),
        "same_tokens": same_tokens,
    }
