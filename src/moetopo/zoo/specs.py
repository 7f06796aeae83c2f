"""What the zoo contains: one spec per model, and how a spec becomes a transformers config.

The specs vary experts, top-k, width, depth, seed and training length on purpose, so
that held-out losses spread and the conjecture has something to correlate with.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from moetopo.zoo.corpus import BOS_ID, DOMAINS, EOS_ID, VOCAB_SIZE

# moetopo family -> (transformers config class, transformers model class)
FAMILIES: dict[str, tuple[str, str]] = {
    "mixtral": ("MixtralConfig", "MixtralForCausalLM"),
    "qwen2_moe": ("Qwen2MoeConfig", "Qwen2MoeForCausalLM"),
    "deepseek_v3": ("DeepseekV3Config", "DeepseekV3ForCausalLM"),
    "olmoe": ("OlmoeConfig", "OlmoeForCausalLM"),
}
# moetopo family -> (config class, model class) of moetopo.zoo.ctmoe: families transformers
# has no class for, implemented here
OWN_FAMILIES: dict[str, tuple[str, str]] = {"ct_moe": ("CtMoeConfig", "CtMoeForCausalLM")}
AUX_LOSS_COEF = 0.01
BIAS_UPDATE_SPEED = 0.01  # DeepSeek-V3's auxiliary-loss-free balancing step


@dataclass(frozen=True)
class ModelSpec:
    """One base model: architecture and training recipe."""

    id: str
    family: str
    experts: int
    top_k: int
    hidden: int
    layers: int
    expert_inter: int
    steps: int
    seed: int
    heads: int = 4
    kv_heads: int = 2
    shared_inter: int = 0  # qwen2_moe shared expert width; deepseek_v3 uses n_shared * expert_inter
    dense_inter: int = 0  # width of dense (non-MoE) MLP layers, where the family has them
    lr: float = 3e-3
    batch: int = 16
    seq_len: int = 128
    extra: dict[str, Any] = field(default_factory=dict)  # family-specific config keys


@dataclass(frozen=True)
class FineTune:
    """A base model trained further on one domain only: an attention-diff pair."""

    id: str
    base: str
    domain: str
    steps: int
    lr: float = 1e-3
    seed: int = 100


def _common(spec: ModelSpec) -> dict[str, Any]:
    return {
        "vocab_size": VOCAB_SIZE,
        "hidden_size": spec.hidden,
        "num_hidden_layers": spec.layers,
        "num_attention_heads": spec.heads,
        "num_key_value_heads": spec.kv_heads,
        "max_position_embeddings": spec.seq_len,
        "tie_word_embeddings": False,
        "bos_token_id": BOS_ID,
        "eos_token_id": EOS_ID,
        "pad_token_id": None,
        "initializer_range": 0.02,
    }


def config_kwargs(spec: ModelSpec) -> dict[str, Any]:
    """Keyword arguments for the family's transformers config class."""
    kw = _common(spec)
    if spec.family == "mixtral":
        kw |= {
            "intermediate_size": spec.expert_inter,
            "num_local_experts": spec.experts,
            "num_experts_per_tok": spec.top_k,
            "router_aux_loss_coef": AUX_LOSS_COEF,
        }
    elif spec.family == "qwen2_moe":
        kw |= {
            "intermediate_size": spec.dense_inter or 2 * spec.expert_inter,
            "moe_intermediate_size": spec.expert_inter,
            "shared_expert_intermediate_size": spec.shared_inter or spec.expert_inter,
            "num_experts": spec.experts,
            "num_experts_per_tok": spec.top_k,
            "router_aux_loss_coef": AUX_LOSS_COEF,
        }
    elif spec.family == "deepseek_v3":
        head = max(4, spec.hidden // spec.heads // 2)
        kw |= {
            "intermediate_size": spec.dense_inter or 2 * spec.expert_inter,
            "moe_intermediate_size": spec.expert_inter,
            "n_routed_experts": spec.experts,
            "num_experts_per_tok": spec.top_k,
            "n_shared_experts": 1,
            "first_k_dense_replace": 1,
            "n_group": 2,
            "topk_group": 1,
            "routed_scaling_factor": 1.0,
            "norm_topk_prob": True,
            "q_lora_rank": None,
            "kv_lora_rank": 16,
            "qk_rope_head_dim": head,
            "qk_nope_head_dim": head,
            "v_head_dim": 2 * head,
            "num_key_value_heads": spec.heads,
        }
    elif spec.family == "olmoe":
        kw |= {
            "intermediate_size": spec.expert_inter,
            "num_experts": spec.experts,
            "num_experts_per_tok": spec.top_k,
            "router_aux_loss_coef": AUX_LOSS_COEF,
        }
    elif spec.family == "ct_moe":  # Mixtral's keys; CT-MoE's own ones come in ``extra``
        kw |= {
            "intermediate_size": spec.expert_inter,
            "num_local_experts": spec.experts,
            "num_experts_per_tok": spec.top_k,
            "router_aux_loss_coef": AUX_LOSS_COEF,
        }
    else:
        known = sorted(FAMILIES | OWN_FAMILIES)
        raise ValueError(f"unknown zoo family {spec.family!r}; known: {known}")
    return kw | dict(spec.extra)


def make_config(spec: ModelSpec) -> Any:
    """The family's config object (imports transformers or torch lazily)."""
    return getattr(_classes(spec.family), class_names(spec.family)[0])(**config_kwargs(spec))


def class_names(family: str) -> tuple[str, str]:
    """(config class, model class) of a zoo family."""
    return (FAMILIES | OWN_FAMILIES)[family]


def model_class(family: str) -> Any:
    """The family's model class: transformers' own, or moetopo.zoo.ctmoe's (imports
    transformers or torch lazily)."""
    return getattr(_classes(family), class_names(family)[1])


def _classes(family: str) -> Any:
    """The module holding a family's classes."""
    if family in OWN_FAMILIES:
        from moetopo.zoo import ctmoe

        return ctmoe
    import transformers

    return transformers


def spec_record(spec: ModelSpec) -> dict[str, Any]:
    """Hyperparameters as plain JSON for the manifest, with the widths the config implies."""
    kw = config_kwargs(spec)
    shared = {"qwen2_moe": 1, "deepseek_v3": kw.get("n_shared_experts", 0)}.get(spec.family, 0)
    shared_inter = {
        "qwen2_moe": kw.get("shared_expert_intermediate_size", 0),
        "deepseek_v3": spec.expert_inter * shared,
    }.get(spec.family, 0)
    dense_inter = kw["intermediate_size"] if spec.family in ("qwen2_moe", "deepseek_v3") else 0
    record = {k: v for k, v in asdict(spec).items() if k not in ("id", "family")}
    return record | {
        "vocab": kw["vocab_size"],
        "shared_experts": shared,
        "shared_inter": shared_inter,
        "dense_inter": dense_inter,
        "domains": list(DOMAINS),
    }


def _m(id_: str, family: str, **kw: Any) -> ModelSpec:
    return ModelSpec(id=id_, family=family, **kw)


# The default zoo. Steps are chosen so the full build takes about half an hour on 2 cores.
ZOO: tuple[ModelSpec, ...] = (
    _m("mixtral-e8k2-h64-s0", "mixtral", experts=8, top_k=2, hidden=64, layers=3,
       expert_inter=64, steps=900, seed=0),
    _m("mixtral-e4k1-h48-s1", "mixtral", experts=4, top_k=1, hidden=48, layers=2,
       expert_inter=96, steps=350, seed=1),
    _m("mixtral-e16k4-h64-s2", "mixtral", experts=16, top_k=4, hidden=64, layers=3,
       expert_inter=32, steps=700, seed=2),
    _m("qwen2moe-e8k2-h64-s0", "qwen2_moe", experts=8, top_k=2, hidden=64, layers=3,
       expert_inter=48, shared_inter=64, dense_inter=128, steps=900, seed=0,
       extra={"mlp_only_layers": [0]}),
    _m("qwen2moe-e12k3-h48-s1", "qwen2_moe", experts=12, top_k=3, hidden=48, layers=4,
       expert_inter=32, shared_inter=48, dense_inter=96, steps=500, seed=1,
       extra={"decoder_sparse_step": 2}),
    _m("qwen2moe-e4k1-h32-s2", "qwen2_moe", experts=4, top_k=1, hidden=32, layers=2,
       expert_inter=64, shared_inter=32, steps=250, seed=2, heads=2, kv_heads=1),
    _m("dsv3-e8k2-h64-s0", "deepseek_v3", experts=8, top_k=2, hidden=64, layers=3,
       expert_inter=48, dense_inter=128, steps=900, seed=0),
    _m("dsv3-e16k4-h64-s1", "deepseek_v3", experts=16, top_k=4, hidden=64, layers=3,
       expert_inter=32, dense_inter=128, steps=600, seed=1,
       extra={"n_group": 4, "topk_group": 2}),
    _m("dsv3-e4k1-h48-s2", "deepseek_v3", experts=4, top_k=1, hidden=48, layers=3,
       expert_inter=64, dense_inter=96, steps=300, seed=2),
    _m("olmoe-e8k2-h64-s0", "olmoe", experts=8, top_k=2, hidden=64, layers=3,
       expert_inter=64, steps=900, seed=0),
    _m("olmoe-e6k3-h48-s1", "olmoe", experts=6, top_k=3, hidden=48, layers=2,
       expert_inter=48, steps=400, seed=1),
    _m("olmoe-e16k2-h80-s2", "olmoe", experts=16, top_k=2, hidden=80, layers=2,
       expert_inter=48, steps=600, seed=2, lr=2e-3),
    # CT-MoE with a learned collaboration S per layer (moetopo.zoo.ctmoe). Top-3: at top-2
    # the renormalised S of the chosen pair is constant, and message passing trains no S.
    # S_raw learns at 10x the base rate (the paper: 100x a lower base rate).
    _m("ctmoe-e8k3-h64-s0", "ct_moe", experts=8, top_k=3, hidden=64, layers=3,
       expert_inter=48, steps=400, seed=0,
       extra={"routing_scale": 1.5, "collab_scale": 1.0, "s_temp": 1.0, "s_lr_scale": 10.0}),
)  # fmt: skip

TUNED: tuple[FineTune, ...] = (
    FineTune("mixtral-e8k2-h64-s0-ft-prose", base="mixtral-e8k2-h64-s0", domain="prose", steps=300),
    FineTune("olmoe-e8k2-h64-s0-ft-code", base="olmoe-e8k2-h64-s0", domain="code", steps=300),
    FineTune("dsv3-e8k2-h64-s0-ft-prose", base="dsv3-e8k2-h64-s0", domain="prose", steps=300),
)


def quick_zoo(steps: int = 10) -> tuple[tuple[ModelSpec, ...], tuple[FineTune, ...]]:
    """One tiny model per family plus one pair: for tests and smoke runs."""
    tiny = dict(experts=4, top_k=2, hidden=32, layers=2, expert_inter=32, heads=2, kv_heads=1,
                steps=steps, seed=0, batch=4, seq_len=64)  # fmt: skip
    specs = (
        _m("tiny-mixtral", "mixtral", **tiny),
        _m("tiny-qwen2moe", "qwen2_moe", shared_inter=32, dense_inter=64, **tiny),
        _m("tiny-dsv3", "deepseek_v3", dense_inter=64, **tiny),
        _m("tiny-olmoe", "olmoe", **tiny),
    )
    return specs, (FineTune("tiny-mixtral-ft-prose", base="tiny-mixtral", domain="prose",
                            steps=max(1, steps // 2)),)  # fmt: skip


def with_steps(specs: tuple[ModelSpec, ...], steps: int) -> tuple[ModelSpec, ...]:
    """The same zoo with every training length replaced (``--steps``)."""
    return tuple(replace(s, steps=steps) for s in specs)
