"""How a claim is judged: a hypothesis's form and margin, the verdict rules, the family of
tests, and a claim's verdict from its parts. The rows each hypothesis is tested on come
from ``study.analysis.hypotheses``; the hypotheses themselves are ``study.analysis.claims``.

Every hypothesis declares its *form* and its *margin* (the smallest effect that matters,
in the outcome's unit, with a one-line reason). With d the effect in the claim's direction
(``direction * (effect - null)``) and [lo, hi] its interval at the row's level:

- superiority ("X larger than Y") and level ("X above a value"): *supported* if lo > 0
  (said so when the estimate is below the margin); *refuted* if hi < 0; *no effect of the
  claimed size* if -margin < lo and hi < margin (an equivalence test); else *inconclusive*:
  the interval straddles the margin;
- non-inferiority ("no more often", "no worse"): *supported* if lo > -margin; *refuted*
  if hi < -margin (worse beyond the margin); else *inconclusive*.

A target stratum is *mixed* when the levels it pools -- each level of each pooled axis,
each pair of the levels a side pools, and each of its cells -- include one significantly
beyond the margin in the claim's direction and one significantly beyond it against
(Bonferroni over those levels): point estimates alone never make a stratum mixed.

The family (declared, Benjamini and Bogomolov 2014): each claim is a family of target rows.
Claims are selected by Benjamini-Hochberg at ALPHA on their Simes p-values; within each of
the R selected claims of C, Holm's procedure runs at ALPHA * R / C. So the expected share of
decided claims with a wrong decision stays below ALPHA, while a row with few units is not
held to the level of all ~50 rows of the study. A row's p-value is the smallest level at
which its interval decides (the conclusions are disjoint, so each is tested at the row's
level); a decided row is judged on its interval at its Holm level, an undecided one says how
many units (and cells) would decide it at the observed spread.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from study.analysis import stats
from study.analysis.comparisons import Compare, DepthTrend, Level, Spread

ALPHA = 0.05  # one-sided, for every decision
FORMS = ("superiority", "non-inferiority", "level")
DECIDED = ("supported", "refuted", "no effect of the claimed size")
VERDICTS = (*DECIDED, "mixed", "inconclusive", "not tested")


@dataclass(frozen=True)
class Hypothesis:
    """A pre-declared test of (part of) a claim. The claim holds where
    ``direction * (effect - null)`` is positive (superiority, level) or above ``-margin``
    (non-inferiority)."""

    claim: str
    part: str
    statement: str
    source: str  # the article(s) making the claim: 000, 002
    frame: str  # a table of study.analysis.outcomes.FRAME_KEYS
    value: str  # an outcome of study.analysis.outcomes.OUTCOMES
    compare: Compare | Level | DepthTrend | Spread
    form: str  # one of FORMS
    margin: float  # the smallest effect that matters, in the outcome's unit
    why: str  # the margin's reason, one line
    where: dict[str, tuple[str, ...]] = field(default_factory=dict)  # the target population
    min_depth: int = 0  # ... and its depths
    strata: tuple[str, ...] = ()  # the target split, each stratum tested and judged alone
    secondary: tuple[tuple[str, ...], ...] = ()  # per group of axes, its other levels: beside
    also: tuple[str, ...] = ()  # other outcomes reported for the target strata
    null: float = 0.0
    direction: int = 1
    # Units that differ only in these axes are one cluster (a configuration across depths:
    # near-deterministic replicates); the test runs over cluster means.
    cluster: tuple[str, ...] = ("depth",)

    def __post_init__(self) -> None:
        if self.form not in FORMS:
            raise ValueError(f"{self.part}: form {self.form!r}, expected one of {FORMS}")
        if not self.margin > 0:
            raise ValueError(f"{self.part}: margin must be > 0, got {self.margin}")


# ------------------------------------------------------------------------- the rules


def along(test: stats.UnitTest, direction: int, null: float) -> stats.UnitTest:
    """The test of d = direction * (effect - null): the effect in the claim's direction."""
    return stats.UnitTest(test.n, direction * (test.estimate - null), test.se, test.df)


