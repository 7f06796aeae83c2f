"""moetopo's routing rules select exactly the experts transformers' own routers select, on
the demo zoo's trained models (one per family), from the same router logits. Every
family on random weights, probes included, is in test_oracle_transformers.py."""

from __future__ import annotations

import numpy as np
import pytest

from moetopo.inspect import inspect_model
from moetopo.routing.rule import RoutingRule, route

from conftest import REPO

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

ZOO = REPO / "resources" / "zoo"
MODELS = ["mixtral-e16k4-h64-s2", "qwen2moe-e12k3-h48-s1", "dsv3-e16k4-h64-s1", "olmoe-e6k3-h48-s1"]


def routers(model) -> dict[int, torch.nn.Module]:
    """Layer index -> the router module transformers runs in that layer."""
    found = {}
    for name, module in model.named_modules():
        if type(module).__name__.lower().endswith("topkrouter"):
            found[int(name.split("layers.")[1].split(".")[0])] = module
    return found


@pytest.mark.parametrize("name", MODELS)
def test_selected_experts_equal_transformers(name, tmp_path):
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_pretrained(ZOO / name, dtype=torch.float32)
    model.eval()
    captured = {}
    hooks = [
        module.register_forward_hook(
            lambda m, args, out, layer=layer: captured.__setitem__(layer, (out[0], out[2]))
        )
        for layer, module in routers(model).items()
    ]
    text = (ZOO / "heldout_sample.txt").read_bytes()[:512]
    ids = torch.tensor([list(text)], dtype=torch.long) % model.config.vocab_size
    with torch.no_grad():
        model(ids)
    for hook in hooks:
        hook.remove()
    summary = inspect_model(ZOO / name)
    state = model.state_dict()
    assert captured, "no router ran"
    for layer, (logits, indices) in captured.items():
        rule = RoutingRule.from_summary(
            summary["routing"], top_k=summary["layers"][str(layer)]["top_k"]
        )
        bias_name = summary["layers"][str(layer)]["router_bias"]
        selection = state[bias_name].numpy() if bias_name else None
        ours = route(logits.numpy().astype(np.float64), rule, selection_bias=selection)
        theirs = indices.numpy()
        same = [set(a) == set(b) for a, b in zip(ours.experts, theirs, strict=True)]
        assert np.mean(same) == 1.0, f"layer {layer}: {np.mean(same):.4f} of tokens agree"


@pytest.mark.parametrize("method", ["greedy", "group_limited_greedy"])
def test_deepseek_v2_topk_method_selects_as_transformers_router(tmp_path, method):
    """DeepSeek-V2's greedy ignores n_group and topk_group; group_limited_greedy keeps the
    topk_group groups with the best single score. Checked token by token against the
    router module transformers runs, on 2,048 random hidden states."""
    from moetopo.fixtures import random_model, write_family

    overrides = {"n_group": 4, "topk_group": 2, "topk_method": method}
    tiny = random_model(n_layers=2, n_experts=16, top_k=3, seed=7)
    path = write_family(tiny, "deepseek_v2", tmp_path, config_overrides=overrides)
    summary = inspect_model(path)
    assert summary["routing"]["topk_method"] == method
    layer = summary["moe_layers"][0]
    config = transformers.AutoConfig.from_pretrained(path)
    router = transformers.models.deepseek_v2.modeling_deepseek_v2.DeepseekV2TopkRouter(config)
    weight = torch.randn(16, config.hidden_size)
    router.weight.data = weight
    hidden = torch.randn(2048, config.hidden_size)
    with torch.no_grad():
        logits, _, indices = router(hidden)
    rule = RoutingRule.from_summary(
        summary["routing"], top_k=summary["layers"][str(layer)]["top_k"]
    )
    ours = route(logits.numpy().astype(np.float64), rule)
    same = [set(a) == set(b) for a, b in zip(ours.experts, indices.numpy(), strict=True)]
    assert np.mean(same) == 1.0, f"{np.mean(same):.4f} of tokens agree"
