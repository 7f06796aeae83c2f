"""Every family spec against checkpoints written independently from the real layouts.

The fixture writers (moetopo.fixtures.writers) follow the published checkpoints and
transformers' modeling code; the specs (moetopo/families/*.toml) must recover from
them exactly the TinyModel that was written: its routers, MoE layers, expert count,
top-k, shared experts and every expert's weights, in every layout.
"""

from __future__ import annotations

import logging
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

from moetopo.checkpoint.model import OpenModel, open_model
from moetopo.errors import NoMoELayersError
from moetopo.families import load_families
from moetopo.families.spec import _check_unambiguous, compile_template
from moetopo.fixtures import TinyModel, random_model, write_checkpoint
from moetopo.fixtures.families import (
    FAMILY_LAYOUTS,
    FAMILY_RECIPES,
    FAMILY_WRITERS,
    family_model,
    write_family,
)

from conftest import gate_rows

SUPPORTED_FAMILIES = (
    "mixtral",
    "phimoe",
    "minimax",
    "qwen2_moe",
    "qwen3_moe",
    "qwen3_next",
    "olmoe",
    "flex_olmo",
    "deepseek_v2",
    "deepseek_v3",
    "kimi_k2",
    "glm4_moe",
    "dots1",
    "ernie4_5_moe",
    "hunyuan_v1_moe",
    "lfm2_moe",
    "jamba",
    "llama4",
    "gpt_oss",
    "granitemoe",
    "granitemoeshared",
    "granitemoehybrid",
    "jetmoe",
    "dbrx",
    "switch_transformers",
    "nllb_moe",
    "gguf",
)
SPEC_OF = {"kimi_k2": "deepseek_v3"}  # Kimi-K2 ships DeepSeek-V3's architecture

SHARED_ROUTER = {"qwen2_moe", "qwen3_next", "gguf"}  # a [1, H] sigmoid gate on the shared expert
RELU = {"switch_transformers", "nllb_moe"}
CASES = [(f, layout) for f in FAMILY_RECIPES for layout in FAMILY_LAYOUTS[f]]
TWINS = [f for f in FAMILY_RECIPES if "fused" in FAMILY_LAYOUTS[f]]


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """Each (family, layout) checkpoint written once per module: (TinyModel, directory)."""
    cache: dict[tuple[str, str], tuple[TinyModel, Path]] = {}

    def get(family: str, layout: str) -> tuple[TinyModel, Path]:
        if (family, layout) not in cache:
            model = family_model(family)
            path = tmp_path_factory.mktemp(f"{family}-{layout}")
            cache[family, layout] = (model, write_family(model, family, path, layout))
        return cache[family, layout]

    return get


def bf16(a: np.ndarray) -> np.ndarray:
    return np.asarray(np.asarray(a, np.float32).astype(ml_dtypes.bfloat16), np.float32)


def expert_matrices(om: OpenModel, layer: int, expert: int) -> dict[str, np.ndarray]:
    """An expert's gate/up/down as [out, in] matrices, however the checkpoint stores them."""
    out = {}
    for role, et in om.layout.layers[layer].experts.items():
        name, lead, offset = et.locate(expert)
        rows = (offset, offset + et.shape[0]) if et.flat else None
        w = om.reader.read(name, lead, rows)
        w = w.T if et.orientation == "in_out" else w
        if role != "expert_gate_up":
            out[role.removeprefix("expert_")] = w
        elif et.packing == "interleaved":
            out["gate"], out["up"] = w[0::2], w[1::2]
        else:
            out["gate"], out["up"] = np.split(w, 2)
    return out


@pytest.mark.parametrize("family,layout", [("jetmoe", "fused"), ("mixtral", "mxfp4")])
def test_a_layout_the_family_has_not_is_refused_before_anything_is_written(
    tmp_path, family, layout
):
    with pytest.raises(ValueError, match=f"{family}: unknown layout '{layout}'"):
        write_family(random_model(n_layers=1, n_experts=4), family, tmp_path / "m", layout)
    assert not (tmp_path / "m").exists()


