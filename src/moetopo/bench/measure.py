"""Run a function in a fresh process and report its wall time and peak resident memory."""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Callable
from dataclasses import dataclass
from queue import Empty

from moetopo.stages import peak_rss_mib


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


def in_fresh_process(func: Callable, *args, timeout: float | None = None) -> Measurement | None:
    """``func(*args)`` in a spawned interpreter, so peak RSS is that function's alone.

    None when it has not finished after ``timeout`` seconds (it is then stopped); a child
    that dies is an error, never a wait without end.
    """
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_child, args=(queue, func, args))
    process.start()
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        try:
            seconds, peak, result = queue.get(timeout=1.0)
            break
        except Empty:
            if not process.is_alive():
                try:  # its result may have arrived just before it exited
                    seconds, peak, result = queue.get(timeout=0.5)
                except Empty:
                    raise RuntimeError(
                        f"benchmark child failed with exit code {process.exitcode}"
                    ) from None
                break
            if deadline is not None and time.monotonic() > deadline:
                process.terminate()
                process.join()
                return None
    process.join()
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


def fastest_of(
    jobs: list[tuple[str, Callable, tuple]],
    repeat: int,
    before_each: Callable[[], None] | None = None,
) -> dict[str, Measurement]:
    """label -> the fastest of ``repeat`` runs of each job (its seconds and result), with
    the most peak RSS of any run. Each run is a fresh process. A job returning a float
    reports its own seconds, to keep its set-up off the clock; any other job is timed
    whole, after its module is imported. Rounds alternate the jobs' order, so a noisy
    spell of a shared machine does not always fall on the same job."""
    best: dict[str, Measurement] = {}
    for r in range(repeat):
        for label, func, args in jobs if r % 2 == 0 else jobs[::-1]:
            if before_each is not None:
                before_each()
            m = in_fresh_process(func, *args)
            own = isinstance(m.result, float)
            run = Measurement(m.result if own else m.seconds, m.peak_rss_mib, m.result)
            previous = best.get(label, run)
            fastest = run if run.seconds < previous.seconds else previous
            peak = max(run.peak_rss_mib, previous.peak_rss_mib)
            best[label] = Measurement(fastest.seconds, peak, fastest.result)
    return {label: best[label] for label, _, _ in jobs}
