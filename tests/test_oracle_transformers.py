"""transformers is the oracle: for every family moetopo reads, a small model built by the
real transformers class, with every weight and buffer re-randomised (correction biases
included, so a dropped bias fails), saved by ``save_pretrained`` and read back by
moetopo. What moetopo says about the checkpoint is checked against the torch model:
its MoE layers, experts, top-k and shared experts; router rows bit for bit; total and
activated parameters against the module tree; each token's experts and weights through
moetopo's routing rule against what the model's own MoE block dispatched (2,048 tokens
per layer); captured logits against the router linear's output; probe inputs against
the model's own first norm; and the routing stage's loads against a real forward pass.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from moetopo.capture import capture_logits, router_layers, save_npz
from moetopo.checkpoint.model import open_model
from moetopo.checkpoint.probes import normalised_embeddings
from moetopo.families.spec import load_families
from moetopo.fixtures import random_model, write_family
from moetopo.inspect import inspect_model
from moetopo.routing.rule import route
from moetopo.stages.gates import Routers, gate_batches
from moetopo.stages.routing import layer_rule, routing_tables

torch = pytest.importorskip("torch", reason="the oracle tests need torch (the zoo extra)")
transformers = pytest.importorskip(
    "transformers", reason="the oracle tests need transformers (the zoo extra)"
)

N_EXPERTS, TOP_K, BATCH, SEQ = 8, 2, 8, 256  # 2,048 tokens per layer


@dataclass(frozen=True)
class Oracle:
    """Where the family's MoE block keeps its router linear and how it dispatches."""

    router: str  # the router linear, relative to the transformer layer
    dispatch: str  # "experts": the experts module gets (hidden, indices, weights)
    model: dict = field(default_factory=dict)  # random_model keywords
    config: dict = field(default_factory=dict)  # config.json overrides


ENCODER_DECODER = {"n_decoder_layers": 2}
FAMILIES = {
    "mixtral": Oracle("mlp.gate", "experts"),
    "phimoe": Oracle("mlp.router", "experts", config={"router_jitter_noise": 0.2}),
    "minimax": Oracle("mlp.gate", "experts"),
    "qwen2_moe": Oracle("mlp.gate", "experts"),
    "qwen3_moe": Oracle("mlp.gate", "experts"),
    "qwen3_next": Oracle("mlp.gate", "experts"),
    "olmoe": Oracle("mlp.gate", "experts"),
    # the hub's pad and eos ids lie outside a 128-token vocabulary
    "flex_olmo": Oracle("mlp.gate", "experts", config={"pad_token_id": 1, "eos_token_id": 2}),
    "hunyuan_v1_moe": Oracle("mlp.gate.wg", "experts", model={"shared_intermediate": 32}),
    "ernie4_5_moe": Oracle("mlp.gate", "experts"),
    "deepseek_v2": Oracle("mlp.gate", "experts", config={"topk_method": "group_limited_greedy"}),
    "deepseek_v3": Oracle("mlp.gate", "experts"),
    "kimi_k2": Oracle("mlp.gate", "experts"),
    "glm4_moe": Oracle("mlp.gate", "experts"),
    "dots1": Oracle("mlp.gate", "experts"),
    # an epsilon large enough to matter: the probe must read LFM2's norm_eps
    "lfm2_moe": Oracle("feed_forward.gate", "experts", config={"norm_eps": 0.5}),
    "jamba": Oracle("feed_forward.router", "experts"),
    "llama4": Oracle("feed_forward.router", "llama4"),
    "gpt_oss": Oracle("mlp.router", "experts"),
    "granitemoe": Oracle("block_sparse_moe.router", "experts"),
    "granitemoeshared": Oracle("block_sparse_moe.router", "experts"),
    "granitemoehybrid": Oracle("block_sparse_moe.router", "experts"),
    "jetmoe": Oracle("mlp.router.layer", "jetmoe"),
    "dbrx": Oracle("ffn.router.layer", "experts"),
    # capacity large enough that no token is dropped: moetopo reports the router's choice
    "switch_transformers": Oracle(
        "mlp.router.classifier", "switch", ENCODER_DECODER, {"expert_capacity": BATCH * SEQ}
    ),
    "nllb_moe": Oracle(
        "ffn.router.classifier",
        "nllb",
        ENCODER_DECODER,
        {"second_expert_policy": "all", "moe_eval_capacity_token_fraction": 1.0},
    ),
}
NOT_TRANSFORMERS = {
    "gguf": "llama.cpp's format, which transformers does not build",
    "toy_moe": "the superposition study's toy MoE (tests/test_superposition.py checks it)",
    "ct_moe": "CT-MoE, which transformers has no class for (tests/test_collaboration.py reads "
    "it back against the zoo's own torch model)",
}
LAYER = re.compile(r"^(?:.*?(encoder|decoder)\.)?.*?(?:layers|blocks|block)\.(\d+)\.")


