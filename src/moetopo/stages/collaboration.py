"""The collaboration stage: CT-MoE-style collaboration matrices S per MoE layer, from the
checkpoint's learned parameter (where it has one), from routing and from router rows;
what each S says (row entropy, spectrum, stationary distribution), whether its strongest
collaborators are the experts' nearest neighbours by each distance of expert_distances,
and each expert's domain specialisation where the captured routing records domains.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from moetopo.artefacts import columns
from moetopo.artefacts.views import GateLayer, coactivation_matrix, distance_matrices
from moetopo.checkpoint.captured import load_captured
from moetopo.checkpoint.model import OpenModel
from moetopo.collaboration.agreement import neighbour_agreement, neighbour_count
from moetopo.collaboration.matrices import coactivation_scores, ct_moe_matrix, router_scores
from moetopo.collaboration.specialisation import domain_shares, specialisation
from moetopo.collaboration.spectrum import summary
from moetopo.errors import MoetopoError
from moetopo.families.moe_rules import config_value
from moetopo.routing.rule import SHIFT_INVARIANT_RULES, RoutingRule, route, selection_matrix

SOURCES = ("learned", "coactivation", "router")
# S and a distance computed from the same data: their agreement is expected, not found
SHARED_BASIS = {
    "coactivation": {"coactivation"},
    "router": {"router_l1", "router_cosine", "router_l2"},
}


@dataclass(frozen=True)
class CollaborationSettings:
    sources: tuple[str, ...] = SOURCES
    router_temperature: float = 0.1
    neighbours: float = 0.25  # k = this share of an expert's E - 1 partners, rounded up
    permutations: int = 999
    seed: int = 0


@dataclass
class CollaborationResult:
    summary: list[dict] = field(default_factory=list)
    entries: list[dict] = field(default_factory=list)
    agreement: list[dict] = field(default_factory=list)
    specialisation: list[dict] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def tables(self) -> dict[str, pd.DataFrame]:
        """Artefact name -> table, the agreement p-values adjusted over the model's tests."""
        from scipy.stats import false_discovery_control

        agreement = pd.DataFrame(self.agreement, columns=columns("collaboration_agreement"))
        if len(agreement):
            agreement["p_adjusted"] = false_discovery_control(agreement.p_value, method="bh")
        return {
            "collaboration": pd.DataFrame(self.summary, columns=columns("collaboration")),
            "collaboration_entries": pd.DataFrame(
                {k: np.concatenate([e[k] for e in self.entries]) for k in self.entries[0]}
                if self.entries
                else None,
                columns=columns("collaboration_entries"),
            ),
            "collaboration_agreement": agreement,
            "domain_specialisation": pd.DataFrame(
                self.specialisation, columns=columns("domain_specialisation")
            ),
        }


@dataclass(frozen=True)
class LayerMatrix:
    source: str
    matrix: np.ndarray
    basis: str  # what S was built from
    temperature: float
    dangling: int


def collaboration_tables(
    model: OpenModel,
    gates: Mapping[int, GateLayer],
    coactivation: pd.DataFrame,
    routing: pd.DataFrame,
    distances: pd.DataFrame,
    settings: CollaborationSettings,
    captured: str | None = None,
) -> CollaborationResult:
    """Every collaboration artefact of the model's MoE layers."""
    unknown = sorted(set(settings.sources) - set(SOURCES))
    if unknown:
        raise MoetopoError(f"collaboration.sources: unknown {unknown} (known: {list(SOURCES)})")
    result = CollaborationResult()
    by_layer = {}
    for layer, source, matrix in distance_matrices(distances):
        by_layer.setdefault(layer, {})[source] = matrix
    for layer in model.layout.moe_layers:
        built_matrices = layer_matrices(
            model, layer, gates[layer], coactivation, routing, settings, result.warnings
        )
        for built in built_matrices:
            _add_matrix(result, layer, built)
            _add_agreement(result, layer, built, by_layer.get(layer, {}), settings)
    if captured:
        _add_specialisation(result, model, gates, captured)
    return result