def test_every_supported_family_has_a_spec_a_writer_and_a_recipe():
    specs = load_families()
    for family in SUPPORTED_FAMILIES:
        assert SPEC_OF.get(family, family) in specs
        assert family in FAMILY_WRITERS
        assert family in FAMILY_RECIPES
    assert set(FAMILY_WRITERS) == set(SUPPORTED_FAMILIES)


def test_every_spec_loads_and_conflicting_templates_are_refused():
    for spec in load_families().values():
        assert spec.templates and spec.description, spec.name
    clash = compile_template("router", "model.layers.{layer}.mlp.gate.weight")
    clash += compile_template("dense_ffn", "model.layers.{layer}.mlp.gate.weight")
    with pytest.raises(ValueError, match="both router and dense_ffn"):
        _check_unambiguous("clash", clash)


@pytest.mark.parametrize(("family", "layout"), CASES)
def test_routers_layers_counts_and_no_warning(written, family, layout):
    model, path = written(family, layout)
    layout_ = open_model(path).layout
    assert layout_.family == SPEC_OF.get(family, family)
    assert layout_.warnings == []  # no placement disagreement, no unmatched tensor
    assert layout_.moe_layers == model.moe_layers
    assert layout_.n_experts == model.n_experts
    assert layout_.top_k == model.top_k
    assert layout_.n_shared_experts == (1 if model.shared_intermediate else 0)
    routers = {n for n, r in layout_.roles.items() if r.role == "router" and not r.mtp}
    assert routers == {layout_.layers[i].router for i in model.moe_layers}
    for i in model.moe_layers:
        assert layout_.logical[layout_.layers[i].router].shape == (model.n_experts, model.hidden)


@pytest.mark.parametrize(("family", "layout"), CASES)
def test_shared_experts_recognised(written, family, layout):
    model, path = written(family, layout)
    layout_ = open_model(path).layout
    for i in model.moe_layers:
        moe = layout_.layers[i]
        if not model.shared_intermediate:
            assert moe.shared == {} and moe.shared_router is None
            continue
        assert "shared_expert_down" in moe.shared
        assert {"shared_expert_gate_up"} <= set(moe.shared) or {
            "shared_expert_gate",
            "shared_expert_up",
        } <= set(moe.shared)
        if family in SHARED_ROUTER:
            assert layout_.logical[moe.shared_router].numel == model.hidden
        else:
            assert moe.shared_router is None


@pytest.mark.parametrize(("family", "layout"), [c for c in CASES if c[1] != "mxfp4"])
def test_expert_weights_read_back_exactly(written, family, layout):
    model, path = written(family, layout)
    om = open_model(path)
    for i in model.moe_layers:
        la = model.all_layers[i]
        for x in (0, model.n_experts - 1):
            got = expert_matrices(om, i, x)
            assert set(got) == ({"up", "down"} if family in RELU else {"gate", "up", "down"})
            for role, w in got.items():
                np.testing.assert_array_equal(w, bf16(getattr(la, role)[x]), err_msg=role)


@pytest.mark.parametrize("family", TWINS)
def test_fused_and_per_expert_twins_agree(written, family):
    model, hub = written(family, "hub")
    _, fused = written(family, "fused")
    a, b = open_model(hub), open_model(fused)
    gates_a, gates_b = gate_rows(a)[0], gate_rows(b)[0]
    for column in ("layer", "expert", "weight", "bias", "selection_bias"):
        np.testing.assert_array_equal(gates_a[column], gates_b[column], err_msg=column)
    routers = np.concatenate([model.all_layers[i].router for i in model.moe_layers])
    np.testing.assert_allclose(gates_a["weight"], routers, rtol=2**-8)
    assert any(et.fused for et in b.layout.layers[model.moe_layers[0]].experts.values())
    for i in model.moe_layers:
        for x in range(model.n_experts):
            got_a, got_b = expert_matrices(a, i, x), expert_matrices(b, i, x)
            for role in got_a:
                np.testing.assert_array_equal(got_a[role], got_b[role])


def test_deepseek_dense_gate_proj_is_never_a_router(written):
    model, path = written("deepseek_v3", "hub")
    layout = open_model(path).layout
    name = "model.layers.0.mlp.gate_proj.weight"
    assert layout.roles[name].role == "dense_ffn"
    assert 0 not in layout.layers and layout.dense_layers == [0]


