"""Attention diff, scaffold, cross-reference and pooling on planted base/tuned pairs."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import ml_dtypes
import numpy as np
import pandas as pd
import pytest

from moetopo.artefacts import gather_tables, read_table, write_table
from moetopo.checkpoint.model import open_model
from moetopo.diff.rows import RowMeasure, Span, row_changes
from moetopo.errors import PairMismatchError
from moetopo.fixtures import FAMILY_WRITERS, plant_groups, random_model, write_family
from moetopo.fixtures.writer import write_checkpoint
from moetopo.fixtures.writers.emit import Emitter
from moetopo.geometry.distances import pairs_table, router_distances
from moetopo.stages.attention_diff import check_pair, diff_layers
from moetopo.stages.clusters import cluster_tables
from moetopo.stages.crossref import crossref_table
from moetopo.stages.pairs_summary import PairTables, pairs_summary
from moetopo.stages.scaffold import scaffold_table

from conftest import SNAKEFILE

ROOT = Path(__file__).resolve().parents[1]
# q and o moved in layers 1 and 3, k in 3 as well, only k in 2: the scaffold is {1}.
PLANTED = {1: "qo", 2: "k", 3: "qko"}


def bump(array: np.ndarray, rows=slice(None), seed: int = 0, scale: float = 0.05) -> np.ndarray:
    """``array`` with ``rows`` moved by ``scale`` of its RMS (far above BF16 rounding)."""
    out = np.array(array, dtype=np.float32)
    rng = np.random.default_rng(seed)
    rms = float(np.sqrt(np.mean(out**2)))
    out[rows] += scale * rms * rng.standard_normal(out[rows].shape).astype(np.float32)
    return out


def planted(model, plan: dict[int, str] = PLANTED, seed: int = 1):
    tuned = copy.deepcopy(model)
    for layer, projections in plan.items():
        for i, p in enumerate(projections):
            la = tuned.layers[layer]
            setattr(la, p, bump(getattr(la, p), seed=seed + 10 * layer + i))
    return tuned


def write_edited(
    directory: Path,
    model,
    family: str,
    edits: dict[str, Callable[[np.ndarray], np.ndarray | None]] | None = None,
    add: dict[str, np.ndarray] | None = None,
) -> Path:
    """Write ``family`` with some tensors edited (None drops one) or added: for tensors a
    TinyModel does not hold, such as MLA's factors."""
    emitter = Emitter()
    config = FAMILY_WRITERS[family](model, emitter, "hub")
    for name, edit in (edits or {}).items():
        value = edit(np.asarray(emitter.tensors[name], dtype=np.float32))
        if value is None:
            del emitter.tensors[name]
        else:
            emitter.tensors[name] = value.astype(ml_dtypes.bfloat16)
    for name, value in (add or {}).items():
        emitter.tensors[name] = value.astype(ml_dtypes.bfloat16)
    write_checkpoint(directory, emitter.tensors, config)
    return directory


# The planted shifts are a few percent of a row: a tenth of the row norm (the default) would
# miss them, so these tests use one hundredth.
FINE = RowMeasure("l1", 0.01, "relative")


def diff_pair(base_dir, tuned_dir, layers=None, measure=None, chunk_bytes=256 << 20):
    base, tuned = open_model(base_dir), open_model(tuned_dir)
    check_pair(base, tuned, ("base", "tuned"))
    layers = list(range(base.layout.n_layers)) if layers is None else layers
    return diff_layers(base, tuned, layers, measure or FINE, chunk_bytes)


def fractions(attention: pd.DataFrame) -> dict[tuple[int, str], float]:
    return {(r.layer, r.projection): r.shifted_fraction for r in attention.itertuples()}


