"""Capture per-layer router logits of a checkpoint on real text, for the routing stage.

``python -m moetopo.capture MODEL_DIR --text FILE --out FILE`` loads any causal or
encoder-decoder LM that transformers can load (no remote code), runs the text through
it in batches and saves, per MoE layer, the raw router logits: the router linear's
output, before softmax, sigmoid, correction bias or top-k; and, for an evenly spaced
sample of tokens, the hidden states the router reads (the MoE block's input in every
family moetopo reads; Llama-4's experts see it scaled by the router score), on which
the function distance and merge barriers measure the experts. Routers are found by the
modules transformers declares as router-logit outputs, else by name, and read with
forward hooks on the router linear, not with ``output_router_logits``: hooks name the
module (hence the layer index, even when dense layers are interleaved) and need no
argument that not every family's forward accepts. torch and transformers are imported
only when called.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

SOURCE = "moetopo.capture"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "vocab.json")
ROUTER_NAMES = re.compile(r"(?:^|\.)(gate|router|gating|switch)$")
LAYER_INDEX = re.compile(r"(?:^|\.)(?:layers|layer|h|blocks|block)\.(\d+)(?:\.|$)")


def _recorder_targets(model: Any) -> list[tuple[type | None, str | None, str | None]]:
    """transformers 5 declares which modules output router logits; read that."""
    spec = (getattr(model, "_can_record_outputs", None) or {}).get("router_logits")
    if spec is None:
        return []
    specs = spec if isinstance(spec, (list, tuple)) else [spec]
    return [
        (s, None, None)
        if isinstance(s, type)
        else (
            getattr(s, "target_class", None),
            getattr(s, "class_name", None),
            getattr(s, "layer_name", None),
        )
        for s in specs
    ]


def _router_linear(name: str, module: Any, hidden: int | None) -> tuple[str, Any] | None:
    """(name, module) of what owns the router's [experts, hidden] weight: the router
    itself (Mixtral, Llama-4) or its linear child (Switch's classifier, DBRX's layer)."""
    children = [(f"{name}.{child}", m) for child, m in module.named_children()]
    for candidate_name, candidate in [(name, module), *children]:
        weight = getattr(candidate, "weight", None)
        if (
            weight is not None
            and weight.ndim == 2
            and weight.shape[0] > 1
            and (hidden is None or weight.shape[1] == hidden)
        ):
            return candidate_name, candidate
    return None


def _in_attention(name: str) -> bool:
    """JetMoE's mixture of attention heads has routers too; moetopo reads MoE FFNs."""
    return bool(re.search(r"(?:^|\.)(?:self_)?att(?:n|ention)(?:\.|$)", name))


def find_routers(model: Any) -> list[tuple[str, Any]]:
    """(name, module) of the router linear of every routed FFN of the model."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else None
    hidden = getattr(config or model.config, "hidden_size", None)
    hidden = hidden or getattr(model.config, "d_model", None)
    targets = _recorder_targets(model)
    declared, named = [], []
    for name, module in model.named_modules():
        if _in_attention(name) or "vision" in name:
            continue
        for cls, class_name, layer_name in targets:
            by_class = cls is not None and isinstance(module, cls)
            by_name = class_name is not None and type(module).__name__.endswith(class_name)
            if (by_class or by_name) and (layer_name is None or layer_name in name):
                declared.append((name, module))
                break
        if ROUTER_NAMES.search(name):
            named.append((name, module))
    found = [_router_linear(name, module, hidden) for name, module in declared or named]
    return [linear for linear in found if linear is not None]


def router_layers(model: Any) -> dict[int, tuple[str, Any]]:
    """moetopo layer -> (module name, router linear): the modules the capture hooks."""
    routers = find_routers(model)
    if not routers:
        raise ValueError(f"{type(model).__name__}: no router module found (is it an MoE model?)")
    layers: dict[int, tuple[str, Any]] = {}
    for position, (name, linear) in enumerate(routers):
        layer = layer_index(name, position, model.config)
        if layer in layers:
            raise ValueError(f"two routers map to layer {layer} (module {name})")
        layers[layer] = (name, linear)
    return dict(sorted(layers.items()))


def layer_index(name: str, position: int, config: Any = None) -> int:
    """moetopo's layer index from a module name like ``model.layers.3.mlp.gate``: an
    encoder-decoder's decoder layers are numbered after the encoder's, as model.json's
    stacks are."""
    match = LAYER_INDEX.search(name)
    layer = int(match.group(1)) if match else position
    seq2seq = config is not None and getattr(config, "is_encoder_decoder", False)
    if seq2seq and re.search(r"(?:^|\.)decoder\.", name):
        encoder = getattr(config, "encoder_layers", None) or getattr(config, "num_layers", 0)
        layer += int(encoder)
    return layer


def byte_ids(text: str) -> list[int]:
    """The zoo's tokenizer: UTF-8 bytes are the token ids."""
    return list(text.encode("utf-8"))


