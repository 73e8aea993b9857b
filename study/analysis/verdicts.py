"""How a claim is tested: the kinds of comparison, the target stratum, the secondary rows,
and the verdict. The claims themselves are declared in ``study.analysis.claims``.

Each :class:`Hypothesis` names a table of ``study.analysis.outcomes``, an outcome, a comparison and
the *target* population where its article makes the claim. The target may be split into
strata, each tested on its own; every row's unit is the cell (a configuration, its seeds
averaged) unless the hypothesis is about one configuration across depth, whose unit is
the run. Outside the target, the same comparison is reported per level of the secondary
axes, and inside it per level of every axis the stratum pools (``pooled``) and per pair of
the levels a side of the comparison pools (ReLU against sigmoid, leaky ReLU against
sigmoid, ...); neither is pooled into the verdict, but a target stratum whose levels point
both ways by more than ``min_effect`` is ``mixed``. Verdicts come from the t-test of the
effect that is reported, Holm-corrected over every tested target row of every claim.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from study.analysis import stats
from study.analysis.comparisons import Compare, DepthTrend, Level, Spread
from study.analysis.outcomes import FRAME_KEYS, OUTCOMES

ALPHA = 0.05  # family-wise, Holm-corrected across every target row
VERDICTS = ("supported", "refuted", "mixed", "inconclusive", "not tested")

# ------------------------------------------------------------------------- hypotheses


@dataclass(frozen=True)
class Hypothesis:
    """A pre-declared test of (part of) a claim. The claim holds where
    ``direction * (effect - null) > 0``."""

    claim: str
    part: str
    statement: str
    source: str  # the article(s) making the claim: 000, 002
    frame: str  # a table of study.analysis.outcomes.FRAME_KEYS
    value: str  # an outcome of study.analysis.outcomes.OUTCOMES
    compare: Compare | Level | DepthTrend | Spread
    where: dict[str, tuple[str, ...]] = field(default_factory=dict)  # the target population
    min_depth: int = 0  # ... and its depths
    strata: tuple[str, ...] = ()  # the target split, each stratum tested and judged alone
    secondary: tuple[tuple[str, ...], ...] = ()  # per group of axes, its other levels: beside
    also: tuple[str, ...] = ()  # other outcomes reported for the target strata
    null: float = 0.0
    direction: int = 1
    min_effect: float = 0.0  # the smallest effect that counts when levels disagree


def pooled(h: Hypothesis) -> list[str]:
    """The axes a target stratum averages over: the comparison's units span them, and the
    target fixes none of them to one level. Each must agree with itself (see evaluate)."""
    fixed = {*h.strata, *(axis for axis, levels in h.where.items() if len(levels) == 1)}
    return [axis for axis in h.compare.pooled(FRAME_KEYS[h.frame]) if axis not in fixed]


def select(frame: pd.DataFrame, where: dict, min_depth: int = 0) -> pd.DataFrame:
    keep = np.ones(len(frame), dtype=bool)
    for axis, levels in where.items():
        keep &= frame[axis].astype(str).isin([str(v) for v in levels]).to_numpy()
    if min_depth and "depth" in frame:
        keep &= (frame["depth"] >= min_depth).to_numpy()
    return frame[keep]


def describe(where: dict, min_depth: int = 0) -> str:
    parts = [f"{k}={v[0]}" if len(v) == 1 else f"{k} in {{{', '.join(map(str, v))}}}"
             for k, v in where.items()]  # fmt: skip
    if min_depth:
        parts.append(f"depth>={min_depth}")
    return ", ".join(parts) or "all"


def _groups(frame: pd.DataFrame, axes: tuple[str, ...]):
    """(levels, rows) per combination of ``axes`` present; the whole frame without axes."""
    if not axes:
        yield {}, frame
        return
    for levels, rows in frame.groupby(list(axes), observed=True, sort=True):
        levels = levels if isinstance(levels, tuple) else (levels,)
        yield {a: (str(v),) for a, v in zip(axes, levels, strict=True)}, rows


def _row(h, stratum: str, role: str, test: stats.UnitTest, value: str | None = None) -> dict:
    value = value or h.value
    description, _, unit = OUTCOMES[value].rpartition(": ")
    unit = getattr(h.compare, "effect_unit", unit)
    e = test.effect
    return {"claim": h.claim, "part": h.part, "hypothesis": h.statement, "source": h.source,
            "measurement": f"{value} ({description}); {h.compare.describe()}", "unit": unit,
            "stratum": stratum, "role": role, "carries_verdict": role == "target",
            "unit_of_test": h.compare.unit, "n": test.n, "effect": e.estimate,
            "effect_low": e.low, "effect_high": e.high, "null": h.null,
            "direction": h.direction, "statistic": test.statistic, "df": test.df,
            "pvalue": test.pvalue, "note": ""}  # fmt: skip


def evaluate(h: Hypothesis, frames: dict[str, pd.DataFrame]) -> list[dict]:
    """Every row of a hypothesis: its target strata, their levels, the secondary strata."""
    frame = frames[h.frame]
    keys = FRAME_KEYS[h.frame]
    rows = []
    for levels, stratum in _groups(select(frame, h.where, h.min_depth), h.strata):
        label = describe({**h.where, **levels}, h.min_depth)
        target = _row(h, label, "target", h.compare.test(stratum, keys, h.value, h.null))
        parts = [
            (describe(sub_levels), h.compare.test(sub, keys, h.value, h.null))
            for axis in pooled(h)
            for sub_levels, sub in _groups(stratum, (axis,))
        ]
        parts += [(name, pair.test(stratum, keys, h.value, h.null))  # the levels a side pools
                  for name, pair in getattr(h.compare, "pairs", list)()]  # fmt: skip
        within = [_row(h, f"{label}; {name}", "within target", test) for name, test in parts]
        effects = [h.direction * (test.effect.estimate - h.null) for _, test in parts]
        sides = {np.sign(e) for e in effects if abs(e) > h.min_effect}
        if len(sides) == 2:
            target["note"] = "mixed: its levels point both ways (rows 'within target')"
        e = target["effect"], target["effect_low"], target["effect_high"]
        if target["n"] >= 2 and e[0] == e[1] == e[2] == h.null:
            target["note"] = "not tested: every unit has the same value (e.g. nothing diverged)"
        if not np.isfinite(target["pvalue"]):
            target["note"] = f"not tested: {target['n']} unit(s) in the target stratum, too few"
        rows += [target, *within]
        for value in h.also:
            test = h.compare.test(stratum, keys, value, h.null)
            rows.append(_row(h, label, "also measured", test, value))
    for axes in h.secondary:
        rest = {k: v for k, v in h.where.items() if k not in axes}
        for levels, stratum in _groups(select(frame, rest, h.min_depth), (*h.strata, *axes)):
            if all(levels[a][0] in map(str, h.where.get(a, levels[a])) for a in axes):
                continue  # the target itself
            test = h.compare.test(stratum, keys, h.value, h.null)
            rows.append(_row(h, describe({**rest, **levels}, h.min_depth), "secondary", test))
    return rows


def verdict(row: Any) -> str:
    """A target row's verdict from its Holm-adjusted p-value and the side of its effect."""
    if row.note.startswith("not tested") or not np.isfinite(row.p_holm):
        return "not tested"
    if row.note.startswith("mixed"):
        return "mixed"
    if row.p_holm >= ALPHA:
        return "inconclusive"
    return "supported" if row.direction * (row.effect - row.null) > 0 else "refuted"