@pytest.mark.parametrize(
    "family,dtype",
    [("mixtral", "BF16"), ("qwen2_moe", "BF16"), ("dbrx", "BF16"), ("gguf", "BF16"),
     ("mixtral", "F8_E4M3"), ("mixtral", "F32")],
)  # fmt: skip
def test_planted_scaffold_is_exactly_layer_one(tmp_path, family, dtype):
    moe = [1, 2, 3] if family == "gguf" else None  # gguf: a dense first layer too
    base = random_model(n_layers=4, moe_layers=moe, seed=3)
    write_family(base, family, tmp_path / "base", dtype=dtype)
    write_family(planted(base), family, tmp_path / "tuned", dtype=dtype)
    diff = diff_pair(tmp_path / "base", tmp_path / "tuned")
    found = fractions(diff.attention)
    for layer in range(4):
        for p in "qkvo":
            assert found[layer, p] == (1.0 if p in PLANTED.get(layer, "") else 0.0), (layer, p)
    scaffold = scaffold_table(diff.attention, 4)
    assert scaffold.layer[scaffold.is_scaffold].tolist() == [1]
    assert not scaffold.is_scaffold[3]  # q and o moved, but k moved too
    assert (diff.moe.relative_change == 0).all()  # experts and routers untouched


@pytest.mark.parametrize(
    "family,dtype",
    [("mixtral", "BF16"), ("deepseek_v3", "F8_E4M3"), ("gpt_oss", "BF16"), ("dbrx", "BF16")],
)
def test_identical_models_give_zero_shift_everywhere(tmp_path, family, dtype):
    model = random_model(n_layers=3, moe_layers=[1, 2] if family == "deepseek_v3" else None)
    layout = "mxfp4" if family == "gpt_oss" else "hub"
    for side in ("base", "tuned"):
        write_family(model, family, tmp_path / side, layout=layout, dtype=dtype)
    for measure in ("l1", "l2", "cosine"):
        diff = diff_pair(tmp_path / "base", tmp_path / "tuned", measure=RowMeasure(measure, 0.0))
        for table in (diff.attention, diff.moe):
            assert len(table) and (table.shifted_rows == 0).all()
            assert (table.max_shift == 0).all() and (table.relative_change == 0).all()
    experts = diff.moe[diff.moe.kind == "expert"]
    assert len(experts) == len(model.moe_layers) * model.n_experts


def test_mla_maps_q_k_v_rows_by_spec(tmp_path):
    """q = q_a + q_b rows; k = kv_a_proj_with_mqa + each head's nope rows of kv_b; v = the
    rest of kv_b; o = o_proj (4 heads, nope 16, rope 8, v 16, q_lora 32, kv_lora 16)."""
    model = random_model(n_layers=4, moe_layers=[1, 2, 3], seed=2)
    heads, nope, v_dim = 4, 16, 16
    per_head = np.arange(heads * (nope + v_dim)) % (nope + v_dim)
    a = "model.layers.{}.self_attn."
    write_edited(tmp_path / "base", model, "deepseek_v3")
    write_edited(
        tmp_path / "tuned",
        model,
        "deepseek_v3",
        {
            a.format(1) + "q_b_proj.weight": bump,
            a.format(2) + "kv_b_proj.weight": lambda w: bump(w, per_head < nope),
            a.format(3) + "kv_b_proj.weight": lambda w: bump(w, per_head >= nope),
            a.format(0) + "o_proj.weight": bump,
        },
    )
    diff = diff_pair(tmp_path / "base", tmp_path / "tuned")
    table = diff.attention.set_index(["layer", "projection"])
    rows = table.xs(0, level="layer").rows.to_dict()
    assert rows == {"q": 32 + heads * (nope + 8), "k": 16 + 8 + heads * nope, "v": 64, "o": 64}
    shifted = table.shifted_rows.unstack().loc[:, list("qkvo")]
    assert shifted.loc[0].tolist() == [0, 0, 0, 64]
    assert shifted.loc[1].tolist() == [heads * (nope + 8), 0, 0, 0]  # q_b only
    assert shifted.loc[2].tolist() == [0, heads * nope, 0, 0]  # k_nope rows only
    assert shifted.loc[3].tolist() == [0, 0, heads * v_dim, 0]  # v rows only