def tokenize(model_dir: Path, text: str) -> tuple[list[int], str]:
    """The model's own tokenizer when the directory ships one, else byte-level ids."""
    if any((model_dir / f).exists() for f in TOKENIZER_FILES):
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=False)
        return list(tok(text, add_special_tokens=False)["input_ids"]), "model"
    return byte_ids(text), "byte"


def tokenize_domains(
    model_dir: Path, raw: bytes, domains: Mapping[str, tuple[int, int]]
) -> tuple[list[int], str, dict[str, list[int]]]:
    """Each domain's byte range [start, stop) of the text tokenised on its own, in text
    order: the ids, the tokenizer used and each domain's token range [first, stop), so
    routing can be told apart by domain (the zoo's code and prose)."""
    ordered = sorted(domains.items(), key=lambda item: item[1][0])
    end = 0
    for name, (start, stop) in ordered:
        if not end <= start < stop <= len(raw):
            raise ValueError(
                f"domain {name!r}: bytes [{start}, {stop}) are empty, overlap another "
                f"domain or leave the {len(raw)}-byte text"
            )
        end = stop
    ids: list[int] = []
    spans: dict[str, list[int]] = {}
    kind = "byte"
    for name, (start, stop) in ordered:
        part, kind = tokenize(model_dir, raw[start:stop].decode("utf-8"))
        spans[name] = [len(ids), len(ids) + len(part)]
        ids += part
    return ids, kind, spans


def batches(ids: Sequence[int], seq_len: int, batch_size: int) -> Iterator[list[list[int]]]:
    """Consecutive windows of ``seq_len`` tokens; equal-length windows batched, no padding."""
    windows = [list(ids[i : i + seq_len]) for i in range(0, len(ids), seq_len)]
    full = [w for w in windows if len(w) == seq_len]
    for i in range(0, len(full), batch_size):
        yield full[i : i + batch_size]
    if windows and len(windows[-1]) < seq_len:
        yield [windows[-1]]


def capture_logits(
    model: Any,
    ids: Sequence[int],
    seq_len: int,
    batch_size: int = 8,
    routers: dict[int, tuple[str, Any]] | None = None,
    inputs_at: Sequence[int] = (),
) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray]]:
    """Router logits per moetopo layer, [tokens, n_experts] float32, in text order, and
    the router's input at the token positions ``inputs_at`` (sorted), [len, hidden].

    Each router linear's output is computed from its own input (weight, and bias where
    the linear has one) in float32, so it is the logits whatever the router module
    returns (Llama-4's returns its sigmoid scores first). ``routers`` is
    :func:`router_layers` of the model, found here when not given."""
    import torch

    keep = np.asarray(inputs_at, dtype=np.int64)
    store: dict[int, list[np.ndarray]] = {}
    inputs: dict[int, list[np.ndarray]] = {}
    handles = []
    for layer, (_, linear) in (routers or router_layers(model)).items():
        store[layer], inputs[layer] = [], []

        def hook(module: Any, args: tuple, _out: Any, layer: int = layer) -> None:
            x = args[0].detach().float()
            bias = getattr(module, "bias", None)
            logits = torch.nn.functional.linear(
                x, module.weight.float(), None if bias is None else bias.float()
            )
            rows = x.reshape(-1, x.shape[-1])
            start = sum(len(chunk) for chunk in store[layer])  # text position of row 0
            chosen = keep[(keep >= start) & (keep < start + len(rows))] - start
            if chosen.size:
                inputs[layer].append(rows[torch.from_numpy(chosen)].cpu().numpy())
            store[layer].append(logits.reshape(-1, logits.shape[-1]).cpu().numpy())

        handles.append(linear.register_forward_hook(hook))
    model.eval()
    device = next(model.parameters()).device
    seq2seq = bool(getattr(model.config, "is_encoder_decoder", False))
    try:
        with torch.no_grad():
            for rows in batches(ids, seq_len, batch_size):
                batch = torch.tensor(rows, dtype=torch.long, device=device)
                # an encoder-decoder reads the text on both sides (teacher forcing)
                extra = {"decoder_input_ids": batch} if seq2seq else {}
                model(input_ids=batch, use_cache=False, **extra)
    finally:
        for h in handles:
            h.remove()
    result = {layer: np.concatenate(chunks) for layer, chunks in sorted(store.items()) if chunks}
    for layer, arr in result.items():
        if arr.shape[0] != len(ids):
            raise ValueError(f"layer {layer}: captured {arr.shape[0]} rows for {len(ids)} tokens")
    sampled = {layer: np.concatenate(inputs[layer]) for layer in result if inputs[layer]}
    return result, sampled