def decide(form: str, d: stats.Interval, margin: float) -> str:
    """A verdict from the interval of d (see the module's docstring)."""
    if not (np.isfinite(d.low) and np.isfinite(d.high)):
        return "not tested"
    if form == "non-inferiority":
        return (
            "supported" if d.low > -margin else "refuted" if d.high < -margin else ("inconclusive")
        )
    if d.low > 0:
        return "supported"
    if d.high < 0:
        return "refuted"
    if -margin < d.low and d.high < margin:
        return "no effect of the claimed size"
    return "inconclusive"


def decisive_p(form: str, d: stats.UnitTest, margin: float) -> float:
    """The smallest one-sided level at which d's interval decides: the least of the
    p-values of the row's disjoint conclusions."""
    if form == "non-inferiority":
        return min(d.p_above(-margin), d.p_below(-margin))
    equivalent = max(d.p_above(-margin), d.p_below(margin))
    return min(d.p_above(0.0), d.p_below(0.0), equivalent)


def units_to_decide(form: str, d: stats.UnitTest, margin: float, alpha: float) -> int | None:
    """Units (clusters) that would decide an undecided row at the observed mean and spread:
    the fewest over the conclusions the estimate points to."""
    e = d.estimate
    if form == "non-inferiority":
        distances = [abs(e + margin)]
    else:
        distances = [abs(e)] + ([margin - abs(e)] if abs(e) < margin else [])
    needed = [stats.units_needed(d, dist, alpha) for dist in distances]
    needed = [n for n in needed if n is not None]
    return min(needed) if needed else None


def mixed(sub: list[stats.UnitTest], margin: float, alpha: float = ALPHA) -> bool:
    """True when, Bonferroni over ``sub`` (the d-tests of a stratum's levels and cells), one
    is significantly beyond +margin and another significantly beyond -margin."""
    tested = [t for t in sub if t.testable]
    if len(tested) < 2:
        return False
    level = alpha / len(tested)
    above = any(t.p_above(margin) < level for t in tested)
    below = any(t.p_below(-margin) < level for t in tested)
    return above and below


# ------------------------------------------------------------------------- the family


def judge(rows: pd.DataFrame, alpha: float = ALPHA) -> pd.DataFrame:
    """Judge the target rows (see the module's docstring); every other row gets its interval
    at the unadjusted level 1 - 2 alpha and no verdict."""
    rows = rows.copy()
    for column in ("p_decisive", "q_claim", "level", "effect_low", "effect_high"):
        rows[column] = np.nan
    rows["verdict"], rows["units_needed"], rows["cells_needed"] = "", pd.NA, pd.NA
    target = rows["role"] == "target"
    testable = target & ~rows["note"].str.startswith("not tested")
    for i in rows.index[testable]:
        rows.loc[i, "p_decisive"] = decisive_p(rows.at[i, "form"], _d(rows.loc[i]),
                                               rows.at[i, "margin"])  # fmt: skip
    claims = rows.loc[testable].groupby("claim", sort=False)["p_decisive"]
    simes = claims.apply(stats.simes)
    q = pd.Series(stats.benjamini_hochberg(simes.to_numpy()), index=simes.index)
    selected = q[q < alpha].index
    family_level = alpha * len(selected) / max(len(q), 1)
    for claim, parts in rows.loc[testable].groupby("claim", sort=False):
        rows.loc[parts.index, "q_claim"] = q[claim]
        order = parts["p_decisive"].sort_values(kind="stable").index
        passing = claim in selected
        for rank, i in enumerate(order):  # Holm, step down
            level = family_level / (len(order) - rank) if claim in selected else alpha / len(order)
            passing = passing and rows.at[i, "p_decisive"] <= level
            rows.loc[i, "level"] = level
            _decide_row(rows, i, passing, alpha / len(order))
    for i in rows.index[~testable]:
        interval = _d(rows.loc[i]).interval(1 - 2 * alpha)
        rows.loc[i, ["effect_low", "effect_high"]] = _effect_bounds(rows.loc[i], interval)
        if target[i]:
            rows.loc[i, "verdict"] = "not tested"
    return rows