@pytest.mark.parametrize("family", ["dbrx", "minimax"])
def test_fused_qkv_perturbation_in_q_part_shows_as_q_only(tmp_path, family):
    """DBRX's Wqkv is [q; k; v]; MiniMax's lightning qkv_proj is [q_h; k_h; v_h] per head."""
    model = random_model(n_layers=2, seed=7)  # 4 heads of 16, 2 kv heads
    if family == "dbrx":
        name, q_rows = "transformer.blocks.1.norm_attn_norm.attn.Wqkv.weight", np.arange(64)
        v_rows = np.arange(96, 128)
    else:  # layer 1 is a lightning-attention layer
        name = "model.layers.1.self_attn.qkv_proj.weight"
        q_rows = np.flatnonzero(np.arange(192) % 48 < 16)
        v_rows = np.flatnonzero(np.arange(192) % 48 >= 32)
    write_edited(tmp_path / "base", model, family)
    write_edited(tmp_path / "q", model, family, {name: lambda w: bump(w, q_rows)})
    write_edited(tmp_path / "v", model, family, {name: lambda w: bump(w, v_rows[::2])})
    q = fractions(diff_pair(tmp_path / "base", tmp_path / "q").attention)
    assert [q[1, p] for p in "qkvo"] == [1.0, 0.0, 0.0, 0.0]
    v = fractions(diff_pair(tmp_path / "base", tmp_path / "v").attention)
    assert [v[1, p] for p in "qkvo"] == [0.0, 0.0, 0.5, 0.0]
    assert all(q[0, p] == 0 and v[0, p] == 0 for p in "qkvo")


def tuned_redundancy(tuned_dir: Path, threshold_specs: list[str], absolute: float):
    """The clusters stage's redundancy of the tuned model's router_l1 distances."""
    model = open_model(tuned_dir)
    distances = pd.concat(
        [
            pd.DataFrame(pairs_table(layer, router_distances(model.reader.read(moe.router)))).query(
                "source == 'router_l1'"
            )
            for layer, moe in model.layout.layers.items()
        ]
    )
    _, redundancy = cluster_tables(distances, threshold_specs, {"router_l1": [absolute]})
    return redundancy


def test_routing_dominated_exactly_where_scaffold_meets_redundancy(tmp_path):
    # Layer 0 dense; scaffolds at 0, 1, 2; all experts near-duplicates in 1 and 3.
    base = random_model(n_layers=4, moe_layers=[1, 2, 3], seed=11)
    tuned = planted(base, {0: "qo", 1: "qo", 2: "qo"})
    for layer in (1, 3):
        plant_groups(tuned.layers[layer], [list(range(tuned.n_experts))], noise=1e-3, seed=layer)
    write_family(base, "qwen2_moe", tmp_path / "base")
    write_family(tuned, "qwen2_moe", tmp_path / "tuned")
    diff = diff_pair(tmp_path / "base", tmp_path / "tuned")
    scaffold = scaffold_table(diff.attention, 4)
    assert scaffold.layer[scaffold.is_scaffold].tolist() == [0, 1, 2]
    redundancy = tuned_redundancy(tmp_path / "tuned", ["r0.5"], absolute=1.0)
    table, warnings = crossref_table(scaffold, diff.moe, redundancy, [1, 2, 3], "router_l1", "1")
    assert table.layer[table.routing_dominated].tolist() == [1]
    assert table.is_moe.tolist() == [False, True, True, True]
    assert table.redundancy.isna().tolist() == [True, False, False, False]
    assert table.redundancy[1] == 1.0 and table.redundancy[2] == 0.0 and table.redundancy[3] == 1.0
    assert not warnings
    again, _ = crossref_table(scaffold, diff.moe, redundancy, [1, 2, 3], "router_l1", 1.0)
    pd.testing.assert_frame_equal(again, table)  # a number names the absolute threshold
    # The fine-tune moved router and experts of the planted layers, neither elsewhere.
    assert table.router_change[[1, 3]].gt(0).all() and table.router_change[2] == 0
    assert table.expert_change[[1, 3]].gt(0).all() and table.expert_change[2] == 0
    _, warnings = crossref_table(scaffold, diff.moe, redundancy, [1, 2, 3], "router_l1", "r0.5")
    assert "cannot exceed" in warnings[0]
    with pytest.raises(Exception, match="available: router_l1@1, router_l1@r0.5"):
        crossref_table(scaffold, diff.moe, redundancy, [1, 2, 3], "router_l1", "q0.1")


