"""Every number and verdict the paper's text uses, as LaTeX macros (``numbers.tex``).

A declarative table: each :class:`Macro` names the input it reads (a results table), the
value it takes from it and the format it is printed in. The text never types a result, and
no prose is written here: where the data choose between sentences, the table gives the
choice as a number or a flag (``\\ExcessPersists`` is 1 or 0) and ``paper/main.tex``
holds the alternative sentences (``\\ifnum``). The families of macros with one name per
level of the data (per sweep, per dataset, per claim) are made by functions that return
the same rows (``claim_macros``, ``study.report.numbers_families``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from study import data
from study.analysis import analyze, claims, outcomes, theory, tuning, verdicts
from study.config import Activation, Curriculum
from study.engine import curriculum
from study.records import Status
from study.report import numbers_families
from study.report.latex import define, escape, macro_name, number
from study.report.style import label

EXCESS_WIDTHS = (128, 512, 1024)  # the residual ReLU simulation (theory.residual_backward_factors)
NEAR, FAR = slice(0, 8), slice(32, 64)  # blocks from the output
ENOUGH_GAP = 0.10  # the generalization claims need a gap without dropout of 10 points or more


# ----------------------------------------------------------------------------- formats


def pvalue_text(p: float) -> str:
    """A p-value: three decimals, or mantissa and power of ten below 0.001 (never 0)."""
    if not np.isfinite(p):
        return "--"
    if p >= 0.001:
        return f"{p:.3f}"
    if p == 0:
        return r"$<10^{-300}$"
    mantissa, exponent = f"{p:.1e}".split("e")
    return f"${mantissa}\\times 10^{{{int(exponent)}}}$"


def count(value: Any) -> str:
    """An integer as plain digits (``\\ifnum`` reads it)."""
    return str(int(value))


def flag(value: Any) -> str:
    """A choice for ``\\ifnum``: 1 or 0."""
    return "1" if bool(value) else "0"


def percent(value: float) -> str:
    """A share in percent, to a whole number (one decimal below 10%)."""
    if not np.isfinite(value):
        return "--"
    return number(round(100 * value, 1 if abs(value) < 0.1 else 0))


def three(value: float) -> str:
    return number(value, 3)


def listed(values: list) -> str:
    """1, 2 and 3."""
    words = [v if isinstance(v, str) else number(float(v)) for v in values]
    if not words:
        return "--"
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} and {words[-1]}"


@dataclass(frozen=True)
class Macro:
    name: str
    source: str  # a key of the inputs: runs, rates, claims, tuning, convergence, chosen
    value: Callable[[Any], Any]
    fmt: Callable[[Any], str] = number


# --------------------------------------------------------------------- value functions


def _sweep(runs: pd.DataFrame, name: str) -> pd.DataFrame:
    return runs[runs["sweep"] == name]


def _chosen_plain(runs: pd.DataFrame, chosen: pd.DataFrame) -> pd.DataFrame:
    """The regularize sweep's finished runs without dropout at their chosen rate."""
    picked = set(chosen.loc[chosen["chosen"].astype(bool), "run_name"])
    part = _sweep(runs, "regularize")
    return part[(part["dropout"] == 0) & (part["status"] == Status.finished)
                & part["run_name"].isin(picked)]  # fmt: skip


def _gap(inputs: dict) -> float:
    plain = _chosen_plain(inputs["runs"], inputs["chosen"])
    return float((plain["train_split_accuracy"] - plain["test_accuracy"]).median())


def _converged(convergence: pd.DataFrame, train: bool = True) -> dict[str, float]:
    """tuning.summary of the train sweep's configurations, or of the other tuned sweeps'."""
    return tuning.summary(convergence[(convergence["sweep"] == "train") == train])


def _activations(runs: pd.DataFrame, sweep: str) -> str:
    present = set(_sweep(runs, sweep)["activation"].astype(str))
    ordered = [a for a in Activation if str(a) in present] if present else []
    return listed([escape(label("activation", a)) for a in ordered])


def _datasets(runs: pd.DataFrame, sweep: str) -> str:
    return listed([escape(d) for d in sorted(set(_sweep(runs, sweep)["dataset"].astype(str)))])


def _shallow(t: pd.DataFrame) -> pd.DataFrame:
    return t[(t["depth"] == t["depth"].min()) & (t["activation"].astype(str) != "sigmoid")]


def _lowest(t: pd.DataFrame) -> pd.Series:
    return t["lr"] == t["lr"].min()


def _excess_far(width: int) -> float:
    return float(theory.residual_backward_factors(width)[FAR].mean())


def _claims_with(table: pd.DataFrame, verdict: str) -> int:
    return sum(e["verdict"] == verdict for e in verdicts.claim_verdicts(table).values())


def _target(table: pd.DataFrame) -> pd.DataFrame:
    return table[table["carries_verdict"].astype(bool)]


# ------------------------------------------------------------------------------- table

