"""All topology of one MoE layer: persistence, sheaf, Hodge and HodgeCover, as figures and
arrays (the cohomology stage turns them into the artefacts' tables).

Every result depends on the experts only through the inputs, never through their ids:
relabelling the experts relabels the rows and changes nothing else (up to exact ties).
The Hodge figures are those of the symmetric edge signal averaged over every orientation
of its edges (:func:`moetopo.topology.hodge.expected_energies`), so no orientation, by id
or otherwise, enters them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import sparse
from scipy.sparse.csgraph import connected_components

from moetopo.topology.complex import (
    RipsComplex,
    check_distance_matrix,
    epsilon_at_quantile,
    rips_complex,
)
from moetopo.topology.hodge import (
    betti1,
    expected_energies,
    harmonic_critical_edges,
    projector_diagonals,
)
from moetopo.topology.hodgecover import (
    MergeBarrier,
    group_representative_ranking,
    hodgecover_ranking,
    load_ranking,
    triplet_barrier,
)
from moetopo.topology.null import NullCalibration, bootstrap_band, calibrate, null_seed
from moetopo.topology.persistence import check_coefficient, summarize, vietoris_rips_diagrams
from moetopo.topology.sheaf import sheaf_cohomology


@dataclass(frozen=True)
class TopologyParams:
    """Stage parameters of the per-layer topology (the cohomology stage's config)."""

    maxdim: int = 1  # highest homology dimension of the persistence diagrams (2 is costly)
    coeff: int = 127  # prime coefficient field of all homology (see vietoris_rips_diagrams)
    significance_level: float = 0.01  # chance that a shapeless layer shows any significant bar
    null_draws: int = 99  # null layers per (layer, source); the level needs >= 1/level - 1
    seed: int = 0  # of the null draws
    bootstrap_draws: int = 100  # resamples of the diagrams' bootstrap confidence set
    bootstrap_max_experts: int = 64  # above this many experts the confidence set is skipped
    epsilon_quantiles: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5)  # scales of the complexes
    cover_quantile: float = 0.3  # the scale HodgeCover selects on (one of epsilon_quantiles)
    stalk_dim: int = 2
    rtol: float = 1e-8  # sheaf rank tolerance
    n_eigenvalues: int = 6
    hodge_signal: str = "function"  # edge signal source; falls back to the first source
    n_critical_edges: int = 20
    max_triangles: int = 512  # triplet barriers evaluated (each may cost a forward pass)
    keep_fractions: tuple[float, ...] = (0.25, 0.5, 0.75)  # HodgeCover budgets

    def __post_init__(self) -> None:
        check_coefficient(self.coeff)
        if self.maxdim not in (0, 1, 2):
            raise ValueError(f"maxdim must be 0, 1 or 2, got {self.maxdim}")
        if not all(0 <= q <= 1 for q in self.epsilon_quantiles):
            raise ValueError(f"epsilon quantiles must lie in [0, 1]: {self.epsilon_quantiles}")
        if self.epsilon_quantiles and self.cover_quantile not in self.epsilon_quantiles:
            raise ValueError(
                f"cover_quantile {self.cover_quantile} must be one of the epsilon quantiles "
                f"{list(self.epsilon_quantiles)}"
            )
        if not all(0 < f <= 1 for f in self.keep_fractions):
            raise ValueError(f"keep fractions must lie in (0, 1]: {self.keep_fractions}")
        if min(self.stalk_dim, self.n_eigenvalues, self.max_triangles) < 1:
            raise ValueError("stalk_dim, n_eigenvalues and max_triangles must be positive")
        if min(self.rtol, self.n_critical_edges) < 0:
            raise ValueError("rtol and n_critical_edges must be non-negative")
        if not 0 < self.significance_level < 1:
            raise ValueError(f"significance_level must lie in (0, 1): {self.significance_level}")
        if self.null_draws * self.significance_level < 1 - self.significance_level - 1e-9:
            raise ValueError(
                f"{self.null_draws} null draws cannot reach level {self.significance_level}: "
                f"need at least {int(np.ceil(1 / self.significance_level - 1 - 1e-9))}"
            )

    def signal_source(self, names) -> str:
        """The Hodge edge signal's source among ``names``: hodge_signal, else the first."""
        names = list(names)
        return self.hodge_signal if self.hodge_signal in names else names[0]


