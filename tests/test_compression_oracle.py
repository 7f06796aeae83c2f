"""transformers is the oracle for the layer-wise compression evaluation: on the demo zoo's
trained models (one per family) and the hidden states each MoE layer really saw (captured
router inputs), moetopo's routed block, its dropped-expert and its redirected/merged
reductions, and the relative errors ``evaluate_layer`` reports, all equal what the
family's own transformers MoE module computes when pruned or merged by hand in torch.

The torch side never calls moetopo: pruning deletes router rows, correction-bias entries
and slices of the fused expert parameters; redirecting copies (load-weighted means of)
expert weights into the redirected experts' slots. Shared experts add the same term with
or without pruning, so they are subtracted from the module's output.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest

from moetopo.checkpoint.captured import load_inputs
from moetopo.checkpoint.model import open_model
from moetopo.compression.block import (
    compare,
    dropped,
    frequency_weighted_merge,
    redirected,
    reduced_output,
)
from moetopo.compression.evaluate import CompressionParams, evaluate_layer
from moetopo.compression.model import routed_block

from conftest import REPO

torch = pytest.importorskip("torch", reason="the oracle tests need torch (the zoo extra)")
transformers = pytest.importorskip(
    "transformers", reason="the oracle tests need transformers (the zoo extra)"
)

ZOO = REPO / "resources" / "zoo"
MODELS = {
    "mixtral": "mixtral-e8k2-h64-s0",
    "qwen2_moe": "qwen2moe-e8k2-h64-s0",
    "deepseek_v3": "dsv3-e8k2-h64-s0",
    "olmoe": "olmoe-e8k2-h64-s0",
}
# experts 1, 4, 7 dropped; DeepSeek-V3 keeps 3 of each group of 4 (n_group = 2), as a
# pruned checkpoint must for its router to split the survivors into equal groups
KEEP = {"deepseek_v3": [0, 2, 3, 5, 6, 7]}
DEFAULT_KEEP = [0, 2, 3, 5, 6]
METHODS = ("frequency", "reap", "random", "pairwise", "hc_smoe")
FLOAT64 = 1e-10  # relative squared error of two float64 computations of one output
FIGURE = 1e-5  # relative difference of two computations of one relative error


@pytest.fixture(scope="module")
def zoo():
    """Per family: moetopo's open model and transformers' model (float32, as loaded)."""
    cache = {}

    def get(family: str):
        if family not in cache:
            path = ZOO / MODELS[family]
            hf = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
            cache[family] = (path, open_model(path), hf.eval())
        return cache[family]

    return get


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: the tensors are tiny, and on a shared, loaded machine torch's
    thread pool spins (a run took 60 s instead of 8 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _moe_layers(hf) -> list[int]:
    return [i for i, layer in enumerate(hf.model.layers) if hasattr(layer.mlp, "experts")]


def _float64(module):
    """A float64 copy on transformers' reference expert loop (grouped_mm has no float64
    kernel); the original module is untouched."""
    module = copy.deepcopy(module).double()
    module.experts.config._experts_implementation = "eager"
    return module


def _shared(module, x):
    """The shared experts' term: the same whatever happens to the routed experts."""
    if hasattr(module, "shared_expert"):  # qwen2_moe: sigmoid-gated shared expert
        return torch.sigmoid(module.shared_expert_gate(x)) * module.shared_expert(x)
    if hasattr(module, "shared_experts"):  # deepseek_v3
        return module.shared_experts(x)
    return torch.zeros_like(x)


def _routed(module, x: np.ndarray) -> np.ndarray:
    """The MoE module's output on tokens [T, H] (run as one [1, T, H] sequence) minus its
    shared experts' term: what moetopo's RoutedBlock computes."""
    param = next(module.parameters())
    xt = torch.from_numpy(np.asarray(x)).to(param.dtype)
    with torch.no_grad():
        out = module(xt[None]).reshape(xt.shape) - _shared(module, xt)
    return out.double().numpy()


def _chosen(module, x: np.ndarray) -> np.ndarray:
    """The expert indices [T, k] the module's own router picks."""
    param = next(module.parameters())
    with torch.no_grad():
        _, _, indices = module.gate(torch.from_numpy(np.asarray(x)).to(param.dtype))
    return indices.numpy()


def _pruned(module, keep) -> object:
    """A copy of ``module`` holding only the experts ``keep`` (sorted): router rows,
    correction-bias entries and fused expert weights of the others deleted."""
    keep = sorted(int(e) for e in keep)
    pruned = copy.deepcopy(module)
    index = torch.tensor(keep)
    gate, experts = pruned.gate, pruned.experts
    with torch.no_grad():
        gate.weight = torch.nn.Parameter(gate.weight[index].clone())
        if hasattr(gate, "e_score_correction_bias"):
            gate.e_score_correction_bias = gate.e_score_correction_bias[index].clone()
        experts.gate_up_proj = torch.nn.Parameter(experts.gate_up_proj[index].clone())
        experts.down_proj = torch.nn.Parameter(experts.down_proj[index].clone())
    gate.num_experts = experts.num_experts = len(keep)
    if not _group_balanced(module, keep):  # as a pruned config must: no groups to limit
        gate.num_group = gate.topk_group = 1
    return pruned


