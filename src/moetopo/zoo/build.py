"""Build the zoo: train every spec, save it as transformers does, capture routing, record.

Each model directory is exactly what ``save_pretrained`` writes (hub tensor names, BF16,
>= 2 shards), plus ``router_logits.npz`` captured from the saved weights on held-out
text. Scores are measured on the model reloaded from disk, so they describe the files.
"""

from __future__ import annotations

import json
import platform
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from moetopo.capture import capture_file
from moetopo.zoo import manifest as mf
from moetopo.zoo.corpus import (
    DOMAINS,
    Corpus,
    CorpusLimits,
    build_corpus,
    probe_domains,
    probe_segments,
)
from moetopo.zoo.specs import (
    OWN_FAMILIES,
    FineTune,
    ModelSpec,
    class_names,
    config_kwargs,
    model_class,
    spec_record,
)
from moetopo.zoo.study import OOD_DOMAIN, StudyPoint
from moetopo.zoo.train import EVAL_WINDOWS, evaluate, new_model, round_to_bf16, setup_torch, train

PROBE_FILE = "heldout_sample.txt"
PROBE_BYTES = 1536  # per domain
EXPERT_NAME = re.compile(r"^model\.layers\.(\d+)\..*\.experts\.(\d+)\.")
SIZE_BUDGET = 25 * 1024 * 1024


@dataclass
class BuildOptions:
    out_dir: Path
    root: Path
    config_dir: Path | None
    threads: int = 1
    limits: CorpusLimits | None = None
    log: Callable[[str], None] = print