def test_every_family_has_an_oracle():
    # Kimi-K2 is read by the deepseek_v3 family; its hub layout is checked as well
    assert set(load_families()) - set(NOT_TRANSFORMERS) <= set(FAMILIES)


def _randomise(model, seed: int) -> None:
    """Every float tensor of the state dict drawn afresh: weights at 1/sqrt(fan-in), norm
    weights around 1, every vector (biases, correction biases, statics) around 0."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict(keep_vars=True).items():
            if not tensor.is_floating_point():
                continue
            noise = torch.randn(tensor.shape, generator=gen, dtype=torch.float32)
            if tensor.ndim >= 2:
                tensor.copy_(noise / np.sqrt(tensor.shape[-1]))
            elif "norm" in name.lower() or name.endswith(("ln.weight", "_ln.weight")):
                tensor.copy_(1.0 + 0.3 * noise)
            else:
                tensor.copy_(0.5 * noise)


def _build(family: str, directory: Path):
    """The transformers model of ``family``, randomised, saved; and moetopo's view of it."""
    oracle = FAMILIES[family]
    tiny = random_model(n_layers=2, n_experts=N_EXPERTS, top_k=TOP_K, seed=3, **oracle.model)
    source = write_family(tiny, family, directory / "config", config_overrides=oracle.config)
    config = json.loads((source / "config.json").read_text())
    if family == "dbrx":  # transformers 5 wants a float where DBRX's hub config has 1
        config["ffn_config"]["moe_normalize_expert_weights"] = 1.0
    if family == "kimi_k2":  # Kimi-K2 ships DeepSeek-V3's modeling code as remote code
        hf_config = transformers.DeepseekV3Config(**{**config, "model_type": "deepseek_v3"})
    else:
        hf_config = transformers.AutoConfig.for_model(**config)
    cls = getattr(transformers, config["architectures"][0])
    model = cls._from_config(hf_config, dtype=torch.float32)
    _randomise(model, seed=sum(map(ord, family)))
    model.eval()
    saved = directory / "model"
    model.save_pretrained(saved)
    if family == "kimi_k2":  # as on the hub: DeepSeek-V3's classes, Kimi's model_type
        on_disk = json.loads((saved / "config.json").read_text())
        (saved / "config.json").write_text(json.dumps({**on_disk, "model_type": "kimi_k2"}))
    return model, saved


def _moetopo_layer(name: str, stacks: list[dict]) -> int | None:
    """moetopo's layer index of a torch module name (encoder and decoder stacks counted
    one after the other, as model.json's ``stacks`` say)."""
    if "vision" in name:
        return None
    match = LAYER.match(name + ".")
    if not match:
        return None
    by_name = {s["name"]: s["first_layer"] for s in stacks}
    return by_name.get(match.group(1) or "decoder", 0) + int(match.group(2))


@dataclass
class Dispatch:
    """What one MoE layer of the torch model did on the tokens."""

    router: object  # the router linear module
    inputs: list = field(default_factory=list)  # router input [tokens, hidden]
    experts: list = field(default_factory=list)  # [tokens, k] experts the block ran
    weights: list = field(default_factory=list)  # [tokens, k] their weights

    def arrays(self):
        return (
            torch.cat(self.inputs).double(),
            torch.cat(self.experts).numpy(),
            torch.cat(self.weights).double().numpy(),
        )


