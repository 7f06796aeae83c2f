"""What each tensor of a checkpoint is: role, layer, expert; which layers are MoE.

The family spec's templates classify names; the routers found decide which layers
are MoE (the config's placement rule is checked against them and a disagreement
is a recorded warning). Everything here reads headers only.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from moetopo.checkpoint.header import gc_paused
from moetopo.checkpoint.logical import LogicalTensor, logical_tensors
from moetopo.checkpoint.shards import Checkpoint
from moetopo.errors import CheckpointError, NoMoELayersError
from moetopo.families import FamilySpec, match_family
from moetopo.families.moe_rules import (
    config_int,
    config_value,
    is_finite_number,
    is_whole,
    predicted_moe_layers,
)
from moetopo.families.spec import EXPERT_ROLES, Template, routed_by_config, skeleton
from moetopo.families.structural import structural_spec

# Far above any model's depth, far below what a list of layers can hold.
MAX_LAYERS = 100_000
_ANY_LAYER = re.compile(r"(?:^|\.)(?:layers|blocks|block|blk|h)\.(\d+)\.")
log = logging.getLogger(__name__)


class TensorRole(NamedTuple):
    """Classification of one logical tensor (a NamedTuple: built for 100k+ tensors)."""

    name: str
    role: str
    layer: int | None
    expert: int | None
    template: Template | None
    mtp: bool = False


@dataclass(frozen=True)
class ExpertTensor:
    """How to read one expert's matrix for a role, whatever the on-disk layout.

    Per-expert layouts store one tensor per expert (``names``); fused layouts store
    all experts on a leading axis (``fused``) or flattened into rows (``flat``).
    ``orientation`` says whether a slice is [out, in] (nn.Linear) or [in, out].
    """

    role: str
    names: tuple[str, ...] = ()
    fused: str | None = None
    flat: bool = False
    orientation: str = "out_in"
    packing: str = "halves"
    shape: tuple[int, ...] = ()  # one expert's [rows, cols] as stored

    def locate(self, expert: int):
        """(logical name, leading index, row offset) of expert ``expert``'s matrix."""
        if self.fused is None:
            return self.names[expert], (), 0
        if self.flat:
            return self.fused, (), expert * self.shape[0]
        return self.fused, (expert,), 0


@dataclass
class MoELayer:
    """One routed-expert layer: its router and how to read each expert."""

    layer: int
    n_experts: int
    top_k: int
    router: str
    router_bias: str | None = None
    experts: dict[str, ExpertTensor] = field(default_factory=dict)
    expert_biases: dict[str, ExpertTensor] = field(default_factory=dict)
    shared: dict[str, str] = field(default_factory=dict)
    shared_router: str | None = None
    expert_params: int = 0
    tied_down: bool = False  # down is up transposed (one stored matrix per expert)


@dataclass
class ModelLayout:
    """The classified checkpoint: roles, MoE layers, parameters, warnings."""

    root: str
    family: str
    detected_by: str
    architecture: str | None
    spec: FamilySpec
    roles: dict[str, TensorRole]
    logical: dict[str, LogicalTensor]
    n_layers: int
    stacks: list[dict]
    moe_layers: list[int]
    dense_layers: list[int]
    mtp_layers: list[int]
    layers: dict[int, MoELayer]
    hidden_size: int
    n_experts: int
    top_k: int
    n_shared_experts: int
    routing: dict
    activation: str
    params: dict[str, int]
    dtypes: dict[str, int]
    warnings: list[str]

    def tensors_of(self, role: str, layer: int | None = None) -> list[str]:
        return sorted(
            n
            for n, r in self.roles.items()
            if r.role == role and (layer is None or r.layer == layer)
        )


