"""The model on disk: shard headers, dtypes, byte-range reads, what each tensor is.

The front door for every later layer: ``open_model`` opens a checkpoint for reading,
``ModelLayout`` and ``MoELayer`` say what its tensors are. Names resolve lazily, so
``moetopo inspect`` parses headers without importing numpy.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "open_model": "model",
    "OpenModel": "model",
    "open_checkpoint": "shards",
    "list_shards": "shards",
    "Checkpoint": "shards",
    "ShardList": "shards",
    "build_layout": "layout",
    "ModelLayout": "layout",
    "MoELayer": "layout",
    "ExpertTensor": "layout",
    "TensorReader": "reader",
    "model_summary": "summary",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
