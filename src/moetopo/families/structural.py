"""Structural detection for checkpoints of families moetopo has no spec for.

A router is a 2-D tensor [n_experts, hidden] in a layer whose experts are visible
as exactly n_experts indexed tensors or as 3-D tensors with n_experts on the
leading axis. The guess becomes an ordinary spec (the generic decoder names plus
templates written from the observed names), so classification has one code path.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from dataclasses import replace

from moetopo.families.moe_rules import config_value
from moetopo.families.spec import FamilySpec, MoERule, Stack, _build, compile_template, skeleton

_LAYER_RUN = re.compile(r"(?:^|\.)(?:layers|blocks|block|blk|h)\.(\d+)\.")
HIDDEN_KEYS = ["hidden_size", "d_model", "n_embd", "dim", "model_dim"]
EXPERT_KEYS = ["num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts"]
TOPK_KEYS = ["num_experts_per_tok", "moe_top_k", "experts_per_token", "top_k", "moe_k"]
_ROLE_WORDS = (
    ("expert_gate_up", ("gate_up", "w13", "input_linear")),
    ("expert_gate", ("gate", "w1", "wg")),
    ("expert_up", ("up", "w3", "wi", "fc1", "v1")),
    ("expert_down", ("down", "w2", "wo", "fc2", "output_linear")),
)


def structural_spec(config: dict, logical) -> tuple[FamilySpec, str]:
    """A spec guessed from tensor shapes and names, and a sentence saying what was guessed."""
    base = _build("_decoder")
    hidden = _hidden(config, logical)
    router = _find_router(logical, hidden)
    if router is None:
        found = replace(base, name="structural", description="no router found")
        return found, f"no router-shaped tensor [n_experts, {hidden}] with matching experts"
    router_pattern, n_experts, expert_patterns = router
    templates = list(compile_template("router", router_pattern))
    for role, pattern, fused in expert_patterns:
        templates.extend(compile_template(role, pattern, fused=fused))
    spec = replace(
        base,
        name="structural",
        description="guessed from tensor shapes",
        templates=tuple(templates) + base.templates,
        config={"n_experts": EXPERT_KEYS, "top_k": TOPK_KEYS},
        stacks=(Stack("decoder", "layer", ["num_hidden_layers", "n_layers"], MoERule("all", {})),),
    )
    roles = ", ".join(f"{role} {p!r}" for role, p, _ in expert_patterns)
    top_k = config_value(config, TOPK_KEYS)
    guess = (
        f"routers named like {router_pattern!r} scoring {n_experts} experts; experts {roles}; "
        f"routing softmax then top-k with top_k={top_k if top_k is not None else 'unknown'}"
    )
    return spec, guess


def _hidden(config, logical) -> int | None:
    value = config_value(config, HIDDEN_KEYS)
    if isinstance(value, int):
        return value
    widths = Counter(t.shape[-1] for t in logical.values() if len(t.shape) == 2)
    return widths.most_common(1)[0][0] if widths else None


def _template(name: str, layer_run: int, expert_run: int | None = None) -> str:
    """Turn an observed name into a template by naming its layer and expert digit runs."""
    out, last, index = [], 0, 0
    for match in re.finditer(r"\d+", name):
        out.append(name[last : match.start()])
        if index == layer_run:
            out.append("{layer}")
        elif index == expert_run:
            out.append("{expert}")
        else:
            out.append(match.group())
        last, index = match.end(), index + 1
    out.append(name[last:])
    return "".join(out)


def _layer_run(name: str) -> int | None:
    found = _LAYER_RUN.search(name)
    if not found:
        return None
    return len(re.findall(r"\d+", name[: found.start(1)]))


def _find_router(logical, hidden):
    by_layer: dict[tuple[str, int], list] = defaultdict(list)
    for name, t in logical.items():
        run = _layer_run(name)
        if run is not None:
            by_layer[(name[: name.find(".", 0)], int(re.findall(r"\d+", name)[run]))].append(t)
    best = None
    for name, t in sorted(logical.items()):
        run = _layer_run(name)
        if run is None or len(t.shape) != 2 or t.shape[1] != hidden:
            continue
        n_experts = t.shape[0]
        if not 2 <= n_experts <= 4096 or n_experts == hidden:
            continue
        layer = int(re.findall(r"\d+", name)[run])
        peers = by_layer[(name[: name.find(".", 0)], layer)]
        experts = _expert_patterns(peers, n_experts, run)
        if experts and (best is None or len(experts) > len(best[2])):
            best = (_template(name, run), n_experts, experts)
    return best


def _expert_patterns(peers, n_experts, layer_run):
    """Templates of the expert tensors among a layer's tensors, if they match n_experts."""
    per_expert: dict[str, set[int]] = defaultdict(set)
    sample: dict[str, str] = {}
    found = []
    for t in peers:
        if len(t.shape) == 3 and t.shape[0] == n_experts:
            role = _role(t.name)
            if role:
                found.append((role, _template(t.name, layer_run), True))
            continue
        numbers = re.findall(r"\d+", t.name)
        if len(numbers) <= layer_run + 1 or "expert" not in t.name or "shared" in t.name:
            continue
        key = skeleton(t.name)[0]
        per_expert[key].add(int(numbers[layer_run + 1]))
        sample.setdefault(key, t.name)
    for key, seen in per_expert.items():
        role = _role(sample[key].rsplit("experts", 1)[-1])
        if role and seen == set(range(n_experts)):
            found.append((role, _template(sample[key], layer_run, layer_run + 1), False))
    return found


def _role(name: str) -> str | None:
    tail = name.lower().rsplit(".", 2)
    words = ".".join(tail[-2:]) if len(tail) > 1 else tail[0]
    for role, keys in _ROLE_WORDS:
        if any(re.search(rf"(^|[._]){k}([._]|$)", words) for k in keys):
            return role
    return None