@gc_paused()
def build_layout(
    checkpoint: Checkpoint, family: str | None = None, include_embeddings: bool = True
) -> ModelLayout:
    """Classify every tensor of ``checkpoint`` and describe its MoE structure."""
    config = checkpoint.config
    warnings: list[str] = []
    logical = logical_tensors(checkpoint.tensors)
    spec, detected_by = _family(config, logical, family, warnings, checkpoint)
    roles = {name: _classify(spec, name) for name in logical}
    stacks, offsets = _stacks(spec, config, roles, checkpoint.root / "config.json")
    n_layers = sum(s["n_layers"] for s in stacks)
    roles = _placed(roles, offsets, n_layers, single_stack=len(spec.stacks) == 1)
    unmatched = [
        n
        for n, r in roles.items()
        if r.role == "other" and r.template is None and not _inactive(spec, n)
    ]
    if unmatched:
        warnings.append(
            f"{len(unmatched)} tensor(s) match no {spec.name} template and are counted as "
            f"'other' (first: {sorted(unmatched)[0]!r})"
        )
    layers = _moe_layers(spec, config, roles, logical, checkpoint, warnings)
    if not layers:
        raise NoMoELayersError(
            f"{checkpoint.root}: no MoE layer found (detected family {spec.name}, "
            f"{detected_by}); moetopo analyses routed experts, and this model has no router "
            "tensor scoring experts"
        )
    moe = sorted(layers)
    mtp = sorted({r.layer for r in roles.values() if r.mtp and r.layer is not None})
    main = [layer for layer in range(n_layers)]
    _check_placement(spec, config, stacks, moe, warnings)
    first = layers[moe[0]]
    hidden = logical[first.router].shape[1]
    n_experts = config_int(config, spec.config.get("n_experts"), first.n_experts)
    if n_experts != first.n_experts:
        warnings.append(
            f"config says {n_experts} experts but the router of layer {moe[0]} scores "
            f"{first.n_experts}; using the router"
        )
    return ModelLayout(
        root=str(checkpoint.root),
        family=spec.name,
        detected_by=detected_by,
        architecture=(config.get("architectures") or [None])[0],
        spec=spec,
        roles=roles,
        logical=logical,
        n_layers=n_layers,
        stacks=stacks,
        moe_layers=moe,
        dense_layers=[layer for layer in main if layer not in layers],
        mtp_layers=mtp,
        layers=layers,
        hidden_size=hidden,
        n_experts=first.n_experts,
        top_k=first.top_k,
        n_shared_experts=_shared_count(spec, config, layers),
        routing=_routing(spec, config, first, checkpoint.root / "config.json"),
        activation=spec.activation,
        params=_params(roles, logical, layers, spec, include_embeddings),
        dtypes=_dtypes(checkpoint),
        warnings=warnings,
    )


def _family(config, logical, family, warnings, checkpoint) -> tuple[FamilySpec, str]:
    from moetopo.families import load_families

    if family:
        families = load_families()
        if family not in families:
            raise CheckpointError(
                checkpoint.root, f"unknown family {family!r} (known: {', '.join(families)})"
            )
        return routed_by_config(families[family], config), "given"
    spec, how = match_family(config, logical)
    if spec is not None:
        return spec, how
    spec, guess = structural_spec(config, logical)
    message = (
        f"unknown family (architectures={config.get('architectures')}, "
        f"model_type={config.get('model_type')}): structural detection guessed {guess}"
    )
    log.warning("%s: %s", checkpoint.root, message)
    warnings.append(message)
    return spec, "structural"


def _inactive(spec: FamilySpec, name: str) -> bool:
    """Under a prefix the text model never runs (a vision tower): counted, not classified."""
    return bool(spec.inactive_prefixes) and name.startswith(spec.inactive_prefixes)


def _classify(spec: FamilySpec, name: str) -> TensorRole:
    if _inactive(spec, name):
        return TensorRole(name, "other", None, None, None)
    candidate = name
    for old, new in spec.prefixes:
        if name.startswith(old):
            candidate = new + name[len(old) :]
            break
    skel, numbers = skeleton(candidate)
    for template in spec.index.get(skel, ()):
        place = template.place(numbers)
        if place is not None:
            return TensorRole(name, template.role, *place, template, template.mtp)
    found = _ANY_LAYER.search(name)
    return TensorRole(name, "other", int(found.group(1)) if found else None, None, None)