def table(hypotheses: list, frames: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Every row of every hypothesis, target rows Holm-corrected together and judged."""
    rows = pd.DataFrame([r for h in hypotheses for r in evaluate(h, frames)])
    target = rows["role"] == "target"
    testable = target & ~rows["note"].str.startswith("not tested")
    rows["p_holm"] = np.nan
    rows.loc[testable, "p_holm"] = stats.holm(rows.loc[testable, "pvalue"].to_numpy(float))
    rows["verdict"] = [
        verdict(r) if t else "" for r, t in zip(rows.itertuples(), target, strict=True)
    ]
    return rows


def combine(verdicts: list[str]) -> str:
    """A claim's verdict from its target rows: supported if all are; mixed if some are
    supported and some refuted (or one is mixed); refuted if some are refuted and none
    supported; not tested if none was tested; inconclusive otherwise."""
    tested = [v for v in verdicts if v != "not tested"]
    if not tested:
        return "not tested"
    if "mixed" in tested or {"supported", "refuted"} <= set(tested):
        return "mixed"
    if "refuted" in tested:
        return "refuted"
    return "supported" if set(tested) == {"supported"} else "inconclusive"


def claim_verdicts(rows: pd.DataFrame) -> dict[str, Any]:
    """Per claim: its verdict, and each target row's verdict, effect and adjusted p."""
    out: dict[str, Any] = {}
    target = rows[rows["role"] == "target"]
    for claim, parts in target.groupby("claim", sort=False):
        out[claim] = {"verdict": combine(list(parts["verdict"]))}
        for r in parts.itertuples():
            name = f"{r.part} [{r.stratum}]" if r.stratum else r.part
            out[claim][name] = {"verdict": r.verdict, "effect": r.effect, "low": r.effect_low,
                                "high": r.effect_high, "n": r.n, "p_holm": r.p_holm}  # fmt: skip
    return out
