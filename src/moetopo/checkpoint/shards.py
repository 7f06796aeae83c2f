"""A model on disk: its shards, its index, its config, all verified header-only.

A model is a directory (config.json, optional ``*.safetensors.index.json``, shards)
or a single ``.safetensors`` file, or a GGUF model (one ``.gguf`` file or a split set,
:mod:`.gguf`). Pickle checkpoints are refused before a byte of them is interpreted,
since unpickling runs arbitrary code.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from moetopo.checkpoint import remote
from moetopo.checkpoint.header import ShardHeader, TensorEntry, gc_paused, read_shard_header
from moetopo.errors import CheckpointError
from moetopo.families.moe_rules import SUB_CONFIGS

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
CONVERT_HINT = (
    "moetopo never unpickles (it would run arbitrary code). Convert the checkpoint to "
    'safetensors first, for example: python -c "from transformers import '
    "AutoModelForCausalLM as M; M.from_pretrained('IN', torch_dtype='auto')"
    ".save_pretrained('OUT', safe_serialization=True)\" (on a machine you trust with this file)"
)


@dataclass(frozen=True)
class ShardList:
    """Which files make up a model, as named by its index or its directory listing."""

    root: Path
    shards: tuple[str, ...]
    index: Path | None
    weight_map: dict[str, str] | None = field(default=None, compare=False)


@dataclass
class Checkpoint:
    """Verified header-only index of a model: every tensor's shard, dtype, shape and bytes."""

    root: Path
    shards: tuple[str, ...]
    headers: dict[str, ShardHeader]
    tensors: dict[str, TensorEntry]
    config: dict
    index: Path | None = None

    def shard_path(self, shard: str) -> Path:
        return self.root / shard

    @property
    def total_bytes(self) -> int:
        return sum(h.file_size for h in self.headers.values())


