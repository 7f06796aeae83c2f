"""Errors a user can act on: each names the file (and tensor) and what is wrong."""

from __future__ import annotations

from pathlib import Path

# Local files that stand for remote ones (a remote model's cache mirror) -> the URL a
# user knows them by, so an error names what they asked for, not the cache.
DISPLAY_NAMES: dict[str, str] = {}


class MoetopoError(Exception):
    """Base class: a problem with the user's input, not a bug in moetopo."""


class CheckpointError(MoetopoError):
    """A checkpoint file or index is malformed or unsupported."""

    def __init__(self, path: str | Path, problem: str, tensor: str | None = None):
        self.path = DISPLAY_NAMES.get(str(path), str(path))
        self.tensor = tensor
        self.problem = problem
        where = f"{self.path}" + (f" [tensor {tensor!r}]" if tensor else "")
        super().__init__(f"{where}: {problem}")


class NoMoELayersError(MoetopoError):
    """The checkpoint parsed fine but has no routed-expert layer to analyse."""


class PairMismatchError(MoetopoError):
    """A base/tuned pair whose models cannot be compared tensor by tensor."""