@dataclass(frozen=True)
class ScaleTopology:
    """One source's complex at one scale: the expected Hodge split of the signal on it, its
    harmonic-critical edges (expert_a < expert_b) and the sheaf."""

    source: str
    quantile: float
    epsilon: float
    hodge: dict[str, float | int]
    critical: dict[str, np.ndarray]  # rank, expert_a, expert_b, signal, harmonic_share, ...
    sheaf: dict | None  # stalk_dim, h0, h1, eigenvalues, rtol, n_edges; None without frames


@dataclass(frozen=True)
class LayerTopology:
    """The layer's diagrams, complexes and expert rankings, and its headline figures."""

    signal_source: str
    diagrams: dict[str, pd.DataFrame]  # source -> bars (dim, birth, death, persistence, ...)
    nulls: dict[str, NullCalibration]  # source -> its null model's thresholds
    scales: list[ScaleTopology]
    rankings: dict[str, np.ndarray]  # method -> experts, the first kept first
    budgets: list[int]  # numbers of experts kept, from params.keep_fractions
    cover_quantile: float  # the scale whose complex the rankings were chosen on
    summary: dict[str, float | int] = field(default_factory=dict)


def layer_topology(
    distances: Mapping[str, np.ndarray],
    *,
    coactivation: np.ndarray | None = None,
    load: np.ndarray | None = None,
    frames: np.ndarray | None = None,
    merge_barrier: MergeBarrier | None = None,
    groups: np.ndarray | None = None,
    params: TopologyParams = TopologyParams(),
    layer: int = 0,
    null_kinds: Mapping[str, str] | None = None,
) -> LayerTopology:
    """Topology of one layer from its expert distance matrices (one per source).

    - persistence: every source, H0..H``maxdim``, each bar's p-value against the source's
      null model (:mod:`moetopo.topology.null`, of the kind ``null_kinds`` gives the
      source, else a metric; ``layer`` and ``params.seed`` seed its draws) and
      whether it is significant at ``params.significance_level``.
    - hodge: for every source and scale, the complex of that source at the scale's
      quantile, carrying the signal source's distances as a symmetric edge signal, split
      in expectation over all orientations of the edges.
    - sheaf: same complexes, when ``frames`` ([n, in_dim, >= stalk_dim]) are given; edge
      weights are the symmetric ``coactivation`` rates (1 when None).
    - rankings: HodgeCover on the signal source's complex at ``cover_quantile``, with triplet
      barriers from ``merge_barrier`` (none when None); the load and group baselines need
      ``load``.
      ``groups`` defaults to single-linkage groups of the signal source at its H0 null
      threshold (experts joined closer than a shapeless layer would join any).
    """
    sources = {name: check_distance_matrix(d) for name, d in distances.items()}
    if not sources:
        raise ValueError("need at least one distance source")
    n = len(next(iter(sources.values())))
    if n < 2 or any(d.shape != (n, n) for d in sources.values()):
        raise ValueError("all distance matrices must be n x n with n >= 2")
    signal_name = params.signal_source(sources)
    signal = sources[signal_name]
    weights = _edge_weights(coactivation, n)
    if load is not None:
        load = np.asarray(load, dtype=np.float64)
        if load.shape != (n,) or not np.all(np.isfinite(load)):
            raise ValueError(f"load must be {n} finite values, one per expert")
    if groups is not None and np.shape(groups) != (n,):
        raise ValueError(f"groups must give one label per expert ({n})")
    summary: dict[str, float | int] = {"n_experts": n}
    diagrams, nulls, scales = {}, {}, []
    rankings: dict[str, np.ndarray] = {}
    for name, d in sources.items():
        nulls[name] = calibrate(
            d,
            kind=(null_kinds or {}).get(name, "metric"),
            maxdim=params.maxdim,
            coeff=params.coeff,
            level=params.significance_level,
            draws=params.null_draws,
            rng=null_seed(params.seed, layer, name),
        )
        diagrams[name] = _persistence(name, d, nulls[name], params, summary)
        if params.bootstrap_draws and n <= params.bootstrap_max_experts:
            _confidence_set(name, d, diagrams[name], params, layer, summary)
        for q in params.epsilon_quantiles:
            cx = rips_complex(d, epsilon_at_quantile(d, q))
            harmonic, row, edges = _hodge(cx, signal, params)
            sheaf = None if frames is None else _sheaf(cx, frames, weights, params)
            scales.append(ScaleTopology(name, q, cx.epsilon, row, edges, sheaf))
            summary[f"{name}.b1@{q}"] = row["betti1"]
            summary[f"{name}.harmonic_fraction@{q}"] = row["harmonic_fraction"]
            if sheaf is not None:
                summary[f"{name}.sheaf_h0@{q}"] = sheaf["h0"]
                summary[f"{name}.sheaf_h1@{q}"] = sheaf["h1"]
                summary[f"{name}.sheaf_gap@{q}"] = sheaf["spectral_gap"]
            if name == signal_name and q == params.cover_quantile:
                if groups is None:
                    close = sparse.csr_matrix(np.triu(signal <= nulls[name].thresholds[0], k=1))
                    groups = connected_components(close, directed=False)[1]
                rankings = _rankings(cx, harmonic, signal, load, merge_barrier, groups, params)
    budgets = sorted({min(n, max(1, round(f * n))) for f in params.keep_fractions})
    return LayerTopology(
        signal_name, diagrams, nulls, scales, rankings, budgets, params.cover_quantile, summary
    )


