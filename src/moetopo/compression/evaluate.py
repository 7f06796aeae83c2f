"""Layer-wise compression evaluation: every method at every budget against the full block.

The layer's input tokens are split in two: the first half calibrates (load, saliency,
barriers, clusters), the second half is held out and measures the reduced block. Methods:

- ``frequency``, ``random`` (``random_draws`` seeded draws), ``reap``, ``weights_only``
  and today's ``hodgecover``: keep a ranking's prefix, drop the rest with their router rows;
- ``pairwise`` and ``hodgecover_paper``: keep a ranking's prefix, redirect each pruned
  expert's traffic to the survivor it is cheapest to merge with;
- ``hc_smoe``: cluster the experts' mean outputs into ``keep`` clusters and replace each
  cluster by its frequency-weighted merge.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import pandas as pd

from moetopo.checkpoint.experts import ExpertWeights
from moetopo.compression.barriers import BlockMergeBarrier
from moetopo.compression.block import (
    Reduction,
    RoutedBlock,
    compare,
    dropped,
    frequency_weighted_merge,
    redirected,
    reduced_output,
)
from moetopo.compression.criteria import (
    mean_outputs,
    output_clusters,
    random_ranking,
    reap_saliency,
    representatives,
    selection_load,
    weight_statistic,
    weights_only_ranking,
)
from moetopo.compression.hodgecover_paper import (
    pairwise_greedy_ranking,
    paper_hodgecover,
    redirect_targets,
)
from moetopo.topology.hodgecover import load_ranking

METHODS = (
    "frequency",
    "random",
    "reap",
    "weights_only",
    "hodgecover",
    "pairwise",
    "hodgecover_paper",
    "hc_smoe",
)
METRICS = ("relative_error", "cosine", "changed")


@dataclass(frozen=True)
class CompressionParams:
    keep_fractions: tuple[float, ...] = (0.25, 0.5, 0.75)
    methods: tuple[str, ...] = METHODS
    random_draws: int = 5
    neighbours: int = 8
    max_triangles: int = 500
    seed: int = 0
    tokens: int = 4096  # a layer's input tokens: the first half calibrates, the rest measures


# config["compression"] keys that change a layer's evaluation
LAYER_KEYS = tuple(f.name for f in dataclasses.fields(CompressionParams))


def budget(n_experts: int, top_k: int, fraction: float) -> int | None:
    """Experts kept at ``fraction``: rounded, at least top_k, at most all but one (None
    where no budget fits: a layer with top_k = n_experts cannot lose an expert)."""
    keep = min(max(int(round(fraction * n_experts)), top_k), n_experts - 1)
    return keep if keep >= top_k else None


def budgets(n_experts: int, top_k: int, fractions) -> list[int]:
    """The distinct budgets of ``fractions``, smallest first."""
    keep = {budget(n_experts, top_k, f) for f in fractions}
    return sorted(k for k in keep if k is not None)


def evaluate_layer(
    block: RoutedBlock,
    tokens: np.ndarray,
    params: CompressionParams,
    hodgecover: np.ndarray | None = None,
) -> LayerCompression:
    """Every method at every budget on one layer; ``hodgecover`` is today's ranking from
    the cohomology stage (its method is skipped without it)."""
    n, half = block.n_experts, len(tokens) // 2
    if half < 1:
        raise ValueError(f"{len(tokens)} tokens: too few to calibrate and hold out")
    calibration, held_out = tokens[:half], tokens[half:]
    routed = block.route(calibration)
    load = selection_load(routed, n)
    barrier = BlockMergeBarrier(block, calibration, routed, load)
    full = block.route(held_out)
    reference = block.output(held_out, full.experts, full.weights)
    plans = _plans(block, calibration, barrier, routed, load, params, hodgecover)
    rows, chosen, measured = [], [], {}
    for fraction in params.keep_fractions:
        keep = budget(n, block.rule.top_k, fraction)
        if keep is None:
            continue
        if keep not in measured:  # two fractions may round to one budget
            measured[keep] = []
            for method, draw, reduction in _reductions(plans, keep, block, barrier, load):
                reduced, changed = reduced_output(block, held_out, reduction, full)
                result = compare(reference, reduced, changed)
                measured[keep] += [(method, draw, m, getattr(result, m)) for m in METRICS]
                chosen.append(_selection(method, draw, keep, reduction))
        rows += [(fraction, method, draw, keep, m, v) for method, draw, m, v in measured[keep]]
    table = pd.DataFrame(rows, columns=["fraction", "method", "draw", "keep", "metric", "value"])
    return LayerCompression(table, pd.concat(chosen, ignore_index=True), load)


@dataclass(frozen=True)
class LayerCompression:
    """A layer's evaluation: ``table`` (fraction, method, draw, keep, metric, value: the
    configured fraction and the budget it gave), ``selections``
    (method, draw, keep, expert, kept, target, merged: which expert serves each expert's
    traffic, -1 where a dropped expert's tokens are routed again) and the calibration
    ``load`` (tokens per expert)."""

    table: pd.DataFrame
    selections: pd.DataFrame
    load: np.ndarray


def _selection(method: str, draw: int, keep: int, reduction: Reduction) -> pd.DataFrame:
    n = len(reduction.kept)
    if reduction.kind == "drop":
        target = np.where(reduction.kept, np.arange(n), -1)
    else:
        target = reduction.target
    merged = np.isin(target, list(reduction.merged))
    return pd.DataFrame(
        {
            "method": method,
            "draw": draw,
            "keep": keep,
            "expert": np.arange(n),
            "kept": reduction.kept,
            "target": target,
            "merged": merged,
        }
    )


def _plans(block, calibration, barrier, routed, load, params, hodgecover) -> dict[str, object]:
    """Per method what fixes its choice at every budget (a ranking, or the clustering)."""
    wanted, n, plans = set(params.methods), block.n_experts, {}
    if wanted & {"pairwise", "hodgecover_paper", "hc_smoe"}:
        plans["_features"] = features = mean_outputs(block, calibration)
    if "frequency" in wanted:
        plans["frequency"] = load_ranking(load)
    if "random" in wanted:
        plans["random"] = [random_ranking(n, params.seed + d) for d in range(params.random_draws)]
    saliency = reap_saliency(routed, barrier.gate, barrier.output_norm)
    if "reap" in wanted:
        plans["reap"] = load_ranking(saliency)
    if "weights_only" in wanted:
        plans["weights_only"] = weights_only_ranking(
            [weight_statistic(block.expert(e)) for e in range(n)]
        )
    if "hodgecover" in wanted and hodgecover is not None:
        plans["hodgecover"] = np.asarray(hodgecover, dtype=np.int64)
    if wanted & {"pairwise", "hodgecover_paper"}:
        cover = paper_hodgecover(
            barrier, features, saliency, load,
            neighbours=params.neighbours, max_triangles=params.max_triangles, seed=params.seed,
        )  # fmt: skip
        plans["_pairs"] = cover.pair_barrier
        if "hodgecover_paper" in wanted:
            plans["hodgecover_paper"] = cover.ranking
        if "pairwise" in wanted:
            plans["pairwise"] = pairwise_greedy_ranking(cover.pair_barrier, load)
    if "hc_smoe" in wanted:
        plans["hc_smoe"] = features
    return plans


def _reductions(plans, keep, block, barrier, load):
    """(method, draw, Reduction) of every planned method at budget ``keep``."""
    n = block.n_experts
    for method in ("frequency", "reap", "weights_only", "hodgecover"):
        if method in plans:
            yield method, 0, dropped(n, plans[method][:keep])
    for draw, ranking in enumerate(plans.get("random", [])):
        yield "random", draw, dropped(n, ranking[:keep])
    for method in ("pairwise", "hodgecover_paper"):
        if method in plans:
            target = redirect_targets(plans[method][:keep], plans["_pairs"], plans["_features"])
            yield method, 0, redirected(target)
    if "hc_smoe" in plans:
        yield "hc_smoe", 0, _merged(block, output_clusters(plans["hc_smoe"], keep), load)


def _merged(block: RoutedBlock, labels: np.ndarray, load: np.ndarray) -> Reduction:
    target = representatives(labels, load)
    merged: dict[int, ExpertWeights] = {}
    for survivor in np.unique(target):
        members = np.flatnonzero(target == survivor)
        if len(members) > 1:
            merged[int(survivor)] = frequency_weighted_merge(block, members, load)
    return redirected(target, merged)
