"""Pairwise expert distances of one MoE layer, from several sources.

Weight distances run at matmul speed with a stated accuracy. The Gram matrix of the
experts' concatenated weights is accumulated over slices of their coordinates: each
slice is widened to float32 (BF16 by an integer shift, exactly), centred on the layer's
mean expert so that near-duplicates do not vanish in the cancellation of
G_ii + G_jj - 2 G_ij, multiplied in float32 and added into a float64 total. Rounding
then perturbs a squared distance by at most :func:`rounding_bound` times
(|c_i|^2 + |c_j|^2), the pair's centred squared norms; every pair closer than
:data:`VERIFY_BELOW` of that is recomputed exactly, as the float64 sum of squared
differences, in a second pass that reads only those experts. So near-duplicates are
exact, and any other distance is within 0.1% of its float64 value (the worst case the
bound allows; the geometry benchmark prints the error measured). Memory is bounded by
the chunk size, whatever the expert size.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
from scipy.spatial.distance import pdist, squareform

from moetopo.checkpoint.dtypes import widen_into
from moetopo.checkpoint.experts import ExpertWeights, expert_output, read_expert
from moetopo.checkpoint.layout import MoELayer
from moetopo.checkpoint.prefetch import SlotBuffers, prefetched
from moetopo.checkpoint.reader import TensorReader

# Each read-ahead buffer: larger ones only delay the first chunk and fault in more pages.
_READ_AHEAD_BYTES = 32 << 20
_SLICE_BYTES = 1 << 20  # float32 columns of every expert multiplied at once: fits in L2
_MAX_SLICE = 4096  # the longest float32 sum, which sets the rounding bound
_EXACT_SLICE_BYTES = 8 << 20  # float64 pair differences formed at once when verifying
# A pair whose squared distance is below this fraction of its centred squared norms is
# recomputed exactly: independent experts sit near 1 (their centred parts are nearly
# orthogonal), near-duplicates near 0.
VERIFY_BELOW = 0.25


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


def rounding_bound(width: int, dtype=np.float32) -> float:
    """Bound on |fast d_ij^2 - d_ij^2| / (|c_i|^2 + |c_j|^2) for slices of ``width``.

    A dot product of length n in precision u errs by at most gamma_n = n u / (1 - n u)
    times |c_i| |c_j| (Higham, Accuracy and Stability, 3.1); three enter d^2 and
    2 |c_i| |c_j| <= |c_i|^2 + |c_j|^2, so 2 gamma_n. Rounding the centred values once
    moves c_i - c_j by at most u (|c_i| + |c_j|): 4 u more on d^2. The float64 sum
    across slices adds less than 1e-12.
    """
    u = float(np.finfo(dtype).eps) / 2.0
    gamma = width * u / (1.0 - width * u)
    return 2.0 * gamma + 4.0 * u + 1e-12


class CenteredGram:
    """Accumulates the Gram matrix of E vectors, chunk by chunk of coordinates, in float64.

    Each chunk is centred on the mean over experts of that chunk (the chunk of the mean
    expert), which is exact: the full centred Gram is the sum of the chunks' centred
    Grams, whatever centre a chunk uses. A chunk may be float32 (multiplied in float32,
    summed in float64) or float64. The uncentred inner products are recovered from two
    running sums.
    """

    def __init__(self, n: int):
        self.centred = np.zeros((n, n), dtype=np.float64)
        self.dot_mean = np.zeros(n)  # <x_i, mean>
        self.mean_sq = 0.0  # <mean, mean>
        self.averager = {np.dtype(t): np.full(n, 1.0 / n, dtype=t) for t in (np.float32, float)}

    def add(self, chunk: np.ndarray) -> None:
        """Add a C-ordered [E, c] float32 or float64 chunk; it is centred in place."""
        mean = self.averager[chunk.dtype] @ chunk  # a BLAS gemv: faster than axis-0 mean
        self.dot_mean += chunk @ mean
        self.mean_sq += float(mean @ mean)
        chunk -= mean
        self.centred += chunk @ chunk.T  # numpy runs A @ A.T as a BLAS syrk

    def squared(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(squared distances, squared norms, centred squared norms)."""
        # numpy mirrors syrk's triangle, so this only matters if a gemm path ever left
        # rounding asymmetry; O(E^2), it costs nothing beside the accumulation
        g = np.triu(self.centred) + np.triu(self.centred, 1).T
        diag = np.diag(g).copy()
        sq = np.maximum(diag[:, None] + diag[None, :] - 2.0 * g, 0.0)
        np.fill_diagonal(sq, 0.0)
        norms_sq = np.maximum(diag + 2.0 * self.dot_mean - self.mean_sq, 0.0)
        return sq, norms_sq, diag

    def distances(self) -> tuple[np.ndarray, np.ndarray]:
        """(Euclidean distance matrix, cosine distance matrix)."""
        sq, norms_sq, _ = self.squared()
        return l2_and_cosine(sq, norms_sq)