TABLE: tuple[Macro, ...] = (
    # the train sweep's grid and budget
    Macro("DepthInitMax", "runs", lambda r: int(_sweep(r, "init")["depth"].max())),
    Macro("DepthTrainMax", "runs", lambda r: int(_sweep(r, "train")["depth"].max())),
    Macro("WidthMax", "runs", lambda r: int(r["width"].max())),
    Macro("TrainSteps", "runs", lambda r: int(_sweep(r, "train")["steps"].max())),
    Macro("TrainLRs", "runs", lambda r: sorted(_sweep(r, "train")["lr"].unique()), listed),
    Macro("NTrainLRs", "runs", lambda r: _sweep(r, "train")["lr"].nunique()),
    Macro("StepsMax", "runs", lambda r: int(r.loc[r["steps"] > 0, "steps"].max())),
    Macro("SeedsPerCell", "runs",
          lambda r: _sweep(r, "init").groupby("cell_id")["seed"].nunique().max()),
    # the generalization and curriculum sweeps: what they train, on what, how long
    *(Macro(f"{s.capitalize()}{key}", "runs", lambda r, s=s, c=c: int(_sweep(r, s)[c].max()))
      for s in ("regularize", "curriculum")
      for key, c in (("Steps", "steps"), ("Width", "width"), ("BatchSize", "batch_size"))),
    *(Macro(f"{s.capitalize()}{key}", "runs",
            lambda r, s=s, c=c: sorted(_sweep(r, s)[c].unique()), listed)
      for s in ("regularize", "curriculum") for key, c in (("LRs", "lr"), ("Depths", "depth"))),
    *(Macro(f"{s.capitalize()}Activations", "runs", lambda r, s=s: _activations(r, s), str)
      for s in ("regularize", "curriculum")),
    *(Macro(f"{s.capitalize()}Datasets", "runs", lambda r, s=s: _datasets(r, s), str)
      for s in ("regularize", "curriculum")),
    Macro("DropoutRates", "runs",
          lambda r: sorted(_sweep(r, "regularize")["dropout"].unique()), listed),
    Macro("MatchedTrainLoss", "runs", lambda r: outcomes.MATCHED_TRAIN_LOSS),
    Macro("DifficultyFolds", "runs", lambda r: data.DIFFICULTY_FOLDS),
    Macro("PacingStartPercent", "runs",
          lambda r: 100 * curriculum.SCHEDULES[Curriculum.linear].start),
    Macro("PacingFullAtPercent", "runs",
          lambda r: 100 * curriculum.SCHEDULES[Curriculum.linear].full_at),
    # the nets without dropout of the generalization sweep, at their chosen rate
    Macro("FitNoDropoutPercent", "inputs", lambda d: _chosen_plain(d["runs"], d["chosen"])[
        "train_split_accuracy"].median(), percent),
    Macro("TestNoDropoutPercent", "inputs", lambda d: _chosen_plain(d["runs"], d["chosen"])[
        "test_accuracy"].median(), percent),
    Macro("GapNoDropoutPoints", "inputs", lambda d: 100 * _gap(d), lambda v: number(round(v))),
    Macro("GapNoDropoutEnough", "inputs", lambda d: _gap(d) >= ENOUGH_GAP, flag),
    Macro("EnoughGapPoints", "runs", lambda r: 100 * ENOUGH_GAP),
    # the train sweep's tuning (analyze.tuning)
    Macro("NTunedConfigs", "tuning", len),
    Macro("DepthShallow", "tuning", lambda t: int(t["depth"].min())),
    Macro("NShallowConfigs", "tuning", lambda t: len(_shallow(t))),
    Macro("NShallowLevelledOff", "tuning",
          lambda t: int(_shallow(t)["levelled_off"].fillna(False).sum())),
    Macro("ShallowGainMax", "tuning", lambda t: _shallow(t)["last_quarter_gain"].max(),
          lambda v: number(v, 2)),
    Macro("LevelledOffGain", "tuning", lambda t: analyze.LEVELLED_OFF),
    Macro("NChosenLowest", "tuning", lambda t: int(_lowest(t).sum())),
    Macro("NChosenLowestDeep", "tuning",
          lambda t: int((_lowest(t) & (t["depth"] >= claims.DEEP)).sum())),
    Macro("DepthDeep", "tuning", lambda t: claims.DEEP),
    Macro("NChosenHighest", "tuning", lambda t: int((t["lr"] == t["lr"].max()).sum())),
    # convergence in the claims' target strata (study.analysis.tuning): the train sweep's
    # (trainability, early stopping at the plateau) apart from the sweeps trained for a
    # declared budget (regularize, curriculum)
    Macro("NTargetConfigs", "convergence", lambda c: _converged(c)["configs"]),
    Macro("StillImprovingPercent", "convergence",
          lambda c: _converged(c)["still_improving"], percent),
    Macro("StillImprovingFew", "convergence",
          lambda c: _converged(c)["still_improving"] <= 0.10, flag),
    Macro("NLearnedTargetConfigs", "convergence", lambda c: _converged(c)["learned"]),
    Macro("InteriorPercent", "convergence", lambda c: _converged(c)["interior"], percent),
    Macro("InteriorMost", "convergence", lambda c: _converged(c)["interior"] >= 0.95, flag),
    Macro("NTargetConfigsBudget", "convergence", lambda c: _converged(c, False)["configs"]),
    Macro("StillImprovingBudgetPercent", "convergence",
          lambda c: _converged(c, False)["still_improving"], percent),
    Macro("InteriorBudgetPercent", "convergence",
          lambda c: _converged(c, False)["interior"], percent),
    Macro("LearnedAboveChance", "convergence", lambda c: tuning.LEARNED_ABOVE_CHANCE),
    # the verdicts
    Macro("NClaims", "claims", lambda t: len(verdicts.claim_verdicts(t)), count),
    *(Macro(macro_name("N claims", v), "claims", lambda t, v=v: _claims_with(t, v), count)
      for v in verdicts.VERDICTS),
    Macro("NTargetRows", "claims", lambda t: len(_target(t)), count),
    Macro("NTestedRows", "claims", lambda t: int(_target(t)["p_decisive"].notna().sum()), count),
    Macro("NFragileRows", "claims", lambda t: int(_target(t)["fragile"].astype(bool).sum()),
          count),
    Macro("NInconclusiveRows", "claims",
          lambda t: int((_target(t)["verdict"] == "inconclusive").sum()), count),
    Macro("NSelectedClaims", "claims",
          lambda t: _target(t).groupby("claim")["q_claim"].first().lt(verdicts.ALPHA).sum(),
          count),
    Macro("Alpha", "claims", lambda t: verdicts.ALPHA),
    # the residual ReLU simulation
    *(Macro(f"ExcessNear{macro_name(str(w))}", "runs",
            lambda r, w=w: theory.residual_backward_factors(w)[NEAR].mean(), three)
      for w in EXCESS_WIDTHS),
    *(Macro(f"ExcessFar{macro_name(str(w))}", "runs", lambda r, w=w: _excess_far(w), three)
      for w in EXCESS_WIDTHS),
    Macro("ExcessIndependent", "runs", lambda r: theory.residual_backward_factors(
        EXCESS_WIDTHS[-1], reuse_forward_weights=False).mean(), three),
    # 1: the excess far from the output does not halve from the narrowest to the widest
    Macro("ExcessPersists", "runs", lambda r: _excess_far(EXCESS_WIDTHS[-1]) - 2
          > 0.5 * (_excess_far(EXCESS_WIDTHS[0]) - 2), flag),
)  # fmt: skip


