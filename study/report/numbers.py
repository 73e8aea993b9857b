"""Every number and verdict the paper's text uses, as LaTeX macros (``numbers.tex``).

The text never types a result: a count is ``\\NRuns``, a verdict ``\\VerdictCSix``, and a
sentence whose truth depends on the data -- a claim's result, the direction of an effect --
is generated here (``\\SummaryCSix``), so the paper reads true whatever the data say.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from study import data
from study.analysis import analyze, claims, outcomes, theory, verdicts
from study.config import Curriculum
from study.engine import curriculum
from study.records import Status
from study.report.latex import define, escape, interval, macro_name, number

MAIN_PROBE_BATCH = 128  # the init sweep's probe batch (conf/sweep/standard/init.yaml)
EXCESS_WIDTHS = (128, 512, 1024)  # the residual ReLU simulation (theory.residual_backward_factors)
NEAR, FAR = slice(0, 8), slice(32, 64)  # blocks from the output


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


def run_counts(runs: pd.DataFrame) -> dict[str, str]:
    out = {"NRuns": number(len(runs))}
    for status in Status:
        out[macro_name("N runs", status)] = number(int((runs["status"] == status).sum()))
    for sweep, part in runs.groupby("sweep", observed=False):
        out[macro_name("N runs", sweep)] = number(len(part))
        out[macro_name("N cells", sweep)] = number(part["cell_id"].nunique())
        diverged = int((part["status"] == Status.diverged).sum())
        out[macro_name("N diverged", sweep)] = number(diverged)
    out["NCellsAll"] = number(runs[["sweep", "cell_id"]].drop_duplicates().shape[0])
    return out


def data_numbers(manifest: dict[str, Any]) -> dict[str, str]:
    """Sizes of every split of every dataset, and its features."""
    out = {}
    for name, entry in manifest.items():
        out[macro_name("N features", name)] = number(entry["num_features"])
        for array, info in entry["arrays"].items():
            if array.startswith("y_"):
                out[macro_name("N", name, array.removeprefix("y_"))] = number(info["shape"][0])
    return out


def budget_numbers(runs: pd.DataFrame) -> dict[str, str]:
    """The grids' extremes and the training budget the text names."""
    trained = runs[runs["steps"] > 0]
    train = runs[runs["sweep"] == "train"]
    init = runs[runs["sweep"] == "init"]
    return {
        "DepthInitMax": number(int(init["depth"].max())) if len(init) else "--",
        "DepthTrainMax": number(int(train["depth"].max())) if len(train) else "--",
        "WidthMax": number(int(runs["width"].max())),
        "TrainSteps": number(int(train["steps"].max())) if len(train) else "--",
        "TrainLRs": _listed(sorted(train["lr"].unique())) if len(train) else "--",
        "NTrainLRs": number(int(train["lr"].nunique())) if len(train) else "--",
        "StepsMax": number(int(trained["steps"].max())) if len(trained) else "--",
        "SeedsPerCell": number(int(init.groupby("cell_id")["seed"].nunique().max()))
        if len(init) else "--",
    }  # fmt: skip


def generalization_numbers(runs: pd.DataFrame) -> dict[str, str]:
    """The regularize and curriculum sweeps' budgets, the curricula's pacing and difficulty
    score, and what the nets without dropout fit (at every rate: the sweep's range)."""
    out = {"MatchedTrainLoss": number(outcomes.MATCHED_TRAIN_LOSS),
           "DifficultyFolds": number(data.DIFFICULTY_FOLDS)}  # fmt: skip
    pacing = curriculum.SCHEDULES[Curriculum.linear]
    out["PacingStartPercent"] = number(100 * pacing.start)
    out["PacingFullAtPercent"] = number(100 * pacing.full_at)
    for sweep in ("regularize", "curriculum"):
        part = runs[runs["sweep"] == sweep]
        name = sweep.capitalize()
        for key, column in (("Steps", "steps"), ("Width", "width"), ("BatchSize", "batch_size")):
            out[f"{name}{key}"] = number(int(part[column].max())) if len(part) else "--"
        for key, column in (("LRs", "lr"), ("Depths", "depth")):
            out[f"{name}{key}"] = _listed(sorted(part[column].unique())) if len(part) else "--"
    rates = runs.loc[runs["sweep"] == "regularize", "dropout"]
    out["DropoutRates"] = _listed(sorted(rates.unique())) if len(rates) else "--"
    plain = runs[(runs["sweep"] == "regularize") & (runs["dropout"] == 0)
                 & (runs["status"] == Status.finished)]  # fmt: skip
    for key, column in (
        ("FitNoDropout", "train_split_accuracy"),
        ("TestNoDropout", "test_accuracy"),
    ):
        out[key] = number(float(plain[column].median()), 3) if len(plain) else "--"
    return out


def _listed(values: list[float]) -> str:
    """1, 2 and 3."""
    words = [number(float(v)) for v in values]
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} and {words[-1]}"


