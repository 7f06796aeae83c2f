"""A small CT-MoE language model (torch), the zoo's checkpoint with a learned collaboration S.

CT-MoE ("Learning Expert Collaboration Topology in Mixture-of-Experts Language Models",
Maor) gives every MoE layer a learned parameter ``S_raw`` [E, E] and reads it as

    S = softmax over the off-diagonal of each row of ((S_raw + S_rawᵀ) / 2) / s_temp

(row-stochastic, zero diagonal). S acts twice. Routing: ``routing_scale`` × the column
sums of S are added to the router logits (its row sums are all 1 and would cancel in the
softmax). Message passing: once the k chosen experts have run, each chosen expert's
output y_a gains ``collab_scale`` Σ_b S̃_ab y_b, S̃ being S restricted to the chosen
experts with its rows renormalised; the routing weights then combine them. At k = 2, S̃
is [[0, 1], [1, 0]] whatever S is, so message passing trains S only from k = 3.

Transformers has no such class, so this module is the model: Mixtral's decoder (RMSNorm,
rotary grouped-query attention, SwiGLU experts, softmax top-k routing renormalised over
the k), saved under Mixtral's hub names (``block_sparse_moe.experts.N.w1/w2/w3``,
``block_sparse_moe.gate.weight``) plus ``block_sparse_moe.collaboration`` (S_raw) and
``block_sparse_moe.gate.bias``: the routing bias folded into the router at save time, as
inference uses it, so a reader that knows nothing of CT-MoE (moetopo's routing stage,
the router-logit capture) routes it as the model does. ``config.json`` names
``CtMoeForCausalLM`` / ``ct_moe``, moetopo's ``ct_moe`` family.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

ARCHITECTURE = "CtMoeForCausalLM"
MODEL_TYPE = "ct_moe"


@dataclass
class CtMoeConfig:
    """Mixtral's config keys plus CT-MoE's topology ones (the paper's defaults)."""

    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    intermediate_size: int
    num_local_experts: int
    num_experts_per_tok: int
    max_position_embeddings: int
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    pad_token_id: int | None = None
    tie_word_embeddings: bool = False
    initializer_range: float = 0.02
    rms_norm_eps: float = 1e-5
    rope_theta: float = 1e6
    router_aux_loss_coef: float = 0.01
    routing_scale: float = 1.5  # column-sum routing bias multiplier
    collab_scale: float = 1.0  # message-passing residual amplitude
    s_temp: float = 1.0  # softmax temperature of S
    s_lr_scale: float = 100.0  # S_raw's learning rate multiplier

    def to_dict(self) -> dict[str, Any]:
        return {"architectures": [ARCHITECTURE], "model_type": MODEL_TYPE, **asdict(self)}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> CtMoeConfig:
        if values.get("model_type") != MODEL_TYPE:
            raise ValueError(f"model_type {values.get('model_type')!r} is not {MODEL_TYPE!r}")
        return cls(**{f.name: values[f.name] for f in fields(cls) if f.name in values})


def collaboration_matrix(raw: torch.Tensor, temperature: float) -> torch.Tensor:
    """CT-MoE's S from S_raw: symmetrise, mask the diagonal, softmax each row."""
    logits = (raw + raw.T) / (2 * temperature)
    eye = torch.eye(raw.shape[0], dtype=torch.bool, device=raw.device)
    return torch.softmax(logits.masked_fill(eye, float("-inf")), dim=-1)


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * (x.float() * scale).to(x.dtype)


def _rotate(x: torch.Tensor, theta: float) -> torch.Tensor:
    """Rotary position embedding of [batch, heads, tokens, head_dim] (halves rotated)."""
    half = x.shape[-1] // 2
    freq = theta ** (-torch.arange(half, dtype=torch.float32, device=x.device) / half)
    angle = torch.arange(x.shape[-2], dtype=torch.float32, device=x.device)[:, None] * freq
    cos, sin = angle.cos().to(x.dtype), angle.sin().to(x.dtype)
    a, b = x[..., :half], x[..., half:]
    return torch.cat([a * cos - b * sin, b * cos + a * sin], dim=-1)


class Attention(nn.Module):
    def __init__(self, config: CtMoeConfig):
        super().__init__()
        self.heads, self.kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim = config.hidden_size // self.heads
        self.theta = config.rope_theta
        hidden = config.hidden_size
        self.q_proj = nn.Linear(hidden, self.heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(hidden, self.kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(hidden, self.kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.heads * self.head_dim, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, _ = x.shape

        def split(t: torch.Tensor, heads: int) -> torch.Tensor:
            return t.view(batch, tokens, heads, self.head_dim).transpose(1, 2)

        q = _rotate(split(self.q_proj(x), self.heads), self.theta)
        k = _rotate(split(self.k_proj(x), self.kv_heads), self.theta)
        v = split(self.v_proj(x), self.kv_heads)
        repeat = self.heads // self.kv_heads
        k, v = k.repeat_interleave(repeat, dim=1), v.repeat_interleave(repeat, dim=1)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o_proj(out.transpose(1, 2).reshape(batch, tokens, -1))


class Expert(nn.Module):
    """Mixtral's SwiGLU expert: w2(silu(w1 x) * w3 x)."""

    def __init__(self, hidden: int, inter: int):
        super().__init__()
        self.w1 = nn.Linear(hidden, inter, bias=False)
        self.w2 = nn.Linear(inter, hidden, bias=False)
        self.w3 = nn.Linear(hidden, inter, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class CollaborativeRouter(nn.Module):
    """The router linear; its ``bias`` is the routing bias of the block's S, so a forward
    hook that recomputes ``linear(x, weight, bias)`` (moetopo.capture) gets the logits."""

    def __init__(self, hidden: int, experts: int, block: CollaborativeMoeBlock):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(experts, hidden))
        self._block = [block]  # a list: not registered as a child module

    @property
    def bias(self) -> torch.Tensor:
        return self._block[0].routing_bias()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


class CollaborativeMoeBlock(nn.Module):
    def __init__(self, config: CtMoeConfig):
        super().__init__()
        n = config.num_local_experts
        self.top_k = config.num_experts_per_tok
        self.routing_scale, self.collab_scale = config.routing_scale, config.collab_scale
        self.s_temp = config.s_temp
        self.collaboration = nn.Parameter(torch.zeros(n, n))  # S_raw
        self.gate = CollaborativeRouter(config.hidden_size, n, self)
        self.experts = nn.ModuleList(
            Expert(config.hidden_size, config.intermediate_size) for _ in range(n)
        )

    def matrix(self) -> torch.Tensor:
        return collaboration_matrix(self.collaboration.float(), self.s_temp)

    def routing_bias(self) -> torch.Tensor:
        return (self.routing_scale * self.matrix().sum(dim=0)).to(self.collaboration.dtype)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        logits = self.gate(flat)
        weights, chosen = torch.softmax(logits.float(), dim=-1).topk(self.top_k, dim=-1)
        weights = (weights / weights.sum(dim=-1, keepdim=True)).to(flat.dtype)
        outputs = flat.new_zeros(flat.shape[0], self.top_k, shape[-1])
        for e, expert in enumerate(self.experts):
            token, slot = torch.where(chosen == e)
            if token.numel():
                outputs = outputs.index_put((token, slot), expert(flat[token]))
        sub = self.matrix()[chosen[:, :, None], chosen[:, None, :]].to(flat.dtype)
        sub = sub / sub.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(sub.dtype).tiny)
        mixed = outputs + self.collab_scale * (sub @ outputs)
        return (weights[..., None] * mixed).sum(dim=1).reshape(shape), logits


class DecoderLayer(nn.Module):
    def __init__(self, config: CtMoeConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.block_sparse_moe = CollaborativeMoeBlock(config)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x + self.self_attn(self.input_layernorm(x))
        moe, logits = self.block_sparse_moe(self.post_attention_layernorm(x))
        return x + moe, logits


class Decoder(nn.Module):
    def __init__(self, config: CtMoeConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config) for _ in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


def load_balancing_loss(logits: list[torch.Tensor], top_k: int) -> torch.Tensor:
    """Mixtral's auxiliary loss over all layers' router logits: E Σ_e f_e P_e, f_e the
    share of top-k slots that pick e, P_e its mean routing probability."""
    probs = torch.softmax(torch.cat(logits).float(), dim=-1)
    chosen = probs.topk(top_k, dim=-1).indices
    slots = F.one_hot(chosen, probs.shape[-1]).float().mean(dim=0)  # [k, E]
    return probs.shape[-1] * (slots * probs.mean(dim=0)).sum()


class CtMoeForCausalLM(nn.Module):
    """The CT-MoE causal LM, with the few transformers-like methods the zoo calls."""

    def __init__(self, config: CtMoeConfig):
        super().__init__()
        self.config = config
        self.model = Decoder(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        std = config.initializer_range
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding, CollaborativeRouter)):
                nn.init.normal_(module.weight, std=std)

    def optimizer_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        """S_raw at ``s_lr_scale`` times the learning rate, as the paper trains it."""
        collab = [p for n, p in self.named_parameters() if n.endswith(".collaboration")]
        rest = [p for n, p in self.named_parameters() if not n.endswith(".collaboration")]
        return [
            {"params": rest, "weight_decay": weight_decay, "lr_scale": 1.0},
            {"params": collab, "weight_decay": weight_decay, "lr_scale": self.config.s_lr_scale},
        ]

    def forward(
        self,
        input_ids: torch.Tensor,
        labels: torch.Tensor | None = None,
        output_router_logits: bool = False,
        use_cache: bool = False,
    ) -> SimpleNamespace:
        """Logits, router logits and, given labels, the next-token loss (plus the
        balancing loss with ``output_router_logits``). ``use_cache`` is transformers'
        keyword, which moetopo.capture passes: this model keeps no cache."""
        if use_cache:
            raise ValueError("CtMoeForCausalLM keeps no key/value cache")
        x = self.model.embed_tokens(input_ids)
        router_logits = []
        for layer in self.model.layers:
            x, logits = layer(x)
            router_logits.append(logits)
        logits = self.lm_head(self.model.norm(x))
        loss = None
        if labels is not None:
            loss = F.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]).float(), labels[:, 1:].reshape(-1)
            )
            if output_router_logits:
                aux = load_balancing_loss(router_logits, self.config.num_experts_per_tok)
                loss = loss + self.config.router_aux_loss_coef * aux
        return SimpleNamespace(loss=loss, logits=logits, router_logits=router_logits)

    def tensors(self) -> dict[str, torch.Tensor]:
        """What the checkpoint holds: the state dict and each layer's folded router bias."""
        tensors = {name: t.detach().contiguous() for name, t in self.state_dict().items()}
        for i, layer in enumerate(self.model.layers):
            bias = layer.block_sparse_moe.routing_bias().detach()
            tensors[f"model.layers.{i}.block_sparse_moe.gate.bias"] = bias.contiguous()
        return tensors

    def save_pretrained(
        self, directory: str | Path, max_shard_size: int, safe_serialization: bool = True
    ) -> None:
        """Shards of at most ``max_shard_size`` bytes, the index and config.json, in the
        layout ``save_pretrained`` of transformers writes."""
        from safetensors.torch import save_file

        if not safe_serialization:
            raise ValueError("CT-MoE checkpoints are written as safetensors only")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        shards: list[dict[str, torch.Tensor]] = [{}]
        size = 0
        for name, tensor in sorted(self.tensors().items()):
            nbytes = tensor.numel() * tensor.element_size()
            if shards[-1] and size + nbytes > max_shard_size:
                shards.append({})
                size = 0
            shards[-1][name] = tensor
            size += nbytes
        weight_map, total = {}, 0
        for k, shard in enumerate(shards, start=1):
            file = f"model-{k:05d}-of-{len(shards):05d}.safetensors"
            save_file(shard, directory / file, metadata={"format": "pt"})
            weight_map |= dict.fromkeys(shard, file)
            total += sum(t.numel() * t.element_size() for t in shard.values())
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
        dtype = str(next(self.parameters()).dtype).removeprefix("torch.")
        config = self.config.to_dict() | {"dtype": dtype}
        (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n")

    @classmethod
    def from_pretrained(
        cls, directory: str | Path, dtype: torch.dtype = torch.float32
    ) -> CtMoeForCausalLM:
        """The model a directory written by :meth:`save_pretrained` holds; its folded
        router biases must be those its S implies."""
        from safetensors.torch import load_file

        directory = Path(directory)
        config = CtMoeConfig.from_dict(json.loads((directory / "config.json").read_text()))
        index = json.loads((directory / "model.safetensors.index.json").read_text())
        state: dict[str, torch.Tensor] = {}
        for file in sorted(set(index["weight_map"].values())):
            state |= load_file(directory / file)
        model = cls(config)
        folded = {n: state.pop(n) for n in list(state) if n.endswith(".gate.bias")}
        model.load_state_dict(state, strict=True)
        stored_dtype = next(iter(state.values())).dtype
        model.to(stored_dtype)
        for name, bias in model.tensors().items():
            if name in folded and not torch.equal(folded[name], bias):
                raise ValueError(f"{directory}: {name} is not the routing bias its S implies")
        return model.to(dtype)
