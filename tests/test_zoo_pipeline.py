"""The demo zoo as the pipeline sees it: every model inspects as its family, and the routing
stage's load from a captured file equals a direct computation on that file."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from moetopo.artefacts.views import gates_from_rows
from moetopo.checkpoint.model import open_model
from moetopo.inspect import inspect_model
from moetopo.stages.routing import routing_tables

from conftest import REPO, gate_rows

ZOO = REPO / "resources" / "zoo"
MANIFEST = json.loads((ZOO / "manifest.json").read_text())
SHEET = pd.read_csv(REPO / "config" / "models.tsv", sep="\t", dtype=str).fillna("")


@pytest.mark.parametrize("row", SHEET.to_dict("records"), ids=list(SHEET.model))
def test_every_zoo_model_inspects_as_its_family(row):
    summary = inspect_model(REPO / row["path"])
    assert summary["family"] == row["family"]
    assert summary["warnings"] == []
    entry = next(m for m in MANIFEST["models"] if m["id"] == row["model"])
    assert summary["n_experts"] == entry["hyperparameters"]["experts"]
    assert summary["top_k"] == entry["hyperparameters"]["top_k"]


def softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_routing_stage_load_from_the_captured_file_equals_a_direct_computation():
    row = SHEET[SHEET.model == "qwen2moe-e12k3-h48-s1"].iloc[0]
    model = open_model(REPO / row["path"])
    columns, _ = gate_rows(model)
    gates = gates_from_rows(columns)
    routing, _, _ = routing_tables(
        model, gates, 64, 0, captured=str(REPO / row["routing"])
    ).tables()
    assert set(routing.source) == {"captured"}
    with np.load(REPO / row["routing"]) as data:
        for layer in model.layout.moe_layers:
            logits = data[f"layer_{layer}"].astype(np.float64)
            k = model.layout.layers[layer].top_k
            chosen = np.argsort(-softmax(logits), axis=1, kind="stable")[:, :k]  # Qwen2-MoE
            direct = np.bincount(chosen.ravel(), minlength=logits.shape[1]) / len(logits)
            got = routing[routing.layer == layer].sort_values("expert").load.to_numpy()
            np.testing.assert_allclose(got, direct)
