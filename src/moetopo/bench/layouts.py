"""Full-scale checkpoint layouts written as sparse files.

Every tensor has its real name, dtype and shape; only the tensors a run must read
(routers and their biases, optionally embeddings) get random bytes, the rest are
holes that cost no disk. A 700 GB DeepSeek-V3 layout takes a few hundred MB.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import ml_dtypes
import numpy as np

from moetopo.fixtures.writer import Hole, write_safetensors

ROUTER = "router"


@dataclass(frozen=True)
class Spec:
    """A tensor to write: real random bytes (``real``; ``ROUTER`` for router rows with
    structure) or a hole."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    real: bool | str = False


def _fp8(name: str, rows: int, cols: int) -> Iterator[Spec]:
    yield Spec(name, "F8_E4M3", (rows, cols))
    yield Spec(name + "_scale_inv", "F32", (-(-rows // 128), -(-cols // 128)))


def deepseek_v3_config(n_experts: int = 256, n_layers: int = 61, kimi: bool = False) -> dict:
    """config.json of DeepSeek-V3 (or Kimi-K2 with ``kimi=True``) as published."""
    return {
        "architectures": ["DeepseekV3ForCausalLM"],
        "model_type": "kimi_k2" if kimi else "deepseek_v3",
        "hidden_size": 7168,
        "intermediate_size": 18432,
        "moe_intermediate_size": 2048,
        "num_hidden_layers": n_layers,
        "num_attention_heads": 64 if kimi else 128,
        "num_key_value_heads": 64 if kimi else 128,
        "n_shared_experts": 1,
        "n_routed_experts": n_experts,
        "routed_scaling_factor": 2.827 if kimi else 2.5,
        "kv_lora_rank": 512,
        "q_lora_rank": 1536,
        "qk_rope_head_dim": 64,
        "v_head_dim": 128,
        "qk_nope_head_dim": 128,
        "topk_method": "noaux_tc",
        "n_group": 1 if kimi else 8,
        "topk_group": 1 if kimi else 4,
        "num_experts_per_tok": 8,
        "moe_layer_freq": 1,
        "first_k_dense_replace": 1 if kimi else 3,
        "norm_topk_prob": True,
        "scoring_func": "sigmoid",
        "vocab_size": 163840 if kimi else 129280,
        "num_nextn_predict_layers": 0 if kimi else 1,
        "rms_norm_eps": 1e-6,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "quantization_config": {
            "activation_scheme": "dynamic",
            "fmt": "e4m3",
            "quant_method": "fp8",
            "weight_block_size": [128, 128],
        },
    }


def deepseek_v3_tensors(config: dict, real_embeddings: bool = False) -> Iterator[Spec]:
    """Every tensor of a DeepSeek-V3-layout checkpoint, the MTP layer included."""
    h, heads = config["hidden_size"], config["num_attention_heads"]
    vocab, inter, moe_inter = (
        config["vocab_size"],
        config["intermediate_size"],
        config["moe_intermediate_size"],
    )
    q_lora, kv_lora, rope = (
        config["q_lora_rank"],
        config["kv_lora_rank"],
        config["qk_rope_head_dim"],
    )
    nope, v_dim = config["qk_nope_head_dim"], config["v_head_dim"]
    n_layers = config["num_hidden_layers"]
    mtp = config.get("num_nextn_predict_layers", 0)
    yield Spec("model.embed_tokens.weight", "BF16", (vocab, h), real_embeddings)
    for layer in range(n_layers + mtp):
        p = f"model.layers.{layer}."
        yield Spec(p + "input_layernorm.weight", "BF16", (h,), True)
        yield Spec(p + "post_attention_layernorm.weight", "BF16", (h,), True)
        yield from _fp8(p + "self_attn.q_a_proj.weight", q_lora, h)
        yield Spec(p + "self_attn.q_a_layernorm.weight", "BF16", (q_lora,))
        yield from _fp8(p + "self_attn.q_b_proj.weight", heads * (nope + rope), q_lora)
        yield from _fp8(p + "self_attn.kv_a_proj_with_mqa.weight", kv_lora + rope, h)
        yield Spec(p + "self_attn.kv_a_layernorm.weight", "BF16", (kv_lora,))
        yield from _fp8(p + "self_attn.kv_b_proj.weight", heads * (nope + v_dim), kv_lora)
        yield from _fp8(p + "self_attn.o_proj.weight", h, heads * v_dim)
        if layer < config["first_k_dense_replace"]:
            yield from _fp8(p + "mlp.gate_proj.weight", inter, h)
            yield from _fp8(p + "mlp.up_proj.weight", inter, h)
            yield from _fp8(p + "mlp.down_proj.weight", h, inter)
        else:
            yield Spec(p + "mlp.gate.weight", "BF16", (config["n_routed_experts"], h), ROUTER)
            yield Spec(
                p + "mlp.gate.e_score_correction_bias", "F32", (config["n_routed_experts"],), True
            )
            for e in range(config["n_routed_experts"]):
                q = f"{p}mlp.experts.{e}."
                yield from _fp8(q + "gate_proj.weight", moe_inter, h)
                yield from _fp8(q + "up_proj.weight", moe_inter, h)
                yield from _fp8(q + "down_proj.weight", h, moe_inter)
            s = p + "mlp.shared_experts."
            yield from _fp8(s + "gate_proj.weight", moe_inter * config["n_shared_experts"], h)
            yield from _fp8(s + "up_proj.weight", moe_inter * config["n_shared_experts"], h)
            yield from _fp8(s + "down_proj.weight", h, moe_inter * config["n_shared_experts"])
        if layer >= n_layers:
            yield Spec(p + "enorm.weight", "BF16", (h,))
            yield Spec(p + "hnorm.weight", "BF16", (h,))
            yield from _fp8(p + "eh_proj.weight", h, 2 * h)
            yield Spec(p + "shared_head.norm.weight", "BF16", (h,))
            yield Spec(p + "shared_head.head.weight", "BF16", (vocab, h))
            yield Spec(p + "embed_tokens.weight", "BF16", (vocab, h))
    yield Spec("model.norm.weight", "BF16", (h,), True)
    yield Spec("lm_head.weight", "BF16", (vocab, h))


ROUTER_RANK, ROUTER_NOISE = 32, 0.1


def _router(spec: Spec, rng: np.random.Generator) -> np.ndarray:
    """Router rows near a 32-dimensional subspace, plus 10% isotropic noise.

    Trained routers are not isotropic noise; fully random rows in 7168 dimensions put
    every expert at the same distance from every other to within 1%, a regime in which
    exact H1 persistence of 256 points costs ripser 10 to 70 s per source instead of a
    fraction of a second, which would benchmark ripser on noise rather than the workflow.
    """
    n, hidden = spec.shape
    basis = np.linalg.qr(rng.standard_normal((hidden, ROUTER_RANK)))[0]
    rows = rng.standard_normal((n, ROUTER_RANK)) @ basis.T / np.sqrt(ROUTER_RANK)
    rows += ROUTER_NOISE * rng.standard_normal((n, hidden)) / np.sqrt(hidden)
    return rows.astype(ml_dtypes.bfloat16)


def _random(spec: Spec, rng: np.random.Generator) -> np.ndarray:
    if spec.real == ROUTER:
        return _router(spec, rng)
    if spec.name.endswith("_scale_inv"):  # FP8 block scales: positive, like trained ones
        return rng.uniform(0.5, 1.5, spec.shape).astype(np.float32) / 64
    if spec.dtype == "F32":
        return (0.01 * rng.standard_normal(spec.shape)).astype(np.float32)
    if len(spec.shape) == 1:  # norms near one
        return (1 + 0.05 * rng.standard_normal(spec.shape)).astype(ml_dtypes.bfloat16)
    fp8 = spec.dtype == "F8_E4M3"  # unit-scale codes; the block scales carry the size
    scale = 1.0 if fp8 else 1 / np.sqrt(spec.shape[-1])
    out = np.empty(spec.shape, dtype=ml_dtypes.float8_e4m3fn if fp8 else ml_dtypes.bfloat16)
    rows_per = max(1, (1 << 24) // spec.shape[-1])
    for start in range(0, spec.shape[0], rows_per):
        stop = min(spec.shape[0], start + rows_per)
        block = rng.standard_normal((stop - start, *spec.shape[1:]), dtype=np.float32) * scale
        out[start:stop] = block.astype(out.dtype)
    return out


def write_sparse(
    directory: str | Path, config: dict, tensors: list[Spec], n_shards: int, seed: int = 0
) -> Path:
    """Write a sharded checkpoint of ``tensors``; holes for all but the real ones."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    rng = np.random.default_rng(seed)
    total = sum(Hole(t.dtype, t.shape).nbytes for t in tensors)
    per_shard = -(-total // n_shards)
    groups: list[list[Spec]] = [[]]
    filled = 0
    for t in tensors:
        size = Hole(t.dtype, t.shape).nbytes
        if groups[-1] and filled + size > per_shard * len(groups) and len(groups) < n_shards:
            groups.append([])
        groups[-1].append(t)
        filled += size
    names = [f"model-{i + 1:05d}-of-{len(groups):06d}.safetensors" for i in range(len(groups))]
    weight_map = {}
    for shard, group in zip(names, groups, strict=True):
        payload = {t.name: (_random(t, rng) if t.real else Hole(t.dtype, t.shape)) for t in group}
        write_safetensors(directory / shard, payload, {"format": "pt"})
        weight_map.update({t.name: shard for t in group})
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=1))
    return directory


def _gqa_block(p: str, h: int, heads: int, kv: int, d: int) -> Iterator[Spec]:
    """A layer's two norms and grouped-query attention projections, BF16 (Qwen3, Llama-4)."""
    yield Spec(p + "input_layernorm.weight", "BF16", (h,), True)
    yield Spec(p + "post_attention_layernorm.weight", "BF16", (h,), True)
    yield Spec(p + "self_attn.q_proj.weight", "BF16", (heads * d, h))
    yield Spec(p + "self_attn.k_proj.weight", "BF16", (kv * d, h))
    yield Spec(p + "self_attn.v_proj.weight", "BF16", (kv * d, h))
    yield Spec(p + "self_attn.o_proj.weight", "BF16", (h, heads * d))


def qwen3_moe_config() -> dict:
    """config.json of Qwen3-235B-A22B as published."""
    return {
        "architectures": ["Qwen3MoeForCausalLM"],
        "model_type": "qwen3_moe",
        "hidden_size": 4096,
        "intermediate_size": 12288,
        "moe_intermediate_size": 1536,
        "num_hidden_layers": 94,
        "num_attention_heads": 64,
        "num_key_value_heads": 4,
        "head_dim": 128,
        "num_experts": 128,
        "num_experts_per_tok": 8,
        "decoder_sparse_step": 1,
        "mlp_only_layers": [],
        "norm_topk_prob": True,
        "vocab_size": 151936,
        "rms_norm_eps": 1e-6,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
    }


def qwen3_moe_tensors(
    config: dict, real_embeddings: bool = True, real_experts: bool = False
) -> Iterator[Spec]:
    """Every tensor of a Qwen3-MoE checkpoint (BF16, per-expert hub names)."""
    h, heads, kv = (
        config["hidden_size"],
        config["num_attention_heads"],
        config["num_key_value_heads"],
    )
    d, inter, vocab = config["head_dim"], config["moe_intermediate_size"], config["vocab_size"]
    yield Spec("model.embed_tokens.weight", "BF16", (vocab, h), real_embeddings)
    for layer in range(config["num_hidden_layers"]):
        p = f"model.layers.{layer}."
        yield from _gqa_block(p, h, heads, kv, d)
        yield Spec(p + "self_attn.q_norm.weight", "BF16", (d,), True)
        yield Spec(p + "self_attn.k_norm.weight", "BF16", (d,), True)
        yield Spec(p + "mlp.gate.weight", "BF16", (config["num_experts"], h), ROUTER)
        for e in range(config["num_experts"]):
            q = f"{p}mlp.experts.{e}."
            yield Spec(q + "gate_proj.weight", "BF16", (inter, h), real_experts)
            yield Spec(q + "up_proj.weight", "BF16", (inter, h), real_experts)
            yield Spec(q + "down_proj.weight", "BF16", (h, inter), real_experts)
    yield Spec("model.norm.weight", "BF16", (h,), True)
    yield Spec("lm_head.weight", "BF16", (vocab, h))


def llama4_maverick_config() -> dict:
    """config.json of Llama-4-Maverick-17B-128E-Instruct (text config nested, as published)."""
    text = {
        "model_type": "llama4_text",
        "hidden_size": 5120,
        "intermediate_size": 8192,
        "intermediate_size_mlp": 16384,
        "num_hidden_layers": 48,
        "num_attention_heads": 40,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "num_local_experts": 128,
        "num_experts_per_tok": 1,
        "interleave_moe_layer_step": 2,
        "vocab_size": 202048,
        "rms_norm_eps": 1e-5,
    }
    vision = {"model_type": "llama4_vision_model", "hidden_size": 1408, "num_hidden_layers": 34}
    return {
        "architectures": ["Llama4ForConditionalGeneration"],
        "model_type": "llama4",
        "text_config": text,
        "vision_config": vision,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
    }


def llama4_maverick_tensors(config: dict, real_embeddings: bool = True) -> Iterator[Spec]:
    """Every text tensor of Llama-4-Maverick (experts fused, MoE every 2nd layer) and a
    vision tower stand-in under its real prefixes."""
    t = config["text_config"]
    h, heads, kv, d = (
        t["hidden_size"],
        t["num_attention_heads"],
        t["num_key_value_heads"],
        t["head_dim"],
    )
    inter, dense, n_experts = (
        t["intermediate_size"],
        t["intermediate_size_mlp"],
        t["num_local_experts"],
    )
    step = t["interleave_moe_layer_step"]
    lm = "language_model.model."
    yield Spec(lm + "embed_tokens.weight", "BF16", (t["vocab_size"], h), real_embeddings)
    for layer in range(t["num_hidden_layers"]):
        p = f"{lm}layers.{layer}."
        yield from _gqa_block(p, h, heads, kv, d)
        f = p + "feed_forward."
        if layer % step == step - 1:
            yield Spec(f + "router.weight", "BF16", (n_experts, h), ROUTER)
            yield Spec(f + "experts.gate_up_proj", "BF16", (n_experts, h, 2 * inter))
            yield Spec(f + "experts.down_proj", "BF16", (n_experts, inter, h))
            yield Spec(f + "shared_expert.gate_proj.weight", "BF16", (inter, h))
            yield Spec(f + "shared_expert.up_proj.weight", "BF16", (inter, h))
            yield Spec(f + "shared_expert.down_proj.weight", "BF16", (h, inter))
        else:
            yield Spec(f + "gate_proj.weight", "BF16", (dense, h))
            yield Spec(f + "up_proj.weight", "BF16", (dense, h))
            yield Spec(f + "down_proj.weight", "BF16", (h, dense))
    yield Spec(lm + "norm.weight", "BF16", (h,), True)
    yield Spec("language_model.lm_head.weight", "BF16", (t["vocab_size"], h))
    v = config["vision_config"]
    for layer in range(v["num_hidden_layers"]):
        p = f"vision_model.model.layers.{layer}."
        yield Spec(p + "self_attn.q_proj.weight", "BF16", (v["hidden_size"], v["hidden_size"]))
        yield Spec(p + "mlp.fc1.weight", "BF16", (4 * v["hidden_size"], v["hidden_size"]))
        yield Spec(p + "mlp.fc2.weight", "BF16", (v["hidden_size"], 4 * v["hidden_size"]))
    yield Spec("multi_modal_projector.linear_1.weight", "BF16", (h, v["hidden_size"]))


FULL_SCALE = {
    # name: (config, tensors, shards as published)
    "deepseek-v3": (lambda: deepseek_v3_config(), deepseek_v3_tensors, 163),
    "kimi-k2": (lambda: deepseek_v3_config(n_experts=384, kimi=True), deepseek_v3_tensors, 61),
    "qwen3-235b-a22b": (qwen3_moe_config, qwen3_moe_tensors, 118),
    "llama4-maverick": (llama4_maverick_config, llama4_maverick_tensors, 55),
}


def write_full_scale(name: str, directory: str | Path, seed: int = 0) -> Path:
    """One of the FULL_SCALE layouts, with real router and embedding bytes."""
    make_config, tensors, shards = FULL_SCALE[name]
    config = make_config()
    return write_sparse(
        directory, config, list(tensors(config, real_embeddings=True)), shards, seed
    )


def moe_layer_count(name: str) -> int:
    """MoE layers of a FULL_SCALE layout as published (DeepSeek-V3's MTP layer included)."""
    make_config, tensors, _ = FULL_SCALE[name]
    return sum(spec.real == ROUTER for spec in tensors(make_config()))


def reduced(name: str, divisor: int) -> tuple[dict, list[Spec]]:
    """A FULL_SCALE layout narrowed ``divisor`` times (hidden, expert and dense widths,
    ranks), with its full expert count and routing rule, one MoE layer, a 32k vocabulary
    and real bytes in every tensor: the pipeline's per-layer costs measured on it, at two
    divisors, extrapolate to the published widths."""
    make_config, tensors, _ = FULL_SCALE[name]
    config = make_config()
    text = config.get("text_config", config)
    for key in ("hidden_size", "intermediate_size", "moe_intermediate_size",
                "intermediate_size_mlp", "q_lora_rank", "kv_lora_rank"):  # fmt: skip
        if key in text:
            text[key] //= divisor
    text["vocab_size"] = 32768
    if "first_k_dense_replace" in text:  # DeepSeek-V3, Kimi-K2
        text["num_hidden_layers"] = text["first_k_dense_replace"] + 1
        text["num_nextn_predict_layers"] = 0
    elif "interleave_moe_layer_step" in text:  # Llama-4: MoE every step-th layer
        text["num_hidden_layers"] = text["interleave_moe_layer_step"]
        config["vision_config"]["num_hidden_layers"] = 1
    else:
        text["num_hidden_layers"] = 1
    specs = [s if s.real == ROUTER else replace(s, real=True) for s in tensors(config)]
    return config, specs
