"""Significance of persistence bars against a null model of shapeless experts.

A bar is significant when it is longer than the bars a layer with no shape would show.
The null layer is a Gaussian cloud with the same mean and covariance as the observed
experts, recovered from the distance matrix alone, so every source (router rows, weights,
function outputs, coactivation) gets a null without its vectors. Each null draw places as
many experts independently and measures them as the source does (``kind``):

- ``metric`` (L1, L2): classical MDS of D gives the experts' principal variances; the
  null experts are N(0, diag(variances)), at Euclidean distance. For L1 the Euclidean
  cloud is a stand-in at the source's scale (the MDS keeps the positive spectrum).
- ``squared`` (function distance, a mean squared discrepancy): the same on sqrt(D), and
  the null distances squared.
- ``cosine`` (1 - cosine similarity): 1 - D is the Gram matrix of the experts' unit
  vectors; the null experts are Gaussian with those vectors' mean and covariance, then
  measured by 1 - cosine. The mean matters here (cosine sees the offset of a cloud).

Measuring like the source matters: a squared or cosine distance on Gaussian rows,
tested against a plain Euclidean null, shows "significant" H1 in most seeds.

A bar is measured against its own layer's spacing: its persistence divided by the median
nearest-merge distance (the median positive finite H0 death, an MST edge). This makes the
statistic scale-free, and it is what lets tight clusters count: a Gaussian cloud fitted
to three far-apart clusters is wide, so some of its outliers lie as far from the rest as
the clusters do from each other, but never hundreds of spacings away.

The test is a max-statistic Monte Carlo test per dimension: with B null draws and M_b the
largest relative persistence of a finite bar of draw b, a bar of relative persistence t
has p-value (1 + #{b : M_b >= t}) / (B + 1). It is valid for every bar of the diagram at
once: on a layer drawn from the null, the chance that any bar is called significant is
at most the level. The smallest level reachable is 1 / (B + 1).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.sparse.csgraph import minimum_spanning_tree
from scipy.spatial.distance import pdist, squareform

from moetopo.topology.complex import check_distance_matrix
from moetopo.topology.persistence import (
    bottleneck_distance,
    rips_barcodes,
    vietoris_rips_diagrams,
)


def mds_variances(distances: np.ndarray) -> np.ndarray:
    """Principal variances of the classical MDS of ``distances`` (positive part, descending).

    B = -1/2 J D^2 J has eigenvalues lambda_k; the embedded points have variance
    lambda_k / (n - 1) along axis k (unbiased), and sum_k lambda_k = sum_{i<j} D_ij^2 / n
    when no eigenvalue is negative.
    """
    d = check_distance_matrix(distances)
    n = len(d)
    centred = d**2 - (d**2).mean(axis=0) - (d**2).mean(axis=1)[:, None] + (d**2).mean()
    eig = np.linalg.eigvalsh(-0.5 * centred)[::-1]
    scale = max(abs(eig[0]), np.finfo(float).tiny) if n else 1.0
    keep = eig > 1e-10 * scale
    return eig[keep] / max(n - 1, 1)


NullSampler = Callable[[np.random.Generator], np.ndarray]
KINDS = ("metric", "squared", "cosine")


def null_sampler(distances: np.ndarray, kind: str = "metric") -> NullSampler:
    """A function drawing one null layer's distance matrix (see the module docstring)."""
    d = check_distance_matrix(distances)
    n = len(d)
    if kind == "metric" or kind == "squared":
        power = 2.0 if kind == "squared" else 1.0
        scale = np.sqrt(mds_variances(d ** (1 / power)))
        mean = np.zeros(scale.size)
        metric = "euclidean"
    elif kind == "cosine":
        w, v = np.linalg.eigh(1.0 - d)
        keep = w > 1e-10 * max(w.max(), np.finfo(float).tiny)
        vectors = v[:, keep] * np.sqrt(w[keep])
        cov = np.atleast_2d(np.cov(vectors.T)) if n > 1 else np.zeros((keep.sum(),) * 2)
        w, axes = np.linalg.eigh(cov)
        # in the covariance's axes, each signed so the mean is non-negative along it: the
        # same coordinates whatever the experts' order or the eigenvectors' signs
        mean = vectors.mean(axis=0) @ axes
        mean, scale = np.abs(mean), np.sqrt(np.clip(w, 0.0, None))
        power, metric = 1.0, "cosine"
    else:
        raise ValueError(f"null kind must be one of {KINDS}, got {kind!r}")

    def draw(rng: np.random.Generator) -> np.ndarray:
        if scale.size == 0:
            return np.zeros((n, n))
        points = mean + rng.standard_normal((n, scale.size)) * scale
        null = squareform(pdist(points, metric=metric)) ** power
        return np.nan_to_num(np.clip(null, 0.0, None))  # cosine of a zero row: distance 0

    return draw


def spacing(h0_deaths: np.ndarray) -> float:
    """The layer's spacing: the median positive finite H0 death (1 if there is none)."""
    deaths = np.asarray(h0_deaths, dtype=np.float64)
    deaths = deaths[np.isfinite(deaths) & (deaths > 0)]
    return float(np.median(deaths)) if deaths.size else 1.0