def _persistence(
    name: str, d: np.ndarray, null: NullCalibration, params: TopologyParams, summary: dict
) -> pd.DataFrame:
    """The source's diagrams with each bar's p-value and its dimension's null threshold;
    adds the per-dimension headline figures to ``summary``."""
    dgm = vietoris_rips_diagrams(
        d, maxdim=params.maxdim, coeff=params.coeff, threshold=null.thresholds
    )
    dgm["p_value"] = null.p_values(dgm["dim"], dgm["persistence"])
    dgm["threshold"] = null.thresholds[dgm["dim"].to_numpy()]
    for dim in range(params.maxdim + 1):
        s = summarize(dgm, dim)
        summary[f"{name}.h{dim}_significant"] = s.n_significant
        summary[f"{name}.h{dim}_null_threshold"] = null.thresholds[dim]
        summary[f"{name}.h{dim}_null_significant"] = null.null_counts[dim]
        summary[f"{name}.h{dim}_total_persistence"] = s.total_persistence
        summary[f"{name}.h{dim}_significant_persistence"] = s.significant_persistence
        summary[f"{name}.h{dim}_max_persistence"] = s.max_persistence
        summary[f"{name}.h{dim}_entropy"] = s.entropy
    return dgm


def _confidence_set(
    name: str, d: np.ndarray, dgm: pd.DataFrame, params: TopologyParams, layer: int, summary
) -> None:
    """The bootstrap confidence set's half-width c per dimension, and the bars longer than
    2c (essential ones included), into ``summary``."""
    band = bootstrap_band(
        d,
        dgm[["birth", "death"]].to_numpy(),
        dgm["dim"].to_numpy(),
        maxdim=params.maxdim,
        coeff=params.coeff,
        level=params.significance_level,
        draws=params.bootstrap_draws,
        rng=null_seed(params.seed + 1, layer, name),
    )
    for dim in range(params.maxdim + 1):
        rows = dgm[dgm.dim == dim]
        summary[f"{name}.h{dim}_bootstrap_band"] = float(band[dim])
        summary[f"{name}.h{dim}_band_significant"] = int((rows.persistence > 2 * band[dim]).sum())


