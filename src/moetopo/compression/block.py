"""A layer's routed experts as the model runs them, with experts removed, redirected or merged.

Only the routed part of the MoE block is computed: shared experts see every token whatever
is pruned, so they add the same term to the full and the reduced output, and leaving them
out makes every relative error the larger, stricter figure.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from moetopo.checkpoint.experts import ExpertWeights, expert_output
from moetopo.routing.rule import Routed, RoutingRule, route


@dataclass
class RoutedBlock:
    """Router, routing rule and experts (read on demand, cached within ``cache_bytes``)."""

    router: np.ndarray  # [E, H]
    rule: RoutingRule
    read: Callable[[int], ExpertWeights]
    activation: str
    limit: float | None = None
    router_bias: np.ndarray | None = None  # added to the logits (gpt-oss)
    selection_bias: np.ndarray | None = None  # steers the choice only (DeepSeek-V3)
    cache_bytes: int = 256 << 20
    _cache: OrderedDict = field(default_factory=OrderedDict, repr=False)

    @property
    def n_experts(self) -> int:
        return self.router.shape[0]

    def expert(self, e: int) -> ExpertWeights:
        if e in self._cache:
            self._cache.move_to_end(e)
            return self._cache[e]
        weights = self.read(e)
        self._cache[e] = weights
        while len(self._cache) > 2 and sum(w.nbytes for w in self._cache.values()) > (
            self.cache_bytes
        ):
            self._cache.popitem(last=False)
        return weights

    def route(self, x: np.ndarray, allowed: np.ndarray | None = None) -> Routed:
        logits = x.astype(np.float64) @ self.router.T.astype(np.float64)
        return route(logits, self.rule, self.router_bias, self.selection_bias, allowed)

    def output(self, x: np.ndarray, experts: np.ndarray, weights: np.ndarray, weights_of=None):
        """sum over a token's slots of weight * f_expert(x): [T, H]. ``weights_of`` maps an
        expert id to replacement weights (a merged expert)."""
        weights_of = weights_of or {}
        out = np.zeros(x.shape, dtype=np.float64)
        for e in np.unique(experts):
            hit = experts == e
            tokens = np.flatnonzero(hit.any(axis=1))
            gate = np.where(hit[tokens], weights[tokens], 0.0).sum(axis=1)  # slots add up
            w = weights_of[int(e)] if int(e) in weights_of else self.expert(int(e))
            out[tokens] += gate[:, None] * expert_output(w, x[tokens], self.activation, self.limit)
        return out


@dataclass(frozen=True)
class Reduction:
    """A reduced expert set, one of two kinds.

    ``drop``: the experts outside ``kept`` are gone with their router rows; each token is
    routed again among the survivors. ``map``: routing is unchanged and each selected
    expert e is served by ``target[e]`` (itself when kept), whose weights are ``merged[t]``
    where a merge replaced them; weights of slots landing on one expert add up.
    """

    kind: str
    kept: np.ndarray  # bool [E]
    target: np.ndarray | None = None  # int [E], map only
    merged: dict[int, ExpertWeights] = field(default_factory=dict)


def dropped(n_experts: int, keep: np.ndarray) -> Reduction:
    kept = np.zeros(n_experts, dtype=bool)
    kept[np.asarray(keep, dtype=np.int64)] = True
    return Reduction("drop", kept)


def redirected(target: np.ndarray, merged: dict[int, ExpertWeights] | None = None) -> Reduction:
    target = np.asarray(target, dtype=np.int64)
    kept = target == np.arange(len(target))
    if not kept[target].all():
        raise ValueError("every expert must be served by a kept expert")
    return Reduction("map", kept, target, dict(merged or {}))


@dataclass(frozen=True)
class Comparison:
    """The reduced block against the full one on the same tokens."""

    relative_error: float  # sum ||y - y'||^2 / sum ||y||^2
    cosine: float  # mean over tokens of cos(y, y'), tokens with y = 0 left out
    changed: float  # fraction of tokens served by another expert set than in the full model


def reduced_output(block: RoutedBlock, x: np.ndarray, reduction: Reduction, full: Routed):
    """(output [T, H], bool [T] whether the token's experts changed) of ``reduction``."""
    if reduction.kind == "drop":
        routed = block.route(x, reduction.kept)
        before = np.sort(full.experts, axis=1)
        changed = (np.sort(routed.experts, axis=1) != before).any(axis=1)
        return block.output(x, routed.experts, routed.weights), changed
    served = reduction.target[full.experts]
    touched = ~reduction.kept | np.isin(np.arange(block.n_experts), list(reduction.merged))
    changed = touched[full.experts].any(axis=1)
    return block.output(x, served, full.weights, reduction.merged), changed


def compare(reference: np.ndarray, reduced: np.ndarray, changed: np.ndarray) -> Comparison:
    scale = float(np.sum(reference**2))
    error = float(np.sum((reference - reduced) ** 2))
    norms = np.linalg.norm(reference, axis=1) * np.linalg.norm(reduced, axis=1)
    live = norms > 0
    cosine = np.sum(reference[live] * reduced[live], axis=1) / norms[live]
    return Comparison(
        relative_error=error / scale if scale > 0 else 0.0,
        cosine=float(cosine.mean()) if live.any() else float("nan"),
        changed=float(np.mean(changed)),
    )


def frequency_weighted_merge(block: RoutedBlock, members, load: np.ndarray) -> ExpertWeights:
    """The expert whose weights are the load-weighted mean of ``members``' (HC-SMoE's merge;
    equal weights when none of them was routed to)."""
    members = sorted(int(m) for m in members)
    w = np.asarray([load[m] for m in members], dtype=np.float64)
    w = w / w.sum() if w.sum() > 0 else np.full(len(members), 1.0 / len(members))
    parts = [block.expert(m) for m in members]
    return ExpertWeights(
        **{
            name: None
            if value is None
            else np.tensordot(w, np.stack([vars(p)[name] for p in parts]), axes=1).astype(
                value.dtype
            )
            for name, value in vars(parts[0]).items()
        }
    )