def _d(row: Any) -> stats.UnitTest:
    """The row's d-test (its units: the clusters it was tested over)."""
    test = stats.UnitTest(int(row["clusters"]), row["effect"], row["se"], int(row["df"]))
    return along(test, int(row["direction"]), row["null"])


def _effect_bounds(row: Any, d: stats.Interval) -> list[float]:
    """d's interval back on the effect's own scale."""
    ends = [row["null"] + row["direction"] * d.low, row["null"] + row["direction"] * d.high]
    return sorted(ends)


def _decide_row(rows: pd.DataFrame, i: Any, passing: bool, worst_level: float) -> None:
    row = rows.loc[i]
    d = _d(row)
    level = row["level"] if passing else worst_level
    interval = d.interval(1 - 2 * level)
    rows.loc[i, ["effect_low", "effect_high"]] = _effect_bounds(row, interval)
    verdict = decide(row["form"], interval, row["margin"]) if passing else "inconclusive"
    if row["note"].startswith("mixed"):
        verdict = "mixed"
    rows.loc[i, "verdict"] = verdict
    if verdict == "supported" and row["form"] != "non-inferiority" and d.estimate < row["margin"]:
        rows.loc[i, "note"] = f"supported, but smaller than its margin {row['margin']:g}"
    if verdict == "inconclusive":
        units = units_to_decide(row["form"], d, row["margin"], worst_level)
        if units is not None:
            rows.loc[i, "units_needed"] = units
            rows.loc[i, "cells_needed"] = int(np.ceil(units * row["n"] / max(row["clusters"], 1)))


# ------------------------------------------------------------------------- a claim


def combine(verdicts: list[str]) -> str:
    """A claim's verdict from its parts' (declared): the undecided parts (inconclusive, not
    tested) are set aside and listed beside the verdict; of the decided ones, all supported
    is *supported* (a non-inferiority part supported counts), refuted with none supported is
    *refuted*, all without an effect of the claimed size is that, and any mix -- or a mixed
    part -- is *mixed*. With no part decided: *inconclusive* (*not tested* if none ran)."""
    decided = {v for v in verdicts if v in (*DECIDED, "mixed")}
    if not decided:
        return "inconclusive" if any(v == "inconclusive" for v in verdicts) else "not tested"
    if decided == {"supported"}:
        return "supported"
    if decided == {"no effect of the claimed size"}:
        return decided.pop()
    if "refuted" in decided and decided <= {"refuted", "no effect of the claimed size"}:
        return "refuted"
    return "mixed"


def claim_verdicts(rows: pd.DataFrame) -> dict[str, Any]:
    """Per claim: its verdict, how many parts are undecided, and each target row's verdict,
    form, margin, effect, interval and p-values."""
    out: dict[str, Any] = {}
    target = rows[rows["role"] == "target"]
    for claim, parts in target.groupby("claim", sort=False):
        verdicts = list(parts["verdict"])
        undecided = sum(v in ("inconclusive", "not tested") for v in verdicts)
        out[claim] = {"verdict": combine(verdicts), "parts": len(verdicts),
                      "undecided": undecided}  # fmt: skip
        for r in parts.itertuples():
            name = f"{r.part} [{r.stratum}]" if r.stratum else r.part
            out[claim][name] = {"verdict": r.verdict, "form": r.form, "margin": r.margin,
                                "effect": r.effect, "low": r.effect_low, "high": r.effect_high,
                                "n": r.n, "clusters": r.clusters, "p": r.p_decisive,
                                "fragile": bool(getattr(r, "fragile", False))}  # fmt: skip
    return out
