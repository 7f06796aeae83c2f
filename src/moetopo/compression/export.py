"""A chosen expert selection, as a small JSON document and as a checkpoint transformers loads.

:func:`selection_json` turns rows of the ``compression_selections`` artefact (or a layer's
``evaluate_layer`` result) into the form pruning tools take: per MoE layer the kept experts
and, for the methods that redirect traffic instead of routing it again, the redirect map
{pruned expert: serving expert} and which survivors are merges of which members.

:func:`write_pruned_checkpoint` writes that selection as safetensors with the family's own
tensor names, streaming tensor by tensor (no shard is ever held in memory: each output
tensor is copied by exact byte ranges, sliced along the expert axis where it stacks all
experts). :func:`layer_plans` and :func:`merged_weights` are shared with
:mod:`moetopo.end_to_end`, so the model evaluated in memory and the checkpoint
written here are the same model.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import struct
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from moetopo.checkpoint.dtypes import ELEMENT_TYPES
from moetopo.checkpoint.experts import ExpertWeights
from moetopo.checkpoint.header import TensorEntry
from moetopo.checkpoint.layout import ExpertTensor, MoELayer
from moetopo.checkpoint.model import OpenModel, open_model
from moetopo.checkpoint.reader import read_exactly
from moetopo.checkpoint.remote import is_remote
from moetopo.checkpoint.shards import PICKLE_SUFFIXES
from moetopo.compression.block import Reduction, frequency_weighted_merge
from moetopo.errors import MoetopoError
from moetopo.families.moe_rules import SUB_CONFIGS
from moetopo.families.spec import EXPERT_ROLES
from moetopo.routing.rule import RoutingRule, groups_survive

SELECTION_FORMAT = 1
SELECTION_FILE = "moetopo_selection.json"
INDEX_FILE = "model.safetensors.index.json"
SKIPPED_FILES = ("router_logits.npz",)  # the original model's routing capture: stale
CHUNK_BYTES = 64 << 20
GROUP_RULES = ("sigmoid_group_topk", "softmax_group_topk")
_SELECTION_COLUMNS = ("method", "draw", "keep", "expert", "kept", "target", "merged")
# canonical ExpertWeights field -> (role, part of a fused gate_up) as stored
_FIELD_ROLES = {
    "gate": (("expert_gate", None), ("expert_gate_up", 0)),
    "up": (("expert_up", None), ("expert_gate_up", 1)),
    "down": (("expert_down", None),),
}


# ---------------------------------------------------------------------------------------
# The selection as JSON


def selection_json(
    selections: pd.DataFrame | Mapping[int, Any],
    *,
    method: str,
    keep: int,
    draw: int = 0,
    model: str | None = None,
) -> dict:
    """The selection of ``method`` at budget ``keep`` (draw ``draw``) as a JSON-able dict.

    ``selections``: rows of the ``compression_selections`` artefact (columns layer, method,
    draw, keep, expert, kept, target, merged and, optionally, load), or a mapping
    {layer: LayerCompression or its ``selections`` frame}. Layer and expert keys are
    strings, so the dict is what ``json.loads(json.dumps(...))`` gives back::

        {"format": 1, "model": ..., "method": ..., "kind": "drop" | "map", "budget": keep,
         "draw": draw,
         "layers": {"3": {"n_experts": 8, "kept": [0, 2, 5, 7],
                          "redirect": {"1": 0, "3": 2, ...},             # map only
                          "merges": {"0": {"members": [0, 1],             # map only
                                           "load": [412.0, 97.0]}}}}}

    ``drop``: the experts not kept are removed with their router rows and tokens are
    routed again among the survivors. ``map``: routing is unchanged, a pruned expert's
    traffic goes to ``redirect[e]``, and a survivor listed in ``merges`` serves with the
    load-weighted mean of its members' weights (``load``: calibration tokens per member;
    equal weights where absent).
    """
    frame, loads = _selection_frame(selections)
    missing = [c for c in ("layer", *_SELECTION_COLUMNS) if c not in frame.columns]
    if missing:
        raise MoetopoError(f"selections lack the column(s) {missing}")
    rows = frame[(frame.method == method) & (frame.keep == keep) & (frame.draw == draw)]
    if rows.empty:
        combos = zip(frame.method, frame.keep, frame.draw, strict=True)
        have = sorted({(m, int(k), int(d)) for m, k, d in combos})
        raise MoetopoError(
            f"no selection rows for method {method!r}, keep {keep}, draw {draw} "
            f"(have (method, keep, draw): {have[:12]}{' ...' if len(have) > 12 else ''})"
        )
    layers: dict[str, dict] = {}
    kinds = set()
    for layer, group in rows.groupby("layer", sort=True):
        group = group.sort_values("expert")
        experts = group.expert.to_numpy(dtype=np.int64)
        n = len(experts)
        if not np.array_equal(experts, np.arange(n)):
            raise MoetopoError(
                f"selection rows of layer {layer} name experts {experts.tolist()}, not 0..{n - 1}"
            )
        target = group.target.to_numpy(dtype=np.int64)
        kept = np.flatnonzero(group.kept.to_numpy(dtype=bool))
        kind = "drop" if (target < 0).any() else "map"
        kinds.add(kind)
        entry: dict[str, Any] = {"n_experts": int(n), "kept": [int(e) for e in kept]}
        if kind == "map":
            entry["redirect"] = {
                str(e): int(target[e]) for e in range(n) if e not in set(kept.tolist())
            }
            merged = group.merged.to_numpy(dtype=bool)
            load = _layer_load(group, loads.get(int(layer)), n)
            merges = {}
            for s in kept:
                members = np.flatnonzero(target == s)
                if merged[members].any():
                    merge: dict[str, Any] = {"members": [int(m) for m in members]}
                    if load is not None:
                        merge["load"] = [float(load[m]) for m in members]
                    merges[str(int(s))] = merge
            entry["merges"] = merges
        layers[str(int(layer))] = entry
    if len(kinds) > 1:
        raise MoetopoError(f"method {method!r} drops experts in some layers and maps in others")
    return {
        "format": SELECTION_FORMAT,
        "model": model,
        "method": method,
        "kind": kinds.pop(),
        "budget": int(keep),
        "draw": int(draw),
        "layers": layers,
    }


def _selection_frame(selections) -> tuple[pd.DataFrame, dict[int, np.ndarray]]:
    if isinstance(selections, pd.DataFrame):
        return selections, {}
    frames, loads = [], {}
    for layer, value in selections.items():
        frame = getattr(value, "selections", value)
        if getattr(value, "load", None) is not None:
            loads[int(layer)] = np.asarray(value.load, dtype=np.float64)
        frames.append(frame.assign(layer=int(layer)))
    if not frames:
        raise MoetopoError("no selections given")
    return pd.concat(frames, ignore_index=True), loads


def _layer_load(group: pd.DataFrame, load: np.ndarray | None, n: int) -> np.ndarray | None:
    if load is not None:
        return load
    if "load" in group.columns:
        return group.sort_values("expert").load.to_numpy(dtype=np.float64)
    return None


# ---------------------------------------------------------------------------------------
# A selection checked against a model


@dataclass(frozen=True)
class LayerPlan:
    """One MoE layer's reduction, checked against the checkpoint.

    ``target[e]``: the expert serving e's traffic (map), or e itself if kept and -1 if
    pruned (drop). ``merges``: survivor -> (members, calibration load of each or None);
    ``merged``: survivor -> weights already computed (a :class:`Reduction`'s), used
    instead of ``merges``.
    """

    layer: int
    kind: str
    n_experts: int
    kept: np.ndarray
    target: np.ndarray
    merges: dict[int, tuple[np.ndarray, np.ndarray | None]] = field(default_factory=dict)
    merged: dict[int, ExpertWeights] = field(default_factory=dict)

    @property
    def merged_survivors(self) -> list[int]:
        return sorted(set(self.merges) | set(self.merged))


def read_selection(selection) -> Any:
    """A selection given as a path to its JSON file, loaded; anything else as given."""
    if isinstance(selection, str | os.PathLike):
        path = Path(selection)
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise MoetopoError(f"{path}: selection is not readable JSON ({exc})") from exc
    return selection


def layer_plans(model: OpenModel, selection) -> dict[int, LayerPlan]:
    """Per MoE layer named by ``selection`` its checked :class:`LayerPlan`.

    ``selection``: a :func:`selection_json` dict (or the path of its JSON file), or a
    mapping {layer: :class:`Reduction`}. Every problem is a :class:`MoetopoError` naming
    the model and the layer.
    """
    selection = read_selection(selection)
    root = model.layout.root
    if not isinstance(selection, Mapping):
        raise MoetopoError(f"{root}: a selection is a dict or a JSON file, not {selection!r}")
    plans: dict[int, LayerPlan] = {}
    if "layers" in selection or "format" in selection:
        layers = selection.get("layers") or {}
        if not isinstance(layers, Mapping):
            raise MoetopoError(f"{root}: the selection's 'layers' is not an object")
        kind = selection.get("kind")
        for key, entry in layers.items():
            layer = _layer_id(model, key)
            plans[layer] = _plan_from_json(model, layer, entry, kind)
    else:
        for key, reduction in selection.items():
            layer = _layer_id(model, key)
            if not isinstance(reduction, Reduction):
                raise MoetopoError(
                    f"{root}: layer {layer}: expected a Reduction, got {type(reduction).__name__}"
                )
            plans[layer] = _plan_from_reduction(model, layer, reduction)
    kinds = {p.kind for p in plans.values()}
    if len(kinds) > 1:
        raise MoetopoError(f"{root}: the selection drops experts in some layers, maps in others")
    return dict(sorted(plans.items()))


def _layer_id(model: OpenModel, key) -> int:
    root, moe = model.layout.root, model.layout.moe_layers
    try:
        layer = int(key)
    except (TypeError, ValueError):
        raise MoetopoError(f"{root}: selection layer {key!r} is not a layer number") from None
    if layer not in model.layout.layers:
        raise MoetopoError(
            f"{root}: selection names layer {layer}, which is not a MoE layer of this model "
            f"(MoE layers: {moe})"
        )
    return layer


def _experts(model: OpenModel, layer: int, values, what: str, unique: bool = True) -> np.ndarray:
    root, n = model.layout.root, model.layout.layers[layer].n_experts
    if not isinstance(values, list | tuple | np.ndarray) or not all(
        isinstance(v, int | np.integer) and not isinstance(v, bool) for v in values
    ):
        raise MoetopoError(f"{root}: layer {layer}: {what} is {values!r}, not a list of experts")
    out = np.asarray(values, dtype=np.int64).reshape(-1)
    outside = sorted({int(e) for e in out if not 0 <= e < n})
    if outside:
        raise MoetopoError(
            f"{root}: layer {layer}: {what} names expert(s) {outside} outside the layer's "
            f"{n} experts (0..{n - 1})"
        )
    if unique and len(np.unique(out)) != len(out):
        raise MoetopoError(f"{root}: layer {layer}: {what} repeats an expert: {out.tolist()}")
    return out


def _expert_key(model: OpenModel, layer: int, key, what: str) -> int:
    try:
        value = int(key)
    except (TypeError, ValueError):
        raise MoetopoError(
            f"{model.layout.root}: layer {layer}: {what} key {key!r} is not an expert"
        ) from None
    return int(_experts(model, layer, [value], what)[0])


def _plan_from_json(model: OpenModel, layer: int, entry, kind: str | None) -> LayerPlan:
    root, n = model.layout.root, model.layout.layers[layer].n_experts
    if not isinstance(entry, Mapping) or "kept" not in entry:
        raise MoetopoError(f"{root}: layer {layer}: selection entry has no 'kept' list")
    if entry.get("n_experts", n) != n:
        raise MoetopoError(
            f"{root}: layer {layer}: the selection was made for {entry['n_experts']} experts, "
            f"the checkpoint's layer has {n}"
        )
    kept = np.sort(_experts(model, layer, entry["kept"], "'kept'"))
    if len(kept) == 0:
        raise MoetopoError(f"{root}: layer {layer}: the selection keeps no expert")
    redirect = entry.get("redirect") or {}
    merges_in = entry.get("merges") or {}
    kind = kind or ("map" if redirect or merges_in else "drop")
    if kind not in ("drop", "map"):
        raise MoetopoError(f"{root}: selection kind {kind!r} is neither 'drop' nor 'map'")
    if kind == "drop":
        if redirect or merges_in:
            raise MoetopoError(f"{root}: layer {layer}: a 'drop' selection has redirects")
        target = np.full(n, -1, dtype=np.int64)
        target[kept] = kept
        return LayerPlan(layer, "drop", n, kept, target)
    target = np.arange(n, dtype=np.int64)
    for key, value in redirect.items():
        e = _expert_key(model, layer, key, "redirect")
        t = int(_experts(model, layer, [value], f"redirect of expert {e}")[0])
        if e in kept or t not in kept:
            raise MoetopoError(
                f"{root}: layer {layer}: redirect {e} -> {t} must send a pruned expert to a "
                f"kept one (kept: {kept.tolist()})"
            )
        target[e] = t
    unserved = sorted(set(range(n)) - set(kept.tolist()) - {int(k) for k in redirect})
    if unserved:
        raise MoetopoError(f"{root}: layer {layer}: pruned expert(s) {unserved} have no redirect")
    merges = {}
    for key, merge in merges_in.items():
        s = _expert_key(model, layer, key, "merges")
        if s not in kept or not isinstance(merge, Mapping) or "members" not in merge:
            raise MoetopoError(
                f"{root}: layer {layer}: merge {key!r} must be a kept expert with 'members'"
            )
        members = _experts(model, layer, merge["members"], f"members of merge {s}")
        if s not in members or (target[members] != s).any():
            raise MoetopoError(
                f"{root}: layer {layer}: merge {s} lists members {members.tolist()}; they must "
                f"include {s} and be exactly experts served by it"
            )
        load = merge.get("load")
        if load is not None:
            load = np.asarray(load, dtype=np.float64)
            if load.shape != members.shape or not np.isfinite(load).all() or (load < 0).any():
                raise MoetopoError(
                    f"{root}: layer {layer}: merge {s} has load {merge['load']!r}, not one "
                    "non-negative number per member"
                )
        merges[s] = (members, load)
    return LayerPlan(layer, "map", n, kept, target, merges)


def _plan_from_reduction(model: OpenModel, layer: int, reduction: Reduction) -> LayerPlan:
    root, n = model.layout.root, model.layout.layers[layer].n_experts
    if len(reduction.kept) != n:
        raise MoetopoError(
            f"{root}: layer {layer}: the reduction covers {len(reduction.kept)} experts, "
            f"the checkpoint's layer has {n}"
        )
    kept = np.flatnonzero(np.asarray(reduction.kept, dtype=bool))
    if len(kept) == 0:
        raise MoetopoError(f"{root}: layer {layer}: the reduction keeps no expert")
    if reduction.kind == "drop":
        target = np.full(n, -1, dtype=np.int64)
        target[kept] = kept
        return LayerPlan(layer, "drop", n, kept, target)
    target = np.asarray(reduction.target, dtype=np.int64)
    _experts(model, layer, target.tolist(), "target", unique=False)  # in range
    if not (target[kept] == kept).all() or not np.isin(target, kept).all():
        raise MoetopoError(f"{root}: layer {layer}: every expert must be served by a kept one")
    merged = {int(s): w for s, w in reduction.merged.items()}
    return LayerPlan(layer, "map", n, kept, target, merged=merged)


def plan_kind(plans: Mapping[int, LayerPlan]) -> str | None:
    """ "drop", "map", or None for an empty selection."""
    return next(iter(plans.values())).kind if plans else None


# ---------------------------------------------------------------------------------------
# What a drop does to the routing configuration


@dataclass(frozen=True)
class DropRouting:
    """The routing of a pruned model: one expert count for every layer, top-k capped at it,
    and DeepSeek's group parameters (unchanged where the groups survive intact, 1 and 1
    where that routes identically)."""

    n_experts: int
    top_k: int
    n_group: int | None = None
    topk_group: int | None = None
    groups_changed: bool = False


def drop_routing(model: OpenModel, plans: Mapping[int, LayerPlan]) -> DropRouting:
    """Check a drop selection gives a model one config can describe; refuse it otherwise."""
    layout, root = model.layout, model.layout.root
    counts = {
        layer: len(plans[layer].kept) if layer in plans else moe.n_experts
        for layer, moe in layout.layers.items()
    }
    if len(set(counts.values())) > 1:
        by_count: dict[int, list[int]] = {}
        for layer, count in counts.items():
            by_count.setdefault(count, []).append(layer)
        said = "; ".join(f"{c} experts in layer(s) {ls}" for c, ls in sorted(by_count.items()))
        raise MoetopoError(
            f"{root}: a pruned checkpoint needs the same number of experts in every MoE layer "
            f"(its config has one expert count), but the selection leaves {said}"
        )
    k = next(iter(counts.values()))
    top_k = min(max(moe.top_k for moe in layout.layers.values()), k)
    routing = layout.routing
    n_group, topk_group = routing.get("n_group"), routing.get("topk_group")
    if routing.get("rule") == "sigmoid_group_topk" and k < 2:
        raise MoetopoError(
            f"{root}: the selection keeps {k} expert per layer, but a DeepSeek-V3-style router "
            "scores each group by its two best experts, so its pruned checkpoint needs at "
            "least 2"
        )
    if routing.get("rule") not in GROUP_RULES or not n_group or n_group <= 1:
        return DropRouting(k, top_k, n_group, topk_group)
    if routing.get("rule") == "softmax_group_topk" and routing.get("topk_method") == "greedy":
        if k % n_group == 0:  # groups are ignored by this rule: leave them be
            return DropRouting(k, top_k, n_group, topk_group)
        return DropRouting(k, top_k, 1, 1, groups_changed=True)
    rule = RoutingRule.from_summary(routing, top_k=top_k)
    survive = {
        layer: groups_survive(np.isin(np.arange(plan.n_experts), plan.kept), rule)
        for layer, plan in plans.items()
    }
    if all(survive.values()):
        return DropRouting(k, top_k, n_group, topk_group)
    if not any(survive.values()):  # as the layer-wise evaluation routes them
        return DropRouting(k, top_k, 1, 1, groups_changed=True)
    keeps = [layer for layer, ok in survive.items() if ok]
    breaks = [layer for layer, ok in survive.items() if not ok]
    raise MoetopoError(
        f"{root}: the selection keeps equal groups of experts in layer(s) {keeps} but not in "
        f"layer(s) {breaks} (n_group={n_group}, topk_group={topk_group}): the first can keep "
        "group routing and the others cannot, and one config holds one n_group for all"
    )


def config_changes(model: OpenModel, routing: DropRouting) -> dict[str, Any]:
    """{config key (spec name): new value} that describe the pruned model."""
    changes: dict[str, Any] = {"n_experts": routing.n_experts, "top_k": routing.top_k}
    if routing.groups_changed:
        changes |= {"n_group": routing.n_group, "topk_group": routing.topk_group}
    return changes


def update_config(model: OpenModel, config: dict, changes: Mapping[str, Any]) -> dict:
    """``config`` with each changed quantity written under every key the family's spec
    names for it (top level and text sub-config); top-k only lowered, never raised."""
    config = json.loads(json.dumps(config))
    spec_keys = model.layout.spec.config
    for name, value in changes.items():
        keys = spec_keys.get(name) or []
        keys = [keys] if isinstance(keys, str) else list(keys)
        found = False
        for scope in _scopes(config):
            for key in keys:
                parent, leaf = _parent(scope, key)
                if parent is None or parent.get(leaf) is None:
                    continue
                found = True
                old = parent[leaf]
                if name == "top_k":
                    parent[leaf] = (
                        [min(v, value) for v in old] if isinstance(old, list) else min(old, value)
                    )
                else:
                    parent[leaf] = value
        if not found and name == "n_experts":
            raise MoetopoError(
                f"{model.layout.root}/config.json: none of the expert-count keys {keys} is set, "
                "so the pruned expert count cannot be written"
            )
    return config


def _scopes(config: dict) -> list[dict]:
    return [config] + [config[s] for s in SUB_CONFIGS if isinstance(config.get(s), dict)]


def _parent(scope: dict, key: str) -> tuple[dict | None, str]:
    if key.startswith("*."):
        return None, key
    if key in scope:
        return scope, key
    parts = key.split(".")
    node = scope
    for part in parts[:-1]:
        node = node.get(part) if isinstance(node, dict) else None
    return (node, parts[-1]) if isinstance(node, dict) else (None, key)


# ---------------------------------------------------------------------------------------
# Merged experts, rounded to the stored dtype


def expert_storage_dtype(model: OpenModel, layer: int, field_name: str) -> np.dtype:
    """The stored element type of ``field_name`` (gate, up, down, *_bias) of a layer."""
    moe = model.layout.layers[layer]
    bias = field_name.endswith("_bias")
    table = moe.expert_biases if bias else moe.experts
    for role, _ in _FIELD_ROLES[field_name.removesuffix("_bias")]:
        if role in table:
            et = table[role]
            return model.reader.storage_dtype(et.fused or et.names[0])
    raise MoetopoError(f"{model.layout.root}: layer {layer} stores no {field_name} weights")


def merged_weights(model: OpenModel, plan: LayerPlan) -> dict[int, ExpertWeights]:
    """Survivor -> its merged weights (canonical orientation, float32 values that are
    exactly representable in the stored dtype: the merge is rounded to it, as the
    checkpoint stores it)."""
    if plan.kind != "map" or not plan.merged_survivors:
        return {}
    out = dict(plan.merged)
    if plan.merges:
        from moetopo.compression.model import routed_block

        block = routed_block(model, plan.layer)
        for s, (members, load) in plan.merges.items():
            full = np.zeros(plan.n_experts)
            if load is not None:
                full[members] = load
            out[s] = frequency_weighted_merge(block, members, full)
    return {s: _rounded(model, plan.layer, w) for s, w in sorted(out.items())}


def _rounded(model: OpenModel, layer: int, weights: ExpertWeights) -> ExpertWeights:
    values = {}
    for name, value in vars(weights).items():
        if value is None:
            values[name] = None
            continue
        dtype = expert_storage_dtype(model, layer, name)
        values[name] = np.asarray(value, dtype=np.float32).astype(dtype).astype(np.float32)
    return ExpertWeights(**values)


def stored_slab(weights: ExpertWeights, et: ExpertTensor, bias: bool, dtype) -> np.ndarray:
    """One expert's slice of tensor ``et`` as stored (the inverse of ``read_expert``)."""
    suffix = "_bias" if bias else ""
    if et.role == "expert_gate_up":
        gate, up = getattr(weights, "gate" + suffix), getattr(weights, "up" + suffix)
        if et.packing == "interleaved":
            values = np.empty((gate.shape[0] * 2, *gate.shape[1:]), dtype=np.float32)
            values[0::2], values[1::2] = gate, up
        else:
            values = np.concatenate([gate, up], axis=0)
    else:
        values = getattr(weights, et.role.removeprefix("expert_") + suffix)
    if values is None:
        raise ValueError(f"merged weights lack {et.role}{suffix}")
    if values.ndim == 2 and et.orientation == "in_out":
        values = values.T
    if tuple(values.shape) != tuple(et.shape):
        raise ValueError(f"{et.role}{suffix}: merged shape {values.shape} is not {et.shape}")
    return np.ascontiguousarray(values.astype(np.float32).astype(dtype))


