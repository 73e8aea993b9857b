"""Statistics: intervals that cover at 3 seeds, tests whose unit is the cell (or a cluster of
cells), one-sided tests against a margin, corrections for many tests, and descriptive
factorial models. The arithmetic is scipy's and statsmodels'; this module keeps the study's
conventions and the edge cases (too few units, units that do not vary).

Two levels of replication. Seeds replicate a cell (one configuration): its mean gets a
Student-t interval over the seeds, which covers at its nominal rate with 3 seeds (a
percentile bootstrap over 3 seeds covers about 76%). A claim about a population of
configurations is tested over its cells, each entering once as its seed mean (or a matched
difference of seed means). Cells of a crossed factorial are not independent: cells that
differ only in depth are near-deterministic replicates of one configuration. So the cells
of a cluster (a configuration across depths) are averaged first and the t-test runs over
the clusters, with clusters - 1 degrees of freedom (Ibragimov and Mueller 2010: valid with
few, heterogeneous clusters). Pooling cell x seed pairs, or cells as independent units,
would measure the size of the grid.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import statsmodels.formula.api as smf
from scipy import stats
from statsmodels.stats.anova import anova_lm
from statsmodels.stats.multitest import multipletests
from statsmodels.tools.sm_exceptions import SingularMatrixWarning, ValueWarning

LEVEL = 0.95


@dataclass(frozen=True)
class Interval:
    estimate: float
    low: float
    high: float


def _finite(values: Sequence[float] | np.ndarray) -> np.ndarray:
    x = np.asarray(values, dtype=np.float64)
    return x[np.isfinite(x)]


def t_interval(values: Sequence[float] | np.ndarray, level: float = LEVEL) -> Interval:
    """Mean and Student-t interval; NaNs are dropped; fewer than two values give no bounds."""
    return UnitTest.of(values).interval(level)


@dataclass(frozen=True)
class UnitTest:
    """The mean of ``n`` independent units with its standard error and degrees of freedom:
    what every interval and one-sided test of a claim's row is read from."""

    n: int
    estimate: float
    se: float  # 0 when every unit has the same value; NaN below two units
    df: int

    @classmethod
    def of(cls, values: Sequence[float] | np.ndarray) -> UnitTest:
        x = _finite(values)
        if len(x) == 0:
            return cls(0, np.nan, np.nan, 0)
        if len(x) < 2:
            return cls(1, float(x[0]), np.nan, 0)
        return cls(len(x), float(x.mean()), float(stats.sem(x)), len(x) - 1)

    @property
    def testable(self) -> bool:
        return self.n >= 2 and np.isfinite(self.se)

    def interval(self, level: float = LEVEL) -> Interval:
        if not self.testable:
            return Interval(self.estimate, np.nan, np.nan)
        if self.se == 0:
            return Interval(self.estimate, self.estimate, self.estimate)
        low, high = stats.t.interval(level, self.df, loc=self.estimate, scale=self.se)
        return Interval(self.estimate, float(low), float(high))

    def p_above(self, bound: float) -> float:
        """One-sided p-value of "the mean is above ``bound``" (H0: mean <= bound)."""
        if not self.testable:
            return np.nan
        if self.se == 0:  # exact: every unit has this value
            return 0.0 if self.estimate > bound else 1.0
        return float(stats.t.sf((self.estimate - bound) / self.se, self.df))

    def p_below(self, bound: float) -> float:
        """One-sided p-value of "the mean is below ``bound``" (H0: mean >= bound)."""
        if not self.testable:
            return np.nan
        if self.se == 0:
            return 0.0 if self.estimate < bound else 1.0
        return float(stats.t.cdf((self.estimate - bound) / self.se, self.df))

    def p_two_sided(self, null: float = 0.0) -> float:
        return min(1.0, 2 * min(self.p_above(null), self.p_below(null)))

    def t(self, null: float = 0.0) -> float:
        if not self.testable:
            return np.nan
        if self.se == 0:
            return 0.0 if self.estimate == null else np.copysign(np.inf, self.estimate - null)
        return (self.estimate - null) / self.se


def cluster_test(values: pd.Series, clusters: pd.Series | None) -> UnitTest:
    """The mean over clusters of the mean of their units (cells), tested over clusters
    (degrees of freedom: clusters - 1); without clusters, over the units themselves."""
    values = values[np.isfinite(values.to_numpy(dtype=float))]
    if clusters is None or values.empty:
        return UnitTest.of(values.to_numpy(dtype=float))
    means = values.groupby(clusters.loc[values.index], observed=True, sort=True).mean()
    return UnitTest.of(means.to_numpy(dtype=float))