def layer_matrices(
    model: OpenModel,
    layer: int,
    gate: GateLayer,
    coactivation: pd.DataFrame,
    routing: pd.DataFrame,
    settings: CollaborationSettings,
    warnings: list[str],
) -> list[LayerMatrix]:
    """The layer's S of each configured source it has."""
    moe = model.layout.layers[layer]
    n = moe.n_experts
    built = []
    learned = model.layout.tensors_of("collaboration", layer)
    if "learned" in settings.sources and learned:
        raw = model.reader.read(learned[0], dtype=np.float64)
        if raw.shape != (n, n):
            raise MoetopoError(
                f"{model.layout.root}: {learned[0]} has shape {list(raw.shape)}, expected the "
                f"[{n}, {n}] collaboration of layer {layer}'s {n} experts"
            )
        temperature = learned_temperature(model)
        s, dangling = ct_moe_matrix(raw, temperature)
        built.append(LayerMatrix("learned", s, "checkpoint", temperature, dangling))
    if "coactivation" in settings.sources:
        if moe.top_k < 2:
            warnings.append(
                f"layer {layer}: top-{moe.top_k} routing selects no two experts together, "
                "so it has no coactivation S"
            )
        else:
            counts = coactivation_matrix(coactivation, layer, n, "count")
            s, dangling = ct_moe_matrix(coactivation_scores(counts))
            basis = routing[routing.layer == layer].source.iloc[0]
            built.append(LayerMatrix("coactivation", s, f"{basis} routing", 1.0, dangling))
    if "router" in settings.sources:
        centre = model.layout.routing["rule"] in SHIFT_INVARIANT_RULES
        scores = router_scores(gate.weight, centre)
        s, dangling = ct_moe_matrix(scores, settings.router_temperature)
        basis = "centred router rows" if centre else "router rows"
        built.append(LayerMatrix("router", s, basis, settings.router_temperature, dangling))
    return built


def learned_temperature(model: OpenModel) -> float:
    """The softmax temperature of the learned S, as the family's config key gives it."""
    spec = model.layout.spec
    value = config_value(model.checkpoint.config, spec.config.get("collaboration_temperature", []))
    return float(value if value is not None else spec.defaults.get("collaboration_temperature", 1))


def _add_matrix(result: CollaborationResult, layer: int, built: LayerMatrix) -> None:
    n = len(built.matrix)
    key = {"layer": layer, "source": built.source}
    result.summary.append(
        key
        | {"basis": built.basis, "temperature": built.temperature, "dangling": built.dangling}
        | summary(built.matrix)
    )
    i, j = np.divmod(np.arange(n * n), n)
    result.entries.append(
        {
            "layer": np.full(n * n, layer),
            "source": np.full(n * n, built.source, dtype=object),
            "i": i,
            "j": j,
            "weight": built.matrix.ravel(),
        }
    )


def _add_agreement(
    result: CollaborationResult,
    layer: int,
    built: LayerMatrix,
    distances: dict[str, np.ndarray],
    settings: CollaborationSettings,
) -> None:
    n = len(built.matrix)
    k = neighbour_count(n, settings.neighbours)
    for index, (source, matrix) in enumerate(sorted(distances.items())):
        found = neighbour_agreement(
            built.matrix, matrix, k, settings.permutations, [settings.seed, layer, index]
        )
        result.agreement.append(
            {
                "layer": layer,
                "source": built.source,
                "distance_source": source,
                "k": found.k,
                "overlap": found.overlap,
                "null_mean": found.null_mean,
                "p_value": found.p_value,
                "n_permutations": found.n_permutations,
                "exact": found.exact,
                "shared_basis": source in SHARED_BASIS.get(built.source, ()),
            }
        )


def _add_specialisation(
    result: CollaborationResult, model: OpenModel, gates: Mapping[int, GateLayer], captured: str
) -> None:
    """Each expert's specialisation between the captured text's two domains, routed as the
    routing stage routes captured logits."""
    logits_by_layer, _, meta = load_captured(captured)
    domains = meta.get("domains")
    if not domains:
        result.warnings.append(
            f"{captured}: the capture records no domains (capture with "
            "--domain NAME=START:STOP), so no domain specialisation"
        )
        return
    if len(domains) != 2:
        result.warnings.append(
            f"{captured}: specialisation compares two domains, the capture has {sorted(domains)}"
        )
        return
    (name_a, (a0, a1)), (name_b, (b0, b1)) = sorted(domains.items(), key=lambda d: d[1][0])
    layout = model.layout
    for layer in sorted(set(logits_by_layer) & set(layout.moe_layers)):
        logits = logits_by_layer[layer]
        if max(a1, b1) > len(logits):
            raise MoetopoError(
                f"{captured}: domain token ranges {domains} pass the {len(logits)} tokens "
                f"of layer {layer}"
            )
        moe = layout.layers[layer]
        rule = RoutingRule.from_summary(layout.routing, top_k=moe.top_k)
        chosen = route(logits, rule, None, gates[layer].selection).experts
        selected = selection_matrix(chosen, moe.n_experts)
        share_a, share_b = domain_shares(selected[a0:a1]), domain_shares(selected[b0:b1])
        for expert, (fa, fb, spec) in enumerate(
            zip(share_a, share_b, specialisation(share_a, share_b), strict=True)
        ):
            result.specialisation.append(
                {
                    "layer": layer,
                    "expert": expert,
                    "domain_a": name_a,
                    "domain_b": name_b,
                    "share_a": float(fa),
                    "share_b": float(fb),
                    "specialisation": float(spec),
                    "tokens_a": a1 - a0,
                    "tokens_b": b1 - b0,
                }
            )
