"""Statistics: bootstrap intervals over seeds, factorial models, paired tests, corrections.

Seeds are the replication unit. Every random choice here (bootstrap resamples) comes from a
``numpy.random.Generator`` seeded by the caller, so an analysis is reproducible bit for bit.

Censored values: a log10 first/last gradient ratio whose first-layer gradient underflowed
to zero is only an upper bound (``study.probes``). The rank tests below take the bound as
the value: every censored ratio is smaller than the bound and (being an underflow) below any
uncensored ratio of the comparison, so its rank -- the only thing the test uses -- is right,
or conservative where both members of a pair are censored (their difference is then set to
zero and dropped, as Wilcoxon's zero-difference rule does). Means and intervals of censored
columns are reported with the count of censored values beside them, as bounds.
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
N_BOOT = 2000


@dataclass(frozen=True)
class Interval:
    estimate: float
    low: float
    high: float


def bootstrap_mean(
    values: Sequence[float] | np.ndarray, rng: np.random.Generator, n_boot: int = N_BOOT,
    level: float = LEVEL,
) -> Interval:  # fmt: skip
    """Mean and percentile-bootstrap interval; NaNs are dropped, one value gives a point."""
    x = np.asarray(values, dtype=np.float64)
    x = x[np.isfinite(x)]
    if len(x) == 0:
        return Interval(np.nan, np.nan, np.nan)
    if len(x) == 1:
        return Interval(float(x[0]), float(x[0]), float(x[0]))
    means = x[rng.integers(0, len(x), size=(n_boot, len(x)))].mean(axis=1)
    tail = (1 - level) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return Interval(float(x.mean()), float(low), float(high))


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


@dataclass(frozen=True)
class PairedTest:
    n: int  # pairs with a nonzero difference (Wilcoxon's count)
    statistic: float
    pvalue: float
    median_difference: float
    difference: Interval  # mean paired difference, bootstrap interval over pairs
    rank_biserial: float  # matched-pairs rank-biserial correlation, in [-1, 1]


def paired_wilcoxon(
    a: np.ndarray, b: np.ndarray, rng: np.random.Generator, alternative: str = "greater"
) -> PairedTest:
    """Wilcoxon signed-rank test of a - b over matched pairs (a cell and seed each).

    ``alternative='greater'``: a tends to exceed b. Pairs with a non-finite member are
    dropped; zero differences are dropped (Wilcoxon's rule).
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    keep = np.isfinite(a) & np.isfinite(b)
    d = a[keep] - b[keep]
    nonzero = d[d != 0]
    if len(nonzero) < 2:
        return PairedTest(len(nonzero), np.nan, np.nan, np.nan, Interval(np.nan, np.nan, np.nan),
                          np.nan)  # fmt: skip
    result = stats.wilcoxon(nonzero, alternative=alternative, method="auto")
    ranks = stats.rankdata(np.abs(nonzero))
    plus, minus = ranks[nonzero > 0].sum(), ranks[nonzero < 0].sum()
    return PairedTest(
        n=len(nonzero),
        statistic=float(result.statistic),
        pvalue=float(result.pvalue),
        median_difference=float(np.median(d)),
        difference=bootstrap_mean(d, rng),
        rank_biserial=float((plus - minus) / (plus + minus)),
    )


def factorial_model(
    frame: pd.DataFrame, response: str, factors: Sequence[str],
    interactions: Sequence[tuple[str, str]] = (),
) -> pd.DataFrame:  # fmt: skip
    """OLS with categorical main effects and the given two-way interactions; type-II ANOVA.

    Returns one row per term: sum of squares, df, F, p-value and partial eta squared
    (SS_term / (SS_term + SS_residual)). Rows with a non-finite response are dropped;
    factors with a single level are left out of the model (they cannot be estimated).
    """
    data = _model_data(frame, response, factors)
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


def nested_f_test(
    frame: pd.DataFrame, response: str, full: Sequence[str], dropped: Sequence[str]
) -> tuple[float, float]:
    """Does a factor matter at all? (partial eta squared, p-value) of the terms ``dropped``
    together -- e.g. a factor and its interactions -- by an F-test of the OLS model with
    ``full`` terms against the model without them. Terms are formula terms over
    categorical columns, like ``"lr"`` or ``"setup:lr"``; rows with a non-finite response
    are dropped."""
    data = _model_data(frame, response, sorted({c for t in full for c in t.split(":")}))

    def formula(terms: Sequence[str]) -> str:
        rhs = " + ".join(":".join(f"C({c})" for c in t.split(":")) for t in terms)
        return f"{response} ~ {rhs or '1'}"

    big = smf.ols(formula(full), data=data).fit()
    small = smf.ols(formula([t for t in full if t not in dropped]), data=data).fit()
    extra = small.ssr - big.ssr
    df_extra = small.df_resid - big.df_resid
    if df_extra <= 0 or big.df_resid <= 0:
        return np.nan, np.nan
    f_value = (extra / df_extra) / (big.ssr / big.df_resid)
    pvalue = float(stats.f.sf(f_value, df_extra, big.df_resid))
    return float(extra / (extra + big.ssr)), pvalue


def _model_data(frame: pd.DataFrame, response: str, factors: Sequence[str]) -> pd.DataFrame:
    """The rows with a finite response, the response as float and the factors as labels."""
    data = frame[[response, *factors]].copy()
    data[response] = data[response].astype(float)
    data = data[np.isfinite(data[response])]
    for f in factors:
        data[f] = data[f].astype(str)
    return data
