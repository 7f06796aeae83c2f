"""Loading family specs and matching tensor names against their templates.

A spec names every role's tensors with templates such as
``model.layers.{layer}.mlp.experts.{expert}.gate_proj.weight``. Matching is a dict
lookup: a name's "skeleton" (every digit run replaced by ``#``) selects the
templates with that skeleton, and the digit runs fill the ``{layer}`` / ``{expert}``
slots or must equal the template's literal digits. This stays O(1) per tensor for
checkpoints with 100k+ tensors.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
import tomllib
from dataclasses import dataclass, field
from functools import cache, cached_property
from importlib import resources
from typing import Any

from moetopo.families.moe_rules import config_value

ROLES = (
    "router",
    "router_bias",
    "expert_gate",
    "expert_up",
    "expert_gate_up",
    "expert_down",
    "shared_expert_gate",
    "shared_expert_up",
    "shared_expert_gate_up",
    "shared_expert_down",
    "shared_expert_router",
    "attn_q",
    "attn_k",
    "attn_v",
    "attn_o",
    "attn_qkv",
    "attn_kv",
    "attn_other",
    "dense_ffn",
    "embed",
    "lm_head",
    "norm",
    "scale",
    "collaboration",  # CT-MoE's learned [E, E] collaboration logits S_raw of a layer
    "other",
)
EXPERT_ROLES = ("expert_gate", "expert_up", "expert_gate_up", "expert_down")
# ``mtp_layer`` numbers multi-token-prediction blocks kept apart from the main stack
# (Qwen3-Next ``mtp.layers.N``); their ids follow the last main layer.
_PLACEHOLDER = re.compile(r"\{(layer|encoder_layer|decoder_layer|mtp_layer|expert)\}")
_ALTERNATIVES = re.compile(r"\{([^{}]*,[^{}]*)\}")
_DIGITS = re.compile(r"\d+")
_DIGIT_SPLIT = re.compile(r"(\d+)")


@dataclass(frozen=True)
class Template:
    """One compiled name template of a role."""

    role: str
    pattern: str
    skeleton: str
    slots: tuple[str | int, ...]  # per digit run: a slot name or the literal value required
    fused: bool = False  # experts stacked on a leading axis (or flattened into rows)
    orientation: str = "out_in"  # "out_in" (nn.Linear) or "in_out" (x @ W)
    packing: str = "halves"  # gate/up in one tensor: "halves" or "interleaved"
    flat: bool = False  # experts flattened into rows, [E * rows, cols] (DBRX)
    part: str = "weight"  # "weight" | "bias"
    mtp: bool = False  # belongs to multi-token-prediction layers only

    @cached_property
    def layer_slot(self) -> str | None:
        """The slot that numbers the layer (the first named slot other than ``expert``)."""
        return next((s for s in self.slots if type(s) is str and s != "expert"), None)

    @cached_property
    def _positions(self) -> tuple[int | None, int | None] | None:
        """Indices of the layer and expert digit runs when every run fills a slot of its
        own, so that placing a name needs no checks; None otherwise."""
        if any(type(s) is not str for s in self.slots) or len(set(self.slots)) < len(self.slots):
            return None
        index = {slot: k for k, slot in enumerate(self.slots)}
        return index.get(self.layer_slot), index.get("expert")

    def place(self, numbers: list[str]) -> tuple[int | None, int | None] | None:
        """(layer, expert) given by a name's digit runs, or None when the name does not fit
        (a literal number differs, or a repeated slot disagrees)."""
        positions = self._positions
        if positions is not None:
            layer_at, expert_at = positions
            return (
                None if layer_at is None else int(numbers[layer_at]),
                None if expert_at is None else int(numbers[expert_at]),
            )
        found: dict[str, int] = {}
        for slot, text in zip(self.slots, numbers, strict=True):
            if slot.__class__ is int:
                if int(text) != slot:
                    return None
            elif found.setdefault(slot, int(text)) != int(text):
                return None
        return found.get(self.layer_slot), found.get("expert")


@dataclass(frozen=True)
class MoERule:
    """Which layers of a stack are MoE, as the config states it."""

    rule: str
    keys: dict[str, list[str]]


@dataclass(frozen=True)
class Stack:
    """A numbered run of layers (decoder-only models have one; Switch/NLLB have two)."""

    name: str
    slot: str
    n_layers: list[str]
    moe: MoERule


@dataclass(frozen=True, eq=False)
class FamilySpec:
    """Everything moetopo knows about a model family, read from its TOML file."""

    name: str
    description: str
    architectures: tuple[str, ...]
    model_types: tuple[str, ...]
    markers: tuple[str, ...]
    routing: str
    activation: str
    router_bias: str  # "logit" (added to logits) or "selection" (only steers top-k)
    config: dict[str, list[str]]
    stacks: tuple[Stack, ...]
    prefixes: tuple[tuple[str, str], ...]
    inactive_prefixes: tuple[str, ...]
    defaults: dict[str, Any]
    templates: tuple[Template, ...] = field(repr=False)
    # the routing rule a config value selects, overriding ``routing``: {"key": [config
    # keys], "rules": {value: rule}} (GGUF states its gating function as a number)
    routing_by: dict[str, Any] = field(default_factory=dict)
    attention: dict[str, Any] = field(default_factory=dict)
    # an expert stores one matrix, its down projection is its up projection transposed
    # (the toy model of superposition: ReLU(x W W^T + b))
    tied_down: bool = False

    @cached_property
    def index(self) -> dict[str, list[Template]]:
        """Skeleton -> the templates with that skeleton."""
        table: dict[str, list[Template]] = {}
        for template in self.templates:
            table.setdefault(template.skeleton, []).append(template)
        return table


def skeleton(name: str) -> tuple[str, list[str]]:
    """A tensor name with digit runs replaced by ``#``, and the digit runs."""
    parts = _DIGIT_SPLIT.split(name)
    return "#".join(parts[0::2]), parts[1::2]