def l2_and_cosine(sq: np.ndarray, norms_sq: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Euclidean and cosine distance matrices from squared distances and squared norms."""
    norms = np.sqrt(norms_sq)
    # 1 - cos = (d^2 - (|a| - |b|)^2) / (2 |a| |b|), free of the 1 - cos cancellation
    denom = 2.0 * norms[:, None] * norms[None, :]
    gap = (norms[:, None] - norms[None, :]) ** 2
    with np.errstate(invalid="ignore", divide="ignore"):
        cosine = np.where(denom > 0, (sq - gap) / denom, 1.0)
    cosine = np.clip(cosine, 0.0, 2.0)
    np.fill_diagonal(cosine, 0.0)
    return np.sqrt(sq), cosine


def expert_row_blocks(
    reader: TensorReader, moe: MoELayer, experts: np.ndarray, target: int
) -> Iterator[np.ndarray]:
    """[len(experts), c] blocks covering every weight of ``experts``, as stored (BF16 stays
    two bytes), in two reused buffers of about ``target`` bytes read one ahead."""
    n = len(experts)
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
        for k, e in enumerate(experts):
            name, lead, off = tensor.locate(int(e))
            reader.read_into(block[k], name, lead, (off + r0, off + r1))
        return block

    for _, block in prefetched(chunks, load):
        yield block


def weight_distances(
    reader: TensorReader, moe: MoELayer, chunk_bytes: int = 256 << 20
) -> dict[str, np.ndarray]:
    """L2 and cosine distances over each expert's concatenated gate/up/down weights.

    Chunks of rows of every expert are read as stored into two reused buffers of at most
    min(``chunk_bytes`` / 2, 32 MiB) each (more only when one row of every expert is
    larger), the next while the Gram takes the current; a chunk is widened a cache-sized
    slice of columns at a time, so the widened copy never leaves the CPU cache. Pairs
    closer than :data:`VERIFY_BELOW` are then made exact (see the module docstring).
    """
    n = moe.n_experts
    target = max(1, min(chunk_bytes // 2, _READ_AHEAD_BYTES))
    gram = CenteredGram(n)
    width = max(256, min(_MAX_SLICE, _SLICE_BYTES // (4 * n)))
    work = {t: np.empty(n * width, dtype=t) for t in (np.float32, np.float64)}
    for block in expert_row_blocks(reader, moe, np.arange(n), target):
        # float64 weights stay float64 (rounding them would break the bound's premise)
        buffer = work[np.float64 if block.dtype == np.float64 else np.float32]
        for c0 in range(0, block.shape[1], width):
            part = block[:, c0 : c0 + width]
            gram.add(widen_into(buffer[: part.size].reshape(part.shape), part))
    sq, norms_sq, centred_sq = gram.squared()
    spread = centred_sq[:, None] + centred_sq[None, :]
    i, j = np.nonzero(np.triu(sq < VERIFY_BELOW * spread, 1))
    if i.size:
        exact_sq, exact_norms = exact_squared_distances(reader, moe, i, j, target)
        sq[i, j] = sq[j, i] = exact_sq
        norms_sq[list(exact_norms)] = list(exact_norms.values())
    l2, cosine = l2_and_cosine(sq, norms_sq)
    return {"weight_l2": l2, "weight_cosine": cosine}


def exact_squared_distances(
    reader: TensorReader, moe: MoELayer, i: np.ndarray, j: np.ndarray, target: int
) -> tuple[np.ndarray, dict[int, float]]:
    """(|x_i - x_j|^2 per pair, {expert: |x|^2}) summed in float64 from exact differences,
    reading only the experts the pairs name."""
    experts, inverse = np.unique(np.concatenate([i, j]), return_inverse=True)
    a, b = inverse[: i.size], inverse[i.size :]
    sq = np.zeros(i.size)
    norms_sq = np.zeros(experts.size)
    width = max(1, _EXACT_SLICE_BYTES // (8 * max(i.size, experts.size)))
    for block in expert_row_blocks(reader, moe, experts, target):
        for c0 in range(0, block.shape[1], width):
            rows = block[:, c0 : c0 + width].astype(np.float64)
            norms_sq += np.einsum("ij,ij->i", rows, rows)
            diff = rows[a] - rows[b]
            sq += np.einsum("ij,ij->i", diff, diff)
    return sq, dict(zip(experts.tolist(), norms_sq.tolist(), strict=True))


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
