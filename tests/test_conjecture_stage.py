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