def test_mismatched_pair_is_refused_naming_first_differing_tensors(tmp_path):
    base = random_model(n_layers=4, seed=1)
    write_family(base, "mixtral", tmp_path / "base")
    wider = random_model(n_layers=4, n_kv_heads=4, seed=1)
    write_family(wider, "mixtral", tmp_path / "gqa")
    with pytest.raises(PairMismatchError) as caught:
        diff_pair(tmp_path / "base", tmp_path / "gqa")
    message = str(caught.value)
    assert "'model.layers.0.self_attn.k_proj.weight': [32, 64] in " in message
    assert "model-00001-of-00002.safetensors vs [64, 64]" in message
    assert "model.layers.0.self_attn.v_proj.weight" in message
    assert "model.layers.2.self_attn.k_proj.weight" in message
    assert "(and 3 more)" in message  # layers 2 and 3: 8 differing tensors, the first 5 listed
    write_family(base, "qwen2_moe", tmp_path / "qwen")
    with pytest.raises(PairMismatchError, match="family: mixtral vs qwen2_moe"):
        diff_pair(tmp_path / "base", tmp_path / "qwen")
    write_family(random_model(n_layers=3, seed=1), "mixtral", tmp_path / "deeper")
    with pytest.raises(PairMismatchError, match="layer count: 4 vs 3"):
        diff_pair(tmp_path / "base", tmp_path / "deeper")


def test_tensor_in_one_model_only_is_listed_not_skipped_silently(tmp_path):
    model = random_model(n_layers=2, seed=1)
    v = "model.layers.1.self_attn.v_proj.weight"
    extra = "model.layers.0.self_attn.extra_proj.weight"
    write_edited(tmp_path / "base", model, "mixtral")
    write_edited(
        tmp_path / "tuned", model, "mixtral", {v: lambda w: None}, {extra: np.ones((2, 64))}
    )
    base, tuned = open_model(tmp_path / "base"), open_model(tmp_path / "tuned")
    pair = check_pair(base, tuned, ("b", "t"))
    assert pair.only_in_base == [v] and pair.only_in_tuned == [extra]
    diff = diff_layers(base, tuned, [0, 1], FINE)
    assert (1, "v") not in fractions(diff.attention)
    assert any("missing from the tuned model" in w for w in diff.warnings)
    path = tmp_path / "diff.parquet"
    write_table(diff.attention, path, "attention_diff", extra={"pair": pair.metadata([0, 1], [])})
    meta = read_table(path)[1]["pair"]
    assert meta["only_in_base"] == [v] and meta["only_in_tuned"] == [extra]


def test_pooling_three_pairs_with_scaffold_at_same_relative_depth(tmp_path):
    pairs = []
    for i, (n_layers, scaffold_layer) in enumerate([(4, 1), (8, 2), (4, 1)]):
        base = random_model(n_layers=n_layers, seed=20 + i)
        write_family(base, "mixtral", tmp_path / f"b{i}")
        write_family(planted(base, {scaffold_layer: "qo"}), "mixtral", tmp_path / f"t{i}")
        diff = diff_pair(tmp_path / f"b{i}", tmp_path / f"t{i}")
        pairs.append(PairTables(f"p{i}", diff.attention, scaffold_table(diff.attention, n_layers)))
    summary = pairs_summary(pairs, depth_bins=10, n_resamples=999)
    depth = summary[summary.scope == "depth"].set_index("depth_low")
    assert depth.estimate[0.3] == 1.0 and depth.n_pairs[0.3] == 3
    assert (depth.drop(index=0.3).estimate == 0).all()
    pooled = summary[(summary.scope == "projection") & (summary.statistic == "shifted_fraction")]
    pooled = pooled.set_index("projection")
    for p in "qo":
        assert pooled.ci_low[p] > 0 and pooled.n_pairs[p] == 3, pooled.loc[p].reason
    assert pooled.estimate["k"] == 0 and pooled.estimate["v"] == 0
    one = pairs_summary(pairs[:1], n_resamples=999)
    assert one.reason.str.contains("one pair: no interval").all() and one.ci_low.isna().all()


