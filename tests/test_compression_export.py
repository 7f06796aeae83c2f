"""Selections as JSON, pruned/redirected checkpoints, and the end-to-end loss of both.

The end-to-end tests check two independent ways of building a reduced model against each
other: ``evaluate_end_to_end`` changes the loaded transformers model in memory, while the
checkpoint ``write_pruned_checkpoint`` writes is loaded fresh with ``from_pretrained`` and
scored by the plain loop below; their held-out losses must agree. Structure tests read the
written shards byte for byte with a header parser of their own. Tests that need torch or
transformers skip without them.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from moetopo.checkpoint.experts import read_expert
from moetopo.checkpoint.model import open_model
from moetopo.compression import export
from moetopo.compression.block import dropped, frequency_weighted_merge, redirected
from moetopo.compression.export import (
    layer_plans,
    merged_weights,
    selection_json,
    write_pruned_checkpoint,
)
from moetopo.compression.model import routed_block
from moetopo.errors import MoetopoError
from moetopo.fixtures.families import write_family
from moetopo.fixtures.model import random_model
from moetopo.routing.rule import RoutingRule, route

from conftest import REPO

ZOO = REPO / "resources" / "zoo"
HELDOUT = (ZOO / "heldout_sample.txt").read_text(encoding="utf-8")
FAMILIES = {
    "mixtral": "mixtral-e8k2-h64-s0",
    "deepseek_v3": "dsv3-e8k2-h64-s0",
    "qwen2_moe": "qwen2moe-e8k2-h64-s0",
    "olmoe": "olmoe-e8k2-h64-s0",
}
# two per DeepSeek group (experts 0-3 and 4-7) in every layer, different per layer
DROP_KEPT = ([0, 2, 5, 7], [1, 3, 4, 6])
MAP_LAYER = {
    "kept": [0, 2, 5, 7],
    "redirect": {"1": 0, "3": 2, "4": 5, "6": 7},  # 3 -> 2 and 6 -> 7 are plain redirects
    "merges": {"0": {"members": [0, 1], "load": [3.0, 1.0]}, "5": {"members": [4, 5]}},
}


# ---------------------------------------------------------------------------------------
# helpers


def drop_selection(model_dir: Path, kept=DROP_KEPT) -> dict:
    layers = open_model(model_dir).layout.moe_layers
    return {"kind": "drop", "layers": {str(L): {"kept": kept[i % 2]} for i, L in enumerate(layers)}}


def map_selection(model_dir: Path) -> dict:
    layers = open_model(model_dir).layout.moe_layers
    return {"kind": "map", "layers": {str(L): MAP_LAYER for L in layers}}


def raw_tensors(model_dir: Path) -> dict[str, tuple[str, tuple, bytes]]:
    """name -> (dtype, shape, stored bytes) of every tensor, read through the index."""
    index = json.loads((Path(model_dir) / "model.safetensors.index.json").read_text())
    out = {}
    for shard in sorted(set(index["weight_map"].values())):
        data = (Path(model_dir) / shard).read_bytes()
        (n,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8 : 8 + n])
        header.pop("__metadata__", None)
        for name, spec in header.items():
            b, e = spec["data_offsets"]
            out[name] = (spec["dtype"], tuple(spec["shape"]), data[8 + n + b : 8 + n + e])
    assert set(out) == set(index["weight_map"])
    return out


def config(model_dir: Path) -> dict:
    return json.loads((Path(model_dir) / "config.json").read_text())


@pytest.fixture(scope="module")
def tx():
    torch = pytest.importorskip("torch", reason="end-to-end evaluation needs torch")
    transformers = pytest.importorskip("transformers", reason="end-to-end needs transformers")
    torch.set_num_threads(1)
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    return torch, transformers


def independent_loss(tx, model_dir: Path, text: str = HELDOUT, seq_len: int = 128) -> float:
    """Mean next-byte loss of the checkpoint loaded fresh, one window at a time."""
    torch, transformers = tx
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.eval()
    ids = np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int64)
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(ids), seq_len):
            x = torch.from_numpy(ids[start : start + seq_len])[None]
            if x.shape[1] < 2:
                continue
            logits = model(input_ids=x).logits[0, :-1].float()
            total += float(torch.nn.functional.cross_entropy(logits, x[0, 1:], reduction="sum"))
            count += x.shape[1] - 1
    return total / count


# ---------------------------------------------------------------------------------------
# selection_json


def _selections_frame() -> pd.DataFrame:
    rows = []
    for layer in (0, 1):
        for e in range(4):  # frequency keep 2: drop
            kept = e in (0, 3)
            rows.append(("frequency", 0, 2, layer, e, kept, e if kept else -1, False, 10.0 + e))
        target = [0, 0, 2, 2] if layer == 0 else [0, 1, 1, 1]
        for e in range(4):  # hc_smoe keep 2: layer 0 merges {0,1} and {2,3}; 1 merges {1,2,3}
            merged = layer == 0 or target[e] == 1
            rows.append(("hc_smoe", 0, 2, layer, e, target[e] == e, target[e], merged, 1.0 + e))
    columns = ["method", "draw", "keep", "layer", "expert", "kept", "target", "merged", "load"]
    return pd.DataFrame(rows, columns=columns)


def test_selection_json_round_trips_and_names_kept_and_redirects():
    frame = _selections_frame()
    drop = selection_json(frame, method="frequency", keep=2, model="m")
    assert json.loads(json.dumps(drop)) == drop
    assert (drop["kind"], drop["budget"], drop["model"], drop["method"]) == (
        "drop", 2, "m", "frequency",
    )  # fmt: skip
    assert drop["layers"] == {
        "0": {"n_experts": 4, "kept": [0, 3]},
        "1": {"n_experts": 4, "kept": [0, 3]},
    }
    merge = selection_json(frame, method="hc_smoe", keep=2, model="m")
    assert json.loads(json.dumps(merge)) == merge
    assert merge["kind"] == "map"
    layer0, layer1 = merge["layers"]["0"], merge["layers"]["1"]
    assert layer0["kept"] == [0, 2] and layer0["redirect"] == {"1": 0, "3": 2}
    assert layer0["merges"] == {
        "0": {"members": [0, 1], "load": [1.0, 2.0]},
        "2": {"members": [2, 3], "load": [3.0, 4.0]},
    }
    assert layer1["kept"] == [0, 1] and layer1["redirect"] == {"2": 1, "3": 1}
    assert layer1["merges"] == {"1": {"members": [1, 2, 3], "load": [2.0, 3.0, 4.0]}}
    with pytest.raises(MoetopoError, match="no selection rows"):
        selection_json(frame, method="reap", keep=2)


def test_selection_from_evaluate_layer_gives_the_same_model_both_ways(tx, tmp_path):
    """The real flow on Mixtral: evaluate_layer per layer, the JSON of HC-SMoE at half the
    experts, then the merged checkpoint and the in-memory model agree."""
    from moetopo.checkpoint.probes import layer_inputs
    from moetopo.compression.evaluate import CompressionParams, evaluate_layer
    from moetopo.end_to_end import evaluate_end_to_end

    model_dir = ZOO / FAMILIES["mixtral"]
    model = open_model(model_dir)
    params = CompressionParams(keep_fractions=(0.5,), methods=("frequency", "hc_smoe"), tokens=256)
    results = {}
    for layer in model.layout.moe_layers:
        x, *_ = layer_inputs(model, layer, 256, 0, str(model_dir / "router_logits.npz"))
        results[layer] = evaluate_layer(routed_block(model, layer), x, params)
    chosen = selection_json(results, method="hc_smoe", keep=4, model=model_dir.name)
    assert json.loads(json.dumps(chosen)) == chosen
    for layer, entry in chosen["layers"].items():
        assert len(entry["kept"]) == 4 and len(entry["redirect"]) == 4
        assert entry["merges"], "HC-SMoE at 4 of 8 merges something"
        for survivor, merge in entry["merges"].items():
            assert int(survivor) in merge["members"]
            np.testing.assert_array_equal(merge["load"], results[int(layer)].load[merge["members"]])
    out = tmp_path / "hc_smoe"
    write_pruned_checkpoint(model_dir, out, chosen)
    result = evaluate_end_to_end(model_dir, chosen, text=HELDOUT)
    np.testing.assert_allclose(result.loss, independent_loss(tx, out), rtol=1e-5)
    assert result.kl > 0 and result.loss > result.full_loss


# ---------------------------------------------------------------------------------------
# End to end: the in-memory model is the written checkpoint


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_end_to_end_loss_equals_written_checkpoint(tx, tmp_path, family):
    from moetopo.end_to_end import evaluate_end_to_end

    model_dir = ZOO / FAMILIES[family]
    for kind, selection in (("drop", drop_selection(model_dir)), ("map", map_selection(model_dir))):
        out = tmp_path / kind
        write_pruned_checkpoint(model_dir, out, selection)
        result = evaluate_end_to_end(model_dir, selection, text=HELDOUT)
        fresh = independent_loss(tx, out)
        np.testing.assert_allclose(result.loss, fresh, rtol=1e-5, err_msg=f"{family} {kind}")
        np.testing.assert_allclose(result.full_loss, independent_loss(tx, model_dir), rtol=1e-5)
        assert result.kl > 1e-4 and result.loss != result.full_loss, (family, kind)
        assert result.data == "text" and result.tokens == len(HELDOUT.encode()) - 25


def test_reductions_and_json_give_identical_models(tx, tmp_path):
    """A {layer: Reduction} (merges computed as evaluate does) and the JSON form of the same
    selection give bit-identical checkpoints and the same end-to-end numbers."""
    from moetopo.end_to_end import evaluate_end_to_end

    model_dir = ZOO / FAMILIES["olmoe"]
    model = open_model(model_dir)
    selection = map_selection(model_dir)
    reductions = {}
    for layer in model.layout.moe_layers:
        block = routed_block(model, layer)
        target = np.array([0, 0, 2, 2, 5, 5, 7, 7])
        merged = {
            0: frequency_weighted_merge(block, [0, 1], np.array([3.0, 1.0] + [0.0] * 6)),
            5: frequency_weighted_merge(block, [4, 5], np.zeros(8)),  # no load: equal weights
        }
        reductions[layer] = redirected(target, merged)
    write_pruned_checkpoint(model_dir, tmp_path / "json", selection)
    write_pruned_checkpoint(model_dir, tmp_path / "reductions", reductions)
    a, b = raw_tensors(tmp_path / "json"), raw_tensors(tmp_path / "reductions")
    assert a == b
    ra = evaluate_end_to_end(model_dir, selection, text=HELDOUT)
    rb = evaluate_end_to_end(model_dir, reductions, text=HELDOUT)
    assert (ra.loss, ra.kl) == (rb.loss, rb.kl)
    drops = {L: dropped(8, DROP_KEPT[i % 2]) for i, L in enumerate(model.layout.moe_layers)}
    rd = evaluate_end_to_end(model_dir, drops, text=HELDOUT)
    assert rd.loss == evaluate_end_to_end(model_dir, drop_selection(model_dir), text=HELDOUT).loss


def test_full_model_reproduces_the_zoo_score(tx):
    """No reduction on the zoo's own held-out windows: the score in manifest.json and
    config/models.tsv (rounded there to 6 decimals), KL 0."""
    from moetopo.end_to_end import evaluate_end_to_end

    sheet = pd.read_csv(REPO / "config" / "models.tsv", sep="\t").set_index("model")
    for family in ("mixtral", "deepseek_v3"):
        model_dir = ZOO / FAMILIES[family]
        result = evaluate_end_to_end(model_dir, None)
        assert result.data == "zoo-heldout" and result.windows == 128 and result.seq_len == 128
        assert result.reference_score is not None, "corpus digest differs from the manifest"
        assert abs(result.full_loss - result.reference_score) < 6e-7
        assert abs(result.full_loss - sheet.loc[model_dir.name, "score"]) < 6e-7
        assert result.loss == result.full_loss and result.kl == 0.0


def test_fused_checkpoint_is_sliced_along_the_expert_axis(tx, tmp_path):
    """The layout transformers 5 writes with save_original_format=False: gate_up_proj
    [E, 2I, H] and down_proj [E, H, I] are sliced (drop) or rebuilt (map) per expert."""
    torch, transformers = tx
    source = ZOO / FAMILIES["mixtral"]
    fused = tmp_path / "fused"
    model = transformers.AutoModelForCausalLM.from_pretrained(source, dtype=torch.bfloat16)
    model.save_pretrained(fused, save_original_format=False, max_shard_size="300KB")
    layout = open_model(fused).layout
    gate_up = layout.layers[0].experts["expert_gate_up"]
    assert gate_up.fused == "model.layers.0.mlp.experts.gate_up_proj"
    from moetopo.end_to_end import evaluate_end_to_end

    for kind, selection in (("drop", drop_selection(source)), ("map", map_selection(source))):
        write_pruned_checkpoint(fused, tmp_path / kind, selection)
        shapes = {n: s for n, (_, s, _) in raw_tensors(tmp_path / kind).items()}
        assert shapes[gate_up.fused] == ((4 if kind == "drop" else 8), 128, 64)
        assert shapes["model.layers.0.mlp.experts.down_proj"][0] == (4 if kind == "drop" else 8)
        expected = evaluate_end_to_end(source, selection, text=HELDOUT).loss
        np.testing.assert_allclose(independent_loss(tx, tmp_path / kind), expected, rtol=1e-5)


# ---------------------------------------------------------------------------------------
# Structure of the written checkpoints (no torch needed)


@pytest.mark.parametrize("family", ["mixtral", "deepseek_v3"])
def test_pruned_checkpoint_names_shapes_router_rows_and_config(tmp_path, family):
    model_dir = ZOO / FAMILIES[family]
    selection = drop_selection(model_dir)
    summary = write_pruned_checkpoint(model_dir, tmp_path / "out", selection)
    before, after = raw_tensors(model_dir), raw_tensors(tmp_path / "out")
    layout = open_model(model_dir).layout
    removed = set()
    for i, layer in enumerate(layout.moe_layers):
        moe, kept = layout.layers[layer], DROP_KEPT[i % 2]
        dtype, shape, data = after[moe.router]
        assert (dtype, shape) == (before[moe.router][0], (4, 64))
        rows = np.frombuffer(before[moe.router][2], np.uint16).reshape(8, 64)
        assert np.frombuffer(data, np.uint16).reshape(4, 64).tobytes() == rows[kept].tobytes()
        if moe.router_bias:
            dtype, shape, data = after[moe.router_bias]
            old = np.frombuffer(before[moe.router_bias][2], np.float32)
            assert (dtype, shape) == ("F32", (4,)) and data == old[kept].tobytes()
        for et in moe.experts.values():
            for j, name in enumerate(et.names):
                if j < 4:  # renumbered: new expert j holds old expert kept[j], bit for bit
                    assert after[name] == before[et.names[kept[j]]]
                else:
                    removed.add(name)
    assert set(after) == set(before) - removed
    for name in set(after) - {n for L in layout.moe_layers for n in _layer_names(layout, L)}:
        assert after[name] == before[name]
    cfg, old = config(tmp_path / "out"), config(model_dir)
    key = "num_local_experts" if family == "mixtral" else "n_routed_experts"
    assert cfg[key] == 4 and old[key] == 8
    assert {k: v for k, v in cfg.items() if k != key} == {k: v for k, v in old.items() if k != key}
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    assert index["metadata"]["total_size"] == sum(len(d) for _, _, d in after.values())
    assert summary["n_experts_after"] == dict.fromkeys(layout.moe_layers, 4)
    assert not (tmp_path / "out" / "router_logits.npz").exists()
    assert (tmp_path / "out" / "generation_config.json").exists()
    assert json.loads((tmp_path / "out" / export.SELECTION_FILE).read_text())["selection"] == (
        selection
    )
    reopened = open_model(tmp_path / "out").layout
    assert reopened.n_experts == 4 and reopened.family == layout.family


def _layer_names(layout, layer) -> list[str]:
    return export._layer_tensors(layout.layers[layer])


def test_map_checkpoint_copies_targets_and_stores_merges_rounded(tmp_path):
    model_dir = ZOO / FAMILIES["deepseek_v3"]
    selection = map_selection(model_dir)
    write_pruned_checkpoint(model_dir, tmp_path / "out", selection)
    before, after = raw_tensors(model_dir), raw_tensors(tmp_path / "out")
    model, pruned = open_model(model_dir), open_model(tmp_path / "out")
    plans = layer_plans(model, selection)
    for layer, plan in plans.items():
        moe = model.layout.layers[layer]
        assert after[moe.router] == before[moe.router]
        assert after[moe.router_bias] == before[moe.router_bias]
        for et in moe.experts.values():
            assert after[et.names[3]] == before[et.names[2]]  # plain redirect: a copy
            assert after[et.names[6]] == before[et.names[7]]
            assert after[et.names[2]] == before[et.names[2]]
            assert after[et.names[0]] == after[et.names[1]] != before[et.names[0]]
            assert after[et.names[0]][0] == "BF16"
        merged = merged_weights(model, plan)
        for e, survivor in ((0, 0), (1, 0), (4, 5), (5, 5)):
            got = read_expert(pruned.reader, pruned.layout.layers[layer], e)
            np.testing.assert_array_equal(got.gate, merged[survivor].gate)
            np.testing.assert_array_equal(got.down, merged[survivor].down)
        # the merge of 4 and 5 has no load: equal weights, rounded to BF16
        block = routed_block(model, layer)
        mean = frequency_weighted_merge(block, [4, 5], np.zeros(8))
        bf16 = mean.up.astype(pruned.reader.storage_dtype(moe.experts["expert_up"].names[0]))
        np.testing.assert_array_equal(merged[5].up, bf16.astype(np.float32))
    assert config(tmp_path / "out") == config(model_dir)


@pytest.mark.parametrize("kind", ["drop", "map"])
def test_gpt_oss_fused_interleaved_transposed_with_biases(tmp_path, kind):
    """Fixture checkpoint: fused [E, H, 2I] gate_up (interleaved, [in, out]), expert biases
    and a router bias; the pruned checkpoint reads back as the kept / merged experts."""
    src = write_family(
        random_model(n_experts=8, router_bias=True, expert_bias=True), "gpt_oss", tmp_path / "src"
    )
    model = open_model(src)
    layers = model.layout.moe_layers
    if kind == "drop":
        selection = drop_selection(src)
    else:
        selection = {"kind": "map", "layers": {str(L): MAP_LAYER for L in layers}}
    write_pruned_checkpoint(src, tmp_path / "out", selection)
    out = open_model(tmp_path / "out")
    for i, layer in enumerate(layers):
        plan = layer_plans(model, selection)[layer]
        merged = merged_weights(model, plan)
        moe, new = model.layout.layers[layer], out.layout.layers[layer]
        count = 4 if kind == "drop" else 8
        assert new.n_experts == count
        bias = model.reader.read(moe.router_bias)
        rows = DROP_KEPT[i % 2] if kind == "drop" else list(range(8))
        np.testing.assert_array_equal(out.reader.read(new.router_bias), bias[rows])
        for j in range(count):
            source = rows[j] if kind == "drop" else int(plan.target[j])
            got = read_expert(out.reader, new, j)
            want = merged.get(source) or read_expert(model.reader, moe, source)
            for field in ("gate", "up", "down", "gate_bias", "up_bias", "down_bias"):
                np.testing.assert_array_equal(getattr(got, field), getattr(want, field), field)
    if kind == "drop":
        assert config(tmp_path / "out")["num_local_experts"] == 4


# ---------------------------------------------------------------------------------------
# DeepSeek group routing


def test_group_collapse_only_where_it_routes_identically(tmp_path):
    model_dir = ZOO / FAMILIES["deepseek_v3"]
    model = open_model(model_dir)
    # all survivors in group 0 (topk_group = 1): n_group=1, topk_group=1 is the same rule
    one_group = drop_selection(model_dir, kept=([0, 1, 2, 3], [0, 1, 2, 3]))
    write_pruned_checkpoint(model_dir, tmp_path / "one", one_group)
    cfg = config(tmp_path / "one")
    assert (cfg["n_group"], cfg["topk_group"], cfg["n_routed_experts"]) == (1, 1, 4)
    # two per group in every layer: the groups stay as they are
    kept_groups = write_pruned_checkpoint(model_dir, tmp_path / "two", drop_selection(model_dir))
    assert kept_groups["config"] == {"n_routed_experts": 4}
    assert config(tmp_path / "two")["n_group"] == 2
    # the pruned rule routes as the original with the pruned experts masked (groups kept)
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(500, 8))
    bias = rng.normal(scale=0.3, size=8)
    for kept, n_group in (([0, 1, 2, 3], 1), ([4, 5, 6, 7], 1), ([1, 3, 4, 6], 2)):
        experts, weights = _masked_v3(logits, bias, kept, top_k=2, n_group=2, topk_group=1)
        new_rule = RoutingRule.from_summary(
            model.layout.routing | {"n_group": n_group, "topk_group": 1}
        )
        pruned = route(logits[:, kept], new_rule, None, bias[kept])
        np.testing.assert_array_equal(np.asarray(kept)[pruned.experts], experts)
        np.testing.assert_allclose(pruned.weights, weights, rtol=1e-12)
    # 3 + 1 per group in every layer: no groups left to limit, as the layer-wise
    # evaluation routes it (moetopo.routing.rule.groups_survive)
    uneven = drop_selection(model_dir, kept=([0, 1, 2, 4], [0, 1, 2, 4]))
    write_pruned_checkpoint(model_dir, tmp_path / "uneven", uneven)
    assert (config(tmp_path / "uneven")["n_group"], config(tmp_path / "uneven")["topk_group"]) == (
        1,
        1,
    )
    rule = RoutingRule.from_summary(model.layout.routing)
    allowed = np.isin(np.arange(8), [0, 1, 2, 4])
    masked = route(logits, rule, None, bias, allowed)
    collapsed = RoutingRule.from_summary(model.layout.routing | {"n_group": 1, "topk_group": 1})
    pruned = route(logits[:, [0, 1, 2, 4]], collapsed, None, bias[[0, 1, 2, 4]])
    np.testing.assert_array_equal(np.array([0, 1, 2, 4])[pruned.experts], masked.experts)
    # groups kept in one layer and broken in the other: one config cannot hold both
    with pytest.raises(MoetopoError, match=r"equal groups.*\[1\].*\[2\]"):
        write_pruned_checkpoint(model_dir, tmp_path / "bad", drop_selection(model_dir, kept=(
            [1, 3, 4, 6], [0, 1, 2, 4],
        )))  # fmt: skip
    assert not (tmp_path / "bad").exists()


def _masked_v3(logits, bias, kept, top_k, n_group, topk_group):
    """DeepSeek-V3's routing of the unpruned layer with pruned experts unselectable
    (transformers' rule, written out here): groups by their top-2 biased-score sum."""
    scores = 1.0 / (1.0 + np.exp(-logits))
    choice = np.where(np.isin(np.arange(logits.shape[1]), kept), scores + bias, -np.inf)
    grouped = choice.reshape(len(logits), n_group, -1)
    group_score = np.sort(grouped, axis=-1)[..., -2:].sum(axis=-1)
    best = np.argsort(-group_score, axis=1, kind="stable")[:, :topk_group]
    mask = np.zeros_like(group_score, dtype=bool)
    np.put_along_axis(mask, best, True, axis=1)
    choice = np.where(np.repeat(mask, grouped.shape[-1], axis=1), choice, -np.inf)
    experts = np.argsort(-choice, axis=1, kind="stable")[:, :top_k]
    weights = np.take_along_axis(scores, experts, 1)
    weights = weights / weights.sum(axis=1, keepdims=True)
    order = np.argsort(-weights, axis=1, kind="stable")
    return np.take_along_axis(experts, order, 1), np.take_along_axis(weights, order, 1)


def test_group_collapse_end_to_end(tx, tmp_path):
    from moetopo.end_to_end import evaluate_end_to_end

    model_dir = ZOO / FAMILIES["deepseek_v3"]
    selection = drop_selection(model_dir, kept=([4, 5, 6, 7], [0, 1, 2, 3]))
    write_pruned_checkpoint(model_dir, tmp_path / "out", selection)
    assert config(tmp_path / "out")["n_group"] == 1
    result = evaluate_end_to_end(model_dir, selection, text=HELDOUT)
    np.testing.assert_allclose(result.loss, independent_loss(tx, tmp_path / "out"), rtol=1e-5)
    ids = np.frombuffer(HELDOUT.encode("utf-8"), dtype=np.uint8)  # the zoo's byte tokens
    by_ids = evaluate_end_to_end(model_dir, selection, token_ids=ids)
    assert (by_ids.loss, by_ids.kl, by_ids.data) == (result.loss, result.kl, "token_ids")
    # the in-memory model refuses what the checkpoint writer refuses
    broken = drop_selection(model_dir, kept=([1, 3, 4, 6], [0, 1, 2, 4]))
    with pytest.raises(MoetopoError, match="equal groups"):
        evaluate_end_to_end(model_dir, broken, text=HELDOUT)


# ---------------------------------------------------------------------------------------
# Refusals


def test_unequal_expert_counts_are_refused(tmp_path):
    model_dir = ZOO / FAMILIES["mixtral"]
    selection = {"kind": "drop", "layers": {"0": {"kept": [0, 1, 2, 3]}, "1": {"kept": [0, 1, 2]},
                                            "2": {"kept": [0, 1, 2, 3]}}}  # fmt: skip
    with pytest.raises(
        MoetopoError, match=r"same number of experts.*3 experts in layer\(s\) \[1\]"
    ):
        write_pruned_checkpoint(model_dir, tmp_path / "out", selection)
    missing = {"kind": "drop", "layers": {"0": {"kept": [0, 1, 2, 3]}}}  # 1, 2 keep all 8
    with pytest.raises(MoetopoError, match=r"8 experts in layer\(s\) \[1, 2\]"):
        write_pruned_checkpoint(model_dir, tmp_path / "out", missing)
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.glob(".out.*"))


