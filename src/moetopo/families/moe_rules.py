"""Which layers a config says are MoE, one small rule per convention.

Checkpoints are the ground truth (a layer is MoE when it has a router); these
rules restate each family's config convention so a disagreement between config
and tensors can be reported instead of silently trusted.
"""

from __future__ import annotations

import math
from collections.abc import Callable

SUB_CONFIGS = ("text_config", "language_config", "llm_config")


def config_value(config: dict, keys: list[str]):
    """First present value among ``keys``, searched also in the text sub-config.

    A key is looked up literally, then as a dotted path (DBRX's
    ``ffn_config.moe_num_experts``); ``*.name`` matches any flat key ending in ``.name``,
    as GGUF metadata spells them per architecture (``qwen2moe.expert_count``).
    """
    scopes = [config] + [config[s] for s in SUB_CONFIGS if isinstance(config.get(s), dict)]
    for key in keys:
        for scope in scopes:
            value = _lookup(scope, key)
            if value is not None:
                return value
    return None


def _lookup(scope: dict, key: str):
    if key in scope:
        return scope[key]
    if key.startswith("*."):
        return next((v for k, v in scope.items() if k.endswith(key[1:])), None)
    value = scope
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def is_whole(value) -> bool:
    """An integer from JSON: true and false are not numbers here."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_finite_number(value) -> bool:
    """A finite integer or float from JSON (not a bool, not NaN or Infinity)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def config_int(config: dict, keys: list[str] | None, default: int | None = None) -> int | None:
    """:func:`config_value` when it is an integer (a bool is not), else ``default``."""
    value = config_value(config, keys or [])
    return value if is_whole(value) else default


def _all(n, config, keys):
    return list(range(n))


def _first_k_dense(n, config, keys):
    first = config_int(config, keys.get("first_k"))
    if first is None:
        return None
    freq = config_int(config, keys.get("freq"), 1) or 1
    return [i for i in range(n) if i >= first and i % freq == 0]


def _sparse_step(n, config, keys):
    step = config_int(config, keys.get("step"), 1)
    listed = config_value(config, keys.get("skip", []))
    skip = {i for i in listed if isinstance(i, int)} if isinstance(listed, list) else set()
    if not step:
        return []
    return [i for i in range(n) if i not in skip and (i + 1) % step == 0]


def _interleave(n, config, keys):
    listed = config_value(config, keys.get("list", []))
    if isinstance(listed, list):
        return [i for i in listed if isinstance(i, int)]
    step = config_int(config, keys.get("step"))
    if not step:
        return None
    return list(range(step - 1, n, step))


def _period_offset(n, config, keys):
    period = config_int(config, keys.get("period"))
    offset = config_int(config, keys.get("offset"), 0)
    if not period:
        return None
    return [i for i in range(n) if i % period == offset]


def _start_end_interval(n, config, keys):
    start = config_int(config, keys.get("start"), 0)
    end = config_int(config, keys.get("end"), n - 1)
    end = end + n if end < 0 else end  # Ernie-4.5: moe_layer_end_index = -1 means the last layer
    interval = config_int(config, keys.get("interval"), 1) or 1
    return [i for i in range(n) if (i + 1) % interval == 0 and start <= i <= end]


def _dense_first(n, config, keys):
    count = config_int(config, keys.get("count"))
    return None if count is None else list(range(count, n))


def _switch_step(n, config, keys):
    """Switch: sparse where i % step == 1 (every layer when step is 1).

    Configs that omit the step give the sparse-layer count it is derived from.
    """
    step = config_int(config, keys.get("step"))
    if step is None:
        sparse = config_int(config, keys.get("sparse"))
        if sparse is None:
            return None
        step = n // sparse if sparse > 0 else n
    return [i for i in range(n) if step > 0 and (i % step == 1 or step == 1)]


def _nllb_step(n, config, keys):
    step = config_int(config, keys.get("step"))
    if step is None:
        return None
    return [i for i in range(n) if step > 0 and (i + 1) % step == 0]


def _layer_types(n, config, keys):
    types = config_value(config, keys.get("list", []))
    sparse = set(keys.get("sparse", ["sparse", "moe"]))
    if not isinstance(types, list):
        return None
    return [i for i, t in enumerate(types[:n]) if t in sparse]


RULES: dict[str, Callable] = {
    "all": _all,
    "first_k_dense": _first_k_dense,
    "sparse_step": _sparse_step,
    "interleave": _interleave,
    "period_offset": _period_offset,
    "start_end_interval": _start_end_interval,
    "dense_first": _dense_first,
    "switch_step": _switch_step,
    "nllb_step": _nllb_step,
    "layer_types": _layer_types,
}


def predicted_moe_layers(spec, config: dict, stacks: list[dict]) -> list[int] | None:
    """Global ids of the layers the config makes MoE, or None when it does not say."""
    found: list[int] = []
    for stack, placed in zip(spec.stacks, stacks, strict=True):
        rule = RULES.get(stack.moe.rule)
        if rule is None:
            raise ValueError(f"family {spec.name}: unknown MoE placement rule {stack.moe.rule!r}")
        local = rule(placed["n_layers"], config, stack.moe.keys)
        if local is None:
            return None
        found.extend(placed["first_layer"] + i for i in local)
    return found
