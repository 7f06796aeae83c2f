"""Do an expert's strongest collaborators in S sit among its nearest experts by a distance?

Per expert, its k largest entries of S and its k nearest experts by distance (each set
taking in every expert tied with the k-th, so no expert order breaks a tie); the overlap
is |both| / max(|S set|, |distance set|) averaged over experts: k / k = 1 when the sets
agree, about k / (E - 1) by chance. The null relabels the experts of the distance matrix
(rows and columns by one permutation) with S fixed, exactly over all E! relabellings where
they are no more than the resamples asked for, by Monte Carlo otherwise
(scipy.stats.permutation_test; its p-value counts the observed labelling).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


def neighbour_count(n_experts: int, fraction: float) -> int:
    """k: the ``fraction`` of an expert's E - 1 partners, rounded up, at least 1."""
    return max(1, math.ceil(fraction * (n_experts - 1) - 1e-9))


def neighbour_sets(scores: np.ndarray, k: int, largest: bool) -> np.ndarray:
    """Boolean [..., E, E]: row i marks the experts j != i scoring among i's k best (the
    largest scores, or the smallest when not ``largest``), ties with the k-th included."""
    m = np.array(scores, dtype=np.float64, copy=True)
    if not largest:
        m = -m
    n = m.shape[-1]
    off = ~np.eye(n, dtype=bool)
    m = np.where(off, m, -np.inf)
    kth = np.sort(m, axis=-1)[..., n - k][..., None]
    return (m >= kth) & off


def overlap(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Mean over experts of |a_i ∩ b_i| / max(|a_i|, |b_i|), over the leading axes."""
    both = (a & b).sum(axis=-1)
    size = np.maximum(a.sum(axis=-1), b.sum(axis=-1))
    return (both / size).mean(axis=-1)


@dataclass(frozen=True)
class Agreement:
    k: int
    overlap: float
    null_mean: float
    p_value: float
    n_permutations: int
    exact: bool


def neighbour_agreement(
    s: np.ndarray, distances: np.ndarray, k: int, permutations: int, seed: int
) -> Agreement:
    """Overlap of S's top-k collaborators with the k nearest by ``distances``, and its
    one-sided permutation p-value (greater overlap than relabelled experts give)."""
    from scipy.stats import permutation_test  # slow to import: only where a test runs

    s, distances = np.asarray(s), np.asarray(distances)
    if s.shape != distances.shape or s.shape[0] != s.shape[1]:
        raise ValueError(f"S {s.shape} and distances {distances.shape} must be the same [E, E]")
    n = len(s)
    collaborators = neighbour_sets(s, k, largest=True)
    nearest = neighbour_sets(distances, k, largest=False)

    def statistic(order: np.ndarray, axis: int = -1) -> np.ndarray:
        order = np.moveaxis(order, axis, -1)
        relabelled = nearest[order[..., :, None], order[..., None, :]]
        return overlap(collaborators, relabelled)

    exact = math.factorial(n) <= permutations
    result = permutation_test(
        (np.arange(n),),
        statistic,
        permutation_type="pairings",
        vectorized=True,
        n_resamples=permutations,
        alternative="greater",
        rng=np.random.default_rng(seed),
    )
    return Agreement(
        k=k,
        overlap=float(result.statistic),
        null_mean=float(np.mean(result.null_distribution)),
        p_value=float(result.pvalue),
        n_permutations=math.factorial(n) if exact else permutations,
        exact=exact,
    )
