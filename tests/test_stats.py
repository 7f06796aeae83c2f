"""Known answers and properties of moetopo.stats: intervals, p-values, verdicts, tables."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from moetopo.stats import (
    LAYER_COLUMNS,
    MODEL_COLUMNS,
    adjusted_verdicts,
    bootstrap_mean_interval,
    clustered_correlation_test,
    conjecture_table,
    correlation_test,
    fit_line_band,
    layer_conjecture_table,
    partial_correlation_test,
    with_adjusted_p,
)
from moetopo.stats._resampling import midranks, pearson

FAST = {"n_resamples": 1999}


def bivariate(rng: np.random.Generator, n: int, rho: float) -> tuple[np.ndarray, np.ndarray]:
    draw = rng.multivariate_normal([0.0, 0.0], [[1.0, rho], [rho, 1.0]], size=n)
    return draw[:, 0], draw[:, 1]


def coverage(confidence_level: float, studies: int = 200, n: int = 12, rho: float = 0.6) -> float:
    rng = np.random.default_rng(20240601)
    hits = 0
    for study in range(studies):
        x, y = bivariate(rng, n, rho)
        result = correlation_test(
            x, y, confidence_level=confidence_level, n_resamples=999, seed=study
        )
        hits += result.ci_low <= rho <= result.ci_high
    return hits / studies


# BCa for Pearson r at n = 12 undercovers: 4000 studies of this design measured
# 0.934 (+- 0.004), not 0.95. With 200 studies the binomial sd is
# sqrt(0.934 * 0.066 / 200) = 0.018, so +-3 sd around 0.934 gives [0.88, 0.99].
COVERAGE_BAND = (0.88, 0.99)


@pytest.mark.slow
def test_pearson_interval_covers_planted_correlation_at_its_level():
    measured = coverage(0.95)
    assert COVERAGE_BAND[0] <= measured <= COVERAGE_BAND[1], measured


@pytest.mark.slow
@pytest.mark.parametrize("wrong_level", [0.5, 0.8])
def test_coverage_band_rejects_an_interval_of_the_wrong_level(wrong_level):
    measured = coverage(wrong_level)
    assert not COVERAGE_BAND[0] <= measured <= COVERAGE_BAND[1], measured


def test_estimates_match_scipy():
    rng = np.random.default_rng(1)
    x, y = bivariate(rng, 15, 0.5)
    assert correlation_test(x, y, **FAST).estimate == pytest.approx(stats.pearsonr(x, y)[0])
    spearman = correlation_test(x, y, statistic="spearman", **FAST).estimate
    assert spearman == pytest.approx(stats.spearmanr(x, y)[0])


def test_partial_estimate_is_correlation_of_least_squares_residuals():
    rng = np.random.default_rng(2)
    x, y, z = rng.normal(size=(3, 14))
    design = np.column_stack([np.ones_like(z), z])

    def residual(v):
        return v - design @ np.linalg.lstsq(design, v, rcond=None)[0]

    expected = stats.pearsonr(residual(x), residual(y))[0]
    assert partial_correlation_test(x, y, z, **FAST).estimate == pytest.approx(expected)


@pytest.mark.parametrize("n", [0, 1, 2, 4])
def test_too_few_models_is_inconclusive_with_nan_numbers(n):
    result = correlation_test(np.arange(n), np.arange(n) ** 2, min_n=5)
    assert result.verdict == "inconclusive"
    assert f"only {n} models" in result.reason and "at least 5" in result.reason
    assert all(
        math.isnan(v) for v in (result.estimate, result.ci_low, result.ci_high, result.p_value)
    )
    assert result.ci_method == "none"


def test_minimum_never_drops_below_what_the_statistic_needs():
    assert "at least 3" in correlation_test([1, 2], [2, 1], min_n=1).reason
    assert "at least 4" in partial_correlation_test([1, 2, 3], [2, 1, 3], [0, 1, 1], min_n=1).reason


@pytest.mark.parametrize("statistic", ["pearson", "spearman"])
def test_constant_x_or_y_is_inconclusive(statistic):
    flat = correlation_test(np.full(8, 3.0), np.arange(8.0), statistic=statistic, names=("h1", "s"))
    assert flat.verdict == "inconclusive" and "h1 is constant" in flat.reason
    assert math.isnan(flat.estimate)
    flat_y = correlation_test(np.arange(8.0), np.ones(8), statistic=statistic)
    assert flat_y.verdict == "inconclusive" and "y is constant" in flat_y.reason


def test_missing_values_are_left_out_and_counted():
    rng = np.random.default_rng(3)
    x, y = bivariate(rng, 10, 0.8)
    x[2], y[5] = np.nan, np.inf
    result = correlation_test(x, y, **FAST)
    keep = np.isfinite(x) & np.isfinite(y)
    assert result.n == 8
    assert result.estimate == pytest.approx(stats.pearsonr(x[keep], y[keep])[0])
    assert "2 models with missing or non-finite values left out" in result.reason


def test_missing_values_leaving_too_few_models_is_inconclusive():
    result = correlation_test([1.0, np.nan, 3.0, 4.0, np.nan, 6.0], [1, 2, 3, 5, 4, 6], min_n=5)
    assert result.verdict == "inconclusive" and math.isnan(result.estimate)
    assert "only 4 models" in result.reason and "2 models with missing" in result.reason


def test_perfect_monotone_nonlinear_relation_gives_spearman_exactly_one():
    x = np.arange(1.0, 13.0)
    y = np.exp(x)
    result = correlation_test(x, y, statistic="spearman", **FAST)
    assert result.estimate == 1.0
    assert result.verdict == "supported"
    assert correlation_test(x, y, **FAST).estimate < 1.0
    loss = correlation_test(x, -y, statistic="spearman", higher_is_better=False, **FAST)
    assert loss.estimate == 1.0


@pytest.mark.parametrize("statistic", ["pearson", "spearman"])
def test_a_loss_flips_the_sign_of_estimate_and_interval(statistic):
    rng = np.random.default_rng(4)
    x, y = bivariate(rng, 14, 0.5)
    accuracy = correlation_test(x, y, statistic=statistic, **FAST)
    loss = correlation_test(x, y, statistic=statistic, higher_is_better=False, **FAST)
    assert loss.estimate == pytest.approx(-accuracy.estimate, abs=1e-12)
    assert loss.ci_low == pytest.approx(-accuracy.ci_high, abs=1e-9)
    assert loss.ci_high == pytest.approx(-accuracy.ci_low, abs=1e-9)
    assert loss.p_value == accuracy.p_value


def test_a_loss_falling_with_the_metric_supports_the_conjecture():
    rng = np.random.default_rng(5)
    h1 = rng.uniform(0, 1, 15)
    loss = 3.0 - 2.0 * h1 + 0.1 * rng.normal(size=15)
    result = correlation_test(h1, loss, higher_is_better=False, **FAST)
    assert result.estimate > 0.9 and result.verdict == "supported"
    assert correlation_test(h1, loss, **FAST).verdict == "contradicted"


@pytest.mark.parametrize("statistic", ["pearson", "spearman"])
def test_partial_correlation_removes_a_planted_confounder(statistic):
    rng = np.random.default_rng(6)
    size = rng.normal(size=30)  # log total parameters drives both
    h1 = size + 0.3 * rng.normal(size=30)
    score = size + 0.3 * rng.normal(size=30)
    raw = correlation_test(h1, score, statistic=statistic, **FAST)
    partial = partial_correlation_test(h1, score, size, statistic=statistic, **FAST)
    assert raw.verdict == "supported" and raw.estimate > 0.8
    assert abs(partial.estimate) < 0.3
    assert partial.verdict == "inconclusive"
    assert partial.ci_low < 0 < partial.ci_high and partial.p_value > 0.05


def test_partial_correlation_keeps_a_real_link_beyond_size():
    rng = np.random.default_rng(7)
    size = rng.normal(size=30)
    h1 = rng.normal(size=30)
    score = size + h1 + 0.3 * rng.normal(size=30)
    result = partial_correlation_test(h1, score, size, **FAST)
    assert result.estimate > 0.9 and result.verdict == "supported"


def test_metric_that_is_a_function_of_size_is_inconclusive():
    size = np.linspace(9, 12, 8)
    result = partial_correlation_test(2 * size + 1, np.sin(size), size, names=("h1", "s", "z"))
    assert result.verdict == "inconclusive" and "h1 is a linear function of z" in result.reason


def test_permutation_p_value_is_small_only_for_a_real_correlation():
    rng = np.random.default_rng(8)
    x, y = bivariate(rng, 20, 0.9)
    assert correlation_test(x, y, **FAST).p_value < 0.01
    u, v = rng.normal(size=(2, 20))
    assert correlation_test(u, v, **FAST).p_value > 0.05


def test_permutation_p_value_is_exact_for_few_models():
    # 5 models: all 120 orders are enumerated; only the identity and its reverse
    # reach |r| = 1, so the two-sided p-value is 2/120.
    result = correlation_test(np.arange(5.0), np.arange(5.0) ** 3, statistic="spearman")
    assert result.p_value == pytest.approx(2 / 120)


def test_interval_excluding_zero_with_a_large_p_value_is_not_trusted():
    # One nonzero metric among five models: resamples without it are undefined
    # and the rest agree, so the bootstrap interval excludes 0 while the exact
    # permutation test (p = 1/3) sees nothing.
    result = correlation_test([0, 0, 0, 0, 0, 1], [1, 2, 3, 4, 5, 6], min_n=3)
    assert result.ci_low > 0 and result.p_value > 0.05
    assert result.verdict == "inconclusive" and "too little evidence" in result.reason


def test_bca_falls_back_to_percentile_when_the_jackknife_is_undefined():
    # Leaving out the one model with x = 1 makes x constant: no acceleration.
    result = correlation_test([0, 0, 0, 0, 0, 1], [1, 2, 3, 4, 5, 6], min_n=3)
    assert result.ci_method == "percentile"
    assert "resamples undefined and dropped" in result.reason


def test_bca_falls_back_to_percentile_when_all_resamples_agree():
    result = correlation_test(np.arange(8.0), np.arange(8.0) ** 2, statistic="spearman")
    assert result.ci_method == "percentile" and result.ci_low == result.ci_high == 1.0


def test_no_interval_when_most_resamples_are_undefined():
    result = correlation_test([0, 0, 0, 0, 0, 1], [1, 0, 0, 0, 0, 0], min_n=3)
    assert result.ci_method == "none" and math.isnan(result.ci_low)
    assert result.verdict == "inconclusive" and "no bootstrap interval" in result.reason
    assert math.isfinite(result.estimate)


def test_same_inputs_same_outputs_and_seed_matters():
    rng = np.random.default_rng(9)
    x, y = bivariate(rng, 12, 0.4)
    assert correlation_test(x, y, seed=3, **FAST) == correlation_test(x, y, seed=3, **FAST)
    assert correlation_test(x, y, seed=3, **FAST) != correlation_test(x, y, seed=4, **FAST)


def test_invalid_options_raise():
    with pytest.raises(ValueError, match="statistic"):
        correlation_test([1, 2, 3], [1, 2, 3], statistic="kendall")
    with pytest.raises(ValueError, match="confidence_level"):
        correlation_test([1, 2, 3], [1, 2, 3], confidence_level=95)
    with pytest.raises(ValueError, match="differ in length"):
        correlation_test([1, 2, 3], [1, 2])


def model_effect_layers(rng, n_models=6, n_layers=20):
    """Layers whose metric is mostly a per-model effect; the score is per model."""
    effect = rng.normal(size=n_models)
    score = 0.5 * effect + rng.normal(size=n_models)
    groups = np.repeat(np.arange(n_models), n_layers)
    metric = effect[groups] + 0.2 * rng.normal(size=groups.size)
    return metric, score[groups], groups


@pytest.mark.parametrize("statistic", ["pearson", "spearman"])
def test_clustered_interval_is_wider_than_naive_layer_interval(statistic):
    metric, score, groups = model_effect_layers(np.random.default_rng(10))
    clustered = clustered_correlation_test(metric, score, groups, statistic=statistic, **FAST)
    naive = correlation_test(metric, score, statistic=statistic, **FAST)  # resamples layers
    assert clustered.estimate == pytest.approx(naive.estimate)
    assert clustered.n == 120 and clustered.n_groups == 6
    assert clustered.ci_high - clustered.ci_low > 3 * (naive.ci_high - naive.ci_low)


def test_many_layers_from_few_models_cannot_fake_significance():
    rng = np.random.default_rng(11)
    groups = np.repeat(np.arange(3), 40)
    metric = np.array([0.0, 1.0, 2.0])[groups] + 0.2 * rng.normal(size=120)
    score = np.array([0.1, 0.5, 0.9])[groups]
    naive = correlation_test(metric, score, **FAST)
    clustered = clustered_correlation_test(metric, score, groups, min_n=3, **FAST)
    assert naive.p_value <= 0.001 and naive.verdict == "supported"
    # 3 models have 6 orders; the observed one and its mirror bound p below by 1/3.
    assert clustered.p_value >= 1 / 3 - 1e-12
    assert clustered.verdict == "inconclusive"


def test_clustered_min_n_counts_models_not_layers():
    metric, score, groups = model_effect_layers(np.random.default_rng(12), n_models=4)
    result = clustered_correlation_test(metric, score, groups, min_n=5)
    assert result.verdict == "inconclusive" and "only 4 models" in result.reason


def test_clustered_requires_one_score_per_model():
    with pytest.raises(ValueError, match="constant within each group"):
        clustered_correlation_test([1, 2, 3, 4], [1, 2, 3, 4], ["a", "a", "b", "b"])


def test_pooled_mean_of_identical_pairs_is_the_value_with_a_collapsed_interval():
    result = bootstrap_mean_interval([0.2, 0.4] * 3, groups=np.repeat(["p", "q", "r"], 2))
    assert result.estimate == pytest.approx(0.3)
    assert result.ci_low == pytest.approx(0.3) and result.ci_high == pytest.approx(0.3)
    assert result.n_groups == 3 and result.n == 6


def test_pooled_mean_of_consistent_positive_pairs_excludes_zero():
    result = bootstrap_mean_interval([0.5, 0.6, 0.7, 0.55])
    assert 0 < result.ci_low <= result.estimate <= result.ci_high


def test_pooled_mean_resamples_pairs_not_values():
    # Two pairs of means 0 and 1: resampled pair means are 0, 0.5, 1 with
    # probabilities 1/4, 1/2, 1/4, so the 95% interval is [0, 1].
    result = bootstrap_mean_interval([0, 0, 0, 1, 1, 1], groups=[0, 0, 0, 1, 1, 1])
    assert result.estimate == 0.5
    assert (result.ci_low, result.ci_high) == (0.0, 1.0)
    ungrouped = bootstrap_mean_interval([0, 0, 0, 1, 1, 1])
    assert ungrouped.ci_high - ungrouped.ci_low < 1.0


def test_pooled_mean_of_one_pair_is_its_value_without_interval():
    result = bootstrap_mean_interval([0.25, 0.35], groups=["base--tuned", "base--tuned"])
    assert result.estimate == pytest.approx(0.3)
    assert math.isnan(result.ci_low) and math.isnan(result.ci_high)
    assert "one pair" in result.reason
    assert "no pair" in bootstrap_mean_interval([np.nan]).reason


def test_line_band_of_an_exact_line_collapses_onto_it():
    x = np.arange(6.0)
    band = fit_line_band(x, 2 * x + 1, n_grid=7, **FAST)
    assert band.slope == pytest.approx(2) and band.intercept == pytest.approx(1)
    np.testing.assert_allclose(band.fit, 2 * np.linspace(0, 5, 7) + 1)
    np.testing.assert_allclose(band.low, band.fit, atol=1e-9)
    np.testing.assert_allclose(band.high, band.fit, atol=1e-9)


def test_line_band_brackets_the_fit_and_widens_away_from_the_data():
    rng = np.random.default_rng(13)
    x = rng.uniform(0, 1, 20)
    y = x + 0.3 * rng.normal(size=20)
    band = fit_line_band(x, y, grid=[-2.0, 0.5, 3.0], **FAST)
    assert np.all(band.low <= band.fit) and np.all(band.fit <= band.high)
    width = band.high - band.low
    assert width[1] < width[0] and width[1] < width[2]
    assert band.slope == pytest.approx(np.polyfit(x, y, 1)[0])


def test_line_band_without_a_line_says_why():
    band = fit_line_band([1.0, 1.0, 1.0], [1.0, 2.0, 3.0], n_grid=4)
    assert math.isnan(band.slope) and np.all(np.isnan(band.fit))
    assert "x is constant" in band.reason


def models_frame(n=12, seed=14):
    rng = np.random.default_rng(seed)
    h1 = rng.uniform(0, 1, n)
    return pd.DataFrame(
        {
            "model": [f"m{i}" for i in range(n)],
            "h1_per_active_param": h1,
            "h1_persistence_per_active_param": rng.uniform(0, 1, n),
            "total_params": 10 ** rng.uniform(9, 12, n),
            "score": 2.0 - h1 + 0.05 * rng.normal(size=n),  # a loss
        }
    )


def test_conjecture_table_has_one_sorted_row_per_metric_and_statistic():
    models = models_frame()
    models.loc[3, "score"] = np.nan  # a model without a score
    metrics = ["h1_per_active_param", "h1_persistence_per_active_param"]
    table = conjecture_table(models, metrics, higher_is_better=False, **FAST)
    assert list(table.columns) == list(MODEL_COLUMNS)
    assert len(table) == 8 and set(table["level"]) == {"model"}
    assert table[["metric", "statistic"]].equals(
        table[["metric", "statistic"]].sort_values(["metric", "statistic"])
    )
    assert set(table["statistic"]) == {"pearson", "spearman", "partial_pearson", "partial_spearman"}
    assert (table["n_models"] == 11).all()
    planted = table[table["metric"] == "h1_per_active_param"].set_index("statistic")
    assert (planted["verdict"] == "supported").all() and (planted["estimate"] > 0.9).all()
    pd.testing.assert_frame_equal(
        table, conjecture_table(models, metrics, higher_is_better=False, **FAST)
    )


def test_a_study_with_one_nonzero_model_is_inconclusive_whatever_its_interval():
    # one model with H1, the rest zero: the correlation is that model against the others
    models = models_frame(n=12)
    models["h1_per_active_param"] = 0.0
    best = models["score"].idxmin()  # a loss: the best model has the one nonzero metric
    models.loc[best, "h1_per_active_param"] = 1.0
    table = conjecture_table(models, ["h1_per_active_param"], higher_is_better=False, **FAST)
    assert (table["n_nonzero"] == 1).all()
    assert (table["verdict"] == "inconclusive").all()
    assert table["reason"].str.startswith("only 1 of 12 scored models have a nonzero").any()


def test_half_of_the_models_nonzero_is_enough_to_decide():
    models = models_frame(n=12)
    order = models["score"].sort_values().index
    models.loc[order[6:], "h1_per_active_param"] = 0.0  # the six worst have none
    table = conjecture_table(models, ["h1_per_active_param"], higher_is_better=False, **FAST)
    assert (table["n_nonzero"] == 6).all()
    raw = table.set_index("statistic").loc["pearson"]
    assert raw["verdict"] == "supported" and "only" not in raw["reason"]


def test_conjecture_table_names_a_missing_column():
    with pytest.raises(ValueError, match="lacks column"):
        conjecture_table(models_frame(), ["no_such_metric"], **FAST)


def test_conjecture_table_with_too_few_models_is_all_inconclusive():
    table = conjecture_table(models_frame(n=3), ["h1_per_active_param"], min_n=5, **FAST)
    assert (table["verdict"] == "inconclusive").all() and table["estimate"].isna().all()


def test_layer_conjecture_table_counts_models_and_layers():
    metric, score, groups = model_effect_layers(np.random.default_rng(15))
    layers = pd.DataFrame(
        {"model": [f"m{g}" for g in groups], "h1": metric, "score": score, "layer": 0}
    )
    table = layer_conjecture_table(layers, ["h1"], **FAST)
    assert list(table.columns) == list(LAYER_COLUMNS)
    assert list(table["statistic"]) == ["pearson", "spearman"]
    assert (table["level"] == "layer").all()
    assert (table["n_models"] == 6).all() and (table["n_layers"] == 120).all()


@settings(max_examples=60, deadline=None)
@given(
    values=st.lists(st.integers(-3, 3), min_size=2, max_size=8),
    data=st.data(),
)
def test_weighted_statistics_equal_plain_statistics_on_the_expanded_resample(values, data):
    a = np.array(values, dtype=float)
    b = np.array(data.draw(st.lists(st.integers(-3, 3), min_size=a.size, max_size=a.size)), float)
    counts = np.array(data.draw(st.lists(st.integers(0, 3), min_size=a.size, max_size=a.size)))
    expanded_a, expanded_b = np.repeat(a, counts), np.repeat(b, counts)
    if expanded_a.size < 2:
        return
    ranks = midranks(a, counts.astype(float))
    np.testing.assert_allclose(np.repeat(ranks, counts), stats.rankdata(expanded_a))
    r = pearson(a, b, counts.astype(float))
    if np.ptp(expanded_a) == 0 or np.ptp(expanded_b) == 0:
        assert np.isnan(r)
    else:
        assert r == pytest.approx(stats.pearsonr(expanded_a, expanded_b)[0], abs=1e-12)


def test_adjusted_p_is_benjamini_hochberg_within_each_level():
    # By hand: sorted p 0.01, 0.03, 0.04, 0.5 -> p * m / rank = 0.04, 0.06, 0.0533, 0.5,
    # then the running minimum from the largest rank down.
    table = pd.DataFrame(
        {
            "level": ["model"] * 5 + ["layer"] * 2,
            "p_value": [0.01, 0.04, 0.03, 0.5, np.nan, 0.02, 0.5],
        }
    )
    adjusted = with_adjusted_p(table)["p_adjusted"].to_numpy()
    expected = [0.04, 0.16 / 3, 0.16 / 3, 0.5, np.nan, 0.04, 0.5]
    np.testing.assert_allclose(adjusted, expected, rtol=1e-12)  # NaN stays NaN, not counted


def test_adjusted_p_never_below_the_raw_p_and_keeps_its_order():
    rng = np.random.default_rng(3)
    p = rng.uniform(size=40)
    adjusted = with_adjusted_p(pd.DataFrame({"level": "model", "p_value": p}))["p_adjusted"]
    assert (adjusted.to_numpy() >= p - 1e-15).all()
    order = np.argsort(p)
    assert np.all(np.diff(adjusted.to_numpy()[order]) >= -1e-15)


def test_a_verdict_claims_no_more_than_its_adjusted_evidence():
    """Among 40 tests, one with raw p = 0.03 is decided on its own but not once all 40 are
    counted (Benjamini-Hochberg); one with p = 1e-4 survives; the reason says which."""
    p = np.r_[0.03, 1e-4, np.linspace(0.2, 0.99, 38)]
    table = pd.DataFrame(
        {
            "level": "model",
            "p_value": p,
            "verdict": ["supported", "contradicted"] + ["inconclusive"] * 38,
            "reason": "interval excludes 0",
        }
    )
    out = adjusted_verdicts(with_adjusted_p(table), confidence_level=0.95)
    assert list(out.verdict[:2]) == ["inconclusive", "contradicted"]
    assert list(out.verdict_unadjusted[:2]) == ["supported", "contradicted"]
    assert "not once the 40 model-level tests are counted" in out.reason[0]
    assert "adjusted p = 0.6" in out.reason[0]  # 0.03 * 40 / 2, then the running minimum
    assert (out.verdict[2:] == "inconclusive").all() and out.reason[1] == "interval excludes 0"


def test_an_interval_with_more_undefined_resamples_than_its_tail_is_not_trusted():
    # x is nonzero for 2 of 12 models; the resamples that miss both are undefined:
    # (10/12)^12, about 11% of them, far above the 2.5% tail
    x = np.zeros(12)
    x[[10, 11]] = [1.0, 1.2]
    y = np.arange(12.0)
    y[[10, 11]] = [30.0, 31.0]
    result = correlation_test(x, y, min_n=3, n_resamples=9999)
    assert result.ci_low > 0 and result.p_value <= 0.05
    assert result.verdict == "inconclusive"
    assert "resamples were undefined, more than its 0.025 tail" in result.reason


def test_a_p_value_within_monte_carlo_error_of_the_level_is_too_close_to_call():
    from moetopo.stats._resampling import Interval
    from moetopo.stats.correlation import _conclude

    interval = Interval(0.1, 0.5, "BCa", "", 0, 999)
    close = _conclude("pearson", 0.3, interval, (0.045, 0.007), 20, 20, 0.95, "")
    assert close.verdict == "inconclusive" and "within 3 Monte Carlo errors" in close.reason
    clear = _conclude("pearson", 0.3, interval, (0.01, 0.003), 20, 20, 0.95, "")
    assert clear.verdict == "supported" and "p = 0.01 ± 0.003" in clear.reason


def test_monte_carlo_error_is_zero_for_exact_tests_and_binomial_otherwise():
    from moetopo.stats._resampling import monte_carlo_error

    assert monte_carlo_error(0.2, 5, 9999) == 0.0  # 5! = 120 orders: enumerated
    assert monte_carlo_error(0.04, 12, 9999) == pytest.approx(np.sqrt(0.04 * 0.96 / 9999))


def test_verdicts_of_a_planted_effect_do_not_move_with_the_seed():
    rng = np.random.default_rng(31)
    x = rng.normal(size=20)
    y = 0.6 * x + rng.normal(size=20)
    verdicts = {correlation_test(x, y, seed=s).verdict for s in range(5)}
    weak = {correlation_test(x, rng.normal(size=20), seed=s).verdict for s in range(5)}
    assert verdicts == {"supported"} and weak == {"inconclusive"}


def test_regression_estimate_is_the_least_squares_coefficient_of_h1():
    from moetopo.stats.regression import regression_test

    rng = np.random.default_rng(40)
    h1, size, family = rng.poisson(5, 12) * 1.0, rng.uniform(6, 9, 12), rng.normal(size=12)
    score = 0.2 * h1 - 0.3 * size + 0.1 * rng.normal(size=12)
    result = regression_test(h1, score, np.column_stack([size, family]), n_resamples=199)
    design = np.column_stack([np.ones(12), h1, size, family])
    assert result.estimate == pytest.approx(np.linalg.lstsq(design, score, rcond=None)[0][1])
    loss = regression_test(h1, -score, np.column_stack([size, family]), n_resamples=199,
                           higher_is_better=False)  # fmt: skip
    assert loss.estimate == pytest.approx(result.estimate)  # a loss flips the sign back


def test_regression_interval_covers_a_planted_slope_near_its_level():
    from moetopo.stats.regression import regression_test

    rng = np.random.default_rng(41)
    covered = 0
    for seed in range(200):
        size = rng.uniform(6, 10, 30)
        h1 = rng.poisson(5, 30) + 0.5 * size
        score = 0.3 * h1 - 0.5 * size + rng.normal(size=30)
        result = regression_test(h1, score, size[:, None], n_resamples=999, seed=seed)
        covered += result.ci_low <= 0.3 <= result.ci_high
    assert 0.88 <= covered / 200 <= 0.99


def test_the_ratio_tracks_size_where_the_regression_finds_no_h1_effect():
    # H1 is noise; the loss falls with activated parameters. H1 / activated then tracks
    # the score through its denominator (here against the conjecture: small models have
    # the large ratios and the large losses), and only the regression says no.
    from moetopo.stats.regression import regression_test

    rng = np.random.default_rng(42)
    active = 10 ** rng.uniform(5, 9, 30)
    h1 = rng.poisson(20, 30).astype(float)
    loss = 3.0 - 0.3 * np.log10(active) + 0.05 * rng.normal(size=30)
    ratio = correlation_test(h1 / active, loss, higher_is_better=False, statistic="spearman")
    assert ratio.verdict == "contradicted"  # decided by the denominator alone
    regression = regression_test(h1, loss, np.log10(active)[:, None], higher_is_better=False)
    assert regression.verdict == "inconclusive" and regression.ci_low < 0 < regression.ci_high