def test_row_measures_match_their_definitions():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((37, 300)).astype(np.float32)
    y = x + 0.1 * rng.standard_normal(x.shape).astype(np.float32)
    y[3] = 0.0
    d = (y - x).astype(np.float64)
    change, ref, diff_sq, base_sq = row_changes(x, y, "l1")
    np.testing.assert_allclose(change, np.abs(d).sum(1), rtol=1e-5)
    np.testing.assert_allclose(ref, np.abs(x).sum(1), rtol=1e-5)
    np.testing.assert_allclose(diff_sq, (d**2).sum(1), rtol=1e-5)
    np.testing.assert_allclose(base_sq, (x.astype(np.float64) ** 2).sum(1), rtol=1e-5)
    change, ref, _, _ = row_changes(x, y, "l2")
    np.testing.assert_allclose(change, np.linalg.norm(d, axis=1), rtol=1e-5)
    change, ref, _, _ = row_changes(x, y, "cosine")
    cos = (x * y).sum(1) / np.linalg.norm(x, axis=1) / np.maximum(np.linalg.norm(y, axis=1), 1e-30)
    expected = np.where(np.linalg.norm(y, axis=1) > 0, 1 - cos, 1.0)
    np.testing.assert_allclose(change, expected, atol=1e-6)
    assert (ref == 1).all()
    bf16 = x.astype(ml_dtypes.bfloat16), y.astype(ml_dtypes.bfloat16)  # widened exactly
    raw = row_changes(*bf16, "l1")
    direct = row_changes(*(a.astype(np.float32) for a in bf16), "l1")
    for found, expected in zip(raw, direct, strict=True):
        np.testing.assert_array_equal(found, expected)


def test_threshold_absolute_or_relative_to_row_norm(tmp_path):
    base = random_model(n_layers=1, seed=5)
    tuned = copy.deepcopy(base)
    big = np.zeros_like(tuned.layers[0].q)
    big[:32] = 10.0 * np.abs(tuned.layers[0].q[:32])  # rows 0-31: changed by 10x their norm
    big[32:] = 5e-3 * np.abs(tuned.layers[0].q[32:])  # rows 32-63: by 0.5% of it
    tuned.layers[0].q = tuned.layers[0].q + big
    write_family(base, "mixtral", tmp_path / "b", dtype="F32")
    write_family(tuned, "mixtral", tmp_path / "t", dtype="F32")
    relative = fractions(diff_pair(tmp_path / "b", tmp_path / "t", measure=FINE).attention)
    assert relative[0, "q"] == 0.5  # 1% relative threshold: 10x shifts, 0.5% does not
    loose = RowMeasure("l1", 0.0, "absolute")
    assert (
        fractions(diff_pair(tmp_path / "b", tmp_path / "t", measure=loose).attention)[0, "q"] == 1
    )
    tight = RowMeasure("l1", 1e6, "absolute")
    assert (
        fractions(diff_pair(tmp_path / "b", tmp_path / "t", measure=tight).attention)[0, "q"] == 0
    )


