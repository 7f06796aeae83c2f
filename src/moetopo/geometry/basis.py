"""The feature basis of a MoE layer: directions in its input space whose packing into each
expert the superposition stage measures.

Three kinds:

- ``identity``: the input's own coordinates. The toy models' inputs are sparse features,
  one per coordinate, so there it is the known feature basis (their family says so).
- ``router``: the router's rows, one direction per expert, normalised. The default for
  real checkpoints because it needs no data and no other model: these are directions the
  model itself reads in that space, the ones that decide where a token goes. It shows
  whether each expert keeps the routing directions apart in its hidden units (dedicated)
  or mixes them (superimposed), and, weighted by routing load, how the layer as a whole
  treats them. It cannot show the model's real features: it has one direction per
  expert, usually fewer than an expert's hidden units, so superposition forced by more
  features than dimensions cannot appear, and two router rows that are already close
  stay close in every expert. For features, give a file.
- a file: ``.npz`` or ``.safetensors`` with one array ``layer_<L>`` [features, hidden]
  per MoE layer, e.g. a sparse autoencoder's decoder directions at the MoE input.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from moetopo.checkpoint.header import read_shard_header
from moetopo.checkpoint.reader import TensorReader
from moetopo.checkpoint.shards import Checkpoint
from moetopo.errors import MoetopoError

KINDS = ("identity", "router")


@dataclass(frozen=True)
class Basis:
    """Unit feature directions [n, hidden], the feature ids they keep, and their origin."""

    directions: np.ndarray
    features: np.ndarray
    name: str  # "identity", "router" or "file:<file name>"


def unit_rows(rows: np.ndarray, name: str) -> tuple[Basis, list[int]]:
    """``rows`` normalised to unit length; zero rows (no direction) are dropped and
    returned, so feature ids stay the rows' own."""
    rows = np.asarray(rows, dtype=np.float64)
    norms = np.linalg.norm(rows, axis=1)
    keep = norms > 0
    directions = (rows[keep] / norms[keep, None]).astype(np.float32)
    return Basis(directions, np.flatnonzero(keep), name), np.flatnonzero(~keep).tolist()


def identity_basis(hidden: int) -> Basis:
    return Basis(np.eye(hidden, dtype=np.float32), np.arange(hidden), "identity")


def file_basis(path: str | Path, layer: int, hidden: int) -> Basis | None:
    """Array ``layer_<layer>`` of the file as a basis, None when the file has none for that
    layer; a clear error naming the file, the layer and both widths when its width is
    not the model's hidden size."""
    path = _existing(path)
    key = f"layer_{layer}"
    rows = _read_npz(path, key) if path.suffix == ".npz" else _read_safetensors(path, key)
    if rows is None:
        return None
    if rows.ndim != 2:
        raise MoetopoError(
            f"{path}: basis {key} has shape {list(rows.shape)}, expected [features, hidden]"
        )
    if rows.shape[1] != hidden:
        hint = " (rows must be features: is it transposed?)" if rows.shape[0] == hidden else ""
        raise MoetopoError(
            f"{path}: layer {layer} basis has width {rows.shape[1]}, but the model's hidden "
            f"size is {hidden}{hint}"
        )
    if not np.all(np.isfinite(rows)):
        raise MoetopoError(f"{path}: layer {layer} basis holds NaN or infinity")
    basis, zero = unit_rows(rows, f"file:{path.name}")
    if zero:
        raise MoetopoError(f"{path}: layer {layer} basis rows {zero[:5]} are zero (no direction)")
    return basis


def _existing(path: str | Path) -> Path:
    path = Path(path)
    if path.suffix not in (".npz", ".safetensors"):
        raise MoetopoError(f"{path}: a basis file must be .npz or .safetensors")
    if not path.is_file():
        raise MoetopoError(f"{path}: basis file does not exist")
    return path


def _read_npz(path: Path, key: str) -> np.ndarray | None:
    try:
        with np.load(path, allow_pickle=False) as data:
            return data[key].astype(np.float64) if key in data.files else None
    except (OSError, ValueError) as exc:
        raise MoetopoError(f"{path}: cannot read the basis ({exc})") from exc


def _read_safetensors(path: Path, key: str) -> np.ndarray | None:
    """One tensor by byte range, through the checkpoint reader (BF16 and FP8 included)."""
    header = read_shard_header(path)
    if key not in header.tensors:
        return None
    checkpoint = Checkpoint(
        root=path.parent,
        shards=(path.name,),
        headers={path.name: header},
        tensors=header.tensors,
        config={},
    )
    return TensorReader(checkpoint).read(key, dtype=np.float64)
