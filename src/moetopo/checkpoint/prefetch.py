"""Reading ahead on a second thread while the caller computes on what was read.

Positional reads and numpy's loops release the GIL, so on a cold checkpoint the disk
works while the CPU does: a stage takes about the longer of the two, not their sum.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import numpy as np

Item = TypeVar("Item")
Loaded = TypeVar("Loaded")


def prefetched(
    items: Sequence[Item], load: Callable[[Item, int], Loaded]
) -> Iterator[tuple[Item, Loaded]]:
    """Yield ``(item, load(item, slot))`` in order, loading the next item meanwhile.

    ``slot`` alternates 0, 1, 0, ...: ``load`` may fill one of two reused buffers, since
    the item loaded into a slot is yielded and done with before that slot is filled again.
    """
    if not items:
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="moetopo-read") as reader:
        pending = reader.submit(load, items[0], 0)
        for k, item in enumerate(items):
            loaded = pending.result()
            if k + 1 < len(items):
                pending = reader.submit(load, items[k + 1], (k + 1) % 2)
            yield item, loaded


class SlotBuffers:
    """The two reused buffers behind :func:`prefetched`'s slots: ``take(slot, ...)`` views
    slot's bytes as the array asked for, growing them (to at least ``min_bytes``) when
    too small, so steady reads allocate nothing."""

    def __init__(self, min_bytes: int = 0):
        self.min_bytes = min_bytes
        self._raw = [np.empty(0, dtype=np.uint8) for _ in range(2)]

    def take(self, slot: int, dtype, shape: tuple[int, ...]) -> np.ndarray:
        dtype = np.dtype(dtype)
        nbytes = math.prod(shape) * dtype.itemsize
        if self._raw[slot].size < nbytes:
            self._raw[slot] = np.empty(max(nbytes, self.min_bytes), dtype=np.uint8)
        return self._raw[slot][:nbytes].view(dtype).reshape(shape)