def _stacks(spec: FamilySpec, config: dict, roles, path) -> tuple[list[dict], dict[str, int]]:
    """Layer counts and id offsets per stack (decoder layers numbered after the encoder's)."""
    stacks, offsets, start = [], {}, 0
    for stack in spec.stacks:
        count = config_int(config, stack.n_layers)
        if count is not None and not 0 <= count <= MAX_LAYERS:
            raise CheckpointError(
                path,
                f"{' / '.join(stack.n_layers)} = {count} is not a layer count (0-{MAX_LAYERS})",
            )
        if count is None:  # no count in config.json: the highest layer seen
            seen = [
                r.layer
                for r in roles.values()
                if r.template is not None and stack.slot in r.template.slots and r.layer is not None
            ]
            count = max(seen) + 1 if seen else 0
        stacks.append({"name": stack.name, "first_layer": start, "n_layers": count})
        offsets[stack.slot] = start
        start += count
    offsets["mtp_layer"] = start
    return stacks, offsets


def _placed(
    roles: dict[str, TensorRole], offsets: dict[str, int], n_layers: int, single_stack: bool
) -> dict[str, TensorRole]:
    """Roles with layer ids shifted by their stack's offset (decoder layers after the
    encoder's, ``mtp_layer`` blocks after the main stack), and layers past the config's
    count marked multi-token prediction (DeepSeek-V3's layer 61)."""
    placed = {}
    for name, role in roles.items():
        layer = role.layer
        if layer is not None:
            if role.template is not None:
                layer += offsets.get(role.template.layer_slot, 0)
            mtp = role.mtp or (single_stack and layer >= n_layers)
            if layer != role.layer or mtp != role.mtp:
                role = role._replace(layer=layer, mtp=mtp)
        placed[name] = role
    return placed


def _moe_layers(spec, config, roles, logical, checkpoint, warnings) -> dict[int, MoELayer]:
    by_layer: dict[int, list[TensorRole]] = {}
    for r in roles.values():
        if r.layer is not None and not r.mtp:
            by_layer.setdefault(r.layer, []).append(r)
    layers = {}
    for layer, members in sorted(by_layer.items()):
        routers = [r for r in members if r.role == "router"]
        if not routers:
            continue
        if len(routers) > 1:
            names = ", ".join(r.name for r in routers)
            raise CheckpointError(checkpoint.root, f"layer {layer} has several routers: {names}")
        router = routers[0]
        shape = logical[router.name].shape
        if len(shape) != 2 or shape[0] < 2:
            raise CheckpointError(
                checkpoint.root,
                f"router of layer {layer} has shape {list(shape)}, not [n_experts, hidden]",
                tensor=router.name,
            )
        moe = MoELayer(
            layer=layer, n_experts=shape[0], top_k=0, router=router.name, tied_down=spec.tied_down
        )
        moe.top_k = _layer_top_k(spec, config, layer, moe.n_experts, warnings)
        _fill_layer(moe, members, logical, checkpoint, warnings)
        layers[layer] = moe
    return layers


