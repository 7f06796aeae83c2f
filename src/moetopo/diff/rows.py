"""Streamed row-by-row comparison of the same tensors in two checkpoints.

Both models are read by exact byte range, one row block at a time: each block is
read on a second thread while the previous one is compared, into one of two reused
buffers per model, so memory is four blocks and reading overlaps computing. BF16,
F16 and F32 rows are widened to float32 in cache-sized sub-blocks; FP8 and MXFP4
tensors go through :class:`TensorReader`'s dequantisation.

A row's change is measured as ``l1`` (sum of absolute differences, the reference
implementation's measure), ``l2`` (Euclidean) or ``cosine`` (1 - cosine similarity).
A row is shifted when its change exceeds the threshold, absolute or times the base
row's norm under the same measure (L1 or L2 norm; cosine is scale-free already).
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from moetopo.checkpoint.prefetch import SlotBuffers, prefetched
from moetopo.checkpoint.reader import TensorReader

MEASURES = ("l1", "l2", "cosine")
THRESHOLD_KINDS = ("absolute", "relative")
_FAST = frozenset({"BF16", "F16", "F32"})  # stored types compared as stored, widened to f32
_SUB_ELEMENTS = 1 << 15  # per sub-block: three float32 work arrays stay in L2 cache


@dataclass(frozen=True)
class RowMeasure:
    """How a row's change is measured and when it counts as shifted."""

    measure: str = "l1"
    threshold: float = 0.1
    kind: str = "relative"

    def __post_init__(self):
        if self.measure not in MEASURES:
            raise ValueError(f"unknown measure {self.measure!r}; known: {MEASURES}")
        if self.kind not in THRESHOLD_KINDS:
            raise ValueError(f"unknown threshold kind {self.kind!r}; known: {THRESHOLD_KINDS}")


@dataclass(frozen=True)
class Span:
    """Flat rows ``[start, stop)`` of ``tensor`` (rows over all but the last axis).

    Row r goes to accumulator slot ``s`` of the segment ``(lo, hi, s)`` that holds
    ``r % period``: one segment for a whole projection or expert, several for a fused
    q/k/v tensor or MLA's per-head key/value rows.
    """

    tensor: str
    start: int
    stop: int
    segments: tuple[tuple[int, int, int], ...]
    period: int

    @classmethod
    def whole(cls, tensor: str, start: int, stop: int, slot: int) -> Span:
        return cls(tensor, start, stop, ((0, stop, slot),), max(stop, 1))

    def slots(self, start: int, stop: int) -> np.ndarray | int:
        if len(self.segments) == 1:
            return self.segments[0][2]
        bounds = np.array([lo for lo, _, _ in self.segments[1:]], dtype=np.int64)
        codes = np.array([s for _, _, s in self.segments], dtype=np.int64)
        position = np.arange(start, stop, dtype=np.int64) % self.period
        return codes[np.searchsorted(bounds, position, side="right")]


@dataclass
class RowTotals:
    """Per-slot running totals of the row statistics."""

    rows: np.ndarray
    shifted: np.ndarray
    sum_shift: np.ndarray
    max_shift: np.ndarray
    diff_sq: np.ndarray
    base_sq: np.ndarray

    @classmethod
    def zeros(cls, n: int) -> RowTotals:
        return cls(
            *(np.zeros(n, dtype=np.int64) for _ in range(2)), *(np.zeros(n) for _ in range(4))
        )

    def summary(self, slot: int) -> dict:
        """rows, shifted_rows, shifted_fraction, mean_shift, max_shift, relative_change,
        frobenius_base, frobenius_diff (artefacts.ROW_DIFF's columns)."""
        rows = int(self.rows[slot])
        diff, base = self.diff_sq[slot], self.base_sq[slot]
        relative = math.sqrt(diff / base) if base > 0 else (0.0 if diff == 0 else math.inf)
        return {
            "rows": rows,
            "shifted_rows": int(self.shifted[slot]),
            "shifted_fraction": self.shifted[slot] / rows if rows else math.nan,
            "mean_shift": self.sum_shift[slot] / rows if rows else math.nan,
            "max_shift": float(self.max_shift[slot]) if rows else math.nan,
            "relative_change": relative,
            "frobenius_base": math.sqrt(base),
            "frobenius_diff": math.sqrt(diff),
        }

    def add(self, slots, change, shifted, diff_sq, base_sq) -> None:
        if isinstance(slots, int):
            self.rows[slots] += change.size
            self.shifted[slots] += int(np.count_nonzero(shifted))
            self.sum_shift[slots] += float(change.sum(dtype=np.float64))
            self.max_shift[slots] = max(self.max_shift[slots], float(change.max(initial=0.0)))
            self.diff_sq[slots] += float(diff_sq.sum())
            self.base_sq[slots] += float(base_sq.sum())
            return
        n = self.rows.size
        self.rows += np.bincount(slots, minlength=n)
        self.shifted += np.bincount(slots, weights=shifted, minlength=n).astype(np.int64)
        self.sum_shift += np.bincount(slots, weights=change, minlength=n)
        self.diff_sq += np.bincount(slots, weights=diff_sq, minlength=n)
        self.base_sq += np.bincount(slots, weights=base_sq, minlength=n)
        for slot in np.unique(slots):
            top = float(change[slots == slot].max())
            self.max_shift[slot] = max(self.max_shift[slot], top)


