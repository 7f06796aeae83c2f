"""The conjecture stage's covariates: training steps enter the regression as log10, a sheet
that lacks them for some model is refused by name, and the demo's verdicts do not move
with the Monte Carlo seed."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from moetopo.errors import MoetopoError
from moetopo.stages.conjecture import conjecture_rows

from conftest import REPO

FAST = dict(higher_is_better=False, confidence_level=0.95, n_resamples=199, seed=0)


def planted_models(n: int = 12, seed: int = 3) -> pd.DataFrame:
    """Models whose loss falls with log10 steps and (a little) with H1."""
    rng = np.random.default_rng(seed)
    steps = rng.integers(100, 5000, n)
    active = rng.uniform(1e5, 1e7, n)
    h1 = rng.integers(0, 9, n).astype(float)
    score = 4.0 - 0.8 * np.log10(steps) - 0.05 * h1 + 0.02 * rng.normal(size=n)
    return pd.DataFrame(
        {
            "model": [f"m{k}" for k in range(n)],
            "source": "router_l1",
            "metric": "h1_count",
            "score": score,
            "h1_per_active_param": h1 / active,
            "h1_total": h1,
            "activated_params": active,
            "total_params": 10 * active,
            "steps": steps.astype(float),
        }
    )


def layer_frame(models: pd.DataFrame) -> pd.DataFrame:
    return models.assign(layer=0, per_active_param=models.h1_per_active_param)[
        ["model", "layer", "source", "metric", "score", "per_active_param"]
    ]


def regression_row(models: pd.DataFrame, covariates: list[str]) -> pd.Series:
    table = conjecture_rows(
        models, layer_frame(models), min_models=5, covariates=covariates, **FAST
    )
    return table[table.statistic == "regression"].iloc[0]


def test_steps_enter_the_regression_as_log10():
    models = planted_models()
    design = np.column_stack(
        [
            np.ones(len(models)),
            models.h1_total,
            np.log10(models.activated_params),
            np.log10(models.steps),
        ]
    )
    coefficients, *_ = np.linalg.lstsq(design, -models.score.to_numpy(), rcond=None)
    row = regression_row(models, ["steps"])
    assert row.estimate == pytest.approx(coefficients[1], rel=1e-9)
    assert row.estimate == pytest.approx(0.05, abs=0.01)  # the planted slope, loss negated
    # without steps the fit is a different one: the covariate really entered
    assert regression_row(models, []).estimate != pytest.approx(row.estimate, rel=1e-3)


def test_a_missing_step_count_is_refused_naming_the_model():
    models = planted_models()
    models.loc[models.model == "m4", "steps"] = np.nan
    models.loc[models.model == "m7", "steps"] = 0.0
    with pytest.raises(MoetopoError, match=r"steps column is empty or not positive for m4, m7"):
        regression_row(models, ["steps"])
    # a run that does not ask for the covariate does not need it
    assert np.isfinite(regression_row(models, []).estimate)


def test_a_second_monte_carlo_seed_gives_the_same_verdicts():
    """At the configured resample count, verdicts of a study with real p-values (not only
    'inconclusive' ones, as the demo's are) do not move with the seed."""
    import yaml

    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())["conjecture"]
    models = planted_models(n=14, seed=8)
    runs = [
        conjecture_rows(
            models,
            layer_frame(models),
            higher_is_better=False,
            confidence_level=0.95,
            n_resamples=config["n_resamples"],
            seed=seed,
            min_models=5,
            covariates=["steps"],
        )  # fmt: skip
        for seed in (0, 1)
    ]
    assert runs[0].p_value.notna().sum() >= 4  # the seeds really drive resampling
    assert (runs[0].p_value != runs[1].p_value).any()
    assert runs[0].verdict.tolist() == runs[1].verdict.tolist()
    regression = runs[0][runs[0].statistic == "regression"].iloc[0]
    assert regression.verdict == "supported"  # the planted slope, found once steps enter


def test_every_score_is_tested_the_primary_one_declared_and_all_counted_in_the_adjustment():
    """A second score (the gap, lower is better) gets its own rows; only the primary
    score's declared test is primary; Benjamini-Hochberg counts the tests of both."""
    from scipy.stats import false_discovery_control

    from moetopo.stages.conjecture import conjecture_rows_by_score

    models = planted_models(n=14, seed=8)
    gap = models.assign(score=0.1 + 0.01 * models.h1_total)  # more H1, larger gap: worse
    options = dict(confidence_level=0.95, n_resamples=199, seed=0, min_models=5)
    primary = {"metric": "h1_count_per_active_param", "source": "router_l1"}
    primary |= {"statistic": "regression"}
    primary["level"] = "model"
    by_score = {
        "score": (models, layer_frame(models), False),
        "gap": (gap, layer_frame(gap), False),
    }
    table = conjecture_rows_by_score(by_score, primary_score="gap", primary=primary, **options)
    assert set(table.score) == {"score", "gap"}
    assert len(table[table.score == "gap"]) == len(table[table.score == "score"])
    chosen = table[table.primary]
    assert len(chosen) == 1 and chosen.iloc[0].score == "gap"
    assert chosen.iloc[0].statistic == "regression"
    # the gap grows with H1 and lower is better: H1 goes with worse generalization
    pearson = table[(table.score == "gap") & (table.statistic == "pearson")].iloc[0]
    assert pearson.estimate < 0
    # Benjamini-Hochberg over every test of a level, of both scores together
    for _, rows in table.groupby("level"):
        tested = rows[rows.p_value.notna()]
        expected = false_discovery_control(tested.p_value.to_numpy(), method="bh")
        np.testing.assert_allclose(tested.p_adjusted, expected)
        assert set(tested.score) == {"score", "gap"}


def test_a_score_column_the_sheet_lacks_or_that_holds_text_is_refused_by_name():
    from moetopo.pipeline.config import check_config
    from moetopo.pipeline.models import ModelSheet

    sheet = ModelSheet(
        pd.DataFrame(
            {"model": ["a", "b"], "path": ["x", "y"], "score": ["1", ""], "gap": ["0.1", "n/a"]}
        )
    )
    sheet.check_score_columns(["score"])
    with pytest.raises(MoetopoError, match=r"names column 'ood', which the sheet does not"):
        sheet.check_score_columns(["score", "ood"])
    with pytest.raises(MoetopoError, match=r"model 'b': gap is 'n/a', not a number"):
        sheet.check_score_columns(["score", "gap"])
    import yaml

    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config["conjecture"] |= {"other_scores": {"gap": "lower"}, "primary_score": "ood"}
    with pytest.raises(MoetopoError, match=r"primary_score ood is neither score nor one of"):
        check_config(config)


def test_the_stage_recovers_a_planted_h1_effect_beside_size_with_an_interval_covering_it():
    """A synthetic study: score = a * H1 + b * log10(activated) + noise over 40 models. The
    regression row's H1 coefficient is near a and its interval covers a (the score is a
    loss here, so the stage reports the coefficient of the negated score: -a)."""
    rng = np.random.default_rng(16)
    n, a, b = 40, -0.04, -0.3
    active = 10 ** rng.uniform(5, 7, n)
    h1 = rng.integers(0, 12, n).astype(float)
    score = 3.0 + a * h1 + b * np.log10(active) + 0.03 * rng.normal(size=n)
    models = planted_models(n=n).assign(
        score=score, h1_total=h1, h1_per_active_param=h1 / active, activated_params=active
    )
    row = regression_row(models, [])
    assert row.ci_low <= -a <= row.ci_high
    assert abs(row.estimate - (-a)) < 0.01
    assert row.verdict == "supported"
