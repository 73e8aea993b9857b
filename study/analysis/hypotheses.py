"""The rows a hypothesis is tested on: its target strata, the levels and cells each stratum
pools, and the secondary strata reported beside it. ``study.analysis.verdicts`` judges them.

A hypothesis names a table of ``study.analysis.outcomes``, an outcome, a comparison and the
*target* population where its article makes the claim. The target may be split into
strata, each tested on its own. A row's unit is the cell (a configuration, its seeds
averaged) -- or a matched set of cells -- and cells that differ only in the hypothesis's
``cluster`` axes are averaged first: the test runs over those cluster means
(``stats.cluster_test``). A DepthTrend's unit is the run. Outside the target, the same
comparison is reported per level of the secondary axes, never pooled into the verdict.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from study.analysis import stats
from study.analysis.comparisons import DepthTrend, Units
from study.analysis.outcomes import FRAME_KEYS, OUTCOMES
from study.analysis.verdicts import ALPHA, Hypothesis, along, judge, mixed

# A time to an event, and the outcome that says whether the event happened: a unit where it
# happened on neither side says nothing about the time (left out, and counted).
CENSORED = {"steps_needed": "reached"}


def pooled(h: Hypothesis) -> list[str]:
    """The axes a target stratum averages over: the comparison's units span them, and the
    target fixes none of them to one level. Each must not point both ways (see mixed)."""
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


def informative(h: Hypothesis, frame: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """The stratum without the units where a censored outcome's event happened in no cell
    (``CENSORED``), and how many units were left out."""
    event = CENSORED.get(h.value)
    if event is None or event not in frame or isinstance(h.compare, DepthTrend):
        return frame, 0
    keys = [k for k in h.compare.pooled(FRAME_KEYS[h.frame])]
    if not keys:
        return frame, 0
    happened = frame.groupby(keys, observed=True)[event].transform("max") > 0
    dropped = frame.loc[~happened, keys].drop_duplicates()
    return frame[happened], len(dropped)


def measure(h: Hypothesis, frame: pd.DataFrame, value: str) -> tuple[Units | None, dict]:
    """The stratum's units and the row's numbers: cells, clusters and the test over them."""
    if isinstance(h.compare, DepthTrend):
        test = h.compare.test(frame, value)
        return None, {"n": test.n, "clusters": test.n, "effect": test.estimate, "se": test.se,
                      "df": test.df}  # fmt: skip
    units = h.compare.units(frame, FRAME_KEYS[h.frame], value)
    test = stats.cluster_test(units.values, units.clusters(h.cluster))
    return units, {"n": len(units.values), "clusters": test.n, "effect": test.estimate,
                   "se": test.se, "df": test.df}  # fmt: skip


def _row(h: Hypothesis, stratum: str, role: str, numbers: dict, value: str) -> dict:
    description, _, unit = OUTCOMES[value].rpartition(": ")
    return {"claim": h.claim, "part": h.part, "hypothesis": h.statement, "source": h.source,
            "form": h.form, "margin": h.margin, "margin_why": h.why,
            "measurement": f"{value} ({description}); {h.compare.describe()}",
            "unit": getattr(h.compare, "effect_unit", unit), "stratum": stratum, "role": role,
            "carries_verdict": role == "target", "unit_of_test": h.compare.unit,
            "cluster": ",".join(h.cluster) if h.compare.unit == "cell" else "",
            **numbers, "null": h.null, "direction": h.direction, "note": "",
            "dropped": 0}  # fmt: skip


def _level_tests(h: Hypothesis, stratum: pd.DataFrame, label: str) -> list[tuple[str, dict]]:
    """Each level of each pooled axis, and each pair of the levels a side pools."""
    out = []
    for axis in pooled(h):
        for levels, sub in _groups(stratum, (axis,)):
            out.append((f"{label}; {describe(levels)}", measure(h, sub, h.value)[1]))
    for name, pair in h.compare.pairs():
        units = pair.units(stratum, FRAME_KEYS[h.frame], h.value)
        test = stats.cluster_test(units.values, units.clusters(h.cluster))
        numbers = {"n": len(units.values), "clusters": test.n, "effect": test.estimate,
                   "se": test.se, "df": test.df}  # fmt: skip
        out.append((f"{label}; {name}", numbers))
    return out


def _target(h: Hypothesis, stratum: pd.DataFrame, label: str) -> list[dict]:
    stratum, dropped = informative(h, stratum)
    units, numbers = measure(h, stratum, h.value)
    target = _row(h, label, "target", numbers, h.value)
    target["dropped"] = dropped
    levels = _level_tests(h, stratum, label)
    within = [_row(h, name, "within target", n, h.value) for name, n in levels]

    def d(n: dict) -> stats.UnitTest:
        return along(stats.UnitTest(n["clusters"], n["effect"], n["se"], n["df"]),
                     h.direction, h.null)  # fmt: skip

    cells = [along(t, h.direction, h.null) for _, t in units.each()] if units else []
    if mixed([d(n) for _, n in levels] + cells, h.margin, ALPHA):
        target["note"] = "mixed: its levels or cells lie beyond the margin both ways"
    if dropped:
        target["note"] += (
            f"{'; ' if target['note'] else ''}{dropped} unit(s) where no run "
            f"reached the target on either side: no time to compare, left out"
        )
    if numbers["clusters"] < 2 or not np.isfinite(numbers["se"]):
        target["note"] = (f"not tested: {numbers['clusters']} cluster(s) of units in the target "
                          "stratum, too few")  # fmt: skip
    elif numbers["se"] == 0 and numbers["effect"] == h.null:
        target["note"] = "not tested: every unit has the same value (e.g. nothing diverged)"
    rows = [target, *within]
    for value in h.also:
        rows.append(_row(h, label, "also measured", measure(h, stratum, value)[1], value))
    return rows


def evaluate(h: Hypothesis, frames: dict[str, pd.DataFrame]) -> list[dict]:
    """Every row of a hypothesis: its target strata, their levels, the secondary strata."""
    frame = frames[h.frame]
    rows = []
    for levels, stratum in _groups(select(frame, h.where, h.min_depth), h.strata):
        rows += _target(h, stratum, describe({**h.where, **levels}, h.min_depth))
    for axes in h.secondary:
        rest = {k: v for k, v in h.where.items() if k not in axes}
        for levels, stratum in _groups(select(frame, rest, h.min_depth), (*h.strata, *axes)):
            if all(levels[a][0] in map(str, h.where.get(a, levels[a])) for a in axes):
                continue  # the target itself
            stratum, dropped = informative(h, stratum)
            row = _row(h, describe({**rest, **levels}, h.min_depth), "secondary",
                       measure(h, stratum, h.value)[1], h.value)  # fmt: skip
            row["dropped"] = dropped
            rows.append(row)
    return rows


def table(hypotheses: list[Hypothesis], frames: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Every row of every hypothesis, the target rows judged (``verdicts.judge``)."""
    return judge(pd.DataFrame([r for h in hypotheses for r in evaluate(h, frames)]))