def _group_balanced(module, keep) -> bool:
    """Whether a DeepSeek-V3 router can hold ``keep``: every group keeps the same number
    of experts, at least 2 (its group score is a group's top-2 sum). Always true for
    routers without groups."""
    groups = getattr(module.gate, "num_group", None)
    if not groups or groups == 1:
        return True
    counts = np.bincount(np.asarray(keep) // (module.gate.num_experts // groups), minlength=groups)
    return bool((counts == counts[0]).all() and counts[0] >= 2)


def _redirected(module, target: np.ndarray, load: np.ndarray | None = None) -> object:
    """A copy of ``module`` with its router unchanged and expert e's weights replaced by
    those of ``target[e]``. With ``load``, a target serving several experts holds their
    load-weighted mean instead (HC-SMoE's frequency-weighted merge; equal weights where
    none was routed to)."""
    redirected_module = copy.deepcopy(module)
    experts = redirected_module.experts
    with torch.no_grad():
        gate_up, down = experts.gate_up_proj.clone(), experts.down_proj.clone()
        for t in np.unique(target):
            served = torch.from_numpy(np.flatnonzero(target == t))
            if load is None:  # the target's own weights
                w = torch.zeros(len(served), dtype=gate_up.dtype)
                w[served == int(t)] = 1.0
            else:
                w = torch.tensor(load[served.numpy()], dtype=gate_up.dtype)
                w = w / w.sum() if w.sum() > 0 else torch.full_like(w, 1.0 / len(served))
            gate_up[served] = torch.einsum("m,mij->ij", w, experts.gate_up_proj[served])
            down[served] = torch.einsum("m,mij->ij", w, experts.down_proj[served])
        experts.gate_up_proj.copy_(gate_up)  # the target's own slot included
        experts.down_proj.copy_(down)
    return redirected_module


def _relative(reference: np.ndarray, other: np.ndarray) -> float:
    return float(np.sum((reference - other) ** 2) / np.sum(reference**2))


def _layer(zoo, family: str, which: int):
    path, model, hf = zoo(family)
    layer = _moe_layers(hf)[which]
    x = load_inputs(path / "router_logits.npz", layer)
    assert x is not None and len(x) >= 128, f"layer {layer}: no captured router inputs"
    return routed_block(model, layer), hf.model.layers[layer].mlp, x


@pytest.mark.parametrize("family", sorted(MODELS))
def test_full_block_equals_the_transformers_module(zoo, family):
    """moetopo's routed block is the transformers MoE module minus its shared experts, on
    the first and the last MoE layer, in float64 and as transformers runs it (float32)."""
    path, model, hf = zoo(family)
    assert _moe_layers(hf) == sorted(model.layout.layers), "MoE layers"
    for which in (0, -1):
        block, module, x = _layer(zoo, family, which)
        x64 = x.astype(np.float64)
        routed = block.route(x64)
        ours = block.output(x64, routed.experts, routed.weights)
        module64 = _float64(module)
        theirs = _routed(module64, x64)
        assert _relative(theirs, ours) < FLOAT64, f"layer {which}: routed output"
        chosen = _chosen(module64, x64)
        assert all(set(a) == set(b) for a, b in zip(routed.experts, chosen, strict=True))
        # as loaded: float32 on transformers' default expert kernel
        assert _relative(_routed(module, x), ours) < FIGURE, f"layer {which}: float32 output"
        with torch.no_grad():
            whole = module64(torch.from_numpy(x64)[None]).reshape(x.shape).numpy()
        if hasattr(module, "shared_expert") or hasattr(module, "shared_experts"):
            # the shared term is large: leaving it in would fail the comparison above
            assert _relative(whole, ours) > 1e-3
        else:
            assert _relative(whole, ours) < FLOAT64


@pytest.mark.parametrize("family", sorted(MODELS))
def test_dropped_experts_equal_a_pruned_transformers_module(zoo, family):
    """Dropping experts 1, 4, 7 (DeepSeek-V3: 1 and 4) re-routes each token among the
    survivors exactly as a checkpoint holding only them; the relative error, and which
    tokens changed experts, are the torch model's."""
    block, module, x = _layer(zoo, family, -1)
    x = x.astype(np.float64)
    keep = np.array(KEEP.get(family, DEFAULT_KEEP))
    module64 = _float64(module)
    pruned = _pruned(module64, keep)
    assert pruned.gate.weight.shape[0] == len(keep) < module.gate.weight.shape[0]

    full = block.route(x)
    reference = block.output(x, full.experts, full.weights)
    reduced, changed = reduced_output(block, x, dropped(block.n_experts, keep), full)
    theirs_full, theirs_pruned = _routed(module64, x), _routed(pruned, x)
    assert _relative(theirs_pruned, reduced) < FLOAT64, "reduced output"

    expected = _relative(theirs_full, theirs_pruned)
    assert expected > 1e-3, "dropping these experts should cost something"
    got = compare(reference, reduced, changed).relative_error
    assert got == pytest.approx(expected, rel=FIGURE)

    before = np.sort(_chosen(module64, x), axis=1)
    after = np.sort(keep[_chosen(pruned, x)], axis=1)  # pruned indices -> original ids
    np.testing.assert_array_equal(changed, (before != after).any(axis=1))
    assert 0 < changed.mean() < 1


@pytest.mark.parametrize("family", sorted(MODELS))
def test_merged_experts_equal_a_redirected_transformers_module(zoo, family):
    """HC-SMoE's merge at half the experts (as evaluate_layer chose it): routing is
    unchanged, each expert's slot holds its cluster's load-weighted merge; moetopo's
    reduced output is the torch module's with its expert weights so replaced."""
    block, module, x = _layer(zoo, family, -1)
    result = evaluate_layer(
        block, x, CompressionParams(keep_fractions=(0.5,), methods=("hc_smoe",))
    )
    rows = result.selections.sort_values("expert")
    target = rows.target.to_numpy()
    assert len(np.unique(target)) == 4 == rows.keep.iloc[0], "clusters at half of 8 experts"
    sizes = np.bincount(target, minlength=len(target))
    np.testing.assert_array_equal(rows.merged.to_numpy(), sizes[target] > 1)

    module64 = _float64(module)
    half = len(x) // 2
    load = np.bincount(_chosen(module64, x[:half]).ravel(), minlength=len(target))
    np.testing.assert_array_equal(result.load, load)  # the calibration half's routing

    merged = {
        int(t): frequency_weighted_merge(block, np.flatnonzero(target == t), load)
        for t in np.unique(target)
        if sizes[t] > 1
    }
    x64 = x.astype(np.float64)
    full = block.route(x64)
    reduced, changed = reduced_output(block, x64, redirected(target, merged), full)
    oracle = _redirected(module64, target, load.astype(np.float64))
    theirs = _routed(oracle, x64)
    assert _relative(theirs, reduced) < FLOAT64, "redirected output"
    assert _relative(_routed(module64, x64), theirs) > 1e-3, "merging should cost something"
    touched = sizes[target] > 1  # redirected, or serving a merge
    np.testing.assert_array_equal(changed, touched[full.experts].any(axis=1))


@pytest.mark.parametrize("family", sorted(MODELS))
def test_evaluate_layer_errors_equal_transformers(zoo, family):
    """Every relative error (and changed fraction of a drop) evaluate_layer reports on the
    held-out half, for every ranking, random draw, redirect and merge at every budget, is
    the one computed from the torch module pruned or redirected by hand. A DeepSeek-V3 drop
    whose groups keep unequal counts prunes to a router without groups (n_group = 1)."""
    block, module, x = _layer(zoo, family, -1)
    result = evaluate_layer(block, x, CompressionParams(methods=METHODS, random_draws=5))
    module64 = _float64(module)
    half = len(x) // 2
    held_out = x[half:].astype(np.float64)
    load = np.bincount(_chosen(module64, x[:half]).ravel(), minlength=block.n_experts)
    reference = _routed(module64, held_out)
    before = np.sort(_chosen(module64, held_out), axis=1)
    table = result.table.set_index(["method", "draw", "keep", "metric"]).value
    checked, unbalanced = {"drop": 0, "map": 0}, 0
    for (method, draw, keep), rows in result.selections.groupby(["method", "draw", "keep"]):
        rows = rows.sort_values("expert")
        target = rows.target.to_numpy()
        label = f"{method} draw {draw} keep {keep}"
        if (target < 0).any():  # dropped: re-routed among the survivors
            survivors = np.flatnonzero(target >= 0)
            unbalanced += not _group_balanced(module64, survivors)
            pruned = _pruned(module64, survivors)
            after = np.sort(survivors[_chosen(pruned, held_out)], axis=1)
            changed = float(np.mean((before != after).any(axis=1)))
            assert table[method, draw, keep, "changed"] == changed, label
            kind = "drop"
        else:
            merges = rows.merged.any()  # hc_smoe merges; pairwise redirects only
            pruned = _redirected(module64, target, load.astype(np.float64) if merges else None)
            kind = "map"
        expected = _relative(reference, _routed(pruned, held_out))
        got = table[method, draw, keep, "relative_error"]
        assert got == pytest.approx(expected, rel=FIGURE), label
        checked[kind] += 1
    assert checked["drop"] >= 4 and checked["map"] >= 4, checked
    assert unbalanced > 0 or family != "deepseek_v3"  # both kinds of pruned router checked