def input_positions(n_tokens: int, n_inputs: int) -> np.ndarray:
    """``n_inputs`` evenly spaced token positions of ``n_tokens`` (all when fewer)."""
    if n_inputs <= 0 or n_tokens <= 0:
        return np.zeros(0, dtype=np.int64)
    return np.unique(np.linspace(0, n_tokens - 1, min(n_inputs, n_tokens)).round()).astype(int)


def save_npz(
    path: Path,
    logits: dict[int, np.ndarray],
    meta: dict[str, Any],
    dtype: str,
    token_ids: Sequence[int] | None = None,
    inputs: dict[int, np.ndarray] | None = None,
    positions: Sequence[int] | None = None,
) -> None:
    """The captured-routing format: ``layer_<L>`` arrays, a JSON ``meta`` string,
    (optionally) the ``token_ids`` each row was computed for and, per layer, the router's
    inputs ``inputs_<L>`` at the token positions ``input_positions``."""
    arrays = {f"layer_{layer}": arr.astype(dtype) for layer, arr in sorted(logits.items())}
    arrays["meta"] = np.array(json.dumps(meta, sort_keys=True))
    if token_ids is not None:
        arrays["token_ids"] = np.asarray(token_ids, dtype=np.int32)
    if inputs:
        arrays |= {f"inputs_{layer}": arr.astype(dtype) for layer, arr in sorted(inputs.items())}
        arrays["input_positions"] = np.asarray(positions, dtype=np.int64)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)


