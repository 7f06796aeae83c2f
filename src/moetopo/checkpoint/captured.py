"""Captured router logits: the file ``python -m moetopo.capture`` writes, read and checked.

Per MoE layer a [tokens, experts] array of the router linear's output, optionally the
token ids each row was computed for and a JSON ``meta`` record. Either an ``.npz``
(arrays ``layer_<L>``, ``token_ids``, ``meta``, and optionally the router's inputs
``inputs_<L>`` [sampled tokens, hidden] at the token positions ``input_positions``) or a
Parquet table with columns layer, token, logits (a list) and optionally token_id.
:func:`captured_shapes` reads only the headers, so the workflow refuses a bad file at
parse time, before any job runs.
"""

from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path

import numpy as np

from moetopo.errors import MoetopoError

_LAYER = re.compile(r"layer_(\d+)")
_INPUTS = re.compile(r"inputs_(\d+)")


def captured_shapes(path: str | Path) -> dict[int, tuple[int, int | None]]:
    """Layer -> (tokens, experts) of a captured file, from its headers alone (a Parquet
    file's layer column; its expert count is None); a clear error naming the file for
    anything :func:`load_captured` would refuse."""
    return _read(path, _npz_shapes, _parquet_shapes)


def load_captured(path: str | Path) -> tuple[dict[int, np.ndarray], np.ndarray | None, dict]:
    """Captured router logits: per layer [tokens, experts], token ids if recorded, metadata."""
    captured_shapes(path)
    return _read(path, _load_npz, _load_parquet)


def load_inputs(path: str | Path, layer: int) -> np.ndarray | None:
    """The router's inputs of ``layer`` captured in ``path`` ([tokens, hidden] float32),
    or None when the file holds none for that layer (Parquet files never do)."""
    captured_shapes(path)  # also checks the inputs' headers
    path = Path(path)
    if path.suffix != ".npz":
        return None

    def read(p: Path) -> np.ndarray | None:
        with np.load(p, allow_pickle=False) as data:
            key = f"inputs_{layer}"
            return data[key].astype(np.float32) if key in data.files else None

    return _read(path, read, read)


def _read(path: str | Path, npz, parquet):
    """``npz(path)`` or ``parquet(path)`` by suffix; any failure a clear error naming it."""
    path = _existing(path)
    try:
        return npz(path) if path.suffix == ".npz" else parquet(path)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise MoetopoError(f"{path}: cannot read captured router logits ({exc})") from exc


def check_layers(
    shapes: dict[int, tuple[int, int | None]], moe_layers: dict[int, int], path: str | Path
) -> list[str]:
    """Captured layers against the model's MoE layers (layer -> experts): an error for a
    layer that is not MoE or has another expert count, a warning for MoE layers missing."""
    unknown = sorted(set(shapes) - set(moe_layers))
    if unknown:
        raise MoetopoError(
            f"{path}: captured logits for layers {unknown}, which are not MoE layers of the "
            f"model (MoE layers: {sorted(moe_layers)})"
        )
    for layer, (tokens, experts) in sorted(shapes.items()):
        if experts is not None and experts != moe_layers[layer]:
            raise MoetopoError(
                f"{path}: layer {layer} logits have shape [{tokens}, {experts}], expected "
                f"[tokens, {moe_layers[layer]}]"
            )
    missing = sorted(set(moe_layers) - set(shapes))
    if missing:
        return [f"{path}: no captured logits for layers {missing}; probe tokens used there"]
    return []


