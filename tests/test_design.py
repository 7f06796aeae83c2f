"""The designed study's statistics: seed variance against a hand-computed intraclass
correlation, factor effects and the within-configuration test on planted designs, and the
power of a test of n models."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import false_discovery_control

from moetopo.stats.design import detectable_correlation, effect_rows, seed_variance

FAST = dict(higher_is_better=False, confidence_level=0.95, n_resamples=499, seed=0,
            min_models=5)  # fmt: skip


def planted_study(rng, *, h1_from_experts: float, score_from_h1_within: float) -> pd.DataFrame:
    """The base point (experts 32, code share 0.75) and two factors, 3 seeds per
    configuration: H1 rises with experts by ``h1_from_experts`` per expert; within a
    configuration, the loss falls by ``score_from_h1_within`` per unit of H1."""
    rows = []
    configurations = [("base", "base", 32, 0.75)]
    configurations += [(f"experts{e}", "experts", e, 0.75) for e in (40, 48, 64)]
    configurations += [(f"codeshare{c:g}", "code_share", 32, c) for c in (0.5, 1.0)]
    for name, factor, experts, share in configurations:
        for seed in range(3):
            h1 = h1_from_experts * experts + rng.normal()
            configuration_loss = 2.0 + 0.3 * share  # the design moves the loss by itself
            rows.append({"model": f"{name}-s{seed}", "configuration": name, "factor": factor,
                         "seed": seed, "experts": experts, "code_share": share, "h1": h1,
                         "config_loss": configuration_loss})  # fmt: skip
    models = pd.DataFrame(rows)
    within = models.h1 - models.groupby("configuration").h1.transform("mean")
    noise = 0.05 * rng.normal(size=len(models))
    return models.assign(score=models.config_loss - score_from_h1_within * within + noise)


def test_seed_variance_is_the_one_way_intraclass_correlation():
    groups = {"a": [1.0, 2.0, 3.0], "b": [5.0, 6.0, 7.0], "c": [2.0, 2.0, 5.0]}
    models = pd.DataFrame(
        [{"configuration": c, "x": v} for c, values in groups.items() for v in values]
    )
    row = seed_variance(models, "x")
    values = [np.array(v) for v in groups.values()]
    grand = np.concatenate(values).mean()
    msb = sum(3 * (v.mean() - grand) ** 2 for v in values) / 2
    msw = sum(((v - v.mean()) ** 2).sum() for v in values) / 6
    assert row["between_share"] == pytest.approx((msb - msw) / (msb + 2 * msw))
    assert row["seed_sd"] == pytest.approx(np.mean([np.std(v, ddof=1) for v in values]))
    assert row["n_models"] == 9 and row["n_configurations"] == 3
    assert 0 < row["p_value"] < 0.2


def test_a_figure_of_the_configuration_alone_has_all_its_variance_between_and_noise_none():
    rng = np.random.default_rng(0)
    configuration = np.repeat(np.arange(14), 3)
    models = pd.DataFrame({"configuration": configuration, "fixed": configuration * 1.0})
    assert seed_variance(models, "fixed")["between_share"] == pytest.approx(1.0)
    shares = []
    for _ in range(200):
        noisy = models.assign(noise=rng.normal(size=len(models)))
        shares.append(seed_variance(noisy, "noise")["between_share"])
    assert np.median(shares) < 0.1  # a seed property: almost no variance between
    constant = seed_variance(models.assign(zero=0.0), "zero")
    assert (
        np.isnan(constant["between_share"]) and constant["reason"] == "constant across every model"
    )


def test_factor_effects_and_the_within_configuration_test_find_what_was_planted():
    rng = np.random.default_rng(3)
    models = planted_study(rng, h1_from_experts=0.5, score_from_h1_within=0.3)
    table = pd.DataFrame(effect_rows(models, "h1", **FAST)).set_index(["factor", "test"])
    experts = table.loc[("experts", "figure_with_factor")]
    assert experts.estimate > 0.8 and experts.verdict == "supported"
    # the code share moves the loss (higher share, higher loss: worse) and not H1
    assert table.loc[("code_share", "score_with_factor")].estimate < 0
    assert table.loc[("code_share", "figure_with_factor")].verdict == "inconclusive"
    # seed to seed, more H1 goes with a lower loss: supported over the whole study
    pooled = table.loc[("all", "figure_with_score_within")]
    assert pooled.estimate > 0.8 and pooled.verdict == "supported" and pooled.n == 18
    null = planted_study(rng, h1_from_experts=0.5, score_from_h1_within=0.0)
    pooled_null = pd.DataFrame(effect_rows(null, "h1", **FAST)).iloc[-1]
    assert pooled_null.test == "figure_with_score_within"
    assert pooled_null.verdict == "inconclusive"


def test_the_smallest_detectable_correlation_follows_fishers_z():
    # n = 42 independent models, alpha 0.05, power 0.8: (1.95996 + 0.84162) / sqrt(39)
    assert detectable_correlation(42) == pytest.approx(np.tanh(2.80158 / np.sqrt(39)), abs=1e-5)
    assert detectable_correlation(42, lost=14) > detectable_correlation(42)
    assert np.isnan(detectable_correlation(3))


def stage_inputs(rng):
    """stats_models rows (two sources) and the sheet's design columns of a planted study."""
    from moetopo.stats.design import DESIGN_COLUMNS

    models = planted_study(rng, h1_from_experts=0.5, score_from_h1_within=0.3)
    stats_rows = [
        {"model": m.model, "metric": "h1_count", "source": source, "h1_total": h1}
        for m in models.itertuples()
        for source, h1 in (("router_l1", m.h1), ("weight_l2", 1.0))
    ]
    design = models[["model", *DESIGN_COLUMNS, "experts", "code_share", "score"]]
    return pd.DataFrame(stats_rows), design.assign(gap=0.01 * models.h1)


