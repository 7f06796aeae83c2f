"""``moetopo inspect``: a newcomer's first look at a checkpoint, from headers only."""

from __future__ import annotations

from pathlib import Path

from moetopo.checkpoint.layout import build_layout, layer_ranges
from moetopo.checkpoint.shards import open_checkpoint
from moetopo.checkpoint.summary import model_summary


def inspect_model(path: str | Path, family: str | None = None) -> dict:
    """model.json's content for ``path`` without running the pipeline."""
    checkpoint = open_checkpoint(path)
    return model_summary(checkpoint, build_layout(checkpoint, family=family))


def _count(n: int) -> str:
    for unit, size in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)


def describe(s: dict) -> str:
    """Human-readable summary of :func:`inspect_model`'s result."""
    routing = s["routing"]
    lines = [
        f"model        {s['path']}",
        f"family       {s['family']} ({s['detected_by']}); architecture {s['architecture']}",
        f"layers       {s['n_layers']}: MoE {layer_ranges(s['moe_layers'])}; "
        f"dense {layer_ranges(s['dense_layers'])}"
        + (f"; multi-token prediction {layer_ranges(s['mtp_layers'])}" if s["mtp_layers"] else ""),
        f"experts      {s['n_experts']} routed, top-{s['top_k']}, "
        f"{s['n_shared_experts']} shared; hidden {s['hidden_size']}",
        f"routing      {routing['rule']}"
        + "".join(
            f", {k}={routing[k]}"
            for k in ("n_group", "topk_group", "routed_scaling_factor", "norm_topk_prob")
            if routing.get(k) is not None
        )
        + f"; activation {s['activation']}",
        f"parameters   total {_count(s['total_params'])}, activated {_count(s['activated_params'])}"
        f" per token, routed experts {_count(s['expert_params'])}"
        + (f", multi-token prediction {_count(s['mtp_params'])}" if s["mtp_params"] else ""),
        "dtypes       " + ", ".join(f"{k} {v / 2**20:.1f} MiB" for k, v in s["dtypes"].items()),
        f"shards       {len(s['shards'])}, {s['total_bytes'] / 2**30:.2f} GiB",
    ]
    if len(s["stacks"]) > 1:
        lines.append(
            "stacks       "
            + ", ".join(
                f"{t['name']} layers {t['first_layer']}-{t['first_layer'] + t['n_layers'] - 1}"
                for t in s["stacks"]
            )
        )
    lines += [f"warning      {w}" for w in s["warnings"]]
    return "\n".join(lines)