def _by_nonzero(dense: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[tokens, E] weights with k nonzeros a row -> (experts, weights) [tokens, k]."""
    dense = dense.reshape(-1, dense.shape[-1]).detach()
    counts = (dense != 0).sum(-1)
    assert (counts == k).all(), f"rows with {sorted(set(counts.tolist()))} experts, expected {k}"
    _, experts = torch.topk(dense.abs(), k, dim=-1)
    return experts, torch.gather(dense, 1, experts)


def _record(model, family: str, stacks: list[dict], k: int) -> tuple[dict[int, Dispatch], list]:
    """Hooks on every MoE layer's router linear and on what its block dispatches."""
    oracle = FAMILIES[family]
    layers: dict[int, Dispatch] = {}
    handles = []
    modules = dict(model.named_modules())
    for name, module in modules.items():
        layer = _moetopo_layer(name, stacks)
        prefix = name.rsplit(".", oracle.router.count(".") + 1)[0]
        if layer is None or name != f"{prefix}.{oracle.router}":
            continue
        record = layers.setdefault(layer, Dispatch(module))

        def on_router(_m, args, _out, record=record):
            record.inputs.append(args[0].detach().reshape(-1, args[0].shape[-1]))

        def on_router_output(_m, _args, out, record=record):
            if oracle.dispatch == "llama4":  # (scores, logits): sigmoid of the top-k logits
                experts, weights = _by_nonzero(out[0], k)
            elif oracle.dispatch == "jetmoe":  # token-sorted (slot, token, gate, sizes, logits)
                slots, _, gates, sizes, _ = out
                experts = torch.empty(slots.numel(), dtype=torch.long)
                weights = torch.empty(slots.numel())
                counts = torch.tensor(sizes)
                experts[slots] = torch.repeat_interleave(torch.arange(counts.numel()), counts)
                weights[slots] = gates.detach().float()
                experts, weights = experts.view(-1, k), weights.view(-1, k)
            else:  # switch: one-hot dispatch mask (capacity applied), top probability
                mask, probs, _ = out
                mask = mask.reshape(-1, mask.shape[-1])
                assert (mask.sum(-1) == 1).all(), "a token was dropped by the capacity"
                experts, weights = mask.argmax(-1, keepdim=True), probs.reshape(-1, 1).detach()
            record.experts.append(experts)
            record.weights.append(weights)

        handles.append(module.register_forward_hook(on_router))
        if oracle.dispatch == "llama4":  # the router linear returns the dispatch itself
            handles.append(module.register_forward_hook(on_router_output))
        elif oracle.dispatch in ("jetmoe", "switch"):  # its parent router module does
            parent = modules[name.rsplit(".", 1)[0]]
            handles.append(parent.register_forward_hook(on_router_output))
        if oracle.dispatch in ("experts", "nllb"):
            block = prefix + "." + oracle.router.split(".")[0]
            experts_module = modules[f"{block}.experts"]

            def on_experts(_m, args, kwargs, record=record):
                values = [*args, *kwargs.values()]
                if oracle.dispatch == "nllb":  # (hidden, top-1 mask, combine weights [T, E])
                    experts, weights = _by_nonzero(values[2], k)
                else:
                    experts, weights = values[1], values[2]
                    if weights.shape[-1] != experts.shape[-1]:  # dense [T, E] (gpt-oss)
                        weights = torch.gather(weights, 1, experts)
                record.experts.append(experts.detach().reshape(-1, experts.shape[-1]))
                record.weights.append(weights.detach().reshape(-1, weights.shape[-1]))

            handles.append(experts_module.register_forward_pre_hook(on_experts, with_kwargs=True))
    return layers, handles


def _forward(model, ids: torch.Tensor) -> None:
    kwargs = {"decoder_input_ids": ids} if model.config.is_encoder_decoder else {}
    with torch.no_grad():
        model(input_ids=ids, use_cache=False, **kwargs)


def _first_norm(model, stacks) -> np.ndarray:
    """What layer 0 computes from the embeddings before its first sublayer: the first norm
    that reads the layer's own input, or the input itself where none does (OLMo-2 norms
    what attention returns, never the residual stream)."""
    seen: dict = {"norms": []}
    modules = dict(model.named_modules())
    layer0 = next(
        m for n, m in modules.items() if _moetopo_layer(n, stacks) == 0 and LAYER.fullmatch(n + ".")
    )

    def on_layer(_m, args, kwargs):
        seen.setdefault("input", args[0] if args else kwargs["hidden_states"])

    handles = [layer0.register_forward_pre_hook(on_layer, with_kwargs=True)]
    handles += [
        module.register_forward_hook(lambda m, a, o: seen["norms"].append((m, a[0])))
        for name, module in modules.items()
        if _moetopo_layer(name, stacks) == 0
        and "norm" in type(module).__name__.lower()
        and not list(module.children())
    ]
    ids = torch.arange(64).view(1, -1)
    _forward(model, ids)
    for h in handles:
        h.remove()
    stack = model.get_encoder() if model.config.is_encoder_decoder else model
    embed = stack.get_input_embeddings()(ids)[0]
    embed = embed * getattr(model.config.get_text_config(), "embedding_multiplier", 1.0)
    x = seen["input"]
    same = [m for m, a in seen["norms"] if a.shape == x.shape and torch.equal(a, x)]
    norm = same[0] if same else None
    with torch.no_grad():
        return (embed if norm is None else norm(embed)).detach().numpy()


def _parameters(model) -> tuple[int, int]:
    """(total, inactive) parameters of the module tree, tied tensors counted once."""
    seen, total, inactive = set(), 0, 0
    for name, tensor in model.state_dict().items():
        if tensor.data_ptr() in seen:
            continue
        seen.add(tensor.data_ptr())
        total += tensor.numel()
        inactive += tensor.numel() if "vision" in name or "multi_modal" in name else 0
    return total, inactive


def _experts_module(model, family: str, router_module):
    """The routed experts of the block that owns ``router_module``."""
    modules = dict(model.named_modules())
    router_name = next(n for n, m in modules.items() if m is router_module)
    block = router_name[: -len(FAMILIES[family].router)].rstrip(".")
    block += "." + FAMILIES[family].router.split(".")[0]
    if family == "jetmoe":
        return [modules[f"{block}.input_linear"], modules[f"{block}.output_linear"]]
    return [modules[f"{block}.experts"]]


def _n_experts(module) -> int:
    if isinstance(module, torch.nn.ModuleList) or hasattr(module, "expert_0"):
        return sum(1 for _ in module.children() if not isinstance(_, torch.nn.Dropout))
    return int(getattr(module, "num_experts", 0) or next(module.parameters()).shape[0])


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    cache = {}

    def get(family: str):
        if family not in cache:
            directory = tmp_path_factory.mktemp(family)
            model, saved = _build(family, directory)
            summary = inspect_model(saved)
            stacks = summary["stacks"]
            layers, handles = _record(model, family, stacks, summary["top_k"])
            gen = torch.Generator().manual_seed(0)
            vocab = model.config.get_text_config().vocab_size
            ids = torch.randint(0, vocab, (BATCH, SEQ), generator=gen)
            _forward(model, ids)
            for h in handles:
                h.remove()
            cache[family] = (model, saved, summary, layers, ids)
        return cache[family]

    return get


def _gates(saved: Path):
    from moetopo.artefacts.views import gates_from_rows

    model = open_model(saved)
    warnings: list[str] = []
    batches = list(gate_batches(Routers.of_model(model), warnings))
    rows = {key: np.concatenate([b[key] for b in batches]) for key in batches[0]}
    return model, gates_from_rows(rows)


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_structure_and_parameters_match_the_module_tree(built, family):
    model, saved, summary, layers, _ = built(family)
    assert sorted(layers) == summary["moe_layers"], "MoE layers"
    for layer, record in layers.items():
        info = summary["layers"][str(layer)]
        experts = _experts_module(model, family, record.router)
        assert info["n_experts"] == _n_experts(experts[0]) == record.router.weight.shape[0]
        assert info["top_k"] == record.experts[0].shape[1], "top-k: experts per token dispatched"
        assert info["expert_params"] == sum(
            p.numel() for m in experts for p in m.state_dict().values()
        )
        has_shared = any(
            re.search(r"shared_(expert|mlp)", n) and _moetopo_layer(n, summary["stacks"]) == layer
            for n, _ in model.named_parameters()
        )
        assert bool(info["shared"]) == has_shared, "shared experts"
    total, inactive = _parameters(model)
    assert summary["total_params"] + summary["mtp_params"] == total
    assert summary["inactive_params"] == inactive
    routed = sum(
        summary["layers"][str(layer)]["expert_params"]
        * (1 - summary["layers"][str(layer)]["top_k"] / _n_experts(
            _experts_module(model, family, r.router)[0]))
        for layer, r in layers.items()
    )  # fmt: skip
    # a token reads one row of each input embedding; the LM head (tied or not) in full
    head = model.get_output_embeddings()
    head_ptr = None if head is None else head.weight.data_ptr()
    tables = {model.get_input_embeddings().weight.data_ptr(): model.get_input_embeddings()}
    tables |= {
        m.weight.data_ptr(): m for n, m in model.named_modules() if n.endswith("embed_tokens")
    }
    unread = sum(m.weight.numel() - m.weight.shape[1] for p, m in tables.items() if p != head_ptr)
    assert summary["activated_params"] == round(total - inactive - routed - unread)


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_router_rows_are_bit_exact(built, family):
    model, saved, summary, layers, _ = built(family)
    _, gates = _gates(saved)
    for layer, record in layers.items():
        gate = gates[layer]
        weight = record.router.weight.detach().numpy()
        assert np.array_equal(gate.weight, weight), "router rows"  # float32 -> float64 exact
        bias = getattr(record.router, "bias", None)
        if bias is not None:
            assert np.array_equal(gate.bias, bias.detach().numpy()), "router linear bias"
        # every other per-expert vector of the layer is a selection bias moetopo must read
        vectors = [
            t.detach().numpy().reshape(-1)
            for n, t in model.state_dict(keep_vars=True).items()
            if _moetopo_layer(n, summary["stacks"]) == layer
            and t.numel() == gate.weight.shape[0]
            and t is not bias
        ]
        got = [] if gate.selection is None else [gate.selection]
        assert len(got) == len(vectors) and all(
            np.array_equal(a, b) for a, b in zip(got, vectors, strict=True)
        ), f"layer {layer}: selection bias"


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_routing_rule_selects_and_weighs_as_the_model(built, family):
    model, saved, summary, layers, _ = built(family)
    opened, gates = _gates(saved)
    for layer, record in layers.items():
        x, experts, weights = record.arrays()
        assert len(experts) >= 2048
        gate = gates[layer]
        logits = x.numpy() @ gate.weight.astype(np.float64).T
        if gate.bias is not None:
            logits = logits + gate.bias
        ours = route(logits, layer_rule(opened, layer), None, gate.selection)
        same = np.mean([set(a) == set(b) for a, b in zip(ours.experts, experts, strict=True)])
        assert same == 1.0, f"layer {layer}: {same:.4f} of tokens select the same experts"
        order_ours = np.argsort(ours.experts, axis=1)
        order_theirs = np.argsort(experts, axis=1)
        np.testing.assert_allclose(
            np.take_along_axis(ours.weights, order_ours, 1),
            np.take_along_axis(weights, order_theirs, 1),
            rtol=1e-4, atol=1e-5, err_msg=f"layer {layer}: routing weights",
        )  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_captured_logits_are_the_router_linear_output(built, family):
    model, saved, summary, layers, ids = built(family)
    captured, _ = capture_logits(model, ids.flatten().tolist(), SEQ, BATCH)
    assert sorted(captured) == sorted(layers)
    hooked = router_layers(model)  # what the capture names in its meta, per layer
    for layer, record in layers.items():
        assert hooked[layer][1] is record.router, f"layer {layer}: hooked {hooked[layer][0]}"
        x = torch.cat(record.inputs)
        with torch.no_grad():
            bias = getattr(record.router, "bias", None)
            expected = torch.nn.functional.linear(x, record.router.weight, bias)
        np.testing.assert_allclose(captured[layer], expected.numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_probe_inputs_are_the_models_first_norm(built, family):
    model, saved, summary, layers, _ = built(family)
    expected = _first_norm(model, summary["stacks"])
    got = normalised_embeddings(open_model(saved), np.arange(64))
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_routing_stage_loads_equal_a_forward_pass(built, family, tmp_path):
    model, saved, summary, layers, ids = built(family)
    captured, _ = capture_logits(model, ids.flatten().tolist(), SEQ, BATCH)
    path = tmp_path / "captured.npz"
    save_npz(path, captured, {"model": family}, "float32", token_ids=ids.flatten().tolist())
    opened, gates = _gates(saved)
    result = routing_tables(opened, gates, probe_tokens=64, seed=0, captured=str(path))
    routing = result.tables()[0]
    for layer, record in layers.items():
        _, experts, _ = record.arrays()
        counts = np.bincount(experts.ravel(), minlength=summary["layers"][str(layer)]["n_experts"])
        rows = routing[routing.layer == layer].sort_values("expert")
        assert (rows.source == "captured").all()
        np.testing.assert_array_equal(rows["count"].to_numpy(), counts, err_msg=f"layer {layer}")
