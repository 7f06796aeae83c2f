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
    """Router, routing rule and experts (read on demand, cached within ``cache_bytes``).

    The block remembers what it computed on the last token array it was given (a copy of
    it, compared by value on every call): the router logits, and each expert's outputs on
    the tokens it served, at most ``memo_slots`` x top_k of them per token (the full
    routing's, then the first new pairs of later routings; 0 turns the memo off). An
    expert's output on a token depends on the two alone, so a later routing of the same
    tokens (experts dropped, redirected, merged) computes only the (token, expert) pairs
    not yet held, and reads only the experts that serve them; replaced weights
    (``weights_of``) are always computed. The memo is token-sized: T x memo_slots x top_k
    x H values, whatever the experts' size.
    """

    router: np.ndarray  # [E, H]
    rule: RoutingRule
    read: Callable[[int], ExpertWeights]
    activation: str
    limit: float | None = None
    router_bias: np.ndarray | None = None  # added to the logits (gpt-oss)
    selection_bias: np.ndarray | None = None  # steers the choice only (DeepSeek-V3)
    cache_bytes: int = 256 << 20
    memo_slots: float = 2.0
    _cache: OrderedDict = field(default_factory=OrderedDict, repr=False)
    _memo: _TokenMemo | None = field(default=None, repr=False)

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
        memo = self._memo_for(x)
        logits = None if memo is None else memo.logits
        if logits is None:
            logits = x.astype(np.float64) @ self.router.T.astype(np.float64)
            if memo is not None:
                memo.logits = logits
        return route(logits, self.rule, self.router_bias, self.selection_bias, allowed)

    def output(self, x: np.ndarray, experts: np.ndarray, weights: np.ndarray, weights_of=None):
        """sum over a token's slots of weight * f_expert(x): [T, H]. ``weights_of`` maps an
        expert id to replacement weights (a merged expert)."""
        weights_of = weights_of or {}
        memo = self._memo_for(x)
        out = np.zeros(x.shape, dtype=np.float64)
        for e in np.unique(experts):
            hit = experts == e
            tokens = np.flatnonzero(hit.any(axis=1))
            gate = np.where(hit[tokens], weights[tokens], 0.0).sum(axis=1)  # slots add up
            if int(e) in weights_of:
                f = expert_output(weights_of[int(e)], x[tokens], self.activation, self.limit)
            else:
                f = self._expert_output(int(e), x, tokens, memo)
            out[tokens] += gate[:, None] * f
        return out

    def _expert_output(self, e: int, x: np.ndarray, tokens: np.ndarray, memo) -> np.ndarray:
        """f_e(x[tokens]), from the memo where it holds them."""
        if memo is None:
            return expert_output(self.expert(e), x[tokens], self.activation, self.limit)
        have, values = memo.outputs.get(e, (tokens[:0], None))
        if values is not None and np.array_equal(have, tokens):
            return values
        at = np.minimum(np.searchsorted(have, tokens), max(len(have) - 1, 0))
        found = have[at] == tokens if len(have) else np.zeros(len(tokens), dtype=bool)
        missing = tokens[~found]
        if not len(missing):
            return values[at]
        new = expert_output(self.expert(e), x[missing], self.activation, self.limit)
        memo.add(e, missing, new)
        if values is None:
            return new
        f = np.empty((len(tokens), *new.shape[1:]), dtype=np.result_type(values, new))
        f[found] = values[at[found]]
        f[~found] = new
        return f

    def _memo_for(self, x: np.ndarray) -> _TokenMemo | None:
        """The memo of ``x`` (a new one, replacing the last, if it is another array)."""
        memo = self._memo
        if memo is not None and memo.holds(x):
            return memo
        self._memo = None
        if self.memo_slots <= 0 or x.ndim != 2:
            return None
        budget = int(self.memo_slots * self.rule.top_k * x.size * max(x.itemsize, 4))
        self._memo = _TokenMemo(np.array(x, copy=True), budget)
        return self._memo


