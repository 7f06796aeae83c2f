"""The shipped zoo matches its manifest and sheets; a quick build works; capture is exact.

Tests that need torch skip without it (CI installs the ``zoo`` extra, so they run there).
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from moetopo.capture import batches, byte_ids, input_positions
from moetopo.checkpoint.captured import load_captured
from moetopo.zoo import manifest as mf
from moetopo.zoo.corpus import CorpusLimits, build_corpus, fixed_windows, is_heldout
from moetopo.zoo.specs import FAMILIES, OWN_FAMILIES, TUNED, ZOO

ROOT = Path(__file__).resolve().parents[1]
ZOO_DIR = ROOT / "resources" / "zoo"
CONFIG = ROOT / "config"
SHARED = {"qwen2_moe", "deepseek_v3"}  # families whose zoo models have one shared expert
SMALL = CorpusLimits(code_bytes=120_000, prose_bytes=60_000)


@pytest.fixture(scope="module")
def manifest() -> dict[str, Any]:
    assert (ZOO_DIR / mf.MANIFEST).is_file(), (
        "resources/zoo/manifest.json missing: run python -m moetopo.zoo"
    )
    return mf.read_manifest(ZOO_DIR)


def read_tsv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def header(path: Path) -> dict[str, Any]:
    """A safetensors header, parsed by hand so no loader can hide a problem."""
    with path.open("rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        return json.loads(fh.read(n))


def tensors(model_dir: Path) -> dict[str, tuple[str, dict[str, Any]]]:
    out = {}
    for shard in mf.shard_names(model_dir):
        for name, info in header(model_dir / shard).items():
            if name != "__metadata__":
                out[name] = (shard, info)
    return out


# --- the shipped zoo, no torch needed -------------------------------------------------


def test_manifest_matches_files(manifest: dict[str, Any]) -> None:
    assert mf.verify(ZOO_DIR) == []
    for model in manifest["models"]:
        model_dir = ZOO_DIR / model["id"]
        on_disk = sorted(p.name for p in model_dir.glob("*.safetensors"))
        assert on_disk == model["shards"] and len(on_disk) >= 2
        sizes = {f["name"]: f["bytes"] for f in model["files"]}
        assert all(sizes[s] == (model_dir / s).stat().st_size for s in model["shards"])
        digests = {f["name"]: f["sha256"] for f in model["files"]}
        cfg = (model_dir / "config.json").read_bytes()
        assert digests["config.json"] == hashlib.sha256(cfg).hexdigest()


def test_zoo_spans_families_expert_counts_top_k_and_fine_tunes(manifest: dict[str, Any]) -> None:
    models = manifest["models"]
    base = [m for m in models if not m.get("base")]
    assert len(base) >= 12 and {m["family"] for m in base} == set(FAMILIES) | set(OWN_FAMILIES)
    experts = {m["hyperparameters"]["experts"] for m in base}
    top_k = {m["hyperparameters"]["top_k"] for m in base}
    assert min(experts) == 4 and max(experts) == 16 and {1, 2, 3, 4} <= top_k
    tuned = [m for m in models if m.get("base")]
    assert len(tuned) >= 2 and all(m["finetune_domain"] in ("code", "prose") for m in tuned)
    assert {m["id"] for m in models} == {s.id for s in ZOO} | {t.id for t in TUNED}
    scores = [m["score"] for m in models]
    assert max(scores) - min(scores) > 0.05, "scores do not spread"
    for m in models:
        hp = m["hyperparameters"]
        assert {"hidden", "layers", "vocab", "seq_len", "lr", "batch", "steps", "seed"} <= set(hp)
        assert hp["steps"] == m["steps"] and hp["shared_experts"] == (m["family"] in SHARED)
        assert m["bytes"] == sum(f["bytes"] for f in m["files"])
        assert m["score"] == m["heldout_loss"]
        assert math.isclose(m["gap"], m["heldout_loss"] - m["train_loss"], abs_tol=2e-6)
        assert 0 < m["params_activated"] < m["params_total"]
    assert set(manifest["versions"]) >= {"python", "torch", "transformers"}
    assert manifest["build_seconds"] > 0 and len(manifest["corpus"]["digest"]) == 64
    total = sum(p.stat().st_size for p in ZOO_DIR.rglob("*") if p.is_file())
    assert total <= 25 * 1024 * 1024


def test_sheets_match_manifest(manifest: dict[str, Any]) -> None:
    text = (CONFIG / "models.tsv").read_text()
    assert text.splitlines()[0] == "\t".join(mf.MODELS_HEADER)
    rows = read_tsv(CONFIG / "models.tsv")
    by_id = {m["id"]: m for m in manifest["models"]}
    assert [r["model"] for r in rows] == list(by_id)
    for row in rows:
        model = by_id[row["model"]]
        assert float(row["score"]) == pytest.approx(model["score"], abs=1e-6)
        assert row["family"] == model["family"]
        base_steps = by_id[model["base"]]["steps"] if model.get("base") else 0
        assert int(row["steps"]) == model["steps"] + base_steps  # a fine-tune adds its base's
        assert (ROOT / row["path"] / "config.json").is_file()
        assert (ROOT / row["routing"]).is_file() and row["routing"].startswith(row["path"] + "/")
    pairs = read_tsv(CONFIG / "pairs.tsv")
    assert (CONFIG / "pairs.tsv").read_text().splitlines()[0] == "base\ttuned"
    assert len(pairs) >= 2
    for pair in pairs:
        assert by_id[pair["tuned"]]["base"] == pair["base"] and pair["base"] in by_id


def test_checkpoints_are_bf16_in_hub_layout(manifest: dict[str, Any]) -> None:
    for model in manifest["models"]:
        model_dir = ZOO_DIR / model["id"]
        names = tensors(model_dir)
        assert not [n for n in names if "gate_up_proj" in n]
        experts = [n for n in names if ".experts.0." in n]
        assert len(experts) == 3 * len(model["moe_layers"])
        for name, (_, info) in names.items():
            expected = "F32" if name.endswith("e_score_correction_bias") else "BF16"
            assert info["dtype"] == expected, name
        config = json.loads((model_dir / "config.json").read_text())
        if "model_class" in model:  # built by moetopo's own class (CT-MoE)
            assert config["architectures"] == [model["model_class"].rsplit(".", 1)[1]]
            continue
        assert config["architectures"] == [model["transformers_class"]]
        assert config["transformers_version"] == manifest["versions"]["transformers"]


def test_family_specific_tensors(manifest: dict[str, Any]) -> None:
    hidden = {m["id"]: m["hyperparameters"]["hidden"] for m in manifest["models"]}
    for model in manifest["models"]:
        names = tensors(ZOO_DIR / model["id"])
        first_moe = model["moe_layers"][0]
        if model["family"] == "qwen2_moe":
            _, info = names[f"model.layers.{first_moe}.mlp.shared_expert_gate.weight"]
            assert info["shape"] == [1, hidden[model["id"]]]
        if model["family"] == "deepseek_v3":
            assert model["moe_layers"][0] == 1 and "model.layers.0.mlp.gate_proj.weight" in names
            assert f"model.layers.{first_moe}.mlp.shared_experts.up_proj.weight" in names
        if model["family"] == "mixtral":
            assert f"model.layers.{first_moe}.block_sparse_moe.experts.0.w1.weight" in names
        if model["family"] == "ct_moe":
            block = f"model.layers.{first_moe}.block_sparse_moe"
            experts = model["hyperparameters"]["experts"]
            assert names[f"{block}.collaboration"][1]["shape"] == [experts, experts]
            assert names[f"{block}.gate.bias"][1]["shape"] == [experts]


def test_deepseek_correction_bias_was_trained(manifest: dict[str, Any]) -> None:
    for model in manifest["models"]:
        if model["family"] != "deepseek_v3":
            continue
        model_dir = ZOO_DIR / model["id"]
        name = f"model.layers.{model['moe_layers'][0]}.mlp.gate.e_score_correction_bias"
        shard, info = tensors(model_dir)[name]
        raw = (model_dir / shard).read_bytes()
        start = 8 + struct.unpack("<Q", raw[:8])[0] + info["data_offsets"][0]
        bias = np.frombuffer(raw[start : start + 4 * info["shape"][0]], dtype="<f4")
        assert np.abs(bias).max() > 0, "aux-loss-free balancing never moved the bias"


def test_tuned_models_differ_from_base_in_attention(manifest: dict[str, Any]) -> None:
    for model in (m for m in manifest["models"] if m.get("base")):
        base, tuned = ZOO_DIR / model["base"], ZOO_DIR / model["id"]
        tb, tt = tensors(base), tensors(tuned)
        assert {n: i["shape"] for n, (_, i) in tb.items()} == {
            n: i["shape"] for n, (_, i) in tt.items()
        }
        name = next(n for n in tb if ".self_attn.o_proj.weight" in n)
        assert _raw(base, tb[name]) != _raw(tuned, tt[name])


def _raw(model_dir: Path, entry: tuple[str, dict[str, Any]]) -> bytes:
    shard, info = entry
    raw = (model_dir / shard).read_bytes()
    start = 8 + struct.unpack("<Q", raw[:8])[0]
    begin, end = info["data_offsets"]
    return raw[start + begin : start + end]


def test_routing_files_have_the_captured_format(manifest: dict[str, Any]) -> None:
    probe = ZOO_DIR / manifest["probe"]["file"]
    digest = hashlib.sha256(probe.read_bytes()).hexdigest()
    ids = byte_ids(probe.read_text(encoding="utf-8"))
    tokens = len(ids)
    for model in manifest["models"]:
        path = ZOO_DIR / model["id"] / mf.ROUTING_FILE
        with np.load(path, allow_pickle=False) as data:
            layers = {f"layer_{layer}" for layer in model["moe_layers"]}
            inputs = {f"inputs_{layer}" for layer in model["moe_layers"]}
            expected = layers | inputs | {"meta", "token_ids", "input_positions"}
            assert set(data.files) == expected
            assert data["meta"].ndim == 0 and data["meta"].dtype.kind == "U"
            assert data["token_ids"].tolist() == ids
            stored = {data[k].dtype for k in layers | inputs}
            positions = data["input_positions"]
            np.testing.assert_array_equal(positions, input_positions(len(ids), 256))
            hidden = model["hyperparameters"]["hidden"]
            assert {data[k].shape for k in inputs} == {(256, hidden)}
        logits, _, meta = load_captured(path)
        assert stored == {np.dtype(meta["dtype"])}
        assert meta["source"] == "moetopo.capture" and meta["model"] == model["id"]
        assert meta["tokens"] == tokens == model["routing"]["tokens"]
        assert meta["inputs"] == model["routing"]["inputs"]
        assert meta["inputs"]["bytes"] == 256 * hidden * 2 * len(model["moe_layers"])
        assert meta["text_digest"] == digest and meta["tokenizer"] == "byte"
        assert meta["domains"] == manifest["probe"]["domains"]  # byte tokens: bytes
        for layer, arr in logits.items():
            assert arr.shape == (tokens, model["hyperparameters"]["experts"])
            assert np.isfinite(arr).all()
            assert arr.std(axis=0).min() > 0, f"layer {layer}: a router column is constant"


# --- pure helpers ---------------------------------------------------------------------


def test_split_is_by_path_and_reproducible() -> None:
    assert is_heldout("json/decoder.py") == is_heldout("json/decoder.py")
    share = np.mean([is_heldout(f"pkg/mod{i}.py") for i in range(4000)])
    assert 0.07 < share < 0.14
    a, b = build_corpus(SMALL), build_corpus(SMALL)
    assert a.digest == b.digest and a.sizes() == b.sizes()
    assert not set(a.files["train"]) & set(a.files["heldout"])
    assert all(is_heldout(f) for f in a.files["heldout"])
    assert a.streams["prose", "train"].max() <= 257 and a.sizes()["code"]["heldout"] > 0


def test_fixed_windows_and_batches_cover_the_text() -> None:
    stream = np.arange(1000, dtype=np.uint16)
    w = fixed_windows(stream, 5, 100)
    assert w.shape == (5, 100) and w[0, 0] == 0 and w[-1, -1] == 999
    ids = list(range(23))
    got = [row for batch in batches(ids, 5, 2) for row in batch]
    assert sum(got, []) == ids and all(len(r) == 5 for r in got[:-1])
    assert all(len({len(r) for r in b}) == 1 for b in batches(ids, 5, 2))


# --- needs torch ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def quick_zoo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from moetopo.zoo.__main__ import main

    root = tmp_path_factory.mktemp("zoo")
    argv = ["--quick", "--steps", "10", "--root", str(root), "--out", str(root / "zoo"),
            "--config-dir", str(root / "config")]  # fmt: skip
    assert main(argv) == 0
    return root


def test_quick_build_one_model_per_family(quick_zoo: Path) -> None:
    out = quick_zoo / "zoo"
    built = mf.read_manifest(out)
    assert mf.verify(out) == []
    assert {m["family"] for m in built["models"]} == set(FAMILIES)
    for model in built["models"]:
        assert model["steps"] in (10, 5) and len(model["shards"]) >= 2
        names = tensors(out / model["id"])
        assert any(".experts.1." in n for n in names) and not any(
            "gate_up_proj" in n for n in names
        )
        assert math.isfinite(model["score"])
    rows = read_tsv(quick_zoo / "config" / "models.tsv")
    assert rows[0]["path"] == "zoo/" + rows[0]["model"]
    assert read_tsv(quick_zoo / "config" / "pairs.tsv")[0]["base"] == "tiny-mixtral"


def _fresh_router_logits(model_dir: Path, ids: list[int], seq_len: int, dtype: Any) -> list[Any]:
    """Router logits from transformers' own output_router_logits, one tensor per MoE layer."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).eval()
    per_layer: list[list[np.ndarray]] = []
    with torch.no_grad():
        for rows in batches(ids, seq_len, 8):
            out = model(input_ids=torch.tensor(rows), output_router_logits=True)
            if not per_layer:
                per_layer = [[] for _ in out.router_logits]
            for acc, t in zip(per_layer, out.router_logits, strict=True):
                acc.append(t.float().reshape(-1, t.shape[-1]).numpy())
    return [np.concatenate(a) for a in per_layer]


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_captured_logits_equal_a_fresh_forward(manifest: dict[str, Any], family: str) -> None:
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    torch.set_num_threads(1)
    # the family's model with the most MoE layers, so the layer mapping is exercised
    model = max(
        (m for m in manifest["models"] if m["family"] == family), key=lambda m: len(m["moe_layers"])
    )
    model_dir = ZOO_DIR / model["id"]
    ids = byte_ids((ZOO_DIR / manifest["probe"]["file"]).read_text(encoding="utf-8"))
    captured, _, meta = load_captured(model_dir / mf.ROUTING_FILE)
    assert sorted(captured) == model["moe_layers"]
    seq = meta["seq_len"]
    exact = _fresh_router_logits(model_dir, ids, seq, torch.float32)
    bf16 = _fresh_router_logits(model_dir, ids, seq, torch.bfloat16)
    for (layer, cap), ref32, ref16 in zip(captured.items(), exact, bf16, strict=True):
        scale = np.abs(ref32).max()
        # float32 forward: equal up to the float16 storage rounding
        assert np.abs(cap - ref32).max() <= 2e-3 * scale + 1e-3, f"layer {layer}"
        # BF16 forward on the same weights: equal within BF16 accumulation error (a rare
        # top-k flip in an earlier BF16 layer moves a few later rows, so no max bound)
        err = np.abs(cap - ref16)
        assert err.mean() <= 0.03 * np.abs(ref16).mean(), f"layer {layer}"
        assert np.quantile(err, 0.99) <= 0.05 * scale, f"layer {layer}"
        agree = (cap.argmax(1) == ref16.argmax(1)).mean()
        assert agree > 0.97, f"layer {layer}: top-1 agreement {agree:.3f}"