def list_shards(path: str | Path) -> ShardList:
    """Find a model's shards without reading them; refuse pickle checkpoints. A remote
    model (hf://, https://) is listed from its local mirror (:mod:`.remote`)."""
    if remote.is_remote(path):
        path = remote.mirror(path).path
    path = Path(path)
    if not path.exists():
        raise CheckpointError(path, "no such file or directory")
    if not path.is_file() and not path.is_dir():
        raise CheckpointError(path, "not a regular file or a directory (a FIFO or device)")
    if path.is_file():
        if path.suffix in PICKLE_SUFFIXES:
            raise CheckpointError(path, f"pickle checkpoint refused. {CONVERT_HINT}")
        if path.suffix == ".gguf":
            return _gguf_listing(path)
        if path.suffix != ".safetensors":
            raise CheckpointError(path, "not a .safetensors or .gguf file or a model directory")
        return ShardList(path.parent, (path.name,), None)
    indexes = sorted(path.glob("*.safetensors.index.json"))
    if len(indexes) > 1:
        preferred = path / "model.safetensors.index.json"
        if preferred not in indexes:
            names = ", ".join(i.name for i in indexes)
            raise CheckpointError(path, f"several safetensors indexes ({names}); keep one")
        indexes = [preferred]
    if indexes:
        _check_inside(path, indexes[0].name, indexes[0])
        weight_map = _read_weight_map(indexes[0])
        shards = tuple(sorted(set(weight_map.values())))
        for shard in shards:
            _check_inside(path, shard, indexes[0])
        return ShardList(path, shards, indexes[0], weight_map)
    shards = tuple(sorted(p.name for p in path.glob("*.safetensors")))
    if shards:
        for shard in shards:
            _check_inside(path, shard, path)
        return ShardList(path, shards, None)
    if any(path.glob("*.gguf")):
        return _gguf_listing(path)
    pickles = sorted(p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise CheckpointError(
            path / pickles[0], f"pickle checkpoint refused (no .safetensors here). {CONVERT_HINT}"
        )
    raise CheckpointError(
        path, "no .safetensors shards, no safetensors index and no .gguf file in this directory"
    )


def _gguf_listing(path: Path) -> ShardList:
    """The parts of the GGUF model at ``path`` (a file, any part of a split set, or a
    directory holding one model); a safetensors model in the same directory wins."""
    from moetopo.checkpoint.gguf import list_gguf_parts  # gguf imports numpy: GGUF models only

    listing = list_gguf_parts(path)
    for shard in listing.shards:
        _check_inside(listing.root, shard, path)
    return listing


def _model_config(listing: ShardList, n_tensors: int | None) -> dict:
    """config.json, or for a GGUF model the config its first part's metadata spells
    (checked against ``n_tensors``, the tensors of all parts, when given)."""
    if listing.shards[0].endswith(".gguf"):
        from moetopo.checkpoint.gguf import gguf_model_config

        return gguf_model_config(listing, n_tensors)
    return read_config(listing.root)


def read_config(root: Path) -> dict:
    """config.json of the model, or {} when a bare .safetensors file has none beside it."""
    config_path = root / "config.json"
    if not config_path.exists():
        return {}
    _check_inside(root, "config.json", config_path)
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(config_path, f"config.json is not readable JSON ({exc})") from exc
    if not isinstance(config, dict):
        raise CheckpointError(config_path, "config.json is not a JSON object")
    _check_identity(config, config_path)
    return config


def _check_identity(config: dict, path: Path, scope: str = "") -> None:
    """The keys that name the model must have their types (family detection reads them):
    ``architectures`` a list of names, ``model_type`` a name, sub-configs objects."""
    archs = config.get("architectures")
    if archs is not None and not (isinstance(archs, list) and all(type(a) is str for a in archs)):
        raise CheckpointError(path, f"{scope}architectures is {archs!r}, not a list of names")
    kind = config.get("model_type")
    if kind is not None and type(kind) is not str:
        raise CheckpointError(path, f"{scope}model_type is {kind!r}, not a name")
    for sub in SUB_CONFIGS if not scope else ():
        if config.get(sub) is not None:
            if not isinstance(config[sub], dict):
                raise CheckpointError(path, f"{sub} is {config[sub]!r}, not an object")
            _check_identity(config[sub], path, f"{sub}.")


@gc_paused()
def open_checkpoint(path: str | Path) -> Checkpoint:
    """List, parse and cross-check every shard header of the model at ``path``."""
    listing = list_shards(path)
    headers = {}
    for shard in listing.shards:
        shard_path = listing.root / shard
        if not shard_path.exists():
            raise CheckpointError(
                shard_path, f"shard named by the index {listing.index} does not exist"
            )
        try:
            headers[shard] = read_shard_header(shard_path, shard)
        except CheckpointError:
            _refuse_disguised_pickle(shard_path)
            raise
    return assemble_checkpoint(listing, headers)


def assemble_checkpoint(
    listing: ShardList, headers: dict[str, ShardHeader], check_index: bool = True
) -> Checkpoint:
    """Join shard headers into one tensor map, checking them against the index."""
    tensors: dict[str, TensorEntry] = {}
    for shard in listing.shards:
        tensors.update(headers[shard].tensors)
    if len(tensors) != sum(len(h.tensors) for h in headers.values()):
        _raise_duplicate(listing, headers)
    if check_index and listing.weight_map is not None:
        _check_index(listing, headers, tensors)
    return Checkpoint(
        root=listing.root,
        shards=listing.shards,
        headers=headers,
        tensors=tensors,
        config=_model_config(listing, len(tensors) if check_index else None),
        index=listing.index,
    )


@gc_paused()
def checkpoint_from_entries(
    listing: ShardList,
    entries: Iterable[TensorEntry],
    shards: dict[str, tuple[int, str]],
    *,
    complete: bool = True,
) -> Checkpoint:
    """The checkpoint rebuilt from stored header entries, without reopening a shard.

    ``shards`` maps every shard to its (file size, header digest) as recorded when its
    header was read; a listed shard without a record, or an entry naming a shard the
    model does not list, is an error naming it. The index is checked as when reading,
    unless the entries are a chosen subset (``complete=False``: the routers only).
    """
    absent = [s for s in listing.shards if s not in shards]
    if absent:
        raise CheckpointError(listing.root, f"no header rows for shards {absent}")
    tensors: dict[str, dict[str, TensorEntry]] = {s: {} for s in listing.shards}
    for entry in entries:
        if entry.shard not in tensors:
            raise CheckpointError(
                listing.root, f"rows name shard {entry.shard!r}, not one of the model's", entry.name
            )
        tensors[entry.shard][entry.name] = entry
    headers = {s: ShardHeader(s, shards[s][0], 0, t, {}, shards[s][1]) for s, t in tensors.items()}
    return assemble_checkpoint(listing, headers, check_index=complete)


def _read_weight_map(index: Path) -> dict[str, str]:
    try:
        data = json.loads(index.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(index, f"index is not readable JSON ({exc})") from exc
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not all(type(v) is str for v in weight_map.values()):
        raise CheckpointError(index, "index has no 'weight_map' object of tensor -> shard names")
    return weight_map


def _raise_duplicate(listing: ShardList, headers: dict[str, ShardHeader]) -> None:
    seen: dict[str, str] = {}
    for shard in listing.shards:
        for name in headers[shard].tensors:
            if name in seen:
                raise CheckpointError(
                    listing.root / shard,
                    f"tensor is stored twice: also in {seen[name]}",
                    tensor=name,
                )
            seen[name] = shard


def _check_index(
    listing: ShardList, headers: dict[str, ShardHeader], tensors: dict[str, TensorEntry]
) -> None:
    weight_map = listing.weight_map
    stored: dict[str, str] = {}
    for shard, header in headers.items():
        stored.update(dict.fromkeys(header.tensors, shard))
    if stored == weight_map:  # compared in C; the loops below only explain a mismatch
        return
    for name, shard in weight_map.items():
        entry = tensors.get(name)
        if entry is None or entry.shard != shard:
            where = (
                "whose header lacks it" if entry is None else f"but it is stored in {entry.shard}"
            )
            raise CheckpointError(
                listing.index, f"index maps the tensor to {shard}, {where}", tensor=name
            )
    if len(tensors) != len(weight_map):
        unlisted = sorted(set(tensors) - set(weight_map))
        raise CheckpointError(
            listing.index,
            f"{len(unlisted)} tensor(s) in the shards are missing from the index "
            f"(first: {tensors[unlisted[0]].shard})",
            tensor=unlisted[0],
        )


def _check_inside(root: Path, shard: str, named_by: Path) -> None:
    """A file of the model (shard, index, config.json) must resolve inside the model
    directory, or into its own Hugging Face cache repository's ``blobs/`` (snapshot files
    link to ../../blobs/<hash>), where ``blobs`` is a real folder of that repository, not
    a link elsewhere."""
    if Path(shard).is_absolute() or ".." in Path(shard).parts:
        raise CheckpointError(named_by, f"shard path {shard!r} points outside the model directory")
    target = (root / shard).resolve()
    allowed = [root.resolve()]
    if root.parent.name == "snapshots":
        repo = root.parent.parent.resolve()
        if (repo / "blobs").resolve() == repo / "blobs":
            allowed.append(repo / "blobs")
    if not any(target.is_relative_to(a) for a in allowed):
        raise CheckpointError(
            named_by,
            f"{shard!r} resolves to {target}, outside the model directory (a symlink leaves it)",
        )


def _refuse_disguised_pickle(path: Path) -> None:
    """Explain an unparseable shard that is really a torch zip or a raw pickle."""
    if not path.is_file():
        return
    with open(path, "rb") as handle:
        magic = handle.read(4)
    if magic.startswith(b"PK\x03\x04") or (
        len(magic) > 1 and magic[0] == 0x80 and 2 <= magic[1] <= 5
    ):
        raise CheckpointError(
            path, f"this is a pickle/torch archive, not safetensors: refused. {CONVERT_HINT}"
        )
