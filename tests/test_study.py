"""The designed study: one factor at a time around a base point, seeds per configuration,
the same tokens where the budget is not the factor; a small configuration builds end to
end and rebuilds to the same digests."""

from __future__ import annotations

import csv
from dataclasses import replace
from pathlib import Path

import pytest

from moetopo.pipeline.models import ModelSheet, read_sheet
from moetopo.zoo.corpus import CorpusLimits
from moetopo.zoo.study import BASE, FACTORS, SEEDS, factor_value, mixture, study_points


def test_the_study_varies_one_factor_at_a_time_with_three_seeds_each():
    points = study_points()
    assert len(points) >= 40 and len({p.spec.id for p in points}) == len(points)
    assert {p.spec.family for p in points} == {"olmoe"}
    assert all(len(values) >= 3 for values in FACTORS.values())
    configurations = {}
    for p in points:
        configurations.setdefault(p.configuration, []).append(p)
    assert all(sorted(q.spec.seed for q in c) == list(SEEDS) for c in configurations.values())
    base = configurations["base"][0]
    fields = ("experts", "top_k", "expert_inter", "steps", "lr", "batch", "seq_len", "hidden")
    for p in points:
        differs = {f for f in fields if getattr(p.spec, f) != getattr(base.spec, f)}
        if p.spec.extra != base.spec.extra:
            differs.add("aux_loss_coef")
        if p.mixture != base.mixture:
            differs.add("code_share")
        assert differs == (set() if p.factor == "base" else {p.factor}), p.spec.id
        assert 32 <= p.spec.experts <= 64  # enough experts that H1 can exist
        tokens = p.spec.steps * p.spec.batch * p.spec.seq_len
        if p.factor != "steps":  # the budget is the only factor that changes tokens seen
            assert tokens == BASE.steps * BASE.batch * BASE.seq_len
    # every factor's values include the base point's, so each factor has a 3-level series
    for factor, values in FACTORS.items():
        assert factor_value(BASE, factor) in values


def test_mixtures_are_cycles_of_domains_with_the_stated_code_share():
    assert mixture(0.75) == ("code", "code", "code", "prose")
    assert mixture(1.0) == ("code",) * 4
    with pytest.raises(ValueError, match="not a multiple of 1/4"):
        mixture(0.6)
    with pytest.raises(ValueError, match="the base point's 32 is not among"):
        study_points(factors={"experts": (40, 48, 64)})


TINY = replace(BASE, experts=4, top_k=2, hidden=16, layers=2, expert_inter=8, heads=2,
               kv_heads=1, steps=3, batch=4, seq_len=32)  # fmt: skip
SMALL = CorpusLimits(code_bytes=120_000, prose_bytes=60_000)


def build_tiny(out: Path, root: Path):
    from moetopo.zoo.build import BuildOptions, build_study

    points = study_points(
        factors={"experts": (4, 6), "code_share": (0.75, 1.0)}, seeds=(0, 1), base=TINY
    )
    opts = BuildOptions(out_dir=out, root=root, config_dir=out, limits=SMALL, log=lambda _: None)
    return points, build_study(points, opts)


def test_a_small_study_builds_end_to_end_and_rebuilds_to_the_same_digests(tmp_path):
    pytest.importorskip("torch", reason="building the study needs the zoo extra (torch)")
    pytest.importorskip("transformers", reason="building the study needs the zoo extra")
    points, manifest = build_tiny(tmp_path / "a", tmp_path)
    assert [m["id"] for m in manifest["models"]] == [p.spec.id for p in points]
    for entry, point in zip(manifest["models"], points, strict=True):
        assert entry["study"]["factor"] == point.factor
        assert entry["study"]["seed"] == point.spec.seed
        assert entry["ood_loss"] == entry["heldout_by_domain"]["prose"]
        assert entry["hyperparameters"]["domains"] == list(point.mixture)
        design = entry["study"]["design"]
        assert design["code_share"] == (1.0 if point.configuration == "codeshare1" else 0.75)
        assert design["experts"] == point.spec.experts == entry["hyperparameters"]["experts"]
    # the sheets the pipeline reads: three scores and the design columns
    sheet = read_sheet(tmp_path / "a" / "models.tsv")
    assert list(sheet.columns[:8]) == ["model", "path", "score", "gap", "ood", "steps",
                                       "family", "routing"]  # fmt: skip
    ModelSheet(sheet).check_score_columns(["score", "gap", "ood"])
    assert set(sheet.factor) == {"base", "experts", "code_share"}
    assert list(sheet.columns[8:]) == ["configuration", "factor", "seed", "experts", "top_k",
                                       "expert_inter", "aux_loss_coef", "code_share"]  # fmt: skip
    assert sheet.experts.tolist() == [str(p.spec.experts) for p in points]
    assert (tmp_path / "a" / "pairs.tsv").read_text() == "base\ttuned\n"
    # a rebuild on the same versions gives the same files, byte for byte
    _, again = build_tiny(tmp_path / "b", tmp_path)
    for first, second in zip(manifest["models"], again["models"], strict=True):
        assert first["files"] == second["files"], first["id"]
        assert first["score"] == second["score"]
    with (tmp_path / "b" / "models.tsv").open() as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    assert [r["path"] for r in rows] == [f"b/{p.spec.id}" for p in points]
