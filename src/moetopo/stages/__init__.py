"""The stages: one module per Snakemake rule, each importing science and artefacts, never
another stage. This package holds the glue every rule's script shares: logging to the
rule's log file and clear failures.

A user error (MoetopoError) ends the job with one line naming the file and the
problem, in the log and on stderr, instead of a traceback; anything else is a bug, and
its traceback goes to the log too.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable

from moetopo.checkpoint import remote
from moetopo.errors import MoetopoError

log = logging.getLogger("moetopo")


def run(snakemake, body: Callable) -> None:
    """Run ``body(snakemake)`` with logging to ``snakemake.log[0]``."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if snakemake.log:
        handlers.append(logging.FileHandler(snakemake.log[0], mode="w"))
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        handlers=handlers,
        force=True,
    )
    start = time.perf_counter()
    try:
        body(snakemake)
    except MoetopoError as exc:
        log.error("%s", exc)
        sys.exit(1)
    except Exception:  # a bug: its traceback belongs in the rule's log, not only on stderr
        log.exception("moetopo failed unexpectedly; please report this log")
        sys.exit(1)
    if remote.FETCHED.requests:
        total = remote.mirrored_bytes()
        log.info(
            "fetched %s in %d requests: %.4f%% of the remote model's %s",
            _size(remote.FETCHED.bytes),
            remote.FETCHED.requests,
            100 * remote.FETCHED.bytes / max(total, 1),
            _size(total),
        )
    # one line the benchmarks parse: what a stage costs, to plan a whole model's run
    log.info(
        "peak RSS %.0f MiB, read %.0f MiB, %.2f s",
        peak_rss_mib(),
        bytes_read() / 2**20,
        time.perf_counter() - start,
    )


def _size(nbytes: int) -> str:
    return f"{nbytes / 2**30:.2f} GiB" if nbytes >= 2**30 else f"{nbytes / 2**20:.2f} MiB"


def peak_rss_mib() -> float:
    """This process's high-water resident memory (VmHWM), to check mem_mb requests.

    Not ``ru_maxrss``: that is carried across fork and exec, so a spawned benchmark
    child would report its parent's peak."""
    kib = _proc_self("status", "VmHWM:")
    return float("nan") if kib is None else kib / 1024


def bytes_read() -> int:
    """Bytes this process has read through read(2) and pread(2) so far (``rchar``: from
    the page cache or the disk alike), 0 where /proc does not say."""
    return _proc_self("io", "rchar:") or 0


def _proc_self(name: str, key: str) -> int | None:
    """The first number after ``key`` in /proc/self/``name``, None where there is none."""
    try:
        with open(f"/proc/self/{name}") as lines:
            for line in lines:
                if line.startswith(key):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def captured_file(inputs) -> str | None:
    """The rule's ``captured`` input (the sheet's routing file), None when it has none."""
    value = getattr(inputs, "captured", None)
    if isinstance(value, str):
        return value
    return str(value[0]) if value else None
