"""Row-stochastic collaboration matrices, each built the way CT-MoE builds its S.

CT-MoE turns a raw [E, E] parameter into S by symmetrising it, masking the diagonal and
taking a softmax over each row. Every source here is that construction applied to a
symmetric score, so the three sources are matrices of one kind:

- learned: the checkpoint's S_raw, at the temperature its config gives;
- coactivation: S_raw = log P(i and j both selected), temperature 1, so that
  S_ij = P(i, j) / Σ_{l≠i} P(i, l): the chance that a partner drawn uniformly from the
  experts selected with i is j (Σ_{l≠i} P(i, l) = (k - 1) P(i) at fixed top-k);
- router: S_raw = cosine similarity of the router rows over a temperature, the rows
  centred first where the routing rule ignores a vector added to every row (softmax
  selection): only the centred rows are determined by the routing then.

A row with no finite score (an expert never selected with another) is set uniform over
the other experts, as a random walk leaves a dangling vertex; the count is recorded.
"""

from __future__ import annotations

import numpy as np


def ct_moe_matrix(raw: np.ndarray, temperature: float = 1.0) -> tuple[np.ndarray, int]:
    """(S, dangling rows): softmax over the off-diagonal of ((raw + rawᵀ) / 2) / temperature,
    row by row; -inf scores get weight 0, rows with none finite are uniform."""
    raw = np.asarray(raw, dtype=np.float64)
    n = raw.shape[0]
    if raw.shape != (n, n) or n < 2:
        raise ValueError(f"a collaboration matrix needs [E, E] scores with E >= 2, got {raw.shape}")
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    logits = (raw + raw.T) / (2.0 * temperature)
    np.fill_diagonal(logits, -np.inf)
    top = logits.max(axis=1, keepdims=True)
    dangling = ~np.isfinite(top[:, 0])
    weights = np.exp(logits - np.where(np.isfinite(top), top, 0.0))
    weights[dangling] = 1.0
    np.fill_diagonal(weights, 0.0)
    return weights / weights.sum(axis=1, keepdims=True), int(dangling.sum())


def coactivation_scores(counts: np.ndarray) -> np.ndarray:
    """log of the co-selection counts (-inf where never together): the S_raw whose CT-MoE
    matrix is the row-normalised co-selection (the count scale cancels in each row)."""
    counts = np.asarray(counts, dtype=np.float64)
    with np.errstate(divide="ignore"):
        return np.log(counts)


def router_scores(router: np.ndarray, centre: bool) -> np.ndarray:
    """Cosine similarity of router rows [E, H], centred on their mean row when ``centre``;
    a zero row is at cosine 0 from every other."""
    rows = np.asarray(router, dtype=np.float64)
    if centre:
        rows = rows - rows.mean(axis=0)
    norms = np.linalg.norm(rows, axis=1)
    unit = rows / np.where(norms > 0, norms, 1.0)[:, None]
    return np.clip(unit @ unit.T, -1.0, 1.0)
