"""The kinds of comparison a hypothesis can make (``study.analysis.claims`` declares which):
each turns the cells of a stratum into units, one effect per unit.

Every kind but :class:`DepthTrend` has the cell as its unit: one value per cell (a seed
mean), or per matched set of cells. ``units`` returns them as :class:`Units`, with each
unit's standard error over its seeds where the outcome has one (the check that a stratum's
cells do not point both ways beyond the margin reads it); ``study.analysis.verdicts``
clusters them and tests the mean.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from study.analysis import stats
from study.analysis.outcomes import COMBINED, SE


def _other_keys(keys: tuple[str, ...], factor: str) -> list[str]:
    return [k for k in keys if k != factor and k not in COMBINED.get(factor, ())]


@dataclass(frozen=True)
class Units:
    """One effect per unit, indexed by the unit's levels, and (where known) its standard
    error and seed count from the unit's own seeds."""

    values: pd.Series
    se: pd.Series | None = None
    seeds: pd.Series | None = None

    def clusters(self, over: tuple[str, ...]) -> pd.Series | None:
        """The unit's cluster: its levels less the ``over`` axes (units that differ only in
        them are replicates of one configuration); None when no such axis varies."""
        names = list(self.values.index.names)
        kept = [n for n in names if n not in over]
        if len(kept) == len(names) or self.values.empty:
            return None
        frame = self.values.index.to_frame(index=False)
        label = (
            frame[kept].astype(str).agg("|".join, axis=1) if kept else pd.Series("all", frame.index)
        )
        return pd.Series(label.to_numpy(), index=self.values.index)

    def each(self) -> list[tuple[str, stats.UnitTest]]:
        """Each unit alone, tested over its seeds (empty when its seeds are not known)."""
        if self.se is None or self.seeds is None:
            return []
        out = []
        for key, value in self.values.items():
            n, se = self.seeds.get(key, np.nan), self.se.get(key, np.nan)
            if not (n >= 2 and np.isfinite(se)):
                continue  # a unit with one seed has no spread of its own to test
            label = ", ".join(map(str, key if isinstance(key, tuple) else (key,)))
            out.append((label, stats.UnitTest(int(n), float(value), float(se), int(n) - 1)))
        return out


def _se(frame: pd.DataFrame, value: str) -> pd.Series:
    column = f"{value}{SE}"
    return frame[column] if column in frame else pd.Series(np.nan, index=frame.index)


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

    def units(self, frame: pd.DataFrame, keys: tuple[str, ...], value: str) -> Units:
        level = frame[self.factor].astype(str)
        sub = frame[level.isin([*self.a, *self.b])]
        if sub.empty:
            return Units(pd.Series(dtype=float))
        side = np.where(level[sub.index].isin(self.a), "a", "b")
        fixed = _other_keys(keys, self.factor)
        sub = sub.assign(_side=side, _var=_se(sub, value) ** 2,
                         _seeds=sub["n_seeds"] if "n_seeds" in sub else np.nan)  # fmt: skip
        grouped = sub.groupby([*fixed, "_side"], observed=True)
        mean = grouped[value].mean().unstack("_side")
        if not {"a", "b"} <= set(mean.columns):
            return Units(pd.Series(dtype=float))
        # a side averaging k cells: the variance of the mean of their means
        # (min_count: a side whose errors are unknown has an unknown error, not zero)
        var = (grouped["_var"].sum(min_count=1) / grouped["_var"].size() ** 2).unstack("_side")
        seeds = grouped["_seeds"].min().unstack("_side").min(axis=1)
        values = (mean["a"] - mean["b"]).dropna()
        se = np.sqrt(var["a"] + var["b"]).reindex(values.index)
        return Units(values, se, seeds.reindex(values.index))

    def pairs(self) -> list[tuple[str, Compare]]:
        """One comparison per level of ``a`` against one of ``b``, when a side pools several
        levels: those are pooled too, and must not point both ways."""
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

    def units(self, frame, keys, value) -> Units:
        levels = sorted(frame[self.factor].unique())
        if len(levels) < 2:
            return Units(pd.Series(dtype=float))
        low, high = (str(levels[0]),), (str(levels[-1]),)
        a, b = (low, high) if self.smallest_first else (high, low)
        framed = frame.assign(**{self.factor: frame[self.factor].astype(str)})
        return Compare(self.factor, a, b).units(framed, keys, value)

    def pairs(self) -> list:
        return []


@dataclass(frozen=True)
class Level:
    """The outcome itself, one unit per cell."""

    unit = "cell"

    def describe(self) -> str:
        return "the cell's value"

    def pooled(self, keys: tuple[str, ...]) -> list[str]:
        return list(keys)

    def units(self, frame, keys, value) -> Units:
        indexed = frame.set_index(list(keys))
        seeds = indexed["n_seeds"] if "n_seeds" in indexed else None
        return Units(indexed[value].astype(float), _se(indexed, value), seeds)

    def pairs(self) -> list:
        return []


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

    def test(self, frame: pd.DataFrame, value: str) -> stats.UnitTest:
        if frame.empty or frame["depth"].nunique() < 2:
            return stats.UnitTest(0, np.nan, np.nan, 0)
        with np.errstate(divide="ignore"):
            y = np.log10(frame[value].abs().to_numpy(dtype=float))
        x = np.log10(frame["depth"].to_numpy(dtype=float) - 1)
        fit = stats.slope_test(x, y)
        return stats.UnitTest(fit.n, fit.estimate + 1, fit.se, fit.df)

    def pairs(self) -> list:
        return []


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

    def units(self, frame, keys, value) -> Units:
        fixed = [k for k in _other_keys(keys, self.factor) if k != "seed"]
        if frame.empty:
            return Units(pd.Series(dtype=float))
        # One pivot for all units (levels x seeds each), sorted, so each unit's rows are one
        # run of the table; then plain arrays per unit (pandas per unit cost ~1 ms each).
        table = frame.pivot_table(index=[*fixed, self.factor], columns="seed", values=value,
                                  observed=True)  # fmt: skip
        units = table.index.droplevel(self.factor)
        codes, uniques = units.factorize()
        starts = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]])
        ends = np.r_[starts[1:], len(codes)]
        values = table.to_numpy(dtype=float)
        out = {}
        for code, start, end in zip(codes[starts], starts, ends, strict=True):
            if code < 0:  # a key with a missing level: no unit (as groupby drops it)
                continue
            wide = values[start:end]
            wide = wide[:, ~np.isnan(wide).all(axis=0)]  # this unit's seeds
            wide = wide[~np.isnan(wide).any(axis=1)]  # the levels every one of them has
            if len(wide) < 2 or wide.shape[1] < 2:
                continue
            gaps = []
            for j in range(wide.shape[1]):
                rest = np.delete(wide, j, axis=1).mean(axis=1)
                gaps.append(wide[rest.argmax(), j] - wide[rest.argmin(), j])
            key = uniques[code]
            out[key if isinstance(key, tuple) else (key,)] = float(np.mean(gaps))
        index = pd.MultiIndex.from_tuples(list(out), names=fixed)
        return Units(pd.Series(list(out.values()), index=index, dtype=float))

    def pairs(self) -> list:
        return []