def _hodge(
    cx: RipsComplex, signal: np.ndarray, params: TopologyParams
) -> tuple[np.ndarray, dict, dict[str, np.ndarray]]:
    """Each edge's expected harmonic energy, the hodge row and the harmonic-critical edges
    of the symmetric signal on ``cx``, all averaged over the edges' orientations."""
    i, j = cx.edges.T
    values = signal[i, j]
    b1 = betti1(cx, coeff=params.coeff)
    diagonals = projector_diagonals(cx, betti1=b1)
    grad, curl, harm = expected_energies(diagonals, values)
    total = grad + curl + harm
    row = {
        "gradient_energy": grad,
        "curl_energy": curl,
        "harmonic_energy": harm,
        "harmonic_fraction": harm / total if total > 0 else 0.0,
        "betti1": b1,
        "n_edges": cx.n_edges,
        "n_triangles": cx.n_triangles,
        "residual": diagonals.residual,
        "iterations": diagonals.iterations,
    }
    energy = values**2 * diagonals.harmonic
    top = harmonic_critical_edges(energy, params.n_critical_edges)
    edges = {
        "rank": np.arange(len(top)),
        "expert_a": i[top],
        "expert_b": j[top],
        "signal": values[top],
        "harmonic_share": diagonals.harmonic[top],
        "harmonic_energy": energy[top],
    }
    return energy, row, edges


def _edge_weights(coactivation: np.ndarray | None, n: int) -> np.ndarray | None:
    if coactivation is None:
        return None
    rate = np.asarray(coactivation, dtype=np.float64)
    if rate.shape != (n, n) or not np.array_equal(rate, rate.T):
        raise ValueError(f"coactivation must be a symmetric {n} x {n} matrix of rates")
    return rate


def _sheaf(
    cx: RipsComplex, frames: np.ndarray, rate: np.ndarray | None, params: TopologyParams
) -> dict:
    frames = np.asarray(frames, dtype=np.float64)
    if frames.ndim != 3 or frames.shape[2] < params.stalk_dim:
        raise ValueError(f"frames must be [n, in_dim, >= {params.stalk_dim}], got {frames.shape}")
    weights = None if rate is None else rate[cx.edges[:, 0], cx.edges[:, 1]]
    weighting = "unweighted" if rate is None else "coactivation"
    if weights is not None and cx.n_edges and not np.any(weights > 0):
        # top-1 routing never chooses two experts together: every edge would be dropped
        weights, weighting = None, "unweighted (no coactivation on any edge)"
    sh = sheaf_cohomology(
        cx,
        frames[:, :, : params.stalk_dim],
        weights,
        n_eigenvalues=params.n_eigenvalues,
        rtol=params.rtol,
    )
    return {
        "stalk_dim": sh.stalk_dim,
        "h0": sh.h0,
        "h1": sh.h1,
        "eigenvalues": sh.eigenvalues.tolist(),
        "rtol": sh.rtol,
        "n_edges": sh.n_edges,
        "normalised_eigenvalues": sh.normalised.tolist(),
        "spectral_gap": sh.spectral_gap,
        "weighting": weighting,
    }


def _rankings(
    cx: RipsComplex,
    harmonic_energy: np.ndarray,
    signal: np.ndarray,
    load: np.ndarray | None,
    merge_barrier: MergeBarrier | None,
    groups: np.ndarray,
    params: TopologyParams,
) -> dict[str, np.ndarray]:
    """Expert rankings of HodgeCover and, given load, of its baselines."""
    if merge_barrier is None:
        barrier = np.full(cx.n_triangles, np.nan)
    else:
        barrier = triplet_barrier(
            merge_barrier, cx.triangles, distances=signal, max_triangles=params.max_triangles
        )
    rankings = {"hodgecover": hodgecover_ranking(cx, harmonic_energy, barrier, load)}
    if load is not None:
        rankings["load"] = load_ranking(load)
        rankings["groups"] = group_representative_ranking(groups, load)
    return rankings