def null_seed(seed: int, layer: int, source: str) -> np.random.Generator:
    """The generator of one (layer, source)'s null draws: the same for every run."""
    return np.random.default_rng([seed, layer, zlib.crc32(source.encode())])


@dataclass(frozen=True)
class NullCalibration:
    """The null draws' largest relative persistence per dimension, and the thresholds.

    ``maxima[b, dim]`` is the largest persistence / spacing of a finite bar of draw b in
    ``dim`` (0 without one). ``spacing`` is the observed layer's; a bar is significant at
    ``level`` when its persistence exceeds ``thresholds[dim]`` (in the distances' units;
    inf when the level is below 1 / (B + 1), so nothing can be). ``null_counts[dim]`` is
    the mean number of bars per null draw above the threshold (the false alarms).
    """

    level: float
    spacing: float
    maxima: np.ndarray
    thresholds: np.ndarray
    null_counts: np.ndarray

    def p_values(self, dims: np.ndarray, persistence: np.ndarray) -> np.ndarray:
        """Max-statistic p-value of each bar (0 for essential bars, which always count)."""
        dims = np.asarray(dims, dtype=np.int64)
        persistence = np.asarray(persistence, dtype=np.float64)
        draws = len(self.maxima)
        out = np.zeros(len(dims))
        for dim in np.unique(dims):
            rows = (dims == dim) & np.isfinite(persistence)
            relative = persistence[rows][:, None] / self.spacing
            exceed = (self.maxima[:, dim][None, :] >= relative).sum(axis=1)
            out[rows] = (1 + exceed) / (draws + 1)
        return out


def calibrate(
    distances: np.ndarray,
    *,
    kind: str = "metric",
    maxdim: int,
    coeff: int,
    level: float,
    draws: int,
    rng: np.random.Generator,
) -> NullCalibration:
    """Null thresholds of ``distances``'s diagrams at ``level`` from ``draws`` null layers
    of the source ``kind``."""
    if not 0 < level < 1:
        raise ValueError(f"significance level must lie in (0, 1), got {level}")
    if draws < 1:
        raise ValueError(f"need at least one null draw, got {draws}")
    d = check_distance_matrix(distances)
    sample = null_sampler(d, kind)
    maxima = np.zeros((draws, maxdim + 1))
    lengths = []
    for b in range(draws):
        null = sample(rng)
        # ripser's bars, in less than half its time (the null draws are most of the stage's)
        dgms = rips_barcodes(null, maxdim=maxdim, coeff=coeff)
        unit = spacing(dgms[0][:, 1])
        bars = [(g[:, 1] - g[:, 0])[np.isfinite(g[:, 1])] / unit for g in dgms]
        lengths.append(bars)
        maxima[b] = [p.max() if p.size else 0.0 for p in bars]
    # significant iff #{b : M_b >= p} <= k, k = floor(level (B + 1)) - 1: p above the
    # (k+1)-th largest maximum
    k = int(np.floor(level * (draws + 1) + 1e-9)) - 1
    relative = np.full(maxdim + 1, np.inf) if k < 0 else -np.sort(-maxima, axis=0)[k]
    counts = np.array(
        [
            np.mean([(bars[dim] > relative[dim]).sum() for bars in lengths])
            for dim in range(maxdim + 1)
        ]
    )
    unit = spacing(observed_h0_deaths(d))
    return NullCalibration(level, unit, maxima, relative * unit, counts)


def observed_h0_deaths(distances: np.ndarray) -> np.ndarray:
    """H0 deaths of ``distances``: the edge lengths of a minimum spanning tree."""
    tree = minimum_spanning_tree(distances)
    deaths = tree.data
    # an MST drops zero-length edges: duplicates merge at 0
    return np.concatenate([deaths, np.zeros(len(distances) - 1 - len(deaths))])


def bootstrap_band(
    distances: np.ndarray,
    diagram: np.ndarray,
    dims: np.ndarray,
    *,
    maxdim: int,
    coeff: int,
    level: float,
    draws: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """Half-width c per dimension of the bootstrap confidence set of the diagram (Fasy et
    al. 2014): the (1 - ``level``) quantile of the bottleneck distance between the
    diagram of experts drawn with replacement and the observed one. The true diagram lies
    within c of the observed one with that confidence, so a bar longer than 2c is
    separated from the diagonal. ``diagram`` (k, 2) and ``dims`` are the observed bars.
    """
    d = check_distance_matrix(distances)
    n = len(d)
    observed = [diagram[dims == dim] for dim in range(maxdim + 1)]
    # experts in an order of their own (total distance), so that the same draws pick the
    # same experts whatever their ids: relabelling changes nothing (up to exact ties)
    canonical = np.argsort(d.sum(axis=1), kind="stable")
    gaps = np.zeros((draws, maxdim + 1))
    for b in range(draws):
        pick = canonical[rng.integers(0, n, size=n)]
        table = vietoris_rips_diagrams(d[np.ix_(pick, pick)], maxdim=maxdim, coeff=coeff)
        bars = table[["birth", "death"]].to_numpy()
        for dim in range(maxdim + 1):
            gaps[b, dim] = bottleneck_distance(bars[table["dim"] == dim], observed[dim])
    return np.quantile(gaps, 1.0 - level, axis=0)
