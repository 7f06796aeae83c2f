"""model.json: what a model is, which layers are MoE, how many parameters a token uses."""

from __future__ import annotations

from moetopo.checkpoint import remote
from moetopo.checkpoint.layout import ModelLayout
from moetopo.checkpoint.shards import Checkpoint


def model_summary(checkpoint: Checkpoint, layout: ModelLayout) -> dict:
    """model.json: what the model is, which layers are MoE, how many parameters a token uses."""
    return {
        "path": remote.display(checkpoint.root),
        "family": layout.family,
        "detected_by": layout.detected_by,
        "architecture": layout.architecture,
        "n_layers": layout.n_layers,
        "stacks": layout.stacks,
        "moe_layers": layout.moe_layers,
        "dense_layers": layout.dense_layers,
        "mtp_layers": layout.mtp_layers,
        "n_experts": layout.n_experts,
        "top_k": layout.top_k,
        "n_shared_experts": layout.n_shared_experts,
        "hidden_size": layout.hidden_size,
        "routing": layout.routing,
        "activation": layout.activation,
        **layout.params,
        "dtypes": layout.dtypes,
        "layers": {
            str(layer): {
                "n_experts": m.n_experts,
                "top_k": m.top_k,
                "router": m.router,
                "router_bias": m.router_bias,
                "expert_layout": {
                    role: ("fused" if t.fused else "per_expert") + f":{t.orientation}"
                    for role, t in sorted(m.experts.items())
                },
                "shared": sorted(m.shared),
                "shared_router": m.shared_router,
                "expert_params": m.expert_params,
            }
            for layer, m in sorted(layout.layers.items())
        },
        "shards": [
            {
                "name": s,
                "bytes": checkpoint.headers[s].file_size,
                "digest": checkpoint.headers[s].digest,
                **(remote.provenance(checkpoint.shard_path(s)) or {}),
            }
            for s in checkpoint.shards
        ],
        "total_bytes": checkpoint.total_bytes,
        "warnings": layout.warnings,
    }