# ---------------------------------------------------------------------------------------
# Streaming safetensors writer


@dataclass
class OutTensor:
    """An output tensor: name, stored dtype, shape, and how to produce its bytes."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    produce: Callable[[Callable[[bytes], Any]], None]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * ELEMENT_TYPES[self.dtype].itemsize


def _copy_bytes(path: Path, offset: int, count: int, write, chunk_bytes: int) -> None:
    buffer = np.empty(min(count, chunk_bytes), dtype=np.uint8)
    done = 0
    while done < count:
        n = min(chunk_bytes, count - done)
        view = buffer[:n]
        read_exactly(path, offset + done, view)
        write(view.tobytes())
        done += n


def _take(
    model: OpenModel, entry: TensorEntry, axis: int, ranges: list[tuple[int, int]], chunk: int
) -> Callable:
    """A producer of ``entry`` restricted to index ranges along ``axis`` (in that order)."""
    path = model.checkpoint.shard_path(entry.shard)
    shape, itemsize = entry.shape, ELEMENT_TYPES[entry.dtype].itemsize
    inner = math.prod(shape[axis + 1 :]) * itemsize  # bytes of one index along axis

    def produce(write) -> None:
        for lead in np.ndindex(*shape[:axis]):
            base = (int(np.ravel_multi_index(lead, shape[:axis])) if axis else 0) * shape[axis]
            for r0, r1 in ranges:
                _copy_bytes(
                    path, entry.begin + (base + r0) * inner, (r1 - r0) * inner, write, chunk
                )

    return produce


def _whole(model: OpenModel, entry: TensorEntry, chunk: int) -> Callable:
    path = model.checkpoint.shard_path(entry.shard)
    return lambda write: _copy_bytes(path, entry.begin, entry.nbytes, write, chunk)


def _array(values: np.ndarray) -> Callable:
    return lambda write: write(np.ascontiguousarray(values).tobytes())


def _chain(producers: list[Callable]) -> Callable:
    def produce(write) -> None:
        for p in producers:
            p(write)

    return produce


def write_safetensors(path: Path, tensors: list[OutTensor], metadata: dict[str, str]) -> int:
    """Write ``tensors`` as one safetensors file, tensor by tensor; returns its data bytes."""
    header: dict[str, Any] = {"__metadata__": dict(metadata)} if metadata else {}
    offset = 0
    for t in tensors:
        header[t.name] = {
            "dtype": t.dtype,
            "shape": list(t.shape),
            "data_offsets": [offset, offset + t.nbytes],
        }
        offset += t.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(raw)))
        fh.write(raw)
        for t in tensors:
            written = 0

            def write(data: bytes, fh=fh) -> None:
                nonlocal written
                written += len(data)
                fh.write(data)

            t.produce(write)
            if written != t.nbytes:
                raise RuntimeError(f"{t.name}: wrote {written} bytes, expected {t.nbytes}")
        fh.flush()
        os.fsync(fh.fileno())
    return offset


# ---------------------------------------------------------------------------------------
# The pruned checkpoint


def write_pruned_checkpoint(
    model_dir: str | Path,
    out_dir: str | Path,
    selection,
    *,
    overwrite: bool = False,
    drop_mtp: bool = False,
    chunk_bytes: int = CHUNK_BYTES,
) -> dict:
    """Write the checkpoint ``selection`` describes into ``out_dir``; returns a summary.

    ``selection``: a :func:`selection_json` dict, its JSON file, or {layer: Reduction}.

    - ``drop``: the pruned experts disappear with their router rows and router biases
      (DeepSeek-V3's ``e_score_correction_bias``), survivors are renumbered 0..k-1 in
      order, stacked expert tensors (fused ``gate_up_proj [E, ...]``) are sliced along
      the expert axis, and config.json gets the new expert count (and top-k where it
      would exceed it; DeepSeek's n_group/topk_group stay, or become 1/1 where that
      routes identically, else the selection is refused naming the layers). Every MoE
      layer must keep the same number of experts: transformers configs have one count.
    - ``map``: exact but not smaller. Same expert count and router; each expert's weights
      are replaced by those of the expert serving its traffic (or by the merge, rounded to
      the stored dtype), so the checkpoint computes exactly the redirected model. The
      JSON redirect map (:func:`selection_json`) is the compact form of the same thing.

    Tensors are copied by exact byte ranges in their stored dtype (BF16 stays BF16) with
    the family's own names, one at a time; the output is written into a temporary
    directory beside ``out_dir`` and renamed into place only when complete. FP8 and MXFP4
    tensors of the reduced layers are refused. ``drop_mtp``: leave out DeepSeek-V3's
    multi-token-prediction layers (their experts would keep the old count); without it a
    drop on a checkpoint that has them is refused.
    """
    if is_remote(model_dir):
        raise MoetopoError(
            f"{model_dir}: pruned checkpoints are written from a local copy; download it first"
        )
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    selection = read_selection(selection)
    model = open_model(model_dir)
    if any(shard.endswith(".gguf") for shard in model.checkpoint.shards):
        raise MoetopoError(
            f"{model_dir}: a GGUF model is not written back pruned (the output is safetensors "
            "with the family's names); prune its safetensors original, then convert"
        )
    layout, root = model.layout, model.layout.root
    if out_dir.resolve() == Path(root).resolve():
        raise MoetopoError(f"{out_dir}: the pruned checkpoint cannot overwrite its source")
    if out_dir.exists() and not overwrite:
        raise MoetopoError(f"{out_dir}: already exists (pass overwrite=True to replace it)")
    plans = layer_plans(model, selection)
    kind = plan_kind(plans)
    _check_storable(model, plans)
    config = dict(model.checkpoint.config)
    skip_mtp = False
    if kind == "drop":
        learned = sorted(
            n for n, r in layout.roles.items() if r.role == "collaboration" and r.layer in plans
        )
        if learned:
            raise MoetopoError(
                f"{root}: {learned[0]} is a learned [experts, experts] collaboration matrix "
                "(CT-MoE), whose routing bias is folded into the router: dropping experts "
                "would change both, so it is not written; redirect or merge instead"
            )
        routing = drop_routing(model, plans)
        if not config:
            raise MoetopoError(f"{root}: no config.json, so the expert count cannot be updated")
        mtp_experts = sorted(
            n for n, r in layout.roles.items() if r.mtp and r.role in ("router", *EXPERT_ROLES)
        )
        if mtp_experts and not drop_mtp:
            raise MoetopoError(
                f"{root}: multi-token-prediction layer(s) {layout.mtp_layers} have experts that "
                f"the selection does not prune (first: {mtp_experts[0]}); pass drop_mtp=True to "
                "leave those layers out of the pruned checkpoint"
            )
        skip_mtp = bool(layout.mtp_layers) and drop_mtp
        config = update_config(model, config, config_changes(model, routing))
        if skip_mtp:
            for scope in _scopes(config):
                if "num_nextn_predict_layers" in scope:
                    scope["num_nextn_predict_layers"] = 0
    merged = {layer: merged_weights(model, plan) for layer, plan in plans.items()}
    shards = _output_shards(model, plans, merged, skip_mtp, chunk_bytes)
    tmp = _fresh_tmp(out_dir)
    try:
        weight_map, total, params = {}, 0, 0
        names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
        for name, (metadata, tensors) in zip(names, shards, strict=True):
            total += write_safetensors(tmp / name, tensors, metadata)
            params += sum(math.prod(t.shape) for t in tensors)
            weight_map |= dict.fromkeys((t.name for t in tensors), name)
        index_meta = dict(_source_index_metadata(model))
        index_meta |= {"total_size": total, "total_parameters": params}
        _write_text(tmp / INDEX_FILE, {"metadata": index_meta, "weight_map": weight_map})
        if config:
            _write_text(tmp / "config.json", config)
        _copy_other_files(model, tmp)
        record = {
            "source": str(Path(root).resolve()),
            "selection": _plans_record(selection, plans),
        }
        _write_text(tmp / SELECTION_FILE, record)
        _replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    counts = {layer: moe.n_experts for layer, moe in layout.layers.items()}
    return {
        "out_dir": str(out_dir),
        "kind": kind,
        "n_experts_before": counts,
        "n_experts_after": {
            layer: len(plans[layer].kept) if kind == "drop" and layer in plans else n
            for layer, n in counts.items()
        },
        "config": {k: config.get(k) for k in _changed_keys(model.checkpoint.config, config)},
        "shards": names,
        "total_size": total,
        "total_parameters": params,
    }


def _check_storable(model: OpenModel, plans: Mapping[int, LayerPlan]) -> None:
    """Refuse what cannot be sliced or merged exactly: quantised tensors of the reduced
    layers, and unclassified tensors there that carry one entry per expert."""
    layout, root = model.layout, model.layout.root
    for layer in plans:
        moe = layout.layers[layer]
        for name in _layer_tensors(moe):
            lt = layout.logical[name]
            if lt.kind != "plain" or not ELEMENT_TYPES[lt.data.dtype].floating:
                raise MoetopoError(
                    f"{root}: tensor {name} is {lt.kind} ({lt.data.dtype}); pruned checkpoints "
                    "of FP8/MXFP4 (block-scaled) experts are not written, since slicing and "
                    "merging their scales is not implemented: dequantise the checkpoint first"
                )
        for name, r in layout.roles.items():
            if (
                r.layer == layer
                and r.role == "other"
                and moe.n_experts in layout.logical[name].shape[:1]
            ):
                raise MoetopoError(
                    f"{root}: tensor {name} of layer {layer} is not classified but has "
                    f"{moe.n_experts} (the expert count) leading entries; refusing to guess "
                    "whether it is indexed by expert"
                )


def _layer_tensors(moe: MoELayer) -> list[str]:
    names = [moe.router] + ([moe.router_bias] if moe.router_bias else [])
    for table in (moe.experts, moe.expert_biases):
        for et in table.values():
            names += [et.fused] if et.fused else list(et.names)
    return names


def _output_shards(model, plans, merged, skip_mtp, chunk) -> list[tuple[dict, list[OutTensor]]]:
    """Per input shard (those left non-empty), its metadata and output tensors in order."""
    layout, checkpoint = model.layout, model.checkpoint
    rewrite: dict[str, Callable[[], list[OutTensor]]] = {}
    for layer, plan in plans.items():
        rewrite |= _layer_rewrites(model, layout.layers[layer], plan, merged[layer], chunk)
    out = []
    for shard in checkpoint.shards:
        header = checkpoint.headers[shard]
        tensors: list[OutTensor] = []
        for entry in sorted(header.tensors.values(), key=lambda e: e.begin):
            role = layout.roles.get(entry.name)
            if skip_mtp and role is not None and role.mtp:
                continue
            if entry.name in rewrite:
                tensors += rewrite[entry.name]()
            else:
                tensors.append(
                    OutTensor(entry.name, entry.dtype, entry.shape, _whole(model, entry, chunk))
                )
        if tensors:
            metadata = dict(header.metadata)
            metadata.setdefault("format", "pt")
            out.append((metadata, tensors))
    if not out:
        raise MoetopoError(f"{layout.root}: the pruned checkpoint would hold no tensor")
    return out


def _layer_rewrites(model, moe: MoELayer, plan: LayerPlan, merged, chunk) -> dict[str, Callable]:
    """Input tensor name -> producer of the output tensors that replace it."""
    tensors = model.checkpoint.tensors
    out: dict[str, Callable] = {}
    drop = plan.kind == "drop"
    kept = [int(e) for e in plan.kept]
    if drop:
        router = tensors[moe.router]
        out[moe.router] = lambda e=router: [
            OutTensor(e.name, e.dtype, (len(kept),) + e.shape[1:],
                      _take(model, e, 0, [(i, i + 1) for i in kept], chunk))
        ]  # fmt: skip
        if moe.router_bias:
            bias = tensors[moe.router_bias]
            axis = bias.shape.index(moe.n_experts)
            shape = bias.shape[:axis] + (len(kept),) + bias.shape[axis + 1 :]
            out[moe.router_bias] = lambda e=bias, a=axis, s=shape: [
                OutTensor(e.name, e.dtype, s, _take(model, e, a, [(i, i + 1) for i in kept], chunk))
            ]
    for table, is_bias in ((moe.experts, False), (moe.expert_biases, True)):
        for et in table.values():
            if et.fused:
                out[et.fused] = _fused_rewrite(model, et, is_bias, plan, merged, chunk)
            else:
                for e, name in enumerate(et.names):
                    out[name] = _per_expert_rewrite(model, et, e, is_bias, plan, merged, chunk)
    return out


def _source(plan: LayerPlan, e: int) -> int:
    """The input expert whose weights output expert ``e`` holds."""
    return int(plan.kept[e]) if plan.kind == "drop" else int(plan.target[e])


def _per_expert_rewrite(model, et: ExpertTensor, e: int, is_bias, plan, merged, chunk):
    tensors = model.checkpoint.tensors
    entry = tensors[et.names[e]]

    def rewrite() -> list[OutTensor]:
        if plan.kind == "drop" and e >= len(plan.kept):
            return []
        source = _source(plan, e)
        if source in merged:
            dtype = ELEMENT_TYPES[entry.dtype].numpy
            values = stored_slab(merged[source], et, is_bias, dtype)
            return [OutTensor(entry.name, entry.dtype, entry.shape, _array(values))]
        src = tensors[et.names[source]]
        return [OutTensor(entry.name, src.dtype, src.shape, _whole(model, src, chunk))]

    return rewrite


def _fused_rewrite(model, et: ExpertTensor, is_bias, plan, merged, chunk):
    entry = model.checkpoint.tensors[et.fused]
    rows = et.shape[0] if et.flat else 1  # indices along axis 0 per expert

    def rewrite() -> list[OutTensor]:
        count = len(plan.kept) if plan.kind == "drop" else plan.n_experts
        dtype = ELEMENT_TYPES[entry.dtype].numpy
        parts = []
        for e in range(count):
            source = _source(plan, e)
            if source in merged:
                parts.append(_array(stored_slab(merged[source], et, is_bias, dtype)))
            else:
                parts.append(_take(model, entry, 0, [(source * rows, (source + 1) * rows)], chunk))
        shape = (count * rows,) + entry.shape[1:]
        return [OutTensor(entry.name, entry.dtype, shape, _chain(parts))]

    return rewrite


def _fresh_tmp(out_dir: Path) -> Path:
    """A new temporary directory beside ``out_dir``; ones a killed writer left are removed."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.parent.glob(f".{out_dir.name}.*.tmp"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = out_dir.parent / f".{out_dir.name}.{uuid.uuid4().hex[:12]}.tmp"
    tmp.mkdir()
    return tmp


def _replace_dir(tmp: Path, out_dir: Path) -> None:
    if not out_dir.exists():
        os.replace(tmp, out_dir)
        return
    old = out_dir.parent / f".{out_dir.name}.{uuid.uuid4().hex[:12]}.old.tmp"
    os.replace(out_dir, old)
    os.replace(tmp, out_dir)
    shutil.rmtree(old, ignore_errors=True)


def _write_text(path: Path, data: dict) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(json.dumps(data, indent=2) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def _source_index_metadata(model: OpenModel) -> dict:
    index = model.checkpoint.index
    if index is None:
        return {}
    try:
        meta = json.loads(Path(index).read_text(encoding="utf-8")).get("metadata")
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


def _copy_other_files(model: OpenModel, tmp: Path) -> None:
    """Tokenizer, generation config and the like; not weights, indexes or captures."""
    root = Path(model.layout.root)
    shards = set(model.checkpoint.shards)
    for path in sorted(root.iterdir()):
        name = path.name
        if (
            not path.is_file()
            or name in shards
            or name == "config.json"
            or name.endswith((".safetensors", ".safetensors.index.json"))
            or path.suffix in PICKLE_SUFFIXES
            or name in SKIPPED_FILES
            or name == SELECTION_FILE
        ):
            continue
        shutil.copyfile(path, tmp / name)


def _plans_record(selection, plans: Mapping[int, LayerPlan]) -> dict:
    if isinstance(selection, Mapping) and "layers" in selection:
        return json.loads(json.dumps(selection, default=str))
    layers = {}
    for layer, plan in plans.items():
        entry: dict[str, Any] = {"n_experts": plan.n_experts, "kept": plan.kept.tolist()}
        if plan.kind == "map":
            entry["redirect"] = {
                str(e): int(plan.target[e]) for e in range(plan.n_experts) if plan.target[e] != e
            }
            entry["merges"] = {
                str(s): {"members": np.flatnonzero(plan.target == s).tolist()}
                for s in plan.merged_survivors
            }
        layers[str(layer)] = entry
    return {"format": SELECTION_FORMAT, "kind": plan_kind(plans), "layers": layers}


def _changed_keys(before: dict, after: dict) -> list[str]:
    return sorted(k for k in after if before.get(k) != after.get(k))
