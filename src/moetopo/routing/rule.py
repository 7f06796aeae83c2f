"""Routing rules: router logits -> each token's selected experts, as each family routes.

``scores`` is what a rule computes for every expert before selection (softmax
probabilities, or sigmoid scores); the routing stage reports their mean per
expert as ``mean_prob``. Ties between equal scores go to the lower expert index,
so every rule is deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class RoutingRule:
    """A family's routing rule with its parameters (from model.json's ``routing``)."""

    rule: str
    top_k: int
    n_group: int | None = None
    topk_group: int | None = None
    norm_topk_prob: bool | None = None
    routed_scaling_factor: float | None = None
    topk_method: str | None = None  # DeepSeek-V2: "greedy" ignores the groups
    jitter_eps: float | None = None  # PhiMoE's SparseMixer: relative mask width

    @classmethod
    def from_summary(cls, routing: dict, top_k: int | None = None) -> RoutingRule:
        return cls(
            rule=routing["rule"],
            top_k=int(top_k or routing["top_k"]),
            n_group=routing.get("n_group"),
            topk_group=routing.get("topk_group"),
            norm_topk_prob=routing.get("norm_topk_prob"),
            routed_scaling_factor=routing.get("routed_scaling_factor"),
            topk_method=routing.get("topk_method"),
            jitter_eps=routing.get("jitter_eps"),
        )


@dataclass(frozen=True)
class Routed:
    """Selected experts [T, k] (by decreasing weight), their weights, and all scores [T, E]."""

    experts: np.ndarray
    weights: np.ndarray
    scores: np.ndarray


# Rules whose choice and weights depend on logit differences only, so that a vector added
# to every router row changes nothing (sparsemixer's mask width scales with |logit|).
SHIFT_INVARIANT_RULES = frozenset(
    {"softmax_topk", "softmax_bias_topk", "topk_softmax", "softmax_group_topk"}
)


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def top_k(values: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest values per row, largest first, ties to the lower index."""
    order = np.argsort(-values, axis=-1, kind="stable")
    return order[:, :k]


def _normalise(weights: np.ndarray, on: bool | None) -> np.ndarray:
    if on:
        return weights / (weights.sum(axis=-1, keepdims=True) + 1e-20)
    return weights