def slope_test(x: np.ndarray, y: np.ndarray) -> UnitTest:
    """The least-squares slope of y on x with its standard error (residual degrees of
    freedom n - 2); the units are the (x, y) points."""
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = np.asarray(x, float)[keep], np.asarray(y, float)[keep]
    if len(x) < 3 or np.ptp(x) == 0:
        return UnitTest(len(x), np.nan, np.nan, max(len(x) - 2, 0))
    fit = stats.linregress(x, y)
    return UnitTest(len(x), float(fit.slope), float(fit.stderr), len(x) - 2)


def _adjusted(pvalues: Sequence[float], method: str) -> np.ndarray:
    p = np.asarray(pvalues, dtype=np.float64)
    out = np.full_like(p, np.nan)
    valid = np.isfinite(p)
    if valid.any():
        out[valid] = multipletests(p[valid], method=method)[1]
    return out


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values (NaN stays NaN and is not counted)."""
    return _adjusted(pvalues, "holm")


def benjamini_hochberg(pvalues: Sequence[float]) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (q-values); NaN stays NaN."""
    return _adjusted(pvalues, "fdr_bh")


def simes(pvalues: Sequence[float]) -> float:
    """Simes' combination of a family's p-values: the family's p-value for "at least one of
    its nulls is false" (valid under positive dependence); NaN for an empty family."""
    p = np.sort(_finite(pvalues))
    if len(p) == 0:
        return np.nan
    return float(min(1.0, np.min(len(p) * p / np.arange(1, len(p) + 1))))


def units_needed(test: UnitTest, distance: float, alpha: float) -> int | None:
    """The number of units at which a one-sided test at ``alpha`` would separate the
    observed mean from a bound ``distance`` away, at the observed spread (None: the spread
    is unknown or the mean sits on the bound)."""
    if not test.testable or not distance > 0:
        return None
    sd = test.se * np.sqrt(test.n)
    if sd == 0:
        return 2
    n = 2
    while stats.t.ppf(1 - alpha, n - 1) * sd / np.sqrt(n) >= distance:
        n = int(np.ceil(n * 1.1)) + 1
        if n > 1_000_000:
            return None
    return n


def factorial_model(
    frame: pd.DataFrame, response: str, factors: Sequence[str],
    interactions: Sequence[tuple[str, str]] = (),
) -> pd.DataFrame:  # fmt: skip
    """OLS with categorical main effects and the given two-way interactions; type-II ANOVA.

    Returns one row per term: sum of squares, df, F, p-value and partial eta squared
    (SS_term / (SS_term + SS_residual)). Rows with a non-finite response are dropped;
    factors with a single level are left out of the model (they cannot be estimated).
    Descriptive: the responses are heavy-tailed and the rows are runs.
    """
    data = frame[[response, *factors]].copy()
    data[response] = data[response].astype(float)
    data = data[np.isfinite(data[response])]
    for f in factors:
        data[f] = data[f].astype(str)
    used = [f for f in factors if data[f].nunique() > 1]
    terms = [f"C({f})" for f in used]
    terms += [f"C({x}):C({y})" for x, y in interactions if x in used and y in used]
    if not terms or len(data) <= len(terms) + 1:
        return pd.DataFrame(columns=["term", "sum_sq", "df", "F", "pvalue", "partial_eta_sq"])
    with warnings.catch_warnings():
        # The sweeps are unions of grids (an interaction absent where a grid lacks a level):
        # the design is rank-deficient by construction, and type-II sums of squares are
        # still defined for every estimable term. Said once here, not per model on stderr.
        warnings.simplefilter("ignore", SingularMatrixWarning)
        warnings.simplefilter("ignore", ValueWarning)
        fit = smf.ols(f"{response} ~ {' + '.join(terms)}", data=data).fit()
        table = anova_lm(fit, typ=2)
    residual = table.loc["Residual", "sum_sq"]
    table["partial_eta_sq"] = table["sum_sq"] / (table["sum_sq"] + residual)
    table.loc["Residual", "partial_eta_sq"] = np.nan
    table = table.rename(columns={"PR(>F)": "pvalue"}).reset_index(names="term")
    table["term"] = table["term"].str.replace(r"C\((\w+)\)", r"\1", regex=True)
    return table[["term", "sum_sq", "df", "F", "pvalue", "partial_eta_sq"]]