def tuning_numbers(tuning: pd.DataFrame) -> dict[str, str]:
    """How the chosen learning rates fall, and how many configurations at the shallowest
    depth (every activation but sigmoid) had levelled off by the end of the budget."""
    if tuning.empty:
        return {k: "--" for k in ("NTunedConfigs", "NShallowConfigs", "NShallowLevelledOff",
                                  "DepthShallow", "NChosenLowest", "NChosenLowestDeep",
                                  "NChosenHighest", "LevelledOffGain", "ShallowGainMax",
                                  "DepthDeep")}  # fmt: skip
    lowest = tuning["lr"] == tuning["lr"].min()
    shallow = tuning[(tuning["depth"] == tuning["depth"].min())
                     & (tuning["activation"].astype(str) != "sigmoid")]  # fmt: skip
    return {
        "NTunedConfigs": number(len(tuning)),
        "DepthShallow": number(int(tuning["depth"].min())),
        "NShallowConfigs": number(len(shallow)),
        "NShallowLevelledOff": number(int(shallow["levelled_off"].fillna(False).sum())),
        "ShallowGainMax": number(float(shallow["last_quarter_gain"].max()), 2),
        "LevelledOffGain": number(analyze.LEVELLED_OFF),
        "NChosenLowest": number(int(lowest.sum())),
        "NChosenLowestDeep": number(int((lowest & (tuning["depth"] >= claims.DEEP)).sum())),
        "DepthDeep": number(claims.DEEP),
        "NChosenHighest": number(int((tuning["lr"] == tuning["lr"].max()).sum())),
    }


def excess_numbers() -> dict[str, str]:
    """The residual ReLU simulation, and the sentence its outcome decides."""
    out, far = {}, {}
    for width in EXCESS_WIDTHS:
        factors = theory.residual_backward_factors(width)
        word = macro_name(str(width))
        far[width] = factors[FAR].mean()
        out[f"ExcessNear{word}"] = number(factors[NEAR].mean(), 3)
        out[f"ExcessFar{word}"] = number(far[width], 3)
    independent = theory.residual_backward_factors(EXCESS_WIDTHS[-1], reuse_forward_weights=False)
    out["ExcessIndependent"] = number(independent.mean(), 3)
    narrow, wide = far[EXCESS_WIDTHS[0]], far[EXCESS_WIDTHS[-1]]
    if wide - 2 > 0.5 * (narrow - 2):
        out["ExcessVerdict"] = (
            "The excess far from the output does not shrink with width: it is not a "
            "finite-width effect that vanishes for wide networks at a fixed depth, and "
            "mean-field theory describes these networks only over the first blocks from the "
            "output, a stretch that grows slowly with the width."
        )
    else:
        out["ExcessVerdict"] = "The excess shrinks with width: a finite-width effect."
    return out


def theory_numbers(rates: pd.DataFrame) -> dict[str, str]:
    """Agreement with theory, and the closed forms and corrections the text discusses."""
    judged = rates[rates["agrees"].notna()]
    out = {
        "NCellsPredicted": number(len(judged)),
        "NCellsAgree": number(int(judged["agrees"].sum())),
        "AgreementPercent": number(round(100 * analyze.AGREEMENT)),
        "BNChiLarge": number(theory.batchnorm_chi("relu"), 4),
    }

    def cell(**axes) -> pd.DataFrame:
        keep = np.ones(len(rates), dtype=bool)
        for axis, value in axes.items():
            keep &= (rates[axis].astype(str) == str(value)).to_numpy()
        return rates[keep]

    deepest = rates.loc[rates["sweep"] == "init", "depth"].max()
    plain = dict(norm="none", skip="none", depth=deepest, sweep="init")
    for name, activation, init in (("ReluHe", "relu", "kaiming_normal"),
                                   ("ReluXavier", "relu", "xavier_normal"),
                                   ("SigmoidXavier", "sigmoid", "xavier_normal")):  # fmt: skip
        row = cell(activation=activation, init=init, **plain)
        out[f"Rate{name}"] = number(row["signal_rate"].mean(), 3, True) if len(row) else "--"
        out[f"Theory{name}"] = number(row["theory_rate"].mean(), 3, True) if len(row) else "--"
    for batch in (8, 16, 32, MAIN_PROBE_BATCH):
        word = macro_name(str(batch))
        out[f"BNChiPred{word}"] = number(theory.finite_batch_chi("relu", batch), 4)
        row = cell(sweep="theory", norm="batch", activation="relu", probe_batch_size=batch)
        measured = 10 ** (2 * row["signal_rate"].mean()) if len(row) else math.nan
        out[f"BNChiMeas{word}"] = number(measured, 3)
    out["BNChiFirstOrderEight"] = number(theory.batchnorm_chi("relu") * 6 / 7, 3)
    theory_sweep = cell(sweep="theory", norm="batch")
    out["BNTheoryRatioMin"] = number(theory_sweep["ratio_vs_theory"].min(), 3)
    out["BNTheoryRatioMax"] = number(theory_sweep["ratio_vs_theory"].max(), 3)
    for name, activation in (("Tanh", "tanh"), ("Sigmoid", "sigmoid")):
        row = cell(skip="residual", norm="none", activation=activation)
        out[f"Residual{name}RatioMin"] = number(row["ratio_vs_theory"].min(), 3)
        out[f"Residual{name}RatioMax"] = number(row["ratio_vs_theory"].max(), 3)
    relu = cell(sweep="theory", skip="residual", activation="relu", init="kaiming_normal")
    for scale in (0.25, 0.5, 1.0):
        rows = relu[(relu["residual_scale"] == scale) & (relu["depth"] == relu["depth"].max())]
        word = macro_name(f"{scale:g}".replace(".", " point "))
        out[f"ResReluMeas{word}"] = number(rows["signal_rate"].mean(), 3)
        out[f"ResReluPred{word}"] = number(rows["theory_rate"].mean(), 3)
    disagree = judged[~judged["agrees"].astype(bool)]
    residual = disagree["skip"].astype(str) == "residual"
    out["NDisagreeResidual"] = number(int(residual.sum()))
    out["NDisagreeOther"] = number(int((~residual).sum()))
    worst = disagree.loc[residual, "ratio_vs_theory"].max()
    out["ResidualExcessPercent"] = number(round(100 * (worst - 1))) if residual.any() else "0"
    others = [
        f"{r.activation} + {r.init}, {r.norm} norm, depth {r.depth}, width {r.width} "
        f"({r.sweep} sweep, ratio {r.ratio_vs_theory:.2f})"
        for r in disagree[~residual].itertuples()
    ]
    out["DisagreeOtherList"] = escape("; ".join(others) or "none")
    return out