def _group_mask(choice: np.ndarray, n_group: int, topk_group: int, per_group: str) -> np.ndarray:
    """Keep only the experts of each token's ``topk_group`` best groups (DeepSeek)."""
    tokens, n_experts = choice.shape
    if n_experts % n_group:
        raise ValueError(f"{n_experts} experts do not split into {n_group} groups")
    grouped = choice.reshape(tokens, n_group, n_experts // n_group)
    if per_group == "top2_sum":  # V3: sum of each group's two best scores
        best = np.sort(grouped, axis=-1)[..., -2:].sum(axis=-1)
    else:  # V2 group_limited_greedy: each group's best score
        best = grouped.max(axis=-1)
    keep = np.zeros((tokens, n_group), dtype=bool)
    np.put_along_axis(keep, top_k(best, topk_group), True, axis=1)
    return np.repeat(keep, n_experts // n_group, axis=1)


def sparsemixer(z: np.ndarray, k: int, jitter_eps: float) -> tuple[np.ndarray, np.ndarray]:
    """PhiMoE's SparseMixer at inference: the i-th expert is the best logit not yet
    chosen; its weight is its softmax among the unchosen logits within ``2 * jitter_eps``
    of it, relative to max(|logit|, best). Phi-3.5-MoE runs it for k = 2."""
    tokens, n_experts = z.shape
    chosen = np.zeros_like(z, dtype=bool)
    experts = np.empty((tokens, k), dtype=np.int64)
    weights = np.empty((tokens, k))
    rows = np.arange(tokens)
    for i in range(k):
        masked = np.where(chosen, -np.inf, z)
        best = np.argmax(masked, axis=1)  # the first maximum: ties to the lower index
        top = masked[rows, best][:, None]
        with np.errstate(divide="ignore", invalid="ignore"):
            far = (top - z) / np.maximum(np.abs(z), top) > 2 * jitter_eps
        kept = np.where(chosen | far, -np.inf, z)
        weights[:, i] = 1.0 / np.exp(kept - top).sum(axis=1)
        experts[:, i] = best
        chosen[rows, best] = True
    return experts, weights


def groups_survive(allowed: np.ndarray, rule: RoutingRule) -> bool:
    """Whether a pruned checkpoint keeping ``allowed`` experts can keep ``rule``'s group-
    limited routing: every contiguous group keeps the same number of experts (a config has
    one group size), at least two where the group score is a top-2 sum, and the chosen
    groups together hold top_k of them."""
    allowed = np.asarray(allowed, dtype=bool)
    n_group = rule.n_group or 1
    if n_group <= 1:
        return True
    if allowed.size % n_group:
        return False
    counts = allowed.reshape(n_group, -1).sum(axis=1)
    need = 2 if rule.rule == "sigmoid_group_topk" else 1
    enough = counts[0] * (rule.topk_group or 1) >= rule.top_k
    return bool((counts == counts[0]).all() and counts[0] >= need and enough)


def route(
    logits: np.ndarray,
    rule: RoutingRule,
    bias: np.ndarray | None = None,
    selection_bias: np.ndarray | None = None,
    allowed: np.ndarray | None = None,
) -> Routed:
    """Apply ``rule`` to router logits [T, E].

    ``bias`` is added to the logits (gpt-oss); ``selection_bias`` only steers which
    experts are chosen (DeepSeek-V3's e_score_correction_bias, LFM2's expert_bias,
    Ernie's moe_statics), never the weights. ``allowed`` (bool [E]) routes as a checkpoint
    whose other experts were pruned with their router rows: they get no score (softmax
    renormalises over the rest) and are never chosen. Group routing keeps its groups where
    :func:`groups_survive`, and otherwise routes without them, as such a pruned checkpoint
    must (n_group = topk_group = 1).
    """
    z = np.asarray(logits, dtype=np.float64)
    if bias is not None:
        z = z + bias
    k = rule.top_k
    sel = 0.0 if selection_bias is None else np.asarray(selection_bias, dtype=np.float64)
    if allowed is not None:
        if np.count_nonzero(allowed) < k:
            raise ValueError(f"{np.count_nonzero(allowed)} experts allowed, fewer than top_k {k}")
        z = np.where(allowed, z, -np.inf)
        sel = np.where(allowed, sel, -np.inf)  # no selection bias lifts a pruned expert
    name = rule.rule
    if name == "sparsemixer":
        scores = softmax(z)
        eps = 0.01 if rule.jitter_eps is None else rule.jitter_eps
        experts, weights = sparsemixer(z + sel, k, eps)
    elif name in ("softmax_topk", "softmax_bias_topk"):
        scores = softmax(z)
        experts = top_k(scores + sel, k)
        weights = _normalise(np.take_along_axis(scores, experts, 1), rule.norm_topk_prob)
    elif name == "topk_softmax":
        scores = softmax(z)
        experts = top_k(z, k)
        weights = softmax(np.take_along_axis(z, experts, 1))
    elif name == "topk_sigmoid":
        scores = sigmoid(z)
        experts = top_k(z, k)
        weights = np.take_along_axis(scores, experts, 1)
    elif name == "sigmoid_topk":
        scores = sigmoid(z)
        experts = top_k(scores + sel, k)
        weights = _normalise(np.take_along_axis(scores, experts, 1), rule.norm_topk_prob)
    elif name in ("sigmoid_group_topk", "softmax_group_topk"):
        scores = sigmoid(z) if name == "sigmoid_group_topk" else softmax(z)
        choice = scores + sel
        n_group, topk_group = rule.n_group or 1, rule.topk_group or 1
        greedy = name == "softmax_group_topk" and rule.topk_method == "greedy"
        if allowed is not None and not groups_survive(allowed, rule):
            n_group = 1  # as the pruned checkpoint must route: no groups left to limit
        if n_group > 1 and not greedy:
            score = "top2_sum" if name.startswith("sigmoid") else "max"
            keep = _group_mask(choice, n_group, topk_group, score)
            choice = np.where(keep, choice, -np.inf)  # as transformers masks other groups
        experts = top_k(choice, k)
        weights = _normalise(np.take_along_axis(scores, experts, 1), rule.norm_topk_prob)
        weights = weights * (rule.routed_scaling_factor or 1.0)
    else:
        raise ValueError(f"unknown routing rule {name!r}")
    order = np.argsort(-weights, axis=1, kind="stable")
    return Routed(
        np.take_along_axis(experts, order, 1),
        np.take_along_axis(weights, order, 1),
        scores,
    )


def selection_matrix(experts: np.ndarray, n_experts: int) -> np.ndarray:
    """Boolean [T, E]: which experts each token selected."""
    chosen = np.zeros((experts.shape[0], n_experts), dtype=bool)
    np.put_along_axis(chosen, experts, True, axis=1)
    return chosen


def coactivation_counts(experts: np.ndarray, n_experts: int) -> np.ndarray:
    """[E, E] counts of tokens selecting both i and j; the diagonal is each expert's load."""
    chosen = selection_matrix(experts, n_experts).astype(np.int64)
    return chosen.T @ chosen