def _zoo_model(manifest: dict[str, Any], family: str) -> dict[str, Any]:
    """The family's model with the most MoE layers, so the layer mapping is exercised."""
    models = [m for m in manifest["models"] if m["family"] == family]
    return max(models, key=lambda m: len(m["moe_layers"]))


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_captured_inputs_are_what_each_router_reads(manifest: dict[str, Any], family: str) -> None:
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from transformers import AutoModelForCausalLM

    from moetopo.capture import router_layers

    torch.set_num_threads(1)
    model_dir = ZOO_DIR / _zoo_model(manifest, family)["id"]
    ids = byte_ids((ZOO_DIR / manifest["probe"]["file"]).read_text(encoding="utf-8"))
    meta = load_captured(model_dir / mf.ROUTING_FILE)[2]
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    seen: dict[int, list[np.ndarray]] = {}
    handles = []
    for layer, (_, linear) in router_layers(model).items():
        seen[layer] = []

        def hook(_m, args, _out, layer=layer):
            seen[layer].append(args[0].reshape(-1, args[0].shape[-1]).numpy())

        handles.append(linear.register_forward_hook(hook))
    with torch.no_grad():
        for rows in batches(ids, meta["seq_len"], 8):
            model(input_ids=torch.tensor(rows))
    for h in handles:
        h.remove()
    positions = input_positions(len(ids), 256)
    with np.load(model_dir / mf.ROUTING_FILE) as data:
        for layer, chunks in seen.items():
            fresh = np.concatenate(chunks)[positions]
            stored = data[f"inputs_{layer}"].astype(np.float32)
            # float16 storage: half an ulp of 2^-11 relative
            np.testing.assert_allclose(stored, fresh, rtol=1e-3, atol=1e-3 * np.abs(fresh).max())


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_function_distance_on_captured_inputs_equals_the_transformers_experts(
    manifest: dict[str, Any], family: str
) -> None:
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from transformers import AutoModelForCausalLM

    from moetopo.checkpoint.model import open_model
    from moetopo.checkpoint.probes import layer_inputs
    from moetopo.stages.expert_geometry import layer_distances

    torch.set_num_threads(1)
    entry = _zoo_model(manifest, family)
    model_dir = ZOO_DIR / entry["id"]
    captured = str(model_dir / mf.ROUTING_FILE)
    ours = open_model(model_dir)
    theirs = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    for layer in entry["moe_layers"]:
        matrices, _, inputs = layer_distances(
            ours, layer, ["function"], {}, None, 128, 0, captured=captured
        )
        assert inputs == {"function": "captured"}
        x = torch.from_numpy(layer_inputs(ours, layer, 128, 0, captured)[0])
        experts = theirs.model.layers[layer].mlp.experts
        n = matrices["function"].shape[0]
        with torch.no_grad():
            ones = torch.ones(len(x), 1)
            out = [experts(x, torch.full((len(x), 1), e), ones).double().numpy() for e in range(n)]
        norms = np.array([np.mean(np.sum(o**2, axis=1)) for o in out])
        expected = np.array(
            [
                [
                    np.mean(np.sum((a - b) ** 2, axis=1)) / ((na + nb) / 2)
                    for b, nb in zip(out, norms, strict=True)
                ]
                for a, na in zip(out, norms, strict=True)
            ]
        )
        np.testing.assert_allclose(matrices["function"], expected, rtol=2e-4, atol=1e-7)


