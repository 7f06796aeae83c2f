"""Vietoris-Rips persistent homology of a distance matrix and diagram summaries.

Diagrams come from ripser, which works in single precision: births and deaths are the
float32 roundings of the input distances, never interpolated or invented. Only the one
H0 class of the whole dataset is essential (death = inf): every other class dies by the
largest distance. There is no cap on the number of points: H1 is computed for every size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import ripser
from scipy import sparse
from scipy.sparse.csgraph import maximum_bipartite_matching

from moetopo.topology.complex import check_distance_matrix, off_diagonal

DIAGRAM_COLUMNS = ["dim", "birth", "death", "persistence", "significant"]


def check_coefficient(coeff: int) -> int:
    """``coeff`` if it is a prime ripser can use (2..127); ripser aborts the process on
    larger ones instead of raising."""
    if not (2 <= coeff <= 127 and all(coeff % p for p in range(2, int(coeff**0.5) + 1))):
        raise ValueError(f"coefficient field must be a prime between 2 and 127, got {coeff}")
    return coeff


SATURATION_SHARE = 0.1  # a maximum shared by this share of the pairs is a cap, not a distance


def saturation_threshold(distances: np.ndarray) -> float:
    """Where ripser may stop: just below a maximum shared by many pairs, else nowhere (inf).

    A source that saturates (coactivation: 1 means "never chosen together", shared by
    most pairs of a large sparse-routing layer) lets all those pairs enter at once, which
    adds nothing but ties and makes ripser's H1 cost explode (the topology bench shows by
    how much). Stopping below the maximum loses nothing: at the maximum every edge is in, the
    Rips complex is the full simplex, and every class still alive dies exactly there
    (:func:`vietoris_rips_diagrams` records those deaths).
    """
    values = off_diagonal(distances)
    if values.size < 2:
        return float("inf")
    top = values.max()
    if top > values.min() and np.mean(values == top) >= SATURATION_SHARE:
        # ripser compares in single precision: step below the cap in float32
        return float(np.nextafter(np.float32(top), np.float32(-np.inf)))
    return float("inf")


BIRTH_GUESS_QUANTILE = 0.3  # where rips_barcodes starts looking for the last birth
DEATH_MARGIN = 0.06  # share of the pairs its run goes on past the last birth, for the deaths


def rips_barcodes(
    distances: np.ndarray, *, maxdim: int, coeff: int, thresh: float = np.inf
) -> list[np.ndarray]:
    """The bars of ``ripser.ripser(distances, distance_matrix=True, maxdim=maxdim,
    coeff=coeff, thresh=thresh)["dgms"]``, the same values per dimension as (k, 2) float64
    arrays, rows in another order; usually in under half its time.

    Both shortcuts leave every bar as it is (ripser compares float32 distances; so does
    everything here, and every threshold handed to it is a float32 distance):

    - the experts are relabelled, those farthest from the rest (largest distance sums)
      first. Bars do not depend on labels; ripser's time does, as its zero-persistence
      pairs come sooner in this order.
    - ripser is stopped early (``maxdim`` <= 1). A class of positive persistence can be
      born at a length r only where an edge of length r has no vertex closer than r to
      both of its ends (:func:`last_birth`): elsewhere every edge of length r is, through
      that triangle, a detour over shorter edges, so it neither joins two components nor
      adds an H1 class. A run stopped at t >= the last such length before ripser's own stop
      (the enclosing radius, or ``thresh``) has the same bars except those alive at t,
      which it reports as never dying. Without any such bar (beyond the one H0 class) it
      is the whole run; with one, the whole run is made.

    A matrix with a non-zero diagonal (vertex births) or a non-finite entry goes to ripser
    as it is.
    """
    d = np.asarray(distances, dtype=np.float64)
    n = len(d)
    if d.ndim != 2 or d.shape != (n, n) or n < 3 or np.any(np.diag(d) != 0):
        return _ripser_dgms(d, maxdim, coeff, thresh)
    if not np.all(np.isfinite(d)):
        return _ripser_dgms(d, maxdim, coeff, thresh)
    upper = np.triu(d, 1)  # ripser reads the upper triangle only
    f = (upper + upper.T).astype(np.float32)
    order = np.argsort(-f.sum(axis=1, dtype=np.float64), kind="stable")
    f = f[np.ix_(order, order)]
    if maxdim > 1:  # a triangle's witness would not stop H2 births
        return _ripser_dgms(f, maxdim, coeff, thresh)
    # ripser's own stop: thresh in float32, or the enclosing radius when that is
    # infinite or float32's max (beyond it every vertex is joined to one vertex)
    top = np.finfo(np.float32).max
    limit = np.float32(min(thresh, top))
    end = f.max(axis=1).min() if limit == top else limit
    # quantiles of the distances, from those among every step-th expert (any will do)
    step = max(1, n // 96)
    sample = np.sort(f[::step, ::step][np.triu_indices(len(range(0, n, step)), k=1)])
    guess = sample[int(BIRTH_GUESS_QUANTILE * (sample.size - 1))]
    if guess >= end:
        return _ripser_dgms(f, maxdim, coeff, thresh)
    born = last_birth(f, guess, end)
    rank = np.searchsorted(sample, born, side="right") + int(DEATH_MARGIN * sample.size)
    stop = max(born, sample[min(rank, sample.size - 1)])
    if stop >= end:
        return _ripser_dgms(f, maxdim, coeff, thresh)
    dgms = _ripser_dgms(f, maxdim, coeff, float(stop))
    alive = [int(np.isinf(g[:, 1]).sum()) for g in dgms]
    if alive[0] > 1 or any(alive[1:]):
        return _ripser_dgms(f, maxdim, coeff, thresh)
    return dgms


def last_birth(f: np.ndarray, guess: float, end: float) -> float:
    """max(``guess``, the longest edge e = (u, v) with guess < |e| <= ``end`` that has no
    witness w: |uw| < |e| and |vw| < |e|) of the symmetric matrix ``f`` (zero diagonal).

    Edges whose ends have a common neighbour closer than ``guess`` have a witness: an AND of
    bit rows rules most out (no BLAS, whose threads fight on a busy machine); the rest are
    checked one by one.
    """
    bits = np.packbits(f < guess, axis=1)  # the diagonal's own bit never matches: |uv| > guess
    bits = np.pad(bits, ((0, 0), (0, -bits.shape[1] % 8))).view(np.uint64)
    u, v = np.nonzero(np.triu((f > guess) & (f <= end), k=1))
    born = guess
    for start in range(0, u.size, 1 << 16):  # bounded memory
        a, b = u[start : start + (1 << 16)], v[start : start + (1 << 16)]
        open_ = ~np.any(bits[a] & bits[b], axis=1)
        a, b = a[open_], b[open_]
        for first in range(0, a.size, 1024):
            x, y = a[first : first + 1024], b[first : first + 1024]
            length = f[x, y]
            lone = ~np.any((f[x] < length[:, None]) & (f[y] < length[:, None]), axis=1)
            if lone.any():
                born = max(born, length[lone].max())
    return born


def _ripser_dgms(d: np.ndarray, maxdim: int, coeff: int, thresh: float) -> list[np.ndarray]:
    dgms = ripser.ripser(d, distance_matrix=True, maxdim=maxdim, coeff=coeff, thresh=thresh)
    return [np.asarray(g, dtype=np.float64).reshape(-1, 2) for g in dgms["dgms"]]


def vietoris_rips_diagrams(
    distances: np.ndarray,
    *,
    maxdim: int = 1,
    coeff: int = 127,
    threshold: float | Sequence[float] = 0.0,
) -> pd.DataFrame:
    """Diagrams H0..H``maxdim`` as a long table (dim, birth, death, persistence, significant).

    ``coeff`` is the prime field of coefficients. The default 127 rather than the usual 2
    makes the Betti numbers equal the rational ones (those the Hodge Laplacian sees) unless
    the complex has 127-torsion (over Z/2, any RP^2 inside would count); ripser cannot go
    above 127. A bar is significant when its persistence exceeds ``threshold`` (one value,
    or one per dimension, such as the null model's of :mod:`moetopo.topology.null`);
    essential bars always are. A saturated source
    is handed to ripser only below its maximum (:func:`saturation_threshold`) and the
    classes alive there are given their exact death, the maximum, so the diagrams equal
    those of the whole filtration. Rows are sorted by dim, then persistence descending,
    then birth.
    """
    d = check_distance_matrix(distances)
    cap = saturation_threshold(d)
    dgms = rips_barcodes(d, maxdim=maxdim, coeff=check_coefficient(coeff), thresh=cap)
    maximum = float(np.float32(off_diagonal(d).max())) if np.isfinite(cap) else None
    frames = []
    for dim, dgm in enumerate(dgms):
        dgm = np.asarray(dgm, dtype=np.float64).reshape(-1, 2)
        if maximum is not None:
            dgm = close_at_maximum(dgm, maximum, dim)
        frames.append(pd.DataFrame({"dim": dim, "birth": dgm[:, 0], "death": dgm[:, 1]}))
    table = pd.concat(frames, ignore_index=True)
    table["dim"] = table["dim"].astype(np.int64)
    table["persistence"] = table["death"] - table["birth"]
    limits = np.broadcast_to(np.asarray(threshold, dtype=np.float64), (maxdim + 1,))
    table["significant"] = table["persistence"] > limits[table["dim"].to_numpy()]
    table = table.sort_values(["dim", "persistence", "birth"], ascending=[True, False, True])
    return table.reset_index(drop=True)[DIAGRAM_COLUMNS]


def close_at_maximum(dgm: np.ndarray, maximum: float, dim: int) -> np.ndarray:
    """Deaths of the classes a filtration stopped below ``maximum`` left open: all die at
    the maximum (the full simplex is contractible) except the one H0 class of the whole."""
    open_rows = np.flatnonzero(np.isinf(dgm[:, 1]))
    if dim == 0:
        open_rows = open_rows[open_rows != open_rows[np.argmin(dgm[open_rows, 0])]]
    dgm = dgm.copy()
    dgm[open_rows, 1] = maximum
    return dgm


def persistent_entropy(lengths: np.ndarray) -> float:
    """Shannon entropy (natural log) of the bar lengths normalised to sum 1.

    Only finite, strictly positive lengths count; with fewer than two such bars the
    entropy is 0. High entropy = persistence spread evenly over many bars; low = a few
    bars dominate.
    """
    lengths = np.asarray(lengths, dtype=np.float64)
    lengths = lengths[np.isfinite(lengths) & (lengths > 0)]
    if lengths.size < 2:
        return 0.0
    p = lengths / lengths.sum()
    return float(-(p * np.log(p)).sum())


@dataclass(frozen=True)
class DiagramSummary:
    """Headline figures of one dimension of a diagram table (with a 'significant' column).

    total/max persistence and entropy are over finite bars; significant_persistence sums
    the finite significant ones only; n_significant counts essential bars too.
    """

    dim: int
    n_bars: int
    n_essential: int
    n_significant: int
    total_persistence: float
    significant_persistence: float
    max_persistence: float
    entropy: float


def summarize(diagrams: pd.DataFrame, dim: int) -> DiagramSummary:
    """Counts, total and max finite persistence, and persistent entropy of dimension ``dim``."""
    rows = diagrams[diagrams["dim"] == dim]
    pers = rows["persistence"].to_numpy(dtype=np.float64)
    finite = pers[np.isfinite(pers)]
    kept = pers[np.isfinite(pers) & rows["significant"].to_numpy(dtype=bool)]
    return DiagramSummary(
        dim=dim,
        n_bars=len(rows),
        n_essential=int((~np.isfinite(pers)).sum()),
        n_significant=int(rows["significant"].sum()),
        total_persistence=float(finite.sum()),
        significant_persistence=float(kept.sum()),
        max_persistence=float(finite.max()) if finite.size else 0.0,
        entropy=persistent_entropy(finite),
    )


def bottleneck_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Bottleneck distance between two diagrams of the same dimension, arrays (k, 2).

    Finite bars are matched to each other or to the diagonal under the L-infinity
    distance (a bar's distance to the diagonal is half its length). Essential bars
    (death = inf) are compared separately: different counts give inf, equal counts
    are matched in order of birth (optimal on a line). The result is the larger of the
    two parts. Exact: binary search over candidate values with a perfect-matching test.
    """
    a = np.asarray(a, dtype=np.float64).reshape(-1, 2)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 2)
    ess_a = np.sort(a[np.isinf(a[:, 1]), 0])
    ess_b = np.sort(b[np.isinf(b[:, 1]), 0])
    if ess_a.size != ess_b.size:
        return float("inf")
    essential = float(np.abs(ess_a - ess_b).max()) if ess_a.size else 0.0
    return max(essential, _finite_bottleneck(a[np.isfinite(a[:, 1])], b[np.isfinite(b[:, 1])]))


