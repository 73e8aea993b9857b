"""Statistics on synthetic data whose truth is known."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from study import stats


def test_bootstrap_interval_covers_the_true_mean_at_about_the_nominal_rate():
    # 400 samples of 20 draws from N(1, 1): a 95% percentile interval misses ~5-7% of the
    # time at this size. With 400 repetitions the binomial s.d. of the coverage is ~1.1%.
    rng = np.random.default_rng(1)
    covered = [
        (iv.low <= 1.0 <= iv.high)
        for iv in (stats.bootstrap_mean(rng.normal(1.0, 1.0, 20), rng, n_boot=1000)
                   for _ in range(400))
    ]  # fmt: skip
    assert 0.90 <= np.mean(covered) <= 0.98


def test_bootstrap_is_reproducible_with_the_same_seed():
    x = np.random.default_rng(0).normal(size=7)
    first = stats.bootstrap_mean(x, np.random.default_rng(42))
    again = stats.bootstrap_mean(x, np.random.default_rng(42))
    assert first == again and first.low < first.estimate < first.high


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


def test_wilcoxon_finds_a_shift_and_not_its_absence():
    rng = np.random.default_rng(5)
    base = rng.normal(size=30)
    shifted = stats.paired_wilcoxon(base + 0.8 + rng.normal(0, 0.3, 30), base, rng)
    assert shifted.pvalue < 1e-4 and shifted.rank_biserial > 0.8
    assert shifted.difference.low < 0.8 < shifted.difference.high
    null = stats.paired_wilcoxon(base + rng.normal(0, 0.3, 30), base, rng)
    assert null.pvalue > 0.01
