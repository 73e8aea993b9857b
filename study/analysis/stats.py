"""Statistics: intervals that cover at 3 seeds, tests whose unit is the cell, Holm's
correction, and descriptive factorial models.

Two levels of replication. Seeds replicate a cell (one configuration): its mean gets a
Student-t interval over the seeds, which covers at its nominal rate with 3 seeds (a
percentile bootstrap over 3 seeds covers about 76%). A claim about a population of
configurations is tested over its cells: each cell enters once, as its seed mean (or a
matched difference of seed means), and the test is a one-sample t-test over those cell
values -- for a balanced design the same as a mixed model with the cell as a random
effect. Pooling cell x seed pairs instead would treat the near-identical seeds of one cell
as independent evidence, so the p-value would measure the size of the grid.

Censored values: a log10 first/last ratio whose first-layer gradient underflowed to zero is
only an upper bound (``study.engine.probes``); the per-layer rates leave zero gradients out of
their fit and are what the claims use.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import statsmodels.formula.api as smf
from scipy import stats
from statsmodels.stats.anova import anova_lm

LEVEL = 0.95


@dataclass(frozen=True)
class Interval:
    estimate: float
    low: float
    high: float


def t_interval(values: Sequence[float] | np.ndarray, level: float = LEVEL) -> Interval:
    """Mean and Student-t interval; NaNs are dropped; fewer than two values give no bounds."""
    x = np.asarray(values, dtype=np.float64)
    x = x[np.isfinite(x)]
    if len(x) == 0:
        return Interval(np.nan, np.nan, np.nan)
    mean = float(x.mean())
    if len(x) < 2:
        return Interval(mean, np.nan, np.nan)
    half = stats.t.ppf((1 + level) / 2, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x))
    return Interval(mean, mean - half, mean + half)


@dataclass(frozen=True)
class UnitTest:
    """A one-sample t-test over units (cells): is their mean different from ``null``?"""

    n: int
    effect: Interval  # the mean over units, with its t-interval
    statistic: float  # t
    df: int
    pvalue: float  # two-sided


def t_test(
    values: Sequence[float] | np.ndarray, null: float = 0.0, level: float = LEVEL
) -> UnitTest:
    """Two-sided one-sample t-test of the mean of ``values`` against ``null``.

    Units with identical values give no variance: p is 1 when they sit on the null and 0
    when they all sit off it (the effect is then exact, e.g. a closed form measured)."""
    x = np.asarray(values, dtype=np.float64)
    x = x[np.isfinite(x)]
    n = len(x)
    interval = t_interval(x, level)
    if n < 2:
        return UnitTest(n, interval, np.nan, max(n - 1, 0), np.nan)
    sd = x.std(ddof=1)
    if sd == 0:
        off = not np.isclose(x[0], null)
        return UnitTest(n, interval, np.inf if off else 0.0, n - 1, 0.0 if off else 1.0)
    t = (x.mean() - null) / (sd / np.sqrt(n))
    return UnitTest(n, interval, float(t), n - 1, float(2 * stats.t.sf(abs(t), n - 1)))


def slope_test(x: np.ndarray, y: np.ndarray, null: float = 0.0, level: float = LEVEL) -> UnitTest:
    """Least-squares slope of y on x, with its t-interval and the two-sided test of
    slope = ``null`` (residual degrees of freedom n - 2); the units are the (x, y) points."""
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = np.asarray(x, float)[keep], np.asarray(y, float)[keep]
    n = len(x)
    if n < 3 or np.ptp(x) == 0:
        return UnitTest(n, Interval(np.nan, np.nan, np.nan), np.nan, max(n - 2, 0), np.nan)
    fit = stats.linregress(x, y)
    half = stats.t.ppf((1 + level) / 2, n - 2) * fit.stderr
    interval = Interval(float(fit.slope), fit.slope - half, fit.slope + half)
    if fit.stderr == 0:
        off = not np.isclose(fit.slope, null)
        return UnitTest(n, interval, np.inf if off else 0.0, n - 2, 0.0 if off else 1.0)
    t = (fit.slope - null) / fit.stderr
    return UnitTest(n, interval, float(t), n - 2, float(2 * stats.t.sf(abs(t), n - 2)))


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values (NaN stays NaN and is not counted)."""
    p = np.asarray(pvalues, dtype=np.float64)
    out = np.full_like(p, np.nan)
    valid = np.flatnonzero(np.isfinite(p))
    order = valid[np.argsort(p[valid], kind="stable")]
    m = len(order)
    running = 0.0
    for rank, idx in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[idx]))
        out[idx] = running
    return out


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
    fit = smf.ols(f"{response} ~ {' + '.join(terms)}", data=data).fit()
    table = anova_lm(fit, typ=2)
    residual = table.loc["Residual", "sum_sq"]
    table["partial_eta_sq"] = table["sum_sq"] / (table["sum_sq"] + residual)
    table.loc["Residual", "partial_eta_sq"] = np.nan
    table = table.rename(columns={"PR(>F)": "pvalue"}).reset_index(names="term")
    table["term"] = table["term"].str.replace(r"C\((\w+)\)", r"\1", regex=True)
    return table[["term", "sum_sq", "df", "F", "pvalue", "partial_eta_sq"]]
