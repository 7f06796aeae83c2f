"""Which experts to keep: rankings (rank 0 kept first) that any budget reads a prefix of.

Each takes what it needs and nothing more: the calibration routing (frequency, REAP),
a seed (random), the weights alone (the AIMER kind), or expert outputs (HC-SMoE's
clusters, which merge rather than rank).
"""

from __future__ import annotations

import numpy as np
from scipy.cluster.hierarchy import cut_tree, linkage

from moetopo.checkpoint.experts import ExpertWeights, expert_output
from moetopo.routing.rule import Routed
from moetopo.topology.hodgecover import load_ranking


def selection_load(routed: Routed, n_experts: int) -> np.ndarray:
    """Tokens routed to each expert."""
    return np.bincount(routed.experts.ravel(), minlength=n_experts).astype(np.float64)


def frequency_ranking(routed: Routed, n_experts: int) -> np.ndarray:
    return load_ranking(selection_load(routed, n_experts))


def random_ranking(n_experts: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).permutation(n_experts).astype(np.int64)


def reap_saliency(routed: Routed, tokens_of, output_norm_of) -> np.ndarray:
    """REAP: per expert, the mean over the tokens routed to it of its gate weight
    (renormalised over the token's selected experts) times its output norm; 0 if unused.
    ``tokens_of[e]`` is (tokens, summed gate weight), ``output_norm_of[e]`` ||f_e(x)||."""
    total = np.maximum(routed.weights.sum(axis=1), 1e-30)
    saliency = np.zeros(routed.scores.shape[1])
    for e, (tokens, gate) in tokens_of.items():
        if len(tokens):
            saliency[e] = float(np.mean(gate / total[tokens] * output_norm_of[e]))
    return saliency


def weight_statistic(weights: ExpertWeights) -> float:
    """The AIMER-kind weights-only score: mean |w| over the RMS of w, pooled over the
    expert's matrices. Gaussian weights give sqrt(2 / pi); heavy-tailed (outlier-rich)
    weights give less. We keep the lowest first: the outlier-rich experts."""
    values = np.concatenate(
        [m.ravel() for m in (weights.gate, weights.up, weights.down) if m is not None]
    ).astype(np.float64)
    rms = float(np.sqrt(np.mean(values**2)))
    return float(np.mean(np.abs(values)) / rms) if rms > 0 else 1.0


def weights_only_ranking(statistics: np.ndarray) -> np.ndarray:
    return load_ranking(-np.asarray(statistics, dtype=np.float64))


def mean_outputs(block, x: np.ndarray, max_tokens: int = 256) -> np.ndarray:
    """Each expert's mean output [E, H] over the same calibration tokens, routed to it or
    not (HC-SMoE's similarity feature): over routed tokens only, two copies of an expert
    that the router never picks would both look like zero and cluster with every other
    unused expert. At most ``max_tokens`` evenly spaced tokens bound the cost (every
    expert on every token)."""
    step = max(1, -(-len(x) // max_tokens))
    rows = x[::step]
    return np.stack(
        [
            expert_output(block.expert(e), rows, block.activation, block.limit).mean(axis=0)
            for e in range(block.n_experts)
        ]
    )


def output_clusters(mean_outputs: np.ndarray, n_clusters: int) -> np.ndarray:
    """HC-SMoE: average-linkage clusters of the experts' mean outputs on the calibration
    tokens (Euclidean), cut into ``n_clusters``; labels 0..n_clusters-1."""
    n = len(mean_outputs)
    if n_clusters >= n:
        return np.arange(n)
    tree = linkage(np.asarray(mean_outputs, dtype=np.float64), method="average")
    return cut_tree(tree, n_clusters=n_clusters).ravel().astype(np.int64)


def representatives(labels: np.ndarray, load: np.ndarray) -> np.ndarray:
    """Each expert's target: its cluster's highest-load member (ties to the lower id)."""
    target = np.empty(len(labels), dtype=np.int64)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        target[members] = members[np.argmax(load[members])]
    return target
