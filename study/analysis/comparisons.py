"""The kinds of comparison a hypothesis can make (``study.analysis.claims`` declares which): each
turns the rows of a target stratum into units and tests their mean against a null.

Every kind but :class:`DepthTrend` has the cell as its unit: one value per cell (a seed
mean), or per matched set of cells. Its ``test`` returns a ``study.analysis.stats.UnitTest``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from study.analysis import stats
from study.analysis.outcomes import COMBINED


def _other_keys(keys: tuple[str, ...], factor: str) -> list[str]:
    return [k for k in keys if k != factor and k not in COMBINED.get(factor, ())]


@dataclass(frozen=True)
class Compare:
    """``a > b``: cells at the ``a`` levels of ``factor`` minus matched cells at the ``b``
    levels (each side averaged over its levels); one unit per combination of the other keys."""

    factor: str
    a: tuple[str, ...]
    b: tuple[str, ...]
    unit = "cell"

    def describe(self) -> str:
        return f"{' / '.join(self.a)} minus {' / '.join(self.b)}, matched on the other axes"

    def pooled(self, keys: tuple[str, ...]) -> list[str]:
        return _other_keys(keys, self.factor)

    def effects(self, frame: pd.DataFrame, keys: tuple[str, ...], value: str) -> pd.Series:
        level = frame[self.factor].astype(str)
        sub = frame[level.isin([*self.a, *self.b])]
        if sub.empty:
            return pd.Series(dtype=float)
        side = np.where(level[sub.index].isin(self.a), "a", "b")
        fixed = _other_keys(keys, self.factor)
        wide = sub.assign(_side=side).groupby([*fixed, "_side"], observed=True)[value].mean()
        wide = wide.unstack("_side")
        if not {"a", "b"} <= set(wide.columns):
            return pd.Series(dtype=float)
        return (wide["a"] - wide["b"]).dropna()

    def test(self, frame, keys, value, null) -> stats.UnitTest:
        return stats.t_test(self.effects(frame, keys, value), null)

    def pairs(self) -> list[tuple[str, Compare]]:
        """One comparison per level of ``a`` against one of ``b``, when a side pools several
        levels: those are pooled too, and must agree as the other pooled axes must."""
        if len(self.a) * len(self.b) < 2:
            return []
        return [(f"{self.factor}: {x} minus {y}", Compare(self.factor, (x,), (y,)))
                for x in self.a for y in self.b]  # fmt: skip


@dataclass(frozen=True)
class Ends(Compare):
    """Like :class:`Compare` for a numeric factor: its smallest level swept against its
    largest (``smallest_first=False`` swaps the sides)."""

    factor: str = "depth"
    a: tuple[str, ...] = ()
    b: tuple[str, ...] = ()
    smallest_first: bool = True

    def describe(self) -> str:
        first, second = ("smallest", "largest")[:: 1 if self.smallest_first else -1]
        return f"{self.factor} {first} minus {second}, matched on the other axes"

    def effects(self, frame, keys, value) -> pd.Series:
        levels = sorted(frame[self.factor].unique())
        if len(levels) < 2:
            return pd.Series(dtype=float)
        low, high = (str(levels[0]),), (str(levels[-1]),)
        a, b = (low, high) if self.smallest_first else (high, low)
        framed = frame.assign(**{self.factor: frame[self.factor].astype(str)})
        return Compare(self.factor, a, b).effects(framed, keys, value)


@dataclass(frozen=True)
class Level:
    """The outcome itself, one unit per cell."""

    unit = "cell"

    def describe(self) -> str:
        return "the cell's value"

    def pooled(self, keys: tuple[str, ...]) -> list[str]:
        return list(keys)

    def test(self, frame, keys, value, null) -> stats.UnitTest:
        return stats.t_test(frame[value].to_numpy(dtype=float), null)


@dataclass(frozen=True)
class DepthTrend:
    """How one configuration's per-layer rate scales with depth: beta = 1 + the slope of
    log10|rate| against log10(depth - 1), over its runs (the unit: the configuration is the
    population, its seeds the replicates). |log10 g_1/g_L| grows like (depth - 1)^beta:
    beta = 1 is exponential decay, a power law in depth gives about 0.3, flat gives 0."""

    unit = "run"
    effect_unit = "exponent beta"  # not the outcome's own unit

    def describe(self) -> str:
        return "beta = 1 + slope of log10|rate| on log10(depth - 1), over runs"

    def pooled(self, keys: tuple[str, ...]) -> list[str]:
        return []  # one configuration; depth is the regressor, seeds the replicates

    def test(self, frame, keys, value, null) -> stats.UnitTest:
        if frame.empty or frame["depth"].nunique() < 2:
            return stats.t_test([], null)
        with np.errstate(divide="ignore"):
            y = np.log10(frame[value].abs().to_numpy(dtype=float))
        x = np.log10(frame["depth"].to_numpy(dtype=float) - 1)
        fit = stats.slope_test(x, y, null=null - 1.0)
        e = fit.effect
        return stats.UnitTest(fit.n, stats.Interval(e.estimate + 1, e.low + 1, e.high + 1),
                              fit.statistic, fit.df, fit.pvalue)  # fmt: skip


@dataclass(frozen=True)
class Spread:
    """Does ``factor`` matter? Per unit (a combination of the other keys), the levels are
    ranked on all seeds but one and the best minus the worst is read on the held-out seed,
    averaged over the held-out seeds: zero in expectation when the factor does not matter,
    so seed noise cannot pass for an effect. Levels where a seed diverged are left out."""

    factor: str
    unit = "cell"

    def describe(self) -> str:
        return f"best minus worst {self.factor}, chosen on the other seeds, per cell"

    def pooled(self, keys: tuple[str, ...]) -> list[str]:
        return [k for k in _other_keys(keys, self.factor) if k != "seed"]

    def effects(self, frame, keys, value) -> pd.Series:
        fixed = [k for k in _other_keys(keys, self.factor) if k != "seed"]
        if frame.empty:
            return pd.Series(dtype=float)
        # One pivot for all units (levels x seeds each), then plain arrays per unit.
        table = frame.pivot_table(index=[*fixed, self.factor], columns="seed", values=value,
                                  observed=True)  # fmt: skip
        out = {}
        for key, wide in table.groupby(level=fixed, observed=True, sort=True):
            wide = wide.dropna(axis=1, how="all").dropna()  # this unit's seeds; full levels
            if len(wide) < 2 or wide.shape[1] < 2:
                continue
            values = wide.to_numpy(dtype=float)
            gaps = []
            for j in range(values.shape[1]):
                rest = np.delete(values, j, axis=1).mean(axis=1)
                gaps.append(values[rest.argmax(), j] - values[rest.argmin(), j])
            out[key] = float(np.mean(gaps))
        return pd.Series(out, dtype=float)

    def test(self, frame, keys, value, null) -> stats.UnitTest:
        return stats.t_test(self.effects(frame, keys, value), null)