def _shard_budget(model: Any) -> int:
    """A max_shard_size that yields about three shards, so every model has >= 2."""
    total = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    return max(1, total // 3 + 1)


def save_model(model: Any, model_dir: Path) -> None:
    """BF16 weights in the hub layout; DeepSeek-V3's correction bias stays F32 as on the hub."""
    biases = {
        n: b.detach().clone()
        for n, b in model.named_buffers()
        if n.endswith("e_score_correction_bias")
    }
    model = model.to(torch.bfloat16)
    for name, value in biases.items():
        owner = model.get_submodule(name.rsplit(".", 1)[0])
        owner.e_score_correction_bias = value.float()
    if model_dir.exists():
        shutil.rmtree(model_dir)
    model.save_pretrained(model_dir, max_shard_size=_shard_budget(model), safe_serialization=True)


def tensor_shapes(model_dir: Path) -> dict[str, tuple[int, ...]]:
    """Names and shapes from the saved shards' headers (nothing is loaded)."""
    from safetensors import safe_open

    shapes: dict[str, tuple[int, ...]] = {}
    for shard in mf.shard_names(model_dir):
        with safe_open(model_dir / shard, framework="pt") as fh:
            for name in fh.keys():  # noqa: SIM118 - safe_open is not a mapping
                shapes[name] = tuple(fh.get_slice(name).get_shape())
    return shapes


def check_hub_layout(shapes: dict[str, tuple[int, ...]], log: Callable[[str], None]) -> None:
    """Fail unless experts are saved one tensor per expert, as the hub checkpoints are."""
    patterns = sorted({re.sub(r"\.\d+\.", ".N.", n) for n in shapes})
    log("  on-disk names: " + ", ".join(p for p in patterns if ".experts." in p or "gate" in p))
    fused = [
        n for n in shapes if "gate_up_proj" in n or re.search(r"\.experts\.(down|up|gate)_proj", n)
    ]
    if fused or not any(EXPERT_NAME.match(n) for n in shapes):
        raise RuntimeError(f"saved checkpoint is not in the hub per-expert layout: {fused[:3]}")


def param_counts(shapes: dict[str, tuple[int, ...]], top_k: int) -> dict[str, Any]:
    """Total parameters, and those one token activates (top-k of the routed experts)."""
    total = sum(int(np.prod(s)) for s in shapes.values())
    per_expert: dict[tuple[int, int], int] = {}
    for name, shape in shapes.items():
        match = EXPERT_NAME.match(name)
        if match:
            key = (int(match.group(1)), int(match.group(2)))
            per_expert[key] = per_expert.get(key, 0) + int(np.prod(shape))
    layers = sorted({layer for layer, _ in per_expert})
    inactive = 0
    for layer in layers:
        sizes = [v for (lay, _), v in per_expert.items() if lay == layer]
        inactive += (len(sizes) - top_k) * (sum(sizes) // len(sizes))
    return {"total": total, "activated": total - inactive, "moe_layers": layers}


def finish_model(
    model: Any,
    spec: ModelSpec,
    model_id: str,
    corpus: Corpus,
    probe: Path,
    opts: BuildOptions,
    losses: list[float],
    seconds: float,
    recipe: dict[str, Any] | None = None,
    domains: dict[str, tuple[int, int]] | None = None,
) -> dict[str, Any]:
    """Save, reload, score, capture (each domain's token range recorded, where
    ``domains`` gives the probe's byte ranges); return the manifest entry."""
    round_to_bf16(model)
    model_dir = opts.out_dir / model_id
    save_model(model, model_dir)
    shapes = tensor_shapes(model_dir)
    check_hub_layout(shapes, opts.log)
    reloaded = model_class(spec.family).from_pretrained(model_dir, dtype=torch.float32)
    scores = evaluate(reloaded, corpus, spec.seq_len)
    meta = capture_file(model_dir, probe, model_dir / mf.ROUTING_FILE, model_id=model_id,
                        model=reloaded, seq_len=spec.seq_len, domains=domains)  # fmt: skip
    train_loss = float(np.mean(list(scores["train"].values())))
    heldout = float(np.mean(list(scores["heldout"].values())))
    counts = param_counts(shapes, spec.top_k)
    entry = {
        "id": model_id,
        "family": spec.family,
        **class_record(spec.family),
        "hyperparameters": spec_record(spec) | (recipe or {}),
        "config_kwargs": config_kwargs(spec),
        "moe_layers": counts["moe_layers"],
        "steps": len(losses),
        "train_loss": round(train_loss, 6),
        "heldout_loss": round(heldout, 6),
        "score": round(heldout, 6),
        "gap": round(heldout - train_loss, 6),
        "heldout_by_domain": {d: round(scores["heldout"][d], 6) for d in DOMAINS},
        "train_by_domain": {d: round(scores["train"][d], 6) for d in DOMAINS},
        "last_step_loss": round(float(np.mean(losses[-20:])), 6) if losses else None,
        "params_total": counts["total"],
        "params_activated": counts["activated"],
        "train_seconds": round(seconds, 1),
        "routing": {
            "file": mf.ROUTING_FILE,
            "tokens": meta["tokens"],
            "layers": meta["layers"],
            "inputs": meta["inputs"],
        },  # fmt: skip
        "shards": mf.shard_names(model_dir),
        "files": mf.describe_files(model_dir),
    }
    entry["bytes"] = sum(f["bytes"] for f in entry["files"])
    opts.log(
        f"  {model_id}: heldout {heldout:.4f} train {train_loss:.4f} "
        f"gap {heldout - train_loss:+.4f} "
        f"params {counts['total']} active {counts['activated']} shards {len(entry['shards'])}"
    )
    return entry


def class_record(family: str) -> dict[str, str]:
    """The manifest's record of the classes that built a model: transformers' own, or
    moetopo's for families transformers has not (their module named)."""
    config_class, model_class_name = class_names(family)
    if family not in OWN_FAMILIES:
        return {"transformers_class": model_class_name, "config_class": config_class}
    module = model_class(family).__module__
    return {
        "model_class": f"{module}.{model_class_name}",
        "config_class": f"{module}.{config_class}",
    }


def _versions() -> dict[str, str]:
    import transformers

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "numpy": np.__version__,
    }


def _remove_stale(out_dir: Path, keep: set[str]) -> None:
    """Delete model directories a previous manifest listed that this build no longer has."""
    if not (out_dir / mf.MANIFEST).exists():
        return
    for old in mf.read_manifest(out_dir).get("models", []):
        path = out_dir / old["id"]
        if old["id"] not in keep and path.is_dir():
            shutil.rmtree(path)


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _setup(opts: BuildOptions) -> None:
    setup_torch(opts.threads)
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()


def build_base(
    spec: ModelSpec,
    corpus: Corpus,
    probe: Path,
    spans: dict[str, tuple[int, int]],
    opts: BuildOptions,
    mixture: tuple[str, ...] = DOMAINS,
) -> tuple[dict[str, Any], Any]:
    """Train one base model on ``mixture`` and finish it: (manifest entry, trained model)."""
    t0 = time.time()
    model = new_model(spec)
    losses = train(
        model, corpus, spec, spec.steps, spec.lr, spec.seed, domains=mixture, log=opts.log
    )
    recipe = {"domains": list(mixture)} if mixture != DOMAINS else None
    entry = finish_model(
        model, spec, spec.id, corpus, probe, opts, losses, time.time() - t0, recipe, spans
    )
    return entry, model


def built_probe(
    out_dir: Path, manifest: dict[str, Any]
) -> tuple[Corpus, dict[str, tuple[int, int]]]:
    """The corpus a built zoo was trained on and its probe text's domain byte ranges,
    checked against the manifest's corpus digest and the probe file on disk."""
    corpus = build_corpus(CorpusLimits(**manifest["corpus"]["limits"]))
    if corpus.digest != manifest["corpus"]["digest"]:
        raise ValueError(
            f"{out_dir}: this Python's standard library gives corpus {corpus.digest[:12]}, the "
            f"zoo was built from {manifest['corpus']['digest'][:12]}; rebuild it whole"
        )
    segments = probe_segments(corpus, PROBE_BYTES)
    probe = out_dir / manifest["probe"]["file"]
    if probe.read_bytes() != "".join(segments.values()).encode("utf-8"):
        raise ValueError(f"{probe}: not the probe text of the zoo's corpus; rebuild it whole")
    return corpus, probe_domains(segments)


def add_models(
    specs: tuple[ModelSpec, ...], order: list[str], opts: BuildOptions
) -> dict[str, Any]:
    """Train ``specs`` (base models) into an already built zoo, keeping every other model
    as built: the manifest lists models in ``order``, each new entry with the versions
    that built it, and the sheets are written again."""
    manifest = mf.read_manifest(opts.out_dir)
    corpus, spans = built_probe(opts.out_dir, manifest)
    _setup(opts)
    probe = opts.out_dir / manifest["probe"]["file"]
    entries = {m["id"]: m for m in manifest["models"]}
    for spec in specs:
        opts.log(f"{spec.id} ({spec.family})")
        entry, _ = build_base(spec, corpus, probe, spans, opts)
        entries[spec.id] = entry | {"versions": _versions()}
    manifest["models"] = [entries[i] for i in order if i in entries]
    manifest["probe"]["domains"] = {d: list(span) for d, span in spans.items()}
    mf.write_manifest(opts.out_dir, manifest)
    manifest["total_bytes"] = dir_bytes(opts.out_dir)
    mf.write_manifest(opts.out_dir, manifest)
    if opts.config_dir is not None:
        mf.write_sheets(opts.root, opts.out_dir, manifest, opts.config_dir)
    return manifest


def build(
    specs: tuple[ModelSpec, ...],
    tuned: tuple[FineTune, ...],
    opts: BuildOptions,
    mixtures: dict[str, tuple[str, ...]] | None = None,
    built_by: str = "python -m moetopo.zoo",
) -> dict[str, Any]:
    """Train and save every model, then write the manifest and (optionally) the sheets.
    ``mixtures``: a base model's training domains (the cycle its batch rows follow) where
    not every domain in turn."""
    start = time.time()
    _setup(opts)
    out = opts.out_dir
    out.mkdir(parents=True, exist_ok=True)
    _remove_stale(out, {s.id for s in specs} | {t.id for t in tuned})
    corpus = build_corpus(opts.limits)
    opts.log(f"corpus {corpus.digest[:12]} {corpus.sizes()}")
    probe = out / PROBE_FILE
    segments = probe_segments(corpus, PROBE_BYTES)
    probe.write_text("".join(segments.values()), encoding="utf-8")
    spans = probe_domains(segments)
    by_id = {s.id: s for s in specs}
    weights: dict[str, dict[str, torch.Tensor]] = {}
    entries = []
    for spec in specs:
        opts.log(f"[{len(entries) + 1}/{len(specs) + len(tuned)}] {spec.id} ({spec.family})")
        mixture = (mixtures or {}).get(spec.id, DOMAINS)
        entry, model = build_base(spec, corpus, probe, spans, opts, mixture)
        entries.append(entry)
        weights[spec.id] = {k: v.clone() for k, v in model.state_dict().items()}
    for ft in tuned:
        opts.log(
            f"[{len(entries) + 1}/{len(specs) + len(tuned)}] {ft.id} <- {ft.base} on {ft.domain}"
        )
        t0 = time.time()
        spec = by_id[ft.base]
        model = new_model(spec)
        model.load_state_dict(weights[ft.base])
        losses = train(
            model, corpus, spec, ft.steps, ft.lr, ft.seed, domains=(ft.domain,), log=opts.log
        )
        recipe = {"steps": ft.steps, "lr": ft.lr, "seed": ft.seed, "domains": [ft.domain]}
        entry = finish_model(
            model, spec, ft.id, corpus, probe, opts, losses, time.time() - t0, recipe, spans
        )
        entry |= {"base": ft.base, "finetune_domain": ft.domain, "finetune_steps": ft.steps,
                  "finetune_lr": ft.lr, "finetune_seed": ft.seed}  # fmt: skip
        entries.append(entry)
    manifest: dict[str, Any] = {
        "format": 1,
        "built_by": built_by,
        "versions": _versions(),
        "threads": opts.threads,
        "corpus": {
            "source": "CPython standard library: code = .py sources, prose = ast docstrings",
            "python_version": corpus.python_version,
            "digest": corpus.digest,
            "bytes": corpus.sizes(),
            "files": {s: len(v) for s, v in corpus.files.items()},
            "limits": vars(corpus.limits),
            "split": "held-out iff sha256(relative path)[0] < 26",
            "tokens": "UTF-8 bytes 0..255, 256 = BOS (unused), 257 = EOS between documents",
        },
        "evaluation": {
            "windows_per_domain": EVAL_WINDOWS,
            "score": "mean held-out nats/byte over domains",
            "gap": "heldout_loss - train_loss",
        },  # fmt: skip
        "probe": {
            "file": PROBE_FILE,
            "sha256": mf.sha256_file(probe),
            "bytes": probe.stat().st_size,
            "domains": {d: list(span) for d, span in spans.items()},
        },
        "shared_files": [{"name": PROBE_FILE, "sha256": mf.sha256_file(probe)}],
        "models": entries,
    }
    manifest["build_seconds"] = round(time.time() - start, 1)
    mf.write_manifest(out, manifest)
    manifest["total_bytes"] = dir_bytes(out)
    mf.write_manifest(out, manifest)
    if manifest["total_bytes"] > SIZE_BUDGET and opts.config_dir is not None:
        opts.log(f"WARNING: {out} is {manifest['total_bytes']} bytes, over the 25 MB budget")
    if opts.config_dir is not None:
        mf.write_sheets(opts.root, out, manifest, opts.config_dir)
    opts.log(
        f"built {len(entries)} models in {manifest['build_seconds']} s, "
        f"{manifest['total_bytes']} bytes"
    )
    return manifest


def recapture(out_dir: Path, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Capture every model of a built zoo again (router logits and router inputs) from its
    saved weights, as the build does, and update the manifest's routing and file records.
    Weights, scores and everything else stay as built; each domain's tokens are recorded."""
    manifest = mf.read_manifest(out_dir)
    _, spans = built_probe(out_dir, manifest)
    probe = out_dir / manifest["probe"]["file"]
    for entry in manifest["models"]:
        model_dir = out_dir / entry["id"]
        model = model_class(entry["family"]).from_pretrained(model_dir, dtype=torch.float32)
        seq_len = entry["hyperparameters"]["seq_len"]
        meta = capture_file(model_dir, probe, model_dir / mf.ROUTING_FILE, model_id=entry["id"],
                            model=model, seq_len=seq_len, domains=spans)  # fmt: skip
        entry["routing"] = {"file": mf.ROUTING_FILE, "tokens": meta["tokens"],
                            "layers": meta["layers"], "inputs": meta["inputs"]}  # fmt: skip
        entry["files"] = mf.describe_files(model_dir)
        entry["bytes"] = sum(f["bytes"] for f in entry["files"])
        log(f"  {entry['id']}: {meta['tokens']} tokens, inputs {meta['inputs']}")
    manifest["probe"]["domains"] = {d: list(span) for d, span in spans.items()}
    manifest["total_bytes"] = dir_bytes(out_dir)
    mf.write_manifest(out_dir, manifest)
    return manifest


def summary(manifest: dict[str, Any]) -> str:
    """One line per model, for the terminal."""
    rows = [f"{'model':32s} {'family':12s} {'params':>8s} {'active':>8s} {'score':>7s} {'gap':>7s}"]
    for m in manifest["models"]:
        rows.append(
            f"{m['id']:32s} {m['family']:12s} {m['params_total']:8d} {m['params_activated']:8d} "
            f"{m['score']:7.4f} {m['gap']:+7.4f}"
        )
    return "\n".join(rows) + "\n" + json.dumps({"build_seconds": manifest["build_seconds"]})


def build_study(points: list[StudyPoint], opts: BuildOptions) -> dict[str, Any]:
    """Train the study's models (:mod:`moetopo.zoo.study`), record each one's factor,
    value, seed and out-of-domain loss in the manifest, and write the study's sheets."""
    specs = tuple(p.spec for p in points)
    mixtures = {p.spec.id: p.mixture for p in points}
    manifest = build(
        specs, (), replace(opts, config_dir=None), mixtures, "python -m moetopo.zoo --study"
    )
    by_id = {p.spec.id: p for p in points}
    for entry in manifest["models"]:
        point = by_id[entry["id"]]
        entry["study"] = {
            "configuration": point.configuration,
            "factor": point.factor,
            "value": point.value,
            "seed": point.spec.seed,
            "design": point.design,
        }
        entry["ood_loss"] = entry["heldout_by_domain"][OOD_DOMAIN]
    manifest["evaluation"]["ood_loss"] = (
        f"held-out {OOD_DOMAIN} loss: the minority domain of every training mixture"
    )
    mf.write_manifest(opts.out_dir, manifest)
    if opts.config_dir is not None:
        mf.write_study_sheets(opts.root, opts.out_dir, manifest, opts.config_dir)
    return manifest
