"""Run a function in a fresh process and report its wall time and peak resident memory."""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Measurement:
    seconds: float
    peak_rss_mib: float
    result: object


def _child(queue, func, args):
    start = time.perf_counter()
    result = func(*args)
    seconds = time.perf_counter() - start
    queue.put((seconds, peak_rss_mib(), result))


def peak_rss_mib() -> float:
    """This process's high-water resident set, in MiB.

    VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss across fork and exec, so a
    spawned child would report its parent's peak (the benchmark writer's, often GBs).
    """
    from ..snake import peak_rss_mib as vm_hwm

    return vm_hwm()


def in_fresh_process(func: Callable, *args) -> Measurement:
    """``func(*args)`` in a spawned interpreter, so peak RSS is that function's alone."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_child, args=(queue, func, args))
    process.start()
    seconds, peak, result = queue.get()
    process.join()
    if process.exitcode:
        raise RuntimeError(f"benchmark child failed with exit code {process.exitcode}")
    return Measurement(seconds, peak, result)


def drop_page_cache_hint(paths) -> None:
    """Ask the kernel to forget cached pages of ``paths`` so cold reads are comparable."""
    import os

    for path in paths:
        try:
            with open(path, "rb") as handle:
                os.posix_fadvise(handle.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        except OSError:
            pass