def compare_spans(
    base: TensorReader,
    tuned: TensorReader,
    spans: list[Span],
    n_slots: int,
    measure: RowMeasure,
    chunk_bytes: int = 256 << 20,
    workers: int = 2,
) -> RowTotals:
    """Row statistics of every span, accumulated per slot, reading both models once.

    ``chunk_bytes`` bounds the blocks held: two per model (one being compared, one
    being read), so a block of one model is a quarter of it. ``workers`` threads
    compare the rows of a block (numpy releases the GIL in its loops).
    """
    totals = RowTotals.zeros(n_slots)
    block_bytes = max(1, chunk_bytes // 4)
    left, right = _Rows(base, block_bytes), _Rows(tuned, block_bytes)
    blocks = [
        (span, a, b)
        for span in spans
        for a, b in _blocks(span, max(left.row_bytes(span), right.row_bytes(span)), block_bytes)
    ]

    def load(block, slot: int):
        span, a, b = block
        return left.read(span.tensor, a, b, slot), right.read(span.tensor, a, b, slot)

    with ThreadPoolExecutor(max_workers=max(1, workers)) as compute:
        for (span, a, b), (x, y) in prefetched(blocks, load):
            change, ref, diff_sq, base_sq = _parallel_changes(compute, workers, x, y, measure)
            limit = measure.threshold * ref if measure.kind == "relative" else measure.threshold
            totals.add(span.slots(a, b), change, change > limit, diff_sq, base_sq)
    return totals


def _parallel_changes(pool: ThreadPoolExecutor, workers: int, x, y, measure: RowMeasure):
    """row_changes over ``workers`` contiguous parts of the block's rows."""
    n = x.shape[0]
    parts = min(workers, max(1, n * x.shape[1] // (4 * _SUB_ELEMENTS)))
    if parts <= 1:
        return row_changes(x, y, measure.measure)
    edges = np.linspace(0, n, parts + 1).astype(int)
    futures = [
        pool.submit(row_changes, x[p:q], y[p:q], measure.measure)
        for p, q in zip(edges[:-1], edges[1:], strict=True)
    ]
    results = [f.result() for f in futures]
    return tuple(np.concatenate(column) for column in zip(*results, strict=True))


def _blocks(span: Span, row_bytes: int, block_bytes: int):
    step = max(1, block_bytes // max(1, row_bytes))
    for a in range(span.start, span.stop, step):
        yield a, min(span.stop, a + step)


def row_changes(x: np.ndarray, y: np.ndarray, measure: str):
    """(change, base norm, ||y - x||^2, ||x||^2) per row of base rows ``x``, tuned rows ``y``.

    ``x`` and ``y`` are [rows, cols] float32, float16 or bfloat16. Row sums
    run as matrix products (BLAS), several times faster than numpy's axis reductions.
    """
    n, cols = x.shape
    change, ref, diff_sq, base_sq = (np.empty(n) for _ in range(4))
    sub = max(1, _SUB_ELEMENTS // max(1, cols))
    work = _Work(min(sub, n), cols)
    for r in range(0, n, sub):
        k = min(sub, n - r)
        b, t = work.widen(x[r : r + k], 0), work.widen(y[r : r + k], 1)
        d = work.diff[:k]
        np.subtract(t, b, out=d)
        dsq, bsq = _row_dot(d, d), _row_dot(b, b)
        diff_sq[r : r + k], base_sq[r : r + k] = dsq, bsq
        if measure == "l1":
            ones = work.ones
            change[r : r + k] = np.abs(d, out=d) @ ones
            ref[r : r + k] = np.abs(b, out=d) @ ones
        elif measure == "l2":
            change[r : r + k], ref[r : r + k] = np.sqrt(dsq), np.sqrt(bsq)
        else:
            change[r : r + k] = _cosine_distance(b, t, bsq)
            ref[r : r + k] = 1.0
    return change, ref, diff_sq, base_sq


def _row_dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise dot products as one batched matrix product."""
    return (a[:, None, :] @ b[:, :, None]).reshape(-1)


def _cosine_distance(b: np.ndarray, t: np.ndarray, bsq: np.ndarray) -> np.ndarray:
    """1 - cos(b, t); 0 when both rows are zero, 1 when only one is."""
    tsq = _row_dot(t, t).astype(np.float64)
    dot = _row_dot(b, t).astype(np.float64)
    norm = np.sqrt(bsq.astype(np.float64) * tsq)
    with np.errstate(invalid="ignore", divide="ignore"):
        distance = np.clip(1.0 - dot / norm, 0.0, 2.0)
    return np.where(norm > 0, distance, np.where((bsq > 0) | (tsq > 0), 1.0, 0.0))


class _Work:
    """Reused float32 sub-block arrays: widening into them avoids a large allocation per
    block, which makes the same BF16 cast several times faster."""

    def __init__(self, rows: int, cols: int):
        self.floats = [np.empty((rows, cols), dtype=np.float32) for _ in range(2)]
        self.diff = np.empty((rows, cols), dtype=np.float32)
        self.ones = np.ones(cols, dtype=np.float32)

    def widen(self, raw: np.ndarray, side: int) -> np.ndarray:
        k = raw.shape[0]
        if raw.dtype == np.float32:
            return raw
        out = self.floats[side][:k]
        out[...] = raw
        return out


class _Rows:
    """Row blocks of one model, read as stored into two reused buffers (one being
    compared, one being filled by the read-ahead thread)."""

    def __init__(self, reader: TensorReader, block_bytes: int):
        self.reader = reader
        self.buffers = SlotBuffers(block_bytes)

    def _fast(self, name: str) -> bool:
        lt = self.reader.tensor(name)
        return lt.kind == "plain" and lt.data.dtype in _FAST and len(lt.shape) >= 2

    def row_bytes(self, span: Span) -> int:
        lt = self.reader.tensor(span.tensor)
        cols = lt.shape[-1]
        fast = self._fast(span.tensor)
        return cols * (self.reader.storage_dtype(span.tensor).itemsize if fast else 4)

    def read(self, name: str, start: int, stop: int, slot: int) -> np.ndarray:
        """Flat rows ``[start, stop)`` of ``name``: stored elements in buffer ``slot`` on
        the fast path, dequantised float32 otherwise."""
        lt = self.reader.tensor(name)
        if not self._fast(name):
            return self._dequantised(name, lt.shape, start, stop)
        element = self.reader.storage_dtype(name)
        rows = self.buffers.take(slot, element, (stop - start, lt.shape[-1]))
        return self.reader.read_flat_rows_into(rows, name, start, stop)

    def _dequantised(self, name: str, shape: tuple[int, ...], start: int, stop: int):
        """Rows through TensorReader, split where they cross a leading index."""
        rows = shape[-2] if len(shape) >= 2 else 1
        lead_shape = shape[:-2]
        parts = []
        a = start
        while a < stop:
            lead, r = divmod(a, rows)
            b = min(stop, (lead + 1) * rows)
            index = tuple(int(i) for i in np.unravel_index(lead, lead_shape)) if lead_shape else ()
            parts.append(self.reader.read(name, index, (r, r + b - a)))
            a = b
        return parts[0] if len(parts) == 1 else np.concatenate(parts)