def _fill_layer(moe: MoELayer, members, logical, checkpoint, warnings) -> None:
    per_expert: dict[tuple[str, str], dict[int, str]] = {}
    templates: dict[tuple[str, str], Template] = {}  # (role, part) -> its per-expert template
    for r in members:
        t = r.template
        if r.role == "router_bias":
            moe.router_bias = r.name
        elif r.role == "shared_expert_router":
            moe.shared_router = r.name
        elif r.role.startswith("shared_expert_") and t.part == "weight":
            moe.shared[r.role] = r.name
        elif r.role in EXPERT_ROLES:
            target = moe.experts if t.part == "weight" else moe.expert_biases
            if t.fused or t.flat:
                shape = logical[r.name].shape
                per = (shape[0] // moe.n_experts,) + shape[1:] if t.flat else shape[1:]
                if (t.flat and shape[0] % moe.n_experts) or (
                    not t.flat and shape[0] != moe.n_experts
                ):
                    raise CheckpointError(
                        checkpoint.root,
                        f"fused expert tensor of shape {list(shape)} does not hold the "
                        f"{moe.n_experts} experts the router scores",
                        tensor=r.name,
                    )
                hidden = logical[moe.router].shape[1]
                declared = "out_in" if logical[r.name].kind == "mxfp4" else t.orientation
                orientation = _orientation(r.role, per, hidden, declared)
                target[r.role] = ExpertTensor(
                    r.role, (), r.name, t.flat, orientation, t.packing, tuple(per)
                )
            elif r.expert is not None:
                per_expert.setdefault((r.role, t.part), {})[r.expert] = r.name
                templates.setdefault((r.role, t.part), t)
    for (role, part), experts in per_expert.items():
        missing = sorted(set(range(moe.n_experts)) - set(experts))
        extra = sorted(set(experts) - set(range(moe.n_experts)))
        if missing or extra:
            raise CheckpointError(
                checkpoint.root,
                f"layer {moe.layer}: the router scores {moe.n_experts} experts but {role} "
                f"tensors exist for {len(experts)} (missing {missing[:5]}, unexpected {extra[:5]})",
            )
        names = tuple(experts[e] for e in range(moe.n_experts))
        shapes = {logical[n].shape for n in names}
        if len(shapes) != 1:
            raise CheckpointError(
                checkpoint.root, f"layer {moe.layer}: {role} tensors differ in shape: {shapes}"
            )
        template = templates[role, part]
        target = moe.experts if part == "weight" else moe.expert_biases
        target[role] = ExpertTensor(
            role, names, None, False, template.orientation, template.packing, shapes.pop()
        )
    if not moe.experts:
        warnings.append(f"layer {moe.layer}: router found but no expert weights were recognised")
    moe.expert_params = sum(logical[r.name].numel for r in members if r.role in EXPERT_ROLES)


def _orientation(role: str, shape: tuple[int, ...], hidden: int, declared: str) -> str:
    """[out, in] or [in, out], read off the shape where hidden sits on one side only.

    MXFP4 always groups the input (reduction) axis, so such tensors are [out, in].
    """
    if len(shape) != 2 or (shape[0] == hidden) == (shape[1] == hidden):
        return declared
    hidden_is_in = role != "expert_down"
    if shape[1] == hidden:
        return "out_in" if hidden_is_in else "in_out"
    return "in_out" if hidden_is_in else "out_in"


def _layer_top_k(spec, config, layer, n_experts, warnings) -> int:
    value = config_value(config, spec.config.get("top_k", []))
    if isinstance(value, list):  # per-layer lists (Hunyuan's moe_topk)
        value = value[layer] if layer < len(value) else value[-1]
    if value is None:
        value = spec.defaults.get("top_k")
    if not isinstance(value, int) or value < 1:
        found = "not found" if value is None else f"{value!r} is no count"
        warnings.append(f"top-k {found} in config.json; assuming 1 for layer {layer}")
        return 1
    return min(value, n_experts)


def _shared_count(spec, config, layers) -> int:
    value = config_value(config, spec.config.get("n_shared_experts", []))
    if isinstance(value, list):
        value = value[0] if value else 0
    if isinstance(value, int):
        return value
    return 1 if any(layer.shared for layer in layers.values()) else 0


def _routing(spec: FamilySpec, config: dict, first: MoELayer, path: Path) -> dict:
    keys = ("n_group", "topk_group", "routed_scaling_factor", "norm_topk_prob")
    params = {k: config_value(config, spec.config.get(k, [])) for k in keys}
    for k in keys:
        if params[k] is None:
            params[k] = spec.defaults.get(k)
    # DeepSeek-V2's topk_method picks between its softmax rules ("greedy" ignores the
    # groups, as its own code does); V3's sigmoid rule always groups (its "noaux_tc")
    method = config_value(config, spec.config.get("topk_method", []))
    method = method if isinstance(method, str) else spec.defaults.get("topk_method")
    if method is not None and spec.routing == "softmax_group_topk":
        params["topk_method"] = method
    if spec.routing == "sparsemixer":  # PhiMoE's mask width, router_jitter_noise
        eps = config_value(config, spec.config.get("jitter_eps", []))
        params["jitter_eps"] = spec.defaults.get("jitter_eps") if eps is None else eps
    _check_routing(params, first.n_experts, path)
    return {"rule": spec.routing, "top_k": first.top_k, "router_bias": spec.router_bias, **params}


def _check_routing(params: dict, n_experts: int, path: Path) -> None:
    """The routing parameters by type and range, before any stage routes with them."""

    def refuse(key: str, expected: str, value=None) -> None:
        value = params[key] if value is None else value
        raise CheckpointError(path, f"{key} is {value!r}, expected {expected}")

    groups = params["n_group"]
    if groups is not None and not (is_whole(groups) and groups >= 1 and n_experts % groups == 0):
        refuse("n_group", f"a whole number of groups dividing the {n_experts} experts")
    best = params["topk_group"]
    if best is not None and not (is_whole(best) and 1 <= best <= (groups or 1)):
        refuse("topk_group", f"a whole number from 1 to n_group ({groups or 1})")
    scale = params["routed_scaling_factor"]
    if scale is not None and not (is_finite_number(scale) and scale > 0):
        refuse("routed_scaling_factor", "a finite number above 0")
    if params["norm_topk_prob"] is not None and not isinstance(params["norm_topk_prob"], bool):
        refuse("norm_topk_prob", "true or false")
    eps = params.get("jitter_eps")
    if eps is not None and not (is_finite_number(eps) and eps >= 0):
        refuse("router_jitter_noise", "a finite number of at least 0", eps)


def _check_placement(spec, config, stacks, moe, warnings) -> None:
    predicted = predicted_moe_layers(spec, config, stacks)
    if predicted is not None and sorted(predicted) != moe:
        warnings.append(
            f"config places MoE layers at {layer_ranges(sorted(predicted))} but routers exist at "
            f"{layer_ranges(moe)}; the routers decide"
        )


def _params(roles, logical, layers, spec, include_embeddings) -> dict[str, int]:
    total = mtp = inactive = embeddings = 0
    for name, r in roles.items():
        n = logical[name].numel
        if r.mtp:
            mtp += n
            continue
        total += n
        if _inactive(spec, name):
            inactive += n
        elif r.role in ("embed", "lm_head"):
            embeddings += n
    expert = sum(layer.expert_params for layer in layers.values())
    routed_active = sum(
        layer.expert_params * layer.top_k / layer.n_experts for layer in layers.values()
    )
    activated = total - inactive - expert + routed_active - embeddings
    if include_embeddings:
        activated += _embeddings_read(roles, logical, spec)
    return {
        "total_params": total,
        "expert_params": expert,
        "activated_params": int(round(activated)),
        "embedding_params": embeddings,
        "inactive_params": inactive,
        "mtp_params": mtp,
    }


def _embeddings_read(roles, logical, spec) -> int:
    """Embedding parameters one token reads: one row of each input embedding, and the
    whole LM head (every token's logits multiply all of it). Without an LM head tensor
    the head is tied to the input embedding (the largest; a shared one before an
    encoder's own), which then counts in full."""
    tables = [
        n for n, r in roles.items() if not r.mtp and not _inactive(spec, n) and r.role == "embed"
    ]
    heads = [
        n for n, r in roles.items() if not r.mtp and not _inactive(spec, n) and r.role == "lm_head"
    ]
    read = sum(logical[n].numel for n in heads)
    tied = None
    if not heads and tables:
        tied = max(tables, key=lambda n: (logical[n].numel, "encoder" not in n, n))
    for name in tables:
        shape = logical[name].shape
        read += logical[name].numel if name == tied else int(shape[-1]) if shape else 0
    return read


def _dtypes(checkpoint: Checkpoint) -> dict[str, int]:
    counts: dict[str, int] = {}
    for entry in checkpoint.tensors.values():
        counts[entry.dtype] = counts.get(entry.dtype, 0) + entry.nbytes
    return dict(sorted(counts.items()))


def layer_ranges(values: list[int]) -> str:
    if not values:
        return "none"
    runs, start, prev = [], values[0], values[0]
    for v in values[1:] + [math.inf]:
        if v != prev + 1:
            runs.append(f"{start}" if start == prev else f"{start}-{prev}")
            start = v
        prev = v
    return ",".join(runs)