def claim_macros(table: pd.DataFrame) -> dict[str, str]:
    """Per claim: its verdict, its parts' verdicts (listed), how many are undecided."""
    out = {}
    for claim, entry in verdicts.claim_verdicts(table).items():
        out[macro_name("verdict", claim)] = entry["verdict"]
        parts = [f"{escape(k)} {v['verdict']}{' (fragile)' if v['fragile'] else ''}"
                 for k, v in entry.items() if isinstance(v, dict)]  # fmt: skip
        out[macro_name("parts", claim)] = "; ".join(parts)
        out[macro_name("N undecided", claim)] = count(entry["undecided"])
    return out


def render(table: tuple[Macro, ...], inputs: dict[str, Any]) -> dict[str, str]:
    """Each macro's value, formatted; "--" where its input is empty or lacks the value."""
    out = {}
    for m in table:
        if m.source != "inputs" and m.source not in inputs:
            continue  # an input not given: its macros are not rendered (tests render parts)
        frame = inputs if m.source == "inputs" else inputs[m.source]
        try:
            value = m.value(frame)
            out[m.name] = m.fmt(value)
        except (KeyError, ValueError, TypeError, IndexError):
            out[m.name] = "0" if m.fmt in (flag, count) else "--"  # \\ifnum needs a number
        if out[m.name] in ("nan", "$nan$"):
            out[m.name] = "--"
    return out


def all_macros(inputs: dict[str, Any]) -> dict[str, str]:
    """The table rendered, with the families (``inputs``: runs, rates, claims, tuning,
    convergence, chosen, manifest)."""
    return {**render(TABLE, inputs),
            **numbers_families.run_counts(inputs["runs"]),
            **numbers_families.data_numbers(inputs["manifest"]),
            **numbers_families.theory_numbers(inputs["rates"]),
            **claim_macros(inputs["claims"])}  # fmt: skip


def macros(values: dict[str, str]) -> str:
    lines = ["% Generated by python -m study.report.paper: every number and verdict of the text."]
    lines += [define(name, value) for name, value in sorted(values.items())]
    return "\n".join(lines) + "\n"