@pytest.mark.parametrize(
    ("layer_entry", "layer", "message"),
    [
        ({"kept": [0, 2, 9, 7]}, "0", r"expert\(s\) \[9\] outside the layer's 8 experts"),
        ({"kept": [0, 1, 2, -1]}, "0", r"expert\(s\) \[-1\] outside"),
        ({"kept": [0, 1, 2, 3]}, "5", r"layer 5, which is not a MoE layer"),
        ({"kept": [0, 2], "redirect": {"1": 0, "3": 9}}, "0", r"\[9\] outside"),
        ({"kept": [0, 2], "redirect": {"1": 3, "3": 2}}, "0", "to a kept one"),
        ({"kept": [0, 2], "redirect": {"1": 0}}, "0", r"pruned expert\(s\) \[3, 4, 5, 6, 7\]"),
        ({"kept": [0, 2, 4, 6], "n_experts": 16}, "0", "made for 16 experts"),
    ],
)
def test_bad_experts_are_refused(tmp_path, layer_entry, layer, message):
    model_dir = ZOO / FAMILIES["mixtral"]
    with pytest.raises(MoetopoError, match=message) as info:
        write_pruned_checkpoint(model_dir, tmp_path / "out", {"layers": {layer: layer_entry}})
    assert "mixtral-e8k2-h64-s0" in str(info.value)
    assert not (tmp_path / "out").exists()