def capture_file(
    model_dir: Path,
    text_path: Path,
    out: Path,
    *,
    seq_len: int | None = None,
    batch_size: int = 8,
    max_tokens: int | None = None,
    dtype: str = "auto",
    store_dtype: str = "float16",
    model_id: str | None = None,
    model: Any = None,
    n_inputs: int = 256,
    domains: Mapping[str, tuple[int, int]] | None = None,
) -> dict[str, Any]:
    """Load (unless given), tokenize, capture and save; returns the ``meta`` record.
    ``n_inputs`` tokens' router inputs are kept per layer (0: none). ``domains`` names
    byte ranges of the text (each tokenised on its own); ``meta["domains"]`` then holds
    each one's token range."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM

    model_dir = Path(model_dir)
    raw = Path(text_path).read_bytes()
    text = raw.decode("utf-8")
    if model is None:
        torch_dtype = dtype if dtype == "auto" else getattr(torch, dtype)
        config = AutoConfig.from_pretrained(model_dir, trust_remote_code=False)
        auto = AutoModelForSeq2SeqLM if config.is_encoder_decoder else AutoModelForCausalLM
        model = auto.from_pretrained(model_dir, dtype=torch_dtype, trust_remote_code=False)
    if domains:
        ids, tokenizer, spans = tokenize_domains(model_dir, raw, domains)
    else:
        (ids, tokenizer), spans = tokenize(model_dir, text), {}
    if tokenizer == "byte" and model.config.vocab_size < 256:
        raise ValueError(f"{model_dir}: no tokenizer and vocab_size < 256, cannot use byte ids")
    if max_tokens is not None:
        ids = ids[:max_tokens]
        spans = {k: [a, min(b, len(ids))] for k, (a, b) in spans.items() if a < len(ids)}
    if not ids:
        raise ValueError(f"{text_path}: no tokens to capture")
    limit = getattr(model.config, "max_position_embeddings", None) or 512
    seq_len = seq_len or min(512, int(limit))
    routers = router_layers(model)
    positions = input_positions(len(ids), n_inputs)
    logits, inputs = capture_logits(model, ids, seq_len, batch_size, routers, positions)
    meta = {
        "model": model_id or model_dir.name,
        "tokens": len(ids),
        "source": SOURCE,
        "text_digest": hashlib.sha256(raw).hexdigest(),
        "dtype": store_dtype,
        "compute_dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "tokenizer": tokenizer,
        "seq_len": seq_len,
        "layers": sorted(logits),
        "architecture": type(model).__name__,
        # the module each layer's logits were read from, as the model names it
        "routers": {str(layer): name for layer, (name, _) in routers.items()},
        "inputs": {
            "tokens": int(positions.size),
            "hidden": int(next(iter(inputs.values())).shape[1]) if inputs else 0,
            "bytes": int(sum(a.size for a in inputs.values()) * np.dtype(store_dtype).itemsize),
        },
    }
    if spans:
        meta["domains"] = spans
    save_npz(Path(out), logits, meta, store_dtype, ids, inputs, positions)
    return meta


def parse_domains(specs: Sequence[str]) -> dict[str, tuple[int, int]]:
    """``NAME=START:STOP`` arguments as name -> byte range."""
    domains = {}
    for spec in specs:
        name, _, span = spec.partition("=")
        start, _, stop = span.partition(":")
        if not (name and start.isdigit() and stop.isdigit()):
            raise ValueError(f"--domain {spec!r} is not NAME=START:STOP")
        domains[name] = (int(start), int(stop))
    return domains


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m moetopo.capture", description=__doc__.split("\n")[0]
    )
    parser.add_argument("model_dir", type=Path, help="checkpoint directory transformers can load")
    parser.add_argument("--text", type=Path, required=True, help="UTF-8 text file to route")
    parser.add_argument("--out", type=Path, required=True, help="output .npz")
    parser.add_argument(
        "--seq-len", type=int, default=None, help="window length (default: min(512, max positions))"
    )
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=None)
    dtypes = ["auto", "float32", "bfloat16", "float16"]
    parser.add_argument(
        "--dtype", default="auto", choices=dtypes, help="compute dtype of the model"
    )
    parser.add_argument("--store-dtype", default="float16", choices=["float16", "float32"])
    parser.add_argument(
        "--inputs",
        type=int,
        default=256,
        help="tokens (evenly spaced) whose router inputs are kept per layer; 0 for none",
    )
    parser.add_argument(
        "--model-id", default=None, help="name recorded in meta (default: directory name)"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument(
        "--domain",
        action="append",
        default=[],
        metavar="NAME=START:STOP",
        help="a named byte range of the text (repeat; e.g. code=0:1540 prose=1540:3108): "
        "meta records each one's tokens, for per-domain routing",
    )
    args = parser.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    try:
        meta = capture_file(
            args.model_dir, args.text, args.out, seq_len=args.seq_len, batch_size=args.batch_size,
            max_tokens=args.max_tokens, dtype=args.dtype, store_dtype=args.store_dtype,
            model_id=args.model_id, n_inputs=args.inputs, domains=parse_domains(args.domain),
        )  # fmt: skip
    except (OSError, ValueError) as exc:
        print(f"moetopo.capture: {exc}", file=sys.stderr)
        return 1
    kept = meta["inputs"]
    print(
        f"wrote {args.out}: {meta['tokens']} {meta['tokenizer']} tokens, layers "
        f"{meta['layers']}; router inputs of {kept['tokens']} tokens x {kept['hidden']} per "
        f"layer ({kept['bytes'] / 2**20:.1f} MiB)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
