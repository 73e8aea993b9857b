"""Statistics on synthetic data whose truth is known."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

from study.analysis import stats


def test_t_interval_is_the_student_interval_and_needs_two_values():
    x = np.array([1.0, 2.0, 4.0])
    iv = stats.t_interval(x)
    half = scipy_stats.t.ppf(0.975, 2) * x.std(ddof=1) / np.sqrt(3)
    assert (iv.estimate, iv.low, iv.high) == pytest.approx((7 / 3, 7 / 3 - half, 7 / 3 + half))
    one = stats.t_interval([5.0, np.nan])
    assert one.estimate == 5.0 and np.isnan(one.low) and np.isnan(one.high)


def test_unit_test_matches_scipy_and_handles_constant_units():
    rng = np.random.default_rng(5)
    x = rng.normal(0.3, 1.0, 12)
    ours = stats.UnitTest.of(x)
    theirs = scipy_stats.ttest_1samp(x, 0.1)
    assert ours.p_two_sided(0.1) == pytest.approx(theirs.pvalue) and ours.df == 11
    assert ours.p_above(0.1) == pytest.approx(theirs.pvalue / 2)  # the mean is above 0.1
    assert stats.UnitTest.of([0.5, 0.5, 0.5]).p_above(0.0) == 0.0  # exact, off the null
    assert stats.UnitTest.of([0.0, 0.0]).p_above(0.0) == 1.0  # exact, on it
    assert np.isnan(stats.UnitTest.of([1.0]).p_above(0.0))


def test_a_cluster_test_averages_each_cluster_first():
    values = pd.Series([1.0, 3.0, 10.0, 2.0])
    clusters = pd.Series(["a", "a", "b", "c"])
    test = stats.cluster_test(values, clusters)
    assert (test.n, test.df) == (3, 2) and test.estimate == pytest.approx((2.0 + 10.0 + 2.0) / 3)


def test_slope_test_recovers_a_known_slope_and_tests_against_a_null():
    rng = np.random.default_rng(2)
    x = np.repeat([1.0, 2.0], 6)
    y = 0.4 * x + rng.normal(0, 0.01, 12)
    fit = stats.slope_test(x, y)
    iv = fit.interval()
    assert iv.low < 0.4 < iv.high and fit.p_two_sided(0.0) < 1e-6 and fit.df == 10
    assert fit.p_two_sided(0.4) > 0.01


def test_holm_matches_a_hand_computed_example():
    # sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> max so far 0.06
    adjusted = stats.holm([0.01, 0.04, 0.03, 0.005])
    assert adjusted == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # NaN is skipped: m = 2; 0.5 * 2 = 1.0, then 0.9 * 1 is raised to the running max 1.0
    assert stats.holm([0.5, np.nan, 0.9]) == pytest.approx([1.0, np.nan, 1.0], nan_ok=True)


def test_a_factor_without_effect_gets_partial_eta_squared_near_zero():
    rng = np.random.default_rng(3)
    a = np.repeat(["a0", "a1", "a2"], 40)
    b = np.tile(["b0", "b1"], 60)
    y = np.select([a == "a1", a == "a2"], [2.0, 4.0], 0.0) + rng.normal(0, 1, 120)
    table = stats.factorial_model(pd.DataFrame({"y": y, "a": a, "b": b}), "y", ["a", "b"],
                                  interactions=[("a", "b")])  # fmt: skip
    eta = table.set_index("term")["partial_eta_sq"]
    assert eta["a"] > 0.7
    assert eta["b"] < 0.03 and eta["a:b"] < 0.05
