"""The families of macros that one name per level of the data makes: counts per sweep and
status, data sizes per dataset and split, theory against measurement per kind of cell.
``study.report.numbers`` holds the table of the single macros and renders both."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from study.analysis import analyze, theory
from study.records import Status
from study.report.latex import escape, macro_name, number

MAIN_PROBE_BATCH = 128  # the init sweep's probe batch (conf/sweep/standard/init.yaml)
FIRST_ORDER_BATCH = 8  # the batch at which the text quotes the first-order correction


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


def theory_numbers(rates: pd.DataFrame) -> dict[str, str]:
    """Agreement with theory, and the closed forms and corrections the text discusses."""
    judged = rates[rates["agrees"].notna()]
    out = {
        "NCellsPredicted": number(len(judged)),
        "NCellsAgree": number(int(judged["agrees"].sum())),
        "NCellsAgreeRatio": number(int(judged["agrees_ratio"].astype(bool).sum())),
        "RateAbs": number(analyze.RATE_ABS),
        "RateRelPercent": number(round(100 * analyze.RATE_REL)),
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
    b = FIRST_ORDER_BATCH  # the first-order correction: chi (B - 2) / (B - 1)
    out["BNChiFirstOrderEight"] = number(theory.batchnorm_chi("relu") * (b - 2) / (b - 1), 3)
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