def _existing(path: str | Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise MoetopoError(f"{path}: captured router logits file does not exist")
    if path.suffix not in (".npz", ".parquet"):
        raise MoetopoError(f"{path}: captured router logits must be .npz or .parquet")
    if not path.is_file():
        raise MoetopoError(f"{path}: captured router logits is not a regular file")
    return path


def _npy_header(archive: zipfile.ZipFile, member: str) -> tuple[tuple[int, ...], np.dtype]:
    with archive.open(member) as f:
        version = np.lib.format.read_magic(f)
        read = (
            np.lib.format.read_array_header_1_0
            if version == (1, 0)
            else np.lib.format.read_array_header_2_0
        )
        shape, _, dtype = read(f)
    return shape, dtype


def _npz_shapes(path: Path) -> dict[int, tuple[int, int | None]]:
    shapes: dict[int, tuple[int, int | None]] = {}
    tokens, inputs, positions = None, {}, None
    with zipfile.ZipFile(path) as archive:
        for member in archive.namelist():
            name = member.removesuffix(".npy")
            shape, dtype = _npy_header(archive, member)
            if dtype.hasobject:
                raise ValueError(f"array {name!r} holds Python objects (pickles are refused)")
            match = _LAYER.fullmatch(name)
            if match:
                if len(shape) != 2 or dtype.kind != "f":
                    raise ValueError(
                        f"array {name!r} is {dtype} of shape {list(shape)}, expected "
                        "float [tokens, experts]"
                    )
                shapes[int(match.group(1))] = (int(shape[0]), int(shape[1]))
            elif _INPUTS.fullmatch(name):
                if len(shape) != 2 or dtype.kind != "f":
                    raise ValueError(
                        f"array {name!r} is {dtype} of shape {list(shape)}, expected "
                        "float [sampled tokens, hidden]"
                    )
                inputs[int(name.removeprefix("inputs_"))] = shape
            elif name == "input_positions":
                if len(shape) != 1 or dtype.kind not in "iu":
                    raise ValueError(f"input_positions is {dtype} of shape {list(shape)}")
                positions = int(shape[0])
            elif name == "token_ids":
                if len(shape) != 1 or dtype.kind not in "iu":
                    raise ValueError(f"token_ids is {dtype} of shape {list(shape)}, expected int")
                tokens = int(shape[0])
            elif name == "meta" and (shape != () or dtype.kind != "U"):
                raise ValueError("meta is not a JSON string")
    _same_tokens(shapes, tokens)
    _check_inputs(inputs, positions, shapes)
    return shapes


def _check_inputs(inputs: dict, positions: int | None, shapes: dict) -> None:
    """Router inputs: for captured layers only, one row per input position, one width."""
    if not inputs:
        return
    if positions is None:
        raise ValueError("router inputs without input_positions")
    stray = sorted(set(inputs) - set(shapes))
    if stray:
        raise ValueError(f"router inputs for layers {stray}, which have no logits")
    rows = {shape[0] for shape in inputs.values()}
    if rows != {positions} or len({shape[1] for shape in inputs.values()}) > 1:
        raise ValueError(
            f"router inputs of shapes {sorted(set(inputs.values()))} do not match "
            f"{positions} input_positions with one hidden size"
        )


def _parquet_shapes(path: Path) -> dict[int, tuple[int, int | None]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pq.read_schema(path)
    missing = [c for c in ("layer", "token", "logits") if c not in schema.names]
    if missing:
        raise ValueError(f"no column {missing[0]!r} (needs layer, token, logits)")
    logits = schema.field("logits").type
    if not pa.types.is_list(logits) and not pa.types.is_large_list(logits):
        raise ValueError(f"column 'logits' is {logits}, expected a list of floats")
    if not pa.types.is_floating(logits.value_type):
        raise ValueError(f"column 'logits' holds {logits.value_type}, expected floats")
    layers, counts = np.unique(pq.read_table(path, columns=["layer"])["layer"], return_counts=True)
    shapes = {int(layer): (int(n), None) for layer, n in zip(layers, counts, strict=True)}
    _same_tokens(shapes, None)
    return shapes  # the expert count is in the rows: the routing stage checks it


def _same_tokens(shapes: dict[int, tuple[int, int | None]], tokens: int | None) -> None:
    counts = {t for t, _ in shapes.values()} | ({tokens} if tokens is not None else set())
    if len(counts) > 1:
        raise ValueError(f"layers and token_ids disagree on the token count ({sorted(counts)})")


def _load_npz(path: Path):
    with np.load(path, allow_pickle=False) as data:
        layers = {
            int(k.removeprefix("layer_")): data[k].astype(np.float32)
            for k in data.files
            if _LAYER.fullmatch(k)
        }
        token_ids = data["token_ids"].astype(np.int64) if "token_ids" in data.files else None
        meta = json.loads(str(data["meta"])) if "meta" in data.files else {}
    return layers, token_ids, meta


def _load_parquet(path: Path):
    import pyarrow.parquet as pq

    table = pq.read_table(path).to_pandas().sort_values(["layer", "token"])
    layers = {
        int(layer): np.stack(group["logits"].to_numpy()).astype(np.float32)
        for layer, group in table.groupby("layer")
    }
    token_ids = None
    if "token_id" in table:
        first = table[table.layer == table.layer.min()]
        token_ids = first["token_id"].to_numpy(np.int64)
    return layers, token_ids, {}