def compile_template(role: str, pattern: str, **attrs) -> list[Template]:
    """Expand ``{a,b}`` alternatives and compile each variant for skeleton lookup."""
    compiled = []
    for variant in _expand(pattern):
        parts = _PLACEHOLDER.split(variant)
        skel, slots = [], []
        for i, part in enumerate(parts):
            if i % 2:  # a placeholder name
                skel.append("#")
                slots.append(part)
            else:
                skel.append(_DIGITS.sub("#", part))
                slots.extend(int(d) for d in _DIGITS.findall(part))
        variant_attrs = {"part": "bias" if variant.endswith("bias") else "weight", **attrs}
        compiled.append(Template(role, variant, "".join(skel), tuple(slots), **variant_attrs))
    return compiled


def _expand(pattern: str) -> list[str]:
    pieces = _ALTERNATIVES.split(pattern)
    options = [p.split(",") if i % 2 else [p] for i, p in enumerate(pieces)]
    return ["".join(choice) for choice in itertools.product(*options)]


def _read_toml(name: str) -> dict:
    text = resources.files(__package__).joinpath(f"{name}.toml").read_text(encoding="utf-8")
    return tomllib.loads(text)


def _merged(name: str) -> dict:
    """A spec with its ``extends`` chain folded in: tables merge, template lists extend."""
    data = _read_toml(name)
    parent_name = data.pop("extends", None)
    if parent_name is None:
        return data
    merged = _merged(parent_name)
    for key, value in data.items():
        if key == "tensors":
            tensors = merged.setdefault("tensors", {})
            for role, templates in value.items():
                tensors[role] = list(templates) + tensors.get(role, [])
        elif isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged


def _as_list(value) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def _build(name: str) -> FamilySpec:
    data = _merged(name)
    templates: list[Template] = []
    for role, entries in data.get("tensors", {}).items():
        if role not in ROLES:
            raise ValueError(f"family {name}: unknown role {role!r}")
        for entry in entries:
            if isinstance(entry, str):
                entry = {"name": entry}
            attrs = {k: v for k, v in entry.items() if k != "name"}
            templates.extend(compile_template(role, entry["name"], **attrs))
    _check_unambiguous(name, templates)
    stacks = tuple(
        Stack(
            name=s["name"],
            slot=s.get("slot", "layer"),
            n_layers=_as_list(s.get("n_layers")),
            moe=MoERule(
                rule=s.get("moe", {}).get("rule", "all"),
                keys={k: _as_list(v) for k, v in s.get("moe", {}).items() if k != "rule"},
            ),
        )
        for s in data.get("stacks", [{"name": "decoder", "n_layers": ["num_hidden_layers"]}])
    )
    return FamilySpec(
        name=data["name"],
        description=data.get("description", ""),
        architectures=tuple(data.get("architectures", [])),
        model_types=tuple(data.get("model_types", [])),
        markers=tuple(data.get("markers", [])),
        routing=data.get("routing", "softmax_topk"),
        activation=data.get("activation", "swiglu"),
        router_bias=data.get("router_bias", "logit"),
        config={k: _as_list(v) for k, v in data.get("config", {}).items()},
        stacks=stacks,
        prefixes=tuple(tuple(p) for p in data.get("prefixes", [])),
        inactive_prefixes=tuple(data.get("inactive_prefixes", [])),
        defaults=dict(data.get("defaults", {})),
        templates=tuple(templates),
        attention=data.get("attention", {}),
        routing_by=_routing_by(name, data.get("routing_by")),
        tied_down=bool(data.get("tied_down", False)),
    )


def _routing_by(name: str, table: dict | None) -> dict[str, Any]:
    if table is None:
        return {}
    rules = table.get("rules")
    if not table.get("key") or not isinstance(rules, dict):
        raise ValueError(f"family {name}: routing_by needs a key and a table of rules")
    return {"key": _as_list(table["key"]), "rules": {str(k): v for k, v in rules.items()}}


def routed_by_config(spec: FamilySpec, config: dict) -> FamilySpec:
    """``spec`` with the routing rule its ``routing_by`` config value selects (itself when
    the family has none, the value is absent, or names no rule)."""
    if not spec.routing_by:
        return spec
    value = config_value(config, spec.routing_by["key"])
    rule = None if isinstance(value, bool) else spec.routing_by["rules"].get(str(value))
    return spec if rule in (None, spec.routing) else dataclasses.replace(spec, routing=rule)


def _check_unambiguous(name: str, templates: list[Template]) -> None:
    seen: dict[tuple, str] = {}
    for t in templates:
        key = (t.skeleton, tuple(s if isinstance(s, int) else "*" for s in t.slots))
        if key in seen and seen[key] != t.role:
            raise ValueError(f"family {name}: {t.pattern!r} is both {seen[key]} and {t.role}")
        seen[key] = t.role


@cache
def load_families() -> dict[str, FamilySpec]:
    """Every family spec shipped with moetopo, keyed by name (files starting _ are bases)."""
    names = sorted(
        p.name[: -len(".toml")]
        for p in resources.files(__package__).iterdir()
        if p.name.endswith(".toml") and not p.name.startswith("_")
    )
    return {spec.name: spec for spec in map(_build, names)}


def match_family(config: dict, tensor_names) -> tuple[FamilySpec | None, str]:
    """The family of a model, and how it was recognised.

    config.json's ``architectures`` wins, then ``model_type``, then marker tensor
    names (GGUF-style checkpoints often carry no usable config). The spec's routing
    rule is the one the config selects where the family lets it (:func:`routed_by_config`).
    """
    spec, how = _matching_family(config, tensor_names)
    return (None if spec is None else routed_by_config(spec, config)), how


def _matching_family(config: dict, tensor_names) -> tuple[FamilySpec | None, str]:
    families = load_families()
    archs = _as_list(config.get("architectures"))
    for arch in archs:
        for spec in families.values():
            if arch in spec.architectures:
                return spec, f"architectures={arch}"
    model_types = [config.get("model_type")] + [
        (config.get(sub) or {}).get("model_type") for sub in ("text_config", "language_config")
    ]
    for model_type in filter(None, model_types):
        for spec in families.values():
            if model_type in spec.model_types:
                return spec, f"model_type={model_type}"
    names = list(tensor_names)
    for spec in families.values():
        markers = [t for m in spec.markers for t in compile_template("router", m)]
        table = {t.skeleton: t for t in markers}
        for tensor in names:
            skel, numbers = skeleton(tensor)
            t = table.get(skel)
            if t is not None and t.place(numbers) is not None:
                return spec, f"tensor names like {tensor!r}"
    return None, "no family matched"