def test_quantised_and_mtp_checkpoints(tmp_path):
    m = random_model(n_experts=8, hidden=128, intermediate=128)
    fp8 = write_family(m, "deepseek_v3", tmp_path / "fp8", dtype="F8_E4M3")
    with pytest.raises(MoetopoError, match="fp8.*not written"):
        write_pruned_checkpoint(fp8, tmp_path / "out", drop_selection(fp8))
    mxfp4 = write_family(random_model(n_experts=8), "gpt_oss", tmp_path / "mxfp4", layout="mxfp4")
    with pytest.raises(MoetopoError, match="mxfp4.*not written"):
        write_pruned_checkpoint(mxfp4, tmp_path / "out", map_selection(mxfp4))
    mtp = write_family(random_model(n_experts=8), "deepseek_v3", tmp_path / "mtp", mtp=True)
    with pytest.raises(MoetopoError, match="multi-token-prediction layer"):
        write_pruned_checkpoint(mtp, tmp_path / "out", drop_selection(mtp))
    write_pruned_checkpoint(mtp, tmp_path / "out", drop_selection(mtp), drop_mtp=True)
    names = raw_tensors(tmp_path / "out")
    assert not any(n.startswith("model.layers.3.") for n in names)
    assert config(tmp_path / "out")["num_nextn_predict_layers"] == 0


