"""Probe tokens: the weights-only stand-in for real hidden states.

Without captured logits (:mod:`moetopo.checkpoint.captured`), moetopo routes rows of
the input embedding, normalised as the model's first norm would normalise them; without
captured router inputs, it compares experts on those rows too (:func:`layer_inputs`).
"""

from __future__ import annotations

import numpy as np

from moetopo.checkpoint.captured import load_inputs
from moetopo.checkpoint.layout import ModelLayout
from moetopo.checkpoint.model import OpenModel
from moetopo.errors import MoetopoError
from moetopo.families.moe_rules import config_value, is_finite_number

_FIRST_NORM_WORDS = (
    "input",
    "attn_norm",
    "attn_layer_norm",
    "ln_1",
    "norm_1",
    "norm1",
    "operator_norm",
    "attention_norm",
)


def embedding_tensor(layout: ModelLayout) -> str:
    """The input embedding of the first stack (an encoder's own ``embed_tokens`` when it is
    not tied to the shared one), else the largest non-MTP tensor with role ``embed``."""
    names = [n for n in layout.tensors_of("embed") if not layout.roles[n].mtp]
    if not names:
        raise MoetopoError(f"{layout.root}: no input embedding found to draw probe tokens from")
    stacks = [f"{s['name']}." for s in layout.stacks] if len(layout.stacks) > 1 else []

    def preference(name: str) -> int:  # the first stack's own, then a shared one
        if stacks and stacks[0] in name:
            return 2
        return 0 if any(s in name for s in stacks) else 1

    return max(names, key=lambda n: (preference(n), layout.logical[n].numel, n))


def first_norm(layout: ModelLayout) -> tuple[str | None, str | None]:
    """(weight, bias) of the norm the first layer applies to its input, if any."""
    hidden = layout.hidden_size
    norms = [
        n
        for n in layout.tensors_of("norm")
        if layout.roles[n].layer is not None
        and not layout.roles[n].mtp
        and layout.logical[n].shape == (hidden,)
    ]
    if not norms:
        return None, None
    first_layer = min(layout.roles[n].layer for n in norms)
    candidates = sorted(n for n in norms if layout.roles[n].layer == first_layer)
    weights = [n for n in candidates if not n.endswith("bias")]
    preferred = [n for n in weights if any(w in n for w in _FIRST_NORM_WORDS)]
    weight = (preferred or weights or [None])[0]
    bias = weight[: -len("weight")] + "bias" if weight and weight.endswith("weight") else None
    return weight, bias if bias in layout.logical else None


def read_rows(model: OpenModel, name: str, rows: np.ndarray) -> np.ndarray:
    """Rows ``rows`` of a 2-D tensor, reading each run of consecutive rows once."""
    rows = np.asarray(rows)
    order = np.argsort(rows, kind="stable")
    sorted_rows = rows[order]
    out = np.empty((rows.size, model.layout.logical[name].shape[1]), dtype=np.float32)
    start = 0
    while start < rows.size:
        stop = start + 1
        while stop < rows.size and sorted_rows[stop] - sorted_rows[stop - 1] <= 1:
            stop += 1
        first, last = int(sorted_rows[start]), int(sorted_rows[stop - 1])
        block = model.reader.read(name, rows=(first, last + 1))
        out[order[start:stop]] = block[sorted_rows[start:stop] - first]
        start = stop
    return out


# config.json keys of the norms' epsilon, unless the family names its own (LFM2: norm_eps)
_EPS_KEYS = ["rms_norm_eps", "layer_norm_eps", "layer_norm_epsilon", "norm_eps"]