def test_the_study_stage_tables_and_its_report_section():
    from types import SimpleNamespace

    from moetopo.artefacts import columns
    from moetopo.report.design import design_blocks
    from moetopo.report.html import render_html
    from moetopo.stages.study import study_tables

    stats_models, design = stage_inputs(np.random.default_rng(3))
    seeds, points, effects = study_tables(
        stats_models, design, {"score": False, "gap": False}, metric="h1_count_per_active_param",
        source="router_l1", confidence_level=0.95, n_resamples=499, seed=0, min_models=5,
    )  # fmt: skip
    assert list(effects.columns) == columns("study_effects")
    assert set(seeds.figure) == {"h1_count:router_l1", "h1_count:weight_l2", "score", "gap"}
    constant = seeds.set_index("figure").loc["h1_count:weight_l2"]
    assert constant.reason == "constant across every model"
    # 2 factors x 3 tests + the pooled test, for each of 2 scores
    assert len(effects) == 2 * (2 * 3 + 1)
    tested = effects.p_value.notna()
    expected = false_discovery_control(effects.p_value[tested], method="bh")
    np.testing.assert_allclose(effects.p_adjusted[tested], expected)
    pooled = effects[(effects.factor == "all") & (effects.score == "score")].iloc[0]
    assert pooled.verdict == "supported" and pooled.detectable == pytest.approx(
        detectable_correlation(18, lost=6)
    )
    # a factor's effect reads as a direction, the conjecture's words only for H1 vs score
    rises = effects[(effects.factor == "experts") & (effects.test == "figure_with_factor")]
    assert set(rises.verdict) == {"rises with it"}
    # every factor's series holds the base point's 3 models and its own
    assert points.groupby(["factor", "score"]).size().to_dict() == {
        ("code_share", "gap"): 9, ("code_share", "score"): 9,
        ("experts", "gap"): 12, ("experts", "score"): 12,
    }  # fmt: skip
    data = SimpleNamespace(
        design={"study_seeds": seeds, "study_models": points, "study_effects": effects},
        primary_score="score",
    )
    blocks = design_blocks(data)
    html = render_html(blocks, "study")
    assert "Designed study, 18 independent models in 6 configurations." in html
    assert f"is {pooled.estimate:.3f}" in html and "H1 moves with experts" in html


def test_a_study_without_h1_says_not_measurable_and_what_the_design_did_move():
    from types import SimpleNamespace

    from moetopo.report.design import answer
    from moetopo.stages.study import study_tables

    rng = np.random.default_rng(5)
    stats_models, design = stage_inputs(rng)
    stats_models = stats_models.assign(h1_total=0.0)
    design = design.assign(score=2.0 + 0.3 * design.code_share + 0.01 * rng.normal(size=18))
    seeds, points, effects = study_tables(
        stats_models, design, {"score": False}, metric="h1_count_per_active_param",
        source="router_l1", confidence_level=0.95, n_resamples=499, seed=0, min_models=5,
    )  # fmt: skip
    assert effects[effects.test != "score_with_factor"].estimate.isna().all()
    data = SimpleNamespace(
        design={"study_seeds": seeds, "study_models": points, "study_effects": effects},
        primary_score="score",
    )
    text = answer(data)
    assert "Not measurable here: h1_count:router_l1 is constant" in text
    assert "2 of 2 H1 figures (source and metric) are the same in every model." in text
    # the code share raises the planted loss: a larger value, a worse score
    assert "The design does move the score: code_share (Spearman -" in text
    assert "a worse score" in text and "between configurations" in text