def test_capture_cli_is_batch_invariant(quick_zoo: Path, tmp_path: Path) -> None:
    from moetopo.capture import main

    model_dir = quick_zoo / "zoo" / "tiny-qwen2moe"
    text = tmp_path / "t.txt"
    text.write_text(
        "def f(x):\n    return x * 2  # double\n" * 8 + "héllo wörld\n", encoding="utf-8"
    )
    outs = []
    for batch_size in (1, 3):
        out = tmp_path / f"b{batch_size}.npz"
        argv = [str(model_dir), "--text", str(text), "--out", str(out), "--seq-len", "16",
                "--batch-size", str(batch_size), "--max-tokens", "150",
                "--store-dtype", "float32"]  # fmt: skip
        assert main(argv) == 0
        outs.append(load_captured(out))
    (a, _, meta), (b, _, _) = outs
    assert meta["tokens"] == 150 and meta["tokenizer"] == "byte" and meta["dtype"] == "float32"
    assert meta["text_digest"] == hashlib.sha256(text.read_bytes()).hexdigest()
    assert sorted(a) == [0, 1]
    for layer in a:
        assert a[layer].shape == (150, 4) and a[layer].dtype == np.float32
        np.testing.assert_allclose(a[layer], b[layer], rtol=1e-5, atol=1e-6)