def test_interrupted_write_leaves_no_output(tmp_path, monkeypatch):
    model_dir = ZOO / FAMILIES["mixtral"]
    real, calls = export.write_safetensors, []

    def failing(path, tensors, metadata):
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(path, tensors, metadata)

    monkeypatch.setattr(export, "write_safetensors", failing)
    with pytest.raises(KeyboardInterrupt):
        write_pruned_checkpoint(model_dir, tmp_path / "out", drop_selection(model_dir))
    assert not (tmp_path / "out").exists() and list(tmp_path.iterdir()) == []
    monkeypatch.setattr(export, "write_safetensors", real)
    write_pruned_checkpoint(model_dir, tmp_path / "out", drop_selection(model_dir))
    with pytest.raises(MoetopoError, match="already exists"):
        write_pruned_checkpoint(model_dir, tmp_path / "out", map_selection(model_dir))
    write_pruned_checkpoint(model_dir, tmp_path / "out", map_selection(model_dir), overwrite=True)
    assert config(tmp_path / "out")["num_local_experts"] == 8
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_modules_import_without_torch():
    code = (
        "import sys; sys.modules['torch'] = None; sys.modules['transformers'] = None\n"
        "import moetopo.compression.export, moetopo.end_to_end\n"
        "assert 'torch' not in {m for m in sys.modules if sys.modules[m] is not None}\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_the_stage_end_to_end_loss_equals_the_exported_checkpoint(tx, tmp_path):
    """The end-to-end stage's loss of each selection the layer-wise stage chose equals the
    selection the export rule writes, pruned or merged into a checkpoint, loaded fresh
    with transformers and evaluated independently."""
    from moetopo.compression.evaluate import CompressionParams
    from moetopo.end_to_end import evaluate_end_to_end
    from moetopo.stages.compression import layer_compression
    from moetopo.stages.compression_end_to_end import chosen_selection, end_to_end_table

    model_dir = ZOO / FAMILIES["mixtral"]
    model = open_model(model_dir)
    params = CompressionParams(methods=("frequency", "hc_smoe"), keep_fractions=(0.5,))
    captured = str(model_dir / "router_logits.npz")
    tables = [
        layer_compression(model, L, params, captured=captured) for L in model.layout.moe_layers
    ]
    compression = pd.concat([t["compression"] for t in tables], ignore_index=True)
    selections = pd.concat([t["compression_selections"] for t in tables], ignore_index=True)
    stage = end_to_end_table(
        model_dir,
        compression,
        selections,
        model="m",
        windows=4,
        text=HELDOUT,
        evaluate=evaluate_end_to_end,
    ).set_index("method")
    assert (stage.keep == 4).all() and (stage.note == "").all()
    for method in ("frequency", "hc_smoe"):
        chosen = chosen_selection(compression, selections, method, 0.5, "m")
        write_pruned_checkpoint(model_dir, tmp_path / method, chosen)
        expected = independent_loss(tx, tmp_path / method)
        np.testing.assert_allclose(stage.at[method, "loss"], expected, rtol=1e-5)
        assert stage.at[method, "kl"] > 0
    assert stage.full_loss.nunique() == 1
    np.testing.assert_allclose(stage.full_loss.iloc[0], independent_loss(tx, model_dir), rtol=1e-5)


def test_the_prune_command_writes_the_selection_and_refuses_a_bad_one(tmp_path):
    model_dir = ZOO / FAMILIES["mixtral"]
    chosen = tmp_path / "selection.json"
    chosen.write_text(json.dumps(drop_selection(model_dir)))
    command = [sys.executable, "-m", "moetopo", "prune", str(model_dir), str(chosen)]
    done = subprocess.run([*command, str(tmp_path / "out")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert config(tmp_path / "out")["num_local_experts"] == 4
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(drop_selection(model_dir, kept=([0, 1, 2, 9], [0, 1, 2, 3]))))
    command[-1] = str(bad)
    done = subprocess.run([*command, str(tmp_path / "no")], capture_output=True, text=True)
    assert done.returncode == 2 and "9" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "no").exists()


def test_a_group_router_left_with_one_expert_is_refused(tmp_path):
    """transformers' DeepSeek-V3 router takes the top 2 of every group: one survivor
    cannot be loaded, so the writer says so instead of writing a model that fails."""
    model_dir = ZOO / FAMILIES["deepseek_v3"]
    with pytest.raises(MoetopoError, match="at least 2"):
        write_pruned_checkpoint(model_dir, tmp_path / "one", drop_selection(model_dir, ([3], [5])))
    assert not (tmp_path / "one").exists()