def test_qwen2_shared_expert_gate_is_never_a_router(written):
    model, path = written("qwen2_moe", "hub")
    layout = open_model(path).layout
    name = "model.layers.1.mlp.shared_expert_gate.weight"
    assert layout.logical[name].shape == (1, model.hidden)
    assert layout.roles[name].role == "shared_expert_router"
    assert layout.layers[1].router == "model.layers.1.mlp.gate.weight"


def test_gguf_dense_and_fused_expert_gates_are_never_routers(written):
    model, path = written("gguf", "hub")
    layout = open_model(path).layout
    assert layout.roles["blk.0.ffn_gate.weight"].role == "dense_ffn"
    assert layout.roles["blk.1.ffn_gate_exps.weight"].role == "expert_gate"
    assert layout.logical["blk.1.ffn_gate_exps.weight"].shape == (8, 32, 64)
    assert layout.layers[1].router == "blk.1.ffn_gate_inp.weight"
    assert layout.layers[1].router_bias == "blk.1.exp_probs_b.bias"
    assert layout.routing["router_bias"] == "selection"


def test_llama4_with_and_without_language_model_prefix(written):
    model, multimodal = written("llama4", "hub")
    _, text = written("llama4", "text")
    mm, tx = open_model(multimodal).layout, open_model(text).layout
    assert mm.layers[1].router == "language_model.model.layers.1.feed_forward.router.weight"
    assert tx.layers[1].router == "model.layers.1.feed_forward.router.weight"
    gate_up = mm.layers[1].experts["expert_gate_up"]
    assert (gate_up.orientation, gate_up.packing) == ("in_out", "halves")
    assert gate_up.shape == (model.hidden, 2 * model.intermediate)
    vision = "vision_model.model.layers.0.self_attn.q_proj.weight"
    assert (mm.roles[vision].role, mm.roles[vision].layer) == ("other", None)
    assert mm.params["inactive_params"] > 0 and tx.params["inactive_params"] == 0
    assert mm.params["activated_params"] == tx.params["activated_params"]


def test_dbrx_flat_experts_are_located_by_row_offset(written):
    model, path = written("dbrx", "hub")
    experts = open_model(path).layout.layers[0].experts
    assert experts["expert_down"].orientation == "in_out"
    name, lead, offset = experts["expert_up"].locate(3)
    assert (name, lead, offset) == ("transformer.blocks.0.ffn.experts.mlp.v1", (), 3 * 32)


def test_jetmoe_attention_router_is_attention(written):
    model, path = written("jetmoe", "hub")
    layout = open_model(path).layout
    assert layout.roles["model.layers.0.self_attention.experts.router.layer.weight"].role == (
        "attn_other"
    )
    assert layout.layers[0].router == "model.layers.0.mlp.router.layer.weight"


def test_encoder_decoder_layers_are_numbered_after_the_encoder(written):
    model, path = written("switch_transformers", "hub")
    layout = open_model(path).layout
    assert [(s["name"], s["first_layer"], s["n_layers"]) for s in layout.stacks] == [
        ("encoder", 0, 4),
        ("decoder", 4, 2),
    ]
    router = "decoder.block.1.layer.2.mlp.router.classifier.weight"
    assert layout.layers[5].router == router


@pytest.mark.parametrize(
    ("family", "overrides"),
    [
        ("deepseek_v3", {"first_k_dense_replace": 0}),
        ("qwen3_moe", {"mlp_only_layers": []}),
        ("jamba", {"expert_layer_offset": 0}),
        ("ernie4_5_moe", {"moe_layer_start_index": 0}),
        ("lfm2_moe", {"num_dense_layers": 2}),
        ("switch_transformers", {"encoder_sparse_step": 1}),
        ("nllb_moe", {"decoder_sparse_step": 1}),
        ("gguf", {"deepseek2.leading_dense_block_count": 0}),
    ],
)
def test_config_disagreeing_with_routers_is_reported(tmp_path, family, overrides):
    model = family_model(family)
    path = write_family(model, family, tmp_path, config_overrides=overrides)
    layout = open_model(path).layout
    assert layout.moe_layers == model.moe_layers  # the routers decide
    assert any("config places MoE layers" in w for w in layout.warnings)


