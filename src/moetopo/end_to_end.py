"""What a selection costs the whole model: held-out loss and KL(full || reduced) with the
reductions applied in every MoE layer at once.

The transformers model is loaded once and changed in memory exactly as
:func:`moetopo.compression.export.write_pruned_checkpoint` changes the checkpoint (the same
checked :class:`~moetopo.compression.export.LayerPlan`, the same merged weights rounded to
the stored dtype, the same routing parameters): ``drop`` removes the pruned experts' router
rows, router biases and weights; ``map`` replaces each expert's weights by those of the
expert serving it (or the merge). Only the reduced layers' tensors exist twice; each batch
runs the full model, then the reduced one, so KL needs no stored logits.

Data, as the zoo scores its models (:mod:`moetopo.zoo.train`): by default the zoo's
held-out windows (64 evenly spaced 128-byte windows per domain of the standard-library
corpus, byte tokens), mean next-token loss per domain, then the mean over domains; with
the same corpus the full model's loss is the score in ``resources/zoo/manifest.json`` and
``config/models.tsv``. Or ``text`` (the model's tokenizer if it ships one, else UTF-8
bytes as the zoo does) or ``token_ids``, cut into consecutive windows, mean over tokens.

torch and transformers are imported inside the functions only.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from moetopo.checkpoint.experts import ExpertWeights
from moetopo.checkpoint.model import OpenModel, open_model
from moetopo.compression.export import (
    DropRouting,
    LayerPlan,
    drop_routing,
    layer_plans,
    merged_weights,
    read_selection,
)
from moetopo.errors import MoetopoError

EVAL_WINDOWS = 64  # per domain, as moetopo.zoo.train evaluates
EVAL_BATCH = 16
ZOO_SEQ_LEN = 128


@dataclass(frozen=True)
class EndToEnd:
    """The reduced model against the full one on the same tokens.

    ``loss`` and ``full_loss``: mean next-token cross-entropy (nats per token; per byte
    for the zoo); ``kl``: mean over predicted tokens of KL(full || reduced). With the zoo's
    held-out data each is the mean over domains of the per-domain means (``by_domain``),
    as the zoo's score is. ``reference_score``: the manifest's score of this model when it
    is a zoo model evaluated on the zoo's own held-out windows (the corpus rebuilt here has
    the manifest's digest), else None.
    """

    loss: float
    full_loss: float
    kl: float
    tokens: int
    data: str
    windows: int
    seq_len: int
    by_domain: dict[str, dict[str, float]] = field(default_factory=dict)
    reference_score: float | None = None
    corpus_digest: str | None = None


def evaluate_end_to_end(
    model_dir: str | Path,
    reductions_per_layer=None,
    token_ids=None,
    text: str | None = None,
    *,
    seq_len: int | None = None,
    windows: int = EVAL_WINDOWS,
    batch: int = EVAL_BATCH,
    dtype: str = "float32",
) -> EndToEnd:
    """Held-out loss of the model reduced by ``reductions_per_layer`` and KL(full || reduced).

    ``reductions_per_layer``: {layer: :class:`~moetopo.compression.block.Reduction`}, or a
    :func:`~moetopo.compression.export.selection_json` dict or its JSON file; None or {}
    evaluates the full model (KL 0). A drop must leave every MoE layer the same number of
    experts, as the pruned checkpoint must. ``token_ids``: one stream (1-D) cut into
    consecutive ``seq_len`` windows, or windows (2-D); ``text``: tokenized as
    :func:`moetopo.capture.tokenize` does; neither: the zoo's held-out windows
    (``windows`` per domain). ``seq_len``: the zoo's 128 unless given, at most the
    model's ``max_position_embeddings``.
    """
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # a bar per load floods the stage's log

    model_dir = Path(model_dir)
    om = open_model(model_dir)
    plans = layer_plans(om, read_selection(reductions_per_layer or {}))
    routing = drop_routing(om, plans) if plans and _kind(plans) == "drop" else None
    merged = {layer: merged_weights(om, plan) for layer, plan in plans.items()}
    if token_ids is not None and text is not None:
        raise MoetopoError("give token_ids or text, not both")
    max_len = _max_positions(om.checkpoint.config)
    entry = zoo_entry(model_dir)
    if seq_len is None:
        seq_len = int((entry or {}).get("hyperparameters", {}).get("seq_len", ZOO_SEQ_LEN))
    seq_len = min(seq_len, max_len) if max_len else seq_len
    groups, data, digest = _data(model_dir, token_ids, text, seq_len, windows)
    vocab = _vocab(om.checkpoint.config)
    for name, rows in groups.items():
        if any(len(r) < 2 for r in rows):
            raise MoetopoError(f"{name}: every sequence needs at least 2 tokens")
        top = max(int(np.max(r)) for r in rows)
        if vocab and top >= vocab:
            raise MoetopoError(f"{name}: token id {top} is outside the vocabulary of {vocab}")
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype))
    model.eval()
    full_state, reduced_state = _states(model, om, plans, merged, routing)
    totals: dict[str, dict[str, float]] = {}
    with torch.no_grad():
        for name, rows in groups.items():
            ce_full = ce_red = kl = 0.0
            count = 0
            for x in _batches(rows, batch):
                _apply(full_state)
                logits_full = model(input_ids=x).logits[:, :-1].float()
                logits_red = logits_full
                if plans:
                    _apply(reduced_state)
                    logits_red = model(input_ids=x).logits[:, :-1].float()
                target = x[:, 1:]
                ce_full += _cross_entropy(logits_full, target)
                ce_red += _cross_entropy(logits_red, target)
                kl += _kl(logits_full, logits_red)
                count += target.numel()
            totals[name] = {
                "loss": ce_red / count,
                "full_loss": ce_full / count,
                "kl": kl / count,
                "tokens": count,
            }
    _apply(full_state)
    if data == "zoo-heldout":
        means = {
            k: float(np.mean([t[k] for t in totals.values()])) for k in ("loss", "full_loss", "kl")
        }
    else:
        t = next(iter(totals.values()))
        means = {k: float(t[k]) for k in ("loss", "full_loss", "kl")}
    reference = None
    if data == "zoo-heldout" and entry is not None and digest == _manifest_digest(model_dir):
        reference = float(entry["score"])
    return EndToEnd(
        loss=means["loss"],
        full_loss=means["full_loss"],
        kl=means["kl"],
        tokens=int(sum(t["tokens"] for t in totals.values())),
        data=data,
        windows=sum(len(rows) for rows in groups.values()),
        seq_len=seq_len,
        by_domain=totals if data == "zoo-heldout" else {},
        reference_score=reference,
        corpus_digest=digest,
    )


def _kind(plans: Mapping[int, LayerPlan]) -> str:
    return next(iter(plans.values())).kind


def _cross_entropy(logits, target) -> float:
    import torch

    loss = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), target.reshape(-1), reduction="sum"
    )
    return float(loss)


def _kl(logits_full, logits_red) -> float:
    import torch

    lp = torch.log_softmax(logits_full.double(), dim=-1)
    lq = torch.log_softmax(logits_red.double(), dim=-1)
    return float(torch.sum(lp.exp() * (lp - lq)))


def _batches(rows: list[np.ndarray], batch: int):
    """Equal-length rows batched in order, ``batch`` at a time."""
    import torch

    i = 0
    while i < len(rows):
        j = i
        while j < len(rows) and j - i < batch and len(rows[j]) == len(rows[i]):
            j += 1
        yield torch.from_numpy(np.stack(rows[i:j]).astype(np.int64))
        i = j


# ---------------------------------------------------------------------------------------
# Data


@functools.lru_cache(maxsize=1)
def zoo_corpus():
    """The zoo's corpus, rebuilt from this Python's standard library (about 5 s)."""
    from moetopo.zoo.corpus import build_corpus

    return build_corpus()


def _data(model_dir: Path, token_ids, text, seq_len: int, windows: int):
    if token_ids is not None:
        ids = np.asarray(token_ids, dtype=np.int64)
        if ids.ndim == 2:
            return {"token_ids": list(ids)}, "token_ids", None
        if ids.ndim != 1:
            raise MoetopoError(f"token_ids has {ids.ndim} dimensions, not 1 (a stream) or 2")
        return {"token_ids": _consecutive(ids, seq_len)}, "token_ids", None
    if text is not None:
        from moetopo.capture import tokenize

        ids, _ = tokenize(model_dir, text)
        return {"text": _consecutive(np.asarray(ids, dtype=np.int64), seq_len)}, "text", None
    from moetopo.zoo.corpus import DOMAINS, fixed_windows

    corpus = zoo_corpus()
    groups = {
        domain: list(fixed_windows(corpus.streams[domain, "heldout"], windows, seq_len))
        for domain in DOMAINS
    }
    return groups, "zoo-heldout", corpus.digest


def _consecutive(ids: np.ndarray, seq_len: int) -> list[np.ndarray]:
    rows = [ids[i : i + seq_len] for i in range(0, len(ids), seq_len)]
    rows = [r for r in rows if len(r) >= 2]
    if not rows:
        raise MoetopoError(f"{len(ids)} token(s): nothing to predict")
    return rows


def zoo_entry(model_dir: Path) -> dict | None:
    """The zoo manifest's record of ``model_dir`` (a model the zoo built), else None."""
    path = model_dir.parent / "manifest.json"
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    for entry in manifest.get("models", []) if isinstance(manifest, dict) else []:
        if isinstance(entry, dict) and entry.get("id") == model_dir.name:
            return entry
    return None


