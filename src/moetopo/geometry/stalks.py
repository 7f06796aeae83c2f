"""Each expert's leading input directions: the stalks of the sheaf on the expert complex."""

from __future__ import annotations

import numpy as np
from scipy.sparse.linalg import svds

from moetopo.checkpoint.experts import read_expert
from moetopo.checkpoint.model import OpenModel


def leading_input_directions(w: np.ndarray, d: int) -> np.ndarray:
    """(in_dim x d) orthonormal frame of the top-d right singular vectors of ``w``.

    ``w`` is an expert's stacked gate/up rows, shape [rows, in_dim]: these directions of
    the input space are the ones the expert responds to most. Large matrices use a
    truncated SVD (ARPACK, fixed seed) so a frame costs a few passes over the weights.
    """
    w = np.asarray(w, dtype=np.float64)
    if w.ndim != 2 or not 1 <= d <= min(w.shape):
        raise ValueError(f"need a 2-D weight matrix with at least {d} rows and columns")
    if min(w.shape) <= max(64, 4 * d):
        return np.linalg.svd(w, full_matrices=False)[2][:d].T
    _, sv, vt = svds(w, k=d, random_state=0)
    return vt[np.argsort(-sv)].T


def expert_frames(model: OpenModel, layer: int, d: int, max_rows: int, seed: int) -> np.ndarray:
    """[n, hidden, d]: each expert's d leading input directions (SVD of its gate/up rows)."""
    moe = model.layout.layers[layer]
    rng = np.random.default_rng(seed)
    frames = []
    for e in range(moe.n_experts):
        w = read_expert(model.reader, moe, e)
        rows = w.up if w.gate is None else np.vstack([w.gate, w.up])
        if rows.shape[0] > max_rows:
            rows = rows[np.sort(rng.choice(rows.shape[0], max_rows, replace=False))]
        frames.append(leading_input_directions(rows, d))
    return np.stack(frames)


def router_frames(weight: np.ndarray, d: int) -> np.ndarray:
    """Router-row stalks for router-only runs: each expert's row as a 1-d frame, padded by
    the leading directions of the other rows so every stalk has dimension d."""
    n, hidden = weight.shape
    unit = weight / np.maximum(np.linalg.norm(weight, axis=1, keepdims=True), 1e-30)
    frames = np.zeros((n, hidden, d))
    basis = np.linalg.svd(weight, full_matrices=False)[2][:d].T  # shared principal directions
    for e in range(n):
        block = np.column_stack([unit[e], basis])
        q, _ = np.linalg.qr(block)
        frames[e] = q[:, :d]  # orthonormal whatever the row; a stalk's gauge changes nothing
    return frames
