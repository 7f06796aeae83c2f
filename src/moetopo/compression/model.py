"""A checkpoint's MoE layer as a :class:`RoutedBlock`: router rows, biases, routing rule and
the experts read one at a time from the shards."""

from __future__ import annotations

import numpy as np

from moetopo.checkpoint.experts import read_expert
from moetopo.checkpoint.model import OpenModel
from moetopo.checkpoint.probes import expert_activation
from moetopo.compression.block import RoutedBlock
from moetopo.errors import MoetopoError
from moetopo.routing.rule import RoutingRule


def routed_block(model: OpenModel, layer: int, cache_bytes: int = 256 << 20) -> RoutedBlock:
    moe = model.layout.layers[layer]
    if not moe.experts:
        raise MoetopoError(
            f"{model.layout.root}: layer {layer} has a router but no expert weights to evaluate"
        )
    reader = model.reader
    router = reader.read(moe.router).astype(np.float32)
    bias = selection = None
    if moe.router_bias is not None:
        values = reader.read(moe.router_bias).reshape(-1).astype(np.float64)
        if model.layout.routing.get("router_bias") == "selection":
            selection = values
        else:
            bias = values
    activation, limit = expert_activation(model)
    return RoutedBlock(
        router=router,
        rule=RoutingRule.from_summary(model.layout.routing, top_k=moe.top_k),
        read=lambda e: read_expert(reader, moe, e),
        activation=activation,
        limit=limit,
        router_bias=bias,
        selection_bias=selection,
        cache_bytes=cache_bytes,
    )