def transformers_loads(model_dir: Path) -> bool:
    """Whether transformers can load the model for the evaluation: any checkpoint but a zoo
    model moetopo built with its own class (CT-MoE: the manifest names a ``model_class``)."""
    entry = zoo_entry(model_dir)
    return entry is None or "model_class" not in entry


def _manifest_digest(model_dir: Path) -> str | None:
    try:
        manifest = json.loads((model_dir.parent / "manifest.json").read_text(encoding="utf-8"))
        return manifest["corpus"]["digest"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _max_positions(config: dict) -> int | None:
    value = config.get("max_position_embeddings")
    return value if isinstance(value, int) and value > 0 else None


def _vocab(config: dict) -> int | None:
    value = config.get("vocab_size")
    return value if isinstance(value, int) and value > 0 else None


# ---------------------------------------------------------------------------------------
# The reduced model in memory

_Assignment = tuple[Any, str, Any]  # (object, attribute, value)


def _apply(state: list[_Assignment]) -> None:
    for obj, name, value in state:
        setattr(obj, name, value)


def _states(model, om: OpenModel, plans, merged, routing: DropRouting | None):
    """(full, reduced): the attribute assignments that make ``model`` each of them."""
    full: list[_Assignment] = []
    reduced: list[_Assignment] = []
    if not plans:
        return full, reduced
    layers = _decoder_layers(model, om)
    for layer, plan in plans.items():
        router, experts = _moe_modules(layers[layer], om, layer)
        moe = om.layout.layers[layer]
        if plan.kind == "drop":
            changes = _drop_changes(router, experts, plan, moe.n_experts, routing)
        else:
            changes = _map_changes(experts, plan, merged[layer], moe.n_experts, om, layer)
        for obj, name, value in changes:
            full.append((obj, name, getattr(obj, name)))
            reduced.append((obj, name, value))
    return full, reduced


def _decoder_layers(model, om: OpenModel):
    import torch

    n = om.layout.n_layers
    for name, module in model.named_modules():
        if name.endswith("layers") and isinstance(module, torch.nn.ModuleList) and len(module) >= n:
            return module
    raise MoetopoError(f"{om.layout.root}: no list of {n} decoder layers in {type(model).__name__}")


def _moe_modules(decoder, om: OpenModel, layer: int):
    """(router, experts) modules of a decoder layer, found by what they hold."""
    import torch

    moe = om.layout.layers[layer]
    n, hidden = moe.n_experts, om.layout.hidden_size
    routers, experts = [], []
    for module in decoder.modules():
        weight = module._parameters.get("weight") if hasattr(module, "_parameters") else None
        if (
            isinstance(weight, torch.nn.Parameter)
            and weight.ndim == 2
            and tuple(weight.shape) == (n, hidden)
            and hasattr(module, "top_k")
        ):
            routers.append(module)
        elif hasattr(module, "num_experts") and any(
            p.ndim >= 2 and p.shape[0] == n for p in module.parameters(recurse=False)
        ):
            experts.append(module)
    if len(routers) != 1 or len(experts) != 1:
        raise MoetopoError(
            f"{om.layout.root}: layer {layer}: cannot find one router and one fused experts "
            f"module in {type(decoder).__name__} (found {len(routers)} and {len(experts)}); "
            "only transformers MoE blocks with stacked expert parameters are supported"
        )
    return routers[0], experts[0]


def _expert_indexed(module, n: int):
    """Parameters and buffers of ``module`` itself with a leading axis of ``n``."""
    for name, p in list(module._parameters.items()) + list(module._buffers.items()):
        if p is not None and p.ndim >= 1 and p.shape[0] == n:
            yield name, p


def _replaced(module, name: str, value):
    import torch

    if name in module._parameters:
        return torch.nn.Parameter(value, requires_grad=False)
    return value


def _drop_changes(router, experts, plan: LayerPlan, n: int, routing: DropRouting):
    import torch

    index = torch.as_tensor(plan.kept, dtype=torch.long)
    k = len(plan.kept)
    changes: list[_Assignment] = []
    for module in (router, experts):
        for name, p in _expert_indexed(module, n):
            changes.append((module, name, _replaced(module, name, p.data[index].clone())))
        if isinstance(getattr(module, "num_experts", None), int):
            changes.append((module, "num_experts", k))
    changes.append((router, "top_k", routing.top_k))
    if routing.groups_changed:
        for name, value in (("num_group", routing.n_group), ("n_group", routing.n_group),
                            ("topk_group", routing.topk_group)):  # fmt: skip
            if hasattr(router, name):
                changes.append((router, name, value))
    return changes


def _map_changes(experts, plan: LayerPlan, merged, n: int, om: OpenModel, layer: int):
    import torch

    changes: list[_Assignment] = []
    for name, p in _expert_indexed(experts, n):
        values = p.data.clone()
        for e in range(n):
            t = int(plan.target[e])
            if t in merged:
                stored = _module_slice(experts, name, merged[t], om, layer)
                if tuple(stored.shape) != tuple(values[e].shape):
                    raise MoetopoError(
                        f"{om.layout.root}: layer {layer}: merged {name} has shape "
                        f"{tuple(stored.shape)}, the module holds {tuple(values[e].shape)}"
                    )
                values[e] = torch.from_numpy(stored).to(values.dtype)
            elif t != e:
                values[e] = p.data[t]
        changes.append((experts, name, _replaced(experts, name, values)))
    return changes


def _module_slice(experts, name: str, w: ExpertWeights, om: OpenModel, layer: int):
    """One expert's value of the transformers parameter ``name`` from canonical weights."""
    transposed = bool(getattr(experts, "is_transposed", False))
    concatenated = bool(getattr(experts, "is_concatenated", True))
    base, bias = name.removesuffix("_bias"), name.endswith("_bias")
    suffix = "_bias" if bias else ""
    if base == "gate_up_proj":
        gate, up = getattr(w, "gate" + suffix), getattr(w, "up" + suffix)
        if concatenated:
            values = np.concatenate([gate, up], axis=0)
        else:
            values = np.empty((gate.shape[0] * 2, *gate.shape[1:]), dtype=np.float32)
            values[0::2], values[1::2] = gate, up
    elif base in ("up_proj", "down_proj", "gate_proj"):
        values = getattr(w, base.removesuffix("_proj") + suffix)
    else:
        raise MoetopoError(
            f"{om.layout.root}: layer {layer}: cannot place merged weights into the experts "
            f"parameter {name!r}"
        )
    if values is None:
        raise MoetopoError(f"{om.layout.root}: layer {layer}: merged weights lack {name}")
    if values.ndim == 2 and transposed:
        values = values.T
    return np.ascontiguousarray(values, dtype=np.float32)