def test_capture_cli_reports_a_missing_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("torch")
    from moetopo.capture import main

    text = tmp_path / "t.txt"
    text.write_text("abc")
    assert (
        main([str(tmp_path / "nope"), "--text", str(text), "--out", str(tmp_path / "o.npz")]) == 1
    )
    assert "nope" in capsys.readouterr().err


def test_structural_router_fallback_finds_the_same_routers(quick_zoo: Path) -> None:
    torch = pytest.importorskip("torch")
    from transformers import AutoModelForCausalLM

    from moetopo.capture import capture_logits, find_routers

    ids = list(range(40, 140))
    for name in ("tiny-qwen2moe", "tiny-dsv3"):
        model = AutoModelForCausalLM.from_pretrained(quick_zoo / "zoo" / name, dtype=torch.float32)
        declared, _ = capture_logits(model, ids, seq_len=32)
        model._can_record_outputs = {}  # as for a model that declares nothing
        assert [n for n, _ in find_routers(model)] == [
            f"model.layers.{k}.mlp.gate" for k in declared
        ]
        fallback, _ = capture_logits(model, ids, seq_len=32)
        assert sorted(fallback) == sorted(declared)
        for layer in declared:
            np.testing.assert_array_equal(fallback[layer], declared[layer])


def test_capture_uses_the_model_tokenizer_when_shipped(quick_zoo: Path, tmp_path: Path) -> None:
    pytest.importorskip("tokenizers")
    import shutil

    from tokenizers import Tokenizer, models, pre_tokenizers

    from moetopo.capture import main

    model_dir = tmp_path / "with-tokenizer"
    shutil.copytree(quick_zoo / "zoo" / "tiny-olmoe", model_dir)
    vocab = {w: i for i, w in enumerate(["[UNK]", "alpha", "beta", "gamma"])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(model_dir / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "unk_token": "[UNK]"}
    (model_dir / "tokenizer_config.json").write_text(json.dumps(config))
    text = tmp_path / "t.txt"
    text.write_text("alpha beta gamma zeta " * 5)
    out = tmp_path / "o.npz"
    assert main([str(model_dir), "--text", str(text), "--out", str(out), "--seq-len", "8"]) == 0
    logits, _, meta = load_captured(out)
    assert meta["tokenizer"] == "model" and meta["tokens"] == 20  # words, not 110 bytes
    assert all(arr.shape == (20, 4) for arr in logits.values())
