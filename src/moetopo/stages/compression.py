"""The compression stage: what removing or merging a layer's experts costs, per method and
budget, measured on the tokens the layer sees (captured inputs where the sheet gives them,
the weights-only probe elsewhere; the tables say which).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np
import pandas as pd

from moetopo.artefacts import SORT_KEYS, columns
from moetopo.checkpoint.model import OpenModel
from moetopo.checkpoint.probes import layer_inputs
from moetopo.compression.evaluate import CompressionParams, evaluate_layer
from moetopo.compression.model import routed_block


def compression_params(values: Mapping) -> CompressionParams:
    """The rule's params as CompressionParams, each field taken by its name."""
    names = {f.name for f in dataclasses.fields(CompressionParams)} & set(values)
    return CompressionParams(
        **{k: tuple(values[k]) if isinstance(values[k], list) else values[k] for k in names}
    )


def hodgecover_order(hodgecover: pd.DataFrame | None, layer: int) -> np.ndarray | None:
    """The cohomology stage's HodgeCover ranking of ``layer`` (experts, rank 0 first), or
    None where it made none."""
    if hodgecover is None:
        return None
    rows = hodgecover[(hodgecover.layer == layer) & (hodgecover.method == "hodgecover")]
    if rows.empty:
        return None
    ranks = rows.drop_duplicates("expert").sort_values("rank")
    return ranks.expert.to_numpy(dtype=np.int64)


def layer_compression(
    model: OpenModel,
    layer: int,
    params: CompressionParams,
    *,
    captured: str | None = None,
    hodgecover: pd.DataFrame | None = None,
    chunk_bytes: int = 256 << 20,
) -> dict[str, pd.DataFrame]:
    """``compression`` (layer, method, draw, keep, keep_fraction, n_experts, metric, value,
    inputs) and ``compression_selections`` (which expert serves each expert's traffic)."""
    block = routed_block(model, layer, cache_bytes=chunk_bytes)
    x, _, _, inputs = layer_inputs(model, layer, params.tokens, params.seed, captured)
    result = evaluate_layer(block, x, params, hodgecover_order(hodgecover, layer))
    n = block.n_experts
    table = result.table.assign(
        layer=layer, keep_fraction=result.table.keep / n, n_experts=n, inputs=inputs
    )
    selections = result.selections.assign(layer=layer, load=result.load[result.selections.expert])
    return {
        "compression": _sorted(table, "compression"),
        "compression_selections": _sorted(selections, "compression_selections"),
    }


def _sorted(table: pd.DataFrame, artefact: str) -> pd.DataFrame:
    return (
        table[columns(artefact)]
        .sort_values(SORT_KEYS[artefact], kind="stable")
        .reset_index(drop=True)
    )
