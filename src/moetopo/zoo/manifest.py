"""The zoo manifest and sample sheets: written by the build, checked by the tests.

No torch here, so the pipeline and the tests can verify a shipped zoo without it.
"""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"
ROUTING_FILE = "router_logits.npz"
MODELS_HEADER = ("model", "path", "score", "gap", "steps", "family", "routing")
PAIRS_HEADER = ("base", "tuned")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def describe_files(model_dir: Path) -> list[dict[str, Any]]:
    """Name, byte size and sha256 of every file of a model directory, sorted by name."""
    return [
        {"name": p.name, "bytes": p.stat().st_size, "sha256": sha256_file(p)}
        for p in sorted(model_dir.iterdir())
        if p.is_file()
    ]


def shard_names(model_dir: Path) -> list[str]:
    """Shards as the safetensors index lists them."""
    index = json.loads((model_dir / "model.safetensors.index.json").read_text())
    return sorted(set(index["weight_map"].values()))


def write_manifest(out_dir: Path, manifest: dict[str, Any]) -> Path:
    path = out_dir / MANIFEST
    path.write_text(json.dumps(manifest, indent=1, sort_keys=False) + "\n")
    return path


def read_manifest(out_dir: Path) -> dict[str, Any]:
    return json.loads((out_dir / MANIFEST).read_text())


def write_sheets(root: Path, out_dir: Path, manifest: dict[str, Any], config_dir: Path) -> None:
    """``config/models.tsv`` and ``config/pairs.tsv`` with paths relative to the repo root."""
    config_dir.mkdir(parents=True, exist_ok=True)
    rel = out_dir.resolve().relative_to(root.resolve()).as_posix()
    with (config_dir / "models.tsv").open("w", newline="") as fh:
        w = csv.writer(fh, delimiter="\t", lineterminator="\n")
        w.writerow(MODELS_HEADER)
        steps = {m["id"]: m["steps"] for m in manifest["models"]}
        for m in manifest["models"]:
            total = m["steps"] + (steps[m["base"]] if m.get("base") else 0)
            w.writerow(
                [m["id"], f"{rel}/{m['id']}", f"{m['score']:.6f}", f"{m['gap']:.6f}", total,
                 m["family"],
                 f"{rel}/{m['id']}/{ROUTING_FILE}"]
            )  # fmt: skip
    with (config_dir / "pairs.tsv").open("w", newline="") as fh:
        w = csv.writer(fh, delimiter="\t", lineterminator="\n")
        w.writerow(PAIRS_HEADER)
        for m in manifest["models"]:
            if m.get("base"):
                w.writerow([m["base"], m["id"]])


STUDY_HEADER = (
    "model", "path", "score", "gap", "ood", "steps", "family", "routing",
    "configuration", "factor", "seed",
)  # fmt: skip


def write_study_sheets(
    root: Path, out_dir: Path, manifest: dict[str, Any], config_dir: Path
) -> None:
    """The study's ``models.tsv`` (three scores, and each model's factor, value and seed)
    and an empty ``pairs.tsv`` (the study has no fine-tunes: its models are independent)."""
    config_dir.mkdir(parents=True, exist_ok=True)
    rel = out_dir.resolve().relative_to(root.resolve()).as_posix()
    with (config_dir / "models.tsv").open("w", newline="") as fh:
        w = csv.writer(fh, delimiter="\t", lineterminator="\n")
        factors = [f for f in manifest["models"][0]["study"]["design"] if f != "steps"]
        w.writerow([*STUDY_HEADER, *factors])
        for m in manifest["models"]:
            study = m["study"]
            w.writerow(
                [m["id"], f"{rel}/{m['id']}", f"{m['score']:.6f}", f"{m['gap']:.6f}",
                 f"{m['ood_loss']:.6f}", m["steps"], m["family"],
                 f"{rel}/{m['id']}/{ROUTING_FILE}", study["configuration"], study["factor"],
                 study["seed"], *(f"{study['design'][f]:g}" for f in factors)]
            )  # fmt: skip
    (config_dir / "pairs.tsv").write_text("\t".join(PAIRS_HEADER) + "\n")


def verify(out_dir: Path) -> list[str]:
    """Differences between the manifest and the files on disk (empty when they agree)."""
    problems: list[str] = []
    manifest = read_manifest(out_dir)
    for entry in manifest.get("shared_files", []):
        path = out_dir / entry["name"]
        if not path.is_file() or sha256_file(path) != entry["sha256"]:
            problems.append(f"{path}: missing or sha256 differs from manifest")
    for model in manifest["models"]:
        model_dir = out_dir / model["id"]
        if not model_dir.is_dir():
            problems.append(f"{model_dir}: missing")
            continue
        on_disk = describe_files(model_dir)
        if on_disk != model["files"]:
            problems.append(f"{model_dir}: files differ from manifest")
        if shard_names(model_dir) != model["shards"]:
            problems.append(f"{model_dir}: shards differ from the index")
        if len(model["shards"]) < 2:
            problems.append(f"{model_dir}: fewer than 2 shards")
    return problems