@pytest.mark.parametrize("family", ["deepseek_v3", "glm4_moe", "qwen3_next", "ernie4_5_moe"])
def test_multi_token_prediction_layers_are_set_apart(tmp_path, family):
    model = family_model(family)
    layout = open_model(write_family(model, family, tmp_path, mtp=True)).layout
    assert layout.warnings == []
    assert layout.mtp_layers == [len(model.layers)]
    assert layout.moe_layers == model.moe_layers
    assert layout.params["mtp_params"] > 0


@pytest.mark.parametrize("family", ["deepseek_v3", "kimi_k2", "qwen3_moe"])
def test_fp8_block_scaled_releases(tmp_path, family):
    model = family_model(family)
    om = open_model(write_family(model, family, tmp_path, dtype="F8_E4M3"))
    assert om.layout.warnings == [] and "F8_E4M3" in om.layout.dtypes
    i = model.moe_layers[0]
    got = expert_matrices(om, i, 1)
    for role, w in got.items():
        want = getattr(model.all_layers[i], role)[1]
        np.testing.assert_allclose(w, want, atol=0.07 * np.abs(want).max(), err_msg=role)


def test_per_layer_top_k_lists(tmp_path):
    model = family_model("hunyuan_v1_moe")
    path = write_family(model, "hunyuan_v1_moe", tmp_path, config_overrides={"moe_topk": [1, 2, 3]})
    layout = open_model(path).layout
    assert [layout.layers[i].top_k for i in range(3)] == [1, 2, 3]


def test_unknown_family_is_detected_structurally(tmp_path, caplog):
    """A Mixtral under made-up names: routers found, the guess logged, no dense gate taken."""
    model = random_model(n_experts=8, moe_layers=[1, 2], seed=9)
    tensors = {"model.embed_tokens.weight": model.embed, "lm_head.weight": model.lm_head}
    for i, la in enumerate(model.layers):
        a = f"model.layers.{i}."
        tensors[a + "self_attn.q_proj.weight"] = la.q
        if not la.is_moe:
            tensors[a + "mlp.gate_proj.weight"] = la.dense_gate
            continue
        tensors[a + "sparse_ffn.selector.weight"] = la.router
        for x in range(8):
            tensors[f"{a}sparse_ffn.experts.{x}.w1.weight"] = la.gate[x]
            tensors[f"{a}sparse_ffn.experts.{x}.w3.weight"] = la.up[x]
            tensors[f"{a}sparse_ffn.experts.{x}.w2.weight"] = la.down[x]
    config = {"architectures": ["MadeUpMoEForCausalLM"], "hidden_size": 64, "top_k": 2}
    write_checkpoint(tmp_path, tensors, config)
    with caplog.at_level(logging.WARNING, logger="moetopo.checkpoint.layout"):
        layout = open_model(tmp_path).layout
    assert layout.family == "structural"
    assert layout.moe_layers == [1, 2] and layout.n_experts == 8 and layout.top_k == 2
    assert layout.roles["model.layers.0.mlp.gate_proj.weight"].role != "router"
    assert "model.layers.{layer}.sparse_ffn.selector.weight" in caplog.text
    assert any("structural detection guessed" in w for w in layout.warnings)


def test_dense_granite_raises_naming_the_family(tmp_path):
    model = random_model(n_layers=2, moe_layers=[], seed=3)
    write_family(model, "granitemoehybrid", tmp_path)
    with pytest.raises(NoMoELayersError, match="granitemoehybrid"):
        open_model(tmp_path)


def test_dense_llama_raises_naming_the_guess(tmp_path):
    model = random_model(n_layers=2, moe_layers=[], seed=4)
    write_family(
        model,
        "qwen2_moe",
        tmp_path,
        config_overrides={"architectures": ["LlamaForCausalLM"], "model_type": "llama"},
    )
    with pytest.raises(NoMoELayersError, match="structural"):
        open_model(tmp_path)