def claim_numbers(table: pd.DataFrame) -> dict[str, str]:
    """Per claim its verdict and a generated summary; per target row its numbers."""
    by_claim = verdicts.claim_verdicts(table)
    out: dict[str, str] = {}
    counts = {v: 0 for v in verdicts.VERDICTS}
    for claim, entry in by_claim.items():
        out[macro_name("verdict", claim)] = entry["verdict"]
        counts[entry["verdict"]] += 1
    for verdict, count in counts.items():
        out[macro_name("N claims", verdict)] = number(count)
    out["NClaims"] = number(len(by_claim))
    target = table[table["carries_verdict"]]
    out["NTargetRows"] = number(len(target))
    out["NTestedRows"] = number(int(target["p_holm"].notna().sum()))  # Holm's family
    statements = {h.part: h for h in claims.HYPOTHESES}
    for claim, rows in target.groupby("claim", sort=False):
        sentences = []
        for part, part_rows in rows.groupby("part", sort=False):
            h = statements[part]
            said = [f"{escape(part)}: {escape(h.statement)}."]
            for r in part_rows.itertuples():
                name = macro_name(r.part, _stratum_word(h, r.stratum))
                out[f"Effect{name}"] = interval(r.effect, r.effect_low, r.effect_high)
                out[f"PHolm{name}"] = pvalue_text(r.p_holm)
                out[f"Row{name}"] = r.verdict
                said.append(_result(r))
            sentences.append(" ".join(said))
        out[macro_name("summary", claim)] = " ".join(sentences)
    return out


def short_stratum(stratum: str) -> str:
    """A stratum as the paper writes it."""
    return (stratum.replace("norm=none, skip=none", "plain nets")
            .replace("norm=batch, skip=residual", "residual nets with batch norm")
            .replace("dropout=0.0", "without dropout")
            .replace("activation in {relu, leaky_relu, prelu}", "rectifiers")
            .replace("init_quality=badly", "badly initialized")
            .replace("init_quality=well", "well initialized").replace("family=", "family ")
            .replace("depth>=", "depth ≥ "))  # fmt: skip


def _stratum_word(h: Any, stratum: str) -> str:
    """The levels of the hypothesis' strata in a row's stratum text (e.g. "badly")."""
    words = []
    for axis in getattr(h, "strata", ()):
        for item in stratum.split(", "):
            if item.startswith(f"{axis}="):
                words.append(item.split("=", 1)[1])
    return " ".join(words)


def _result(r: Any) -> str:
    """One target row's result: where, its verdict and its numbers."""
    where = escape(short_stratum(r.stratum))
    if r.note.startswith("not tested"):
        return f"In {where}: \\emph{{not tested}} ({escape(r.note.removeprefix('not tested: '))})."
    units = "runs" if r.unit_of_test == "run" else "cells"
    text = (f"In {where}: \\emph{{{r.verdict}}}, "
            f"{interval(r.effect, r.effect_low, r.effect_high)} {escape(r.unit)} over {r.n} "
            f"{units}")  # fmt: skip
    if r.null:
        text += f" against {number(r.null)}"
    text += f", Holm-adjusted $p$ = {pvalue_text(r.p_holm)}"
    if r.verdict == "mixed":
        text += ", its levels pointing both ways by more than the declared minimum effect"
    return text + "."


def macros(values: dict[str, str]) -> str:
    lines = ["% Generated by python -m study.report.paper: every number and verdict of the text."]
    lines += [define(name, value) for name, value in sorted(values.items())]
    return "\n".join(lines) + "\n"
