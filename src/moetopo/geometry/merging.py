"""Merging experts the way merging compressors do, and what it costs: the merge barrier."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

from moetopo.checkpoint.experts import ExpertWeights, expert_output, merged


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
        # members in one canonical order: floating-point sums depend on the order, and a
        # barrier of a set must not depend on how the caller lists it
        members = [self._expert(e) for e in sorted(set(experts))]
        combined = merged([w for w, _ in members])
        out = expert_output(combined, self.tokens, self.activation, self.limit)
        error = sum(float(np.sum((o - out) ** 2)) for _, o in members)
        scale = sum(float(np.sum(o**2)) for _, o in members)
        return error / scale if scale > 0 else 0.0