def normalised_embeddings(model: OpenModel, token_ids: np.ndarray) -> np.ndarray:
    """Embedding rows of ``token_ids`` after the first layer's norm (RMSNorm or LayerNorm)."""
    layout = model.layout
    x = read_rows(model, embedding_tensor(layout), token_ids).astype(np.float64)
    x = x * _embedding_scale(model.checkpoint.config, layout.hidden_size)
    if layout.spec.defaults.get("norm") == "none":  # no norm before the sublayers (OLMo-2)
        return x.astype(np.float32)
    weight, bias = first_norm(layout)
    eps = config_value(model.checkpoint.config, layout.spec.config.get("norm_eps") or _EPS_KEYS)
    if not is_finite_number(eps) or eps < 0:
        eps = layout.spec.defaults.get("norm_eps", 1e-6)
    if bias is not None or layout.spec.defaults.get("norm") == "layernorm":  # subtract mean
        x = x - x.mean(axis=1, keepdims=True)
    x = x / np.sqrt(np.mean(x**2, axis=1, keepdims=True) + eps)
    if weight is not None:
        w = model.reader.read(weight).astype(np.float64)
        x = x * ((1.0 + w) if layout.spec.defaults.get("norm_offset") else w)
    if bias is not None:
        x = x + model.reader.read(bias)
    return x.astype(np.float32)


def _embedding_scale(config: dict, hidden: int) -> float:
    """What the model multiplies its embeddings by before layer 0: sqrt(d_model) under
    ``scale_embedding`` (NLLB, M2M), Granite's ``embedding_multiplier``; else 1. It moves
    a norm's output only through its epsilon, but the probe is the model's own input."""
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else {}
    for source in (config, text):
        if source.get("scale_embedding") is True:
            return float(np.sqrt(hidden))
        multiplier = source.get("embedding_multiplier")
        if is_finite_number(multiplier) and multiplier > 0:
            return float(multiplier)
    return 1.0


def probe_token_ids(model: OpenModel, n_tokens: int, seed: int) -> np.ndarray:
    """``n_tokens`` distinct vocabulary ids (all of them if the vocabulary is smaller)."""
    vocab = model.layout.logical[embedding_tensor(model.layout)].shape[0]
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(vocab, size=min(n_tokens, vocab), replace=False))


def function_probe(
    model: OpenModel, n_tokens: int, seed: int
) -> tuple[np.ndarray, str, float | None]:
    """(probe inputs, activation, SwiGLU clamp) on which expert outputs are compared.

    The function distance and the merge barriers both use it, so they measure the
    experts on the same tokens with the same activation.
    """
    x = normalised_embeddings(model, probe_token_ids(model, n_tokens, seed))
    return x, *expert_activation(model)


def expert_activation(model: OpenModel) -> tuple[str, float | None]:
    """(activation, SwiGLU clamp) of the model's experts."""
    return model.layout.activation, model.checkpoint.config.get("swiglu_limit")


def layer_inputs(
    model: OpenModel, layer: int, n_tokens: int, seed: int, captured: str | None = None
) -> tuple[np.ndarray, str, float | None, str]:
    """(inputs, activation, SwiGLU clamp, origin) on which ``layer``'s experts are compared.

    The router's inputs captured for that layer (origin "captured"; at most ``n_tokens``
    of them, drawn with ``seed``) are the hidden states the layer really sees; the probe
    (origin "probe") is the weights-only stand-in, the same for every layer.
    """
    rows = None if captured is None else load_inputs(captured, layer)
    if rows is None:
        return (*function_probe(model, n_tokens, seed), "probe")
    hidden = model.layout.hidden_size
    if rows.shape[1] != hidden:
        raise MoetopoError(
            f"{captured}: layer {layer} router inputs have width {rows.shape[1]}, but the "
            f"model's hidden size is {hidden}"
        )
    if not np.all(np.isfinite(rows)):
        raise MoetopoError(f"{captured}: layer {layer} router inputs hold NaN or infinity")
    if len(rows) > n_tokens:
        pick = np.random.default_rng(seed).choice(len(rows), size=n_tokens, replace=False)
        rows = rows[np.sort(pick)]
    return rows, *expert_activation(model), "captured"
