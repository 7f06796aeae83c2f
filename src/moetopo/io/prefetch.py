"""Reading ahead on a second thread while the caller computes on what was read.

Positional reads and numpy's loops release the GIL, so on a cold checkpoint the disk
works while the CPU does: a stage takes about the longer of the two, not their sum.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

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