def _finite_bottleneck(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = len(a), len(b)
    if na + nb == 0:
        return 0.0
    half_a = (a[:, 1] - a[:, 0]) / 2.0
    half_b = (b[:, 1] - b[:, 0]) / 2.0
    cross = np.abs(a[:, None, :] - b[None, :, :]).max(axis=2)  # (na, nb)
    candidates = np.unique(np.concatenate([[0.0], cross.ravel(), half_a, half_b]))
    # Left: a's bars then b's diagonal slots; right: b's bars then a's diagonal slots.
    size = na + nb
    cost = np.full((size, size), np.inf)
    cost[:na, :nb] = cross
    cost[np.arange(na), nb + np.arange(na)] = half_a
    cost[na + np.arange(nb), np.arange(nb)] = half_b
    cost[na:, nb:] = 0.0

    def perfect(c: float) -> bool:
        graph = sparse.csr_matrix(cost <= c)
        return bool((maximum_bipartite_matching(graph, perm_type="column") >= 0).all())

    # At the largest candidate, every bar can go to its own diagonal slot: a perfect matching.
    lo, hi = 0, len(candidates) - 1
    while lo < hi:
        mid = (lo + hi) // 2
        if perfect(candidates[mid]):
            hi = mid
        else:
            lo = mid + 1
    return float(candidates[lo])
