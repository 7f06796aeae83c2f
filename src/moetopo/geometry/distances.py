"""Pairwise expert distances of one MoE layer, from several sources.

Weight distances are exact: a Gram matrix of the experts' concatenated weights is
accumulated in float64 over chunks of their coordinates, each chunk centred on the
layer's mean expert so that near-duplicates do not vanish in the cancellation of
G_ii + G_jj - 2 G_ij. Memory is bounded by the chunk size, whatever the expert size.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy.spatial.distance import pdist, squareform

from moetopo.checkpoint.experts import ExpertWeights, expert_output, read_expert
from moetopo.checkpoint.layout import MoELayer
from moetopo.checkpoint.prefetch import SlotBuffers, prefetched
from moetopo.checkpoint.reader import TensorReader

# Each read-ahead buffer: larger ones only delay the first chunk and fault in more pages.
_READ_AHEAD_BYTES = 32 << 20
_GRAM_SLICE_BYTES = 2 << 20  # float64 columns added to the Gram at once: fits in L2 cache


def router_distances(router: np.ndarray) -> dict[str, np.ndarray]:
    """L1 (the reference's measure), cosine and L2 between router rows."""
    rows = np.asarray(router, dtype=np.float64)
    return {
        "router_l1": squareform(pdist(rows, "cityblock")),
        "router_cosine": _cosine_from_rows(rows),
        "router_l2": squareform(pdist(rows, "euclidean")),
    }


def _cosine_from_rows(rows: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(rows, axis=1)
    safe = np.where(norms > 0, norms, 1.0)
    unit = rows / safe[:, None]
    distance = np.clip(1.0 - unit @ unit.T, 0.0, 2.0)
    np.fill_diagonal(distance, 0.0)
    return distance


class CenteredGram:
    """Accumulates the Gram matrix of E vectors, chunk by chunk of coordinates, in float64.

    Each chunk is centred on the mean over experts of that chunk (the chunk of the mean
    expert), which is exact: the full centred Gram is the sum of the chunks' centred
    Grams. The uncentred inner products are recovered from two running sums.
    """

    def __init__(self, n: int):
        self.centred = np.zeros((n, n), dtype=np.float64)
        self.dot_mean = np.zeros(n)  # <x_i, mean>
        self.mean_sq = 0.0  # <mean, mean>
        self.averager = np.full(n, 1.0 / n)

    def add(self, chunk: np.ndarray) -> None:
        """Add a C-ordered float64 [E, c] chunk; it is centred in place (and so consumed)."""
        mean = self.averager @ chunk  # a BLAS gemv: faster than numpy's axis-0 mean
        self.dot_mean += chunk @ mean
        self.mean_sq += float(mean @ mean)
        chunk -= mean
        self.centred += chunk @ chunk.T  # numpy runs A @ A.T as a BLAS syrk

    def distances(self) -> tuple[np.ndarray, np.ndarray]:
        """(Euclidean distance matrix, cosine distance matrix)."""
        # numpy mirrors syrk's triangle, so this only matters if a gemm path ever left
        # rounding asymmetry; O(E^2), it costs nothing beside the accumulation
        g = np.triu(self.centred) + np.triu(self.centred, 1).T
        diag = np.diag(g)
        sq = np.maximum(diag[:, None] + diag[None, :] - 2.0 * g, 0.0)
        np.fill_diagonal(sq, 0.0)
        norms_sq = np.maximum(diag + 2.0 * self.dot_mean - self.mean_sq, 0.0)
        norms = np.sqrt(norms_sq)
        # 1 - cos = (d^2 - (|a| - |b|)^2) / (2 |a| |b|), free of the 1 - cos cancellation
        denom = 2.0 * norms[:, None] * norms[None, :]
        gap = (norms[:, None] - norms[None, :]) ** 2
        with np.errstate(invalid="ignore", divide="ignore"):
            cosine = np.where(denom > 0, (sq - gap) / denom, 1.0)
        cosine = np.clip(cosine, 0.0, 2.0)
        np.fill_diagonal(cosine, 0.0)
        return np.sqrt(sq), cosine


def weight_distances(
    reader: TensorReader, moe: MoELayer, chunk_bytes: int = 256 << 20
) -> dict[str, np.ndarray]:
    """Exact L2 and cosine distances over each expert's concatenated gate/up/down weights.

    Chunks of rows of every expert are read as stored (BF16 stays two bytes) into two
    reused buffers of at most min(``chunk_bytes`` / 2, 32 MiB) each (more only when one
    row of every expert is larger), the next while the Gram takes the current; a chunk
    is widened to float64 a cache-sized slice of columns at a time, so the float64 copy
    never leaves the CPU cache.
    """
    n = moe.n_experts
    gram = CenteredGram(n)
    target = max(1, min(chunk_bytes // 2, _READ_AHEAD_BYTES))
    chunks = []
    for role in sorted(moe.experts):
        tensor = moe.experts[role]
        stored = reader.storage_dtype(tensor.locate(0)[0])
        rows, cols = tensor.shape[0], int(np.prod(tensor.shape[1:]))
        step = max(1, target // (stored.itemsize * n * cols))
        chunks += [(tensor, stored, cols, r0, min(rows, r0 + step)) for r0 in range(0, rows, step)]
    buffers = SlotBuffers()

    def load(chunk, slot: int) -> np.ndarray:
        tensor, stored, cols, r0, r1 = chunk
        block = buffers.take(slot, stored, (n, (r1 - r0) * cols))
        for e in range(n):
            name, lead, off = tensor.locate(e)
            reader.read_into(block[e], name, lead, (off + r0, off + r1))
        return block

    width = max(256, _GRAM_SLICE_BYTES // (8 * n))
    work = np.empty(n * width, dtype=np.float64)
    for _, block in prefetched(chunks, load):
        for c0 in range(0, block.shape[1], width):
            part = block[:, c0 : c0 + width]
            wide = work[: part.size].reshape(part.shape)
            np.copyto(wide, part, casting="unsafe")
            gram.add(wide)
    l2, cosine = gram.distances()
    return {"weight_l2": l2, "weight_cosine": cosine}


def function_distances(
    experts: Callable[[int], ExpertWeights],
    n_experts: int,
    tokens: np.ndarray,
    activation: str,
    limit: float | None = None,
    chunk_bytes: int = 256 << 20,
) -> np.ndarray:
    """Normalised output discrepancy of every pair of experts on probe tokens.

    d(i, j) = mean_x ||f_i(x) - f_j(x)||^2 / ((mean_x ||f_i||^2 + mean_x ||f_j||^2) / 2),
    which ignores how an expert orders its hidden units (weight distances do not).
    ``experts(e)`` returns expert e's weights, read again for each chunk of tokens, so
    memory holds one expert and one chunk of outputs.
    """
    n_tokens, hidden = tokens.shape
    step = max(1, chunk_bytes // (8 * n_experts * hidden))
    gram = CenteredGram(n_experts)
    sq_norms = np.zeros(n_experts)
    for t0 in range(0, n_tokens, step):
        x = tokens[t0 : t0 + step]
        outputs = np.empty((n_experts, x.shape[0] * hidden), dtype=np.float64)
        for e in range(n_experts):
            outputs[e] = expert_output(experts(e), x, activation, limit).ravel()
            sq_norms[e] += outputs[e] @ outputs[e]
        gram.add(outputs)
    l2, _ = gram.distances()
    mean_norm = sq_norms / n_tokens
    scale = (mean_norm[:, None] + mean_norm[None, :]) / 2.0
    with np.errstate(invalid="ignore", divide="ignore"):
        distance = np.where(scale > 0, (l2**2 / n_tokens) / scale, 0.0)
    np.fill_diagonal(distance, 0.0)
    return distance


def layer_function_distances(
    reader: TensorReader,
    moe: MoELayer,
    tokens: np.ndarray,
    activation: str,
    limit: float | None = None,
    chunk_bytes: int = 256 << 20,
) -> np.ndarray:
    return function_distances(
        lambda e: read_expert(reader, moe, e),
        moe.n_experts,
        tokens.astype(np.float32),
        activation,
        limit,
        chunk_bytes,
    )


def coactivation_distances(counts: np.ndarray) -> np.ndarray:
    """1 - count_ij / sqrt(count_i count_j): 0 for experts always chosen together, 1 for
    never; an expert that is never chosen is at distance 1 from every other."""
    load = np.diag(counts).astype(np.float64)
    denom = np.sqrt(load[:, None] * load[None, :])
    with np.errstate(invalid="ignore", divide="ignore"):
        rate = np.where(denom > 0, counts / denom, 0.0)
    distance = 1.0 - np.clip(rate, 0.0, 1.0)
    np.fill_diagonal(distance, 0.0)
    return distance


# What each source is computed from; the function distance's entry is where its inputs
# came from: "captured" (the router's inputs of the layer, from a captured file) or "probe".
INPUTS = {
    "router_l1": "router rows",
    "router_cosine": "router rows",
    "router_l2": "router rows",
    "weight_l2": "weights",
    "weight_cosine": "weights",
    "function": "probe",
    "coactivation": "routing",
}


def pairs_table(
    layer: int, matrices: dict[str, np.ndarray], inputs: dict[str, str] | None = None
) -> dict[str, np.ndarray]:
    """Long-table columns (layer, source, i, j, distance, inputs) for i < j; ``inputs``
    overrides :data:`INPUTS` per source."""
    columns: dict[str, list] = {"layer": [], "source": [], "i": [], "j": [], "distance": []}
    columns["inputs"] = []
    for source in sorted(matrices):
        matrix = matrices[source]
        i, j = np.triu_indices(matrix.shape[0], k=1)
        columns["layer"].append(np.full(i.size, layer))
        columns["source"].append(np.full(i.size, source, dtype=object))
        columns["i"].append(i)
        columns["j"].append(j)
        columns["distance"].append(matrix[i, j])
        origin = (inputs or {}).get(source, INPUTS.get(source, ""))
        columns["inputs"].append(np.full(i.size, origin, dtype=object))
    return {k: np.concatenate(v) if v else np.array([]) for k, v in columns.items()}