@dataclass
class _TokenMemo:
    """What a block computed on one token array: its router logits and, per expert, its
    outputs on sorted token indices."""

    x: np.ndarray
    budget: int  # bytes of outputs it may hold
    nbytes: int = 0
    logits: np.ndarray | None = None
    outputs: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)

    def holds(self, x: np.ndarray) -> bool:
        return x.shape == self.x.shape and x.dtype == self.x.dtype and np.array_equal(x, self.x)

    def add(self, e: int, tokens: np.ndarray, values: np.ndarray) -> None:
        if self.nbytes + values.nbytes > self.budget:
            return
        self.nbytes += values.nbytes
        if e not in self.outputs:
            self.outputs[e] = (tokens, values)
            return
        have, old = self.outputs[e]
        merged = np.concatenate([have, tokens])
        order = np.argsort(merged, kind="stable")
        self.outputs[e] = (merged[order], np.concatenate([old, values])[order])


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
    equal weights when none of them was routed to).

    Members that fit in the expert cache together give exactly
    ``np.tensordot(w, np.stack(parts), axes=1).astype(dtype)``, computed by the same
    float64 dot product a block of elements at a time, without the stacked copy and its
    float64 twin (a merge of a dozen experts held both). A larger cluster is summed one
    member at a time into float64 accumulators, so at most one member beyond the cache is
    held whatever the cluster's size; its float64 sums may round differently in the last
    bit (the dot product fuses multiply and add), so a rare weight differs by one float32
    unit in the last place from the stacked product's."""
    members = sorted(int(m) for m in members)
    w = np.asarray([load[m] for m in members], dtype=np.float64)
    w = w / w.sum() if w.sum() > 0 else np.full(len(members), 1.0 / len(members))
    first = block.expert(members[0])
    names = [name for name, value in vars(first).items() if value is not None]
    if len(members) * first.nbytes <= block.cache_bytes:
        parts = [vars(block.expert(m)) for m in members]
        merged = {name: _weighted_sum(w, [p[name] for p in parts]) for name in names}
    else:
        acc = {name: np.multiply(vars(first)[name], w[0], dtype=np.float64) for name in names}
        for weight, m in zip(w[1:], members[1:], strict=True):
            part = vars(block.expert(m))
            for name in names:
                _add_scaled(acc[name], part[name], weight)
        merged = {name: acc[name].astype(vars(first)[name].dtype) for name in names}
    return ExpertWeights(**{name: merged.get(name) for name in vars(first)})


def _weighted_sum(w: np.ndarray, arrays: list[np.ndarray], chunk: int = 1 << 16) -> np.ndarray:
    """``np.tensordot(w, np.stack(arrays), axes=1)`` rounded to the arrays' dtype, the same
    dot product over ``chunk`` elements at a time (float64 [members, chunk] buffers)."""
    flat = [np.ascontiguousarray(a).reshape(-1) for a in arrays]
    out = np.empty(flat[0].shape, dtype=arrays[0].dtype)
    size = min(chunk, len(out))
    stacked = np.empty((len(flat), size), dtype=np.float64)
    acc = np.empty(size, dtype=np.float64)
    for start in range(0, len(out), chunk):
        stop = min(start + chunk, len(out))
        block, into = stacked[:, : stop - start], acc[: stop - start]
        for row, values in zip(block, flat, strict=True):
            row[...] = values[start:stop]
        np.dot(w, block, out=into)
        out[start:stop] = into
    return out.reshape(arrays[0].shape)


def _add_scaled(acc: np.ndarray, values: np.ndarray, weight: float, chunk: int = 1 << 16):
    """acc += weight * float64(values), a block of elements at a time."""
    flat, into = acc.reshape(-1), np.ascontiguousarray(values).reshape(-1)
    term = np.empty(min(chunk, len(flat)), dtype=np.float64)
    for start in range(0, len(flat), chunk):
        stop = min(start + chunk, len(flat))
        t = term[: stop - start]
        np.multiply(into[start:stop], weight, out=t)
        flat[start:stop] += t