def test_tiny_chunks_and_per_layer_parts_give_the_same_tables(tmp_path):
    base = random_model(n_layers=4, seed=9)
    write_family(base, "dbrx", tmp_path / "b")
    write_family(planted(base), "dbrx", tmp_path / "t")
    whole = diff_pair(tmp_path / "b", tmp_path / "t")
    tiny = diff_pair(tmp_path / "b", tmp_path / "t", chunk_bytes=4 * 3 * 64 * 2)  # 3 rows
    pd.testing.assert_frame_equal(whole.attention, tiny.attention, rtol=1e-9)
    pd.testing.assert_frame_equal(whole.moe, tiny.moe, rtol=1e-9)
    b, t = open_model(tmp_path / "b"), open_model(tmp_path / "t")
    pair = check_pair(b, t, ("b", "t"))
    paths = []
    for layer in range(4):
        layers = [layer]
        part = diff_layers(b, t, layers, FINE)
        paths.append(tmp_path / f"{layer}.parquet")
        write_table(
            part.attention,
            paths[-1],
            "attention_diff",
            extra={"pair": pair.metadata(layers, part.not_compared)},
        )
    gather_tables(paths, tmp_path / "all.parquet")
    gathered, meta = read_table(tmp_path / "all.parquet")
    assert meta["pair"]["layers"] == [0, 1, 2, 3] and meta["pair"]["n_layers"] == 4
    expected = whole.attention.sort_values(["layer", "projection"], ignore_index=True)
    pd.testing.assert_frame_equal(gathered, expected, check_dtype=False)


def test_span_slots_follow_a_repeating_pattern():
    span = Span("kv", 0, 12, ((0, 2, 5), (2, 3, 7)), 3)
    assert span.slots(1, 8).tolist() == [5, 7, 5, 5, 7, 5, 5]
    assert Span.whole("x", 4, 9, 2).slots(4, 9) == 2


@pytest.mark.workflow
def test_workflow_runs_a_pair_end_to_end(tmp_path):
    base = random_model(n_layers=3, moe_layers=[1, 2], n_experts=4, seed=30)
    tuned = planted(base, {1: "qo", 2: "k"})
    write_family(base, "qwen2_moe", tmp_path / "models" / "base", n_shards=1)
    write_family(tuned, "qwen2_moe", tmp_path / "models" / "tuned", n_shards=1)
    (tmp_path / "models.tsv").write_text(
        "model\tpath\n"
        f"base\t{tmp_path / 'models' / 'base'}\n"
        f"tuned\t{tmp_path / 'models' / 'tuned'}\n"
    )
    (tmp_path / "pairs.tsv").write_text("base\ttuned\nbase\ttuned\n")
    (tmp_path / "quick.yaml").write_text(
        f"models: {tmp_path / 'models.tsv'}\npairs: {tmp_path / 'pairs.tsv'}\n"
        "geometry: {sources: [router_l1]}\nprobe: {routing_tokens: 64}\n"
        "cohomology: {hodge_signal: router_l1}\n"
        "attention_diff: {threshold: 0.01}\n"
    )
    config = [str(ROOT / "config" / "config.yaml"), str(tmp_path / "quick.yaml")]
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(SNAKEFILE)]
    command += ["--directory", str(tmp_path), "--cores", "2", "--configfile", *config]
    done = subprocess.run(
        command, capture_output=True, text=True, env=os.environ | {"PYTHONPATH": ""}
    )
    assert done.returncode == 0, done.stderr[-3000:]
    pair = tmp_path / "results" / "pairs" / "base--tuned"
    assert sorted(p.name for p in (pair / "attention_diff").iterdir()) == [
        "0.parquet",
        "1.parquet",
        "2.parquet",
    ]
    scaffold, _ = read_table(pair / "scaffold.parquet")
    assert scaffold.is_scaffold.tolist() == [False, True, False]
    crossref, meta = read_table(pair / "crossref.parquet")
    assert crossref.is_moe.tolist() == [False, True, True]
    assert meta["pair"]["moe_layers"] == [1, 2] and "cannot exceed" in meta["warnings"][0]
    summary, meta = read_table(tmp_path / "results" / "pairs" / "summary.parquet")
    assert meta["pairs"] == ["base--tuned"] and summary.ci_low.isna().all()
