"""The generated pieces of "Beyond the articles" (``paper/beyond.tex``): its number macros,
the mean-field xi_c table beside the measured trainable depth, and the claims-style table
(what theory predicts, what we measure, agreement), every number from
``results/analysis/beyond_*.parquet``.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from study.analysis import beyond
from study.report.latex import escape, macro_name, number, table
from study.report.numbers import macros

NAMES = ("phase_cells", "phase_depths", "phase_ratio", "xi_c", "width", "jacobian",
         "residual_scale")  # fmt: skip
YES, NO, NONE = "yes", "no", "--"


def read(analysis: Path) -> dict[str, pd.DataFrame]:
    """The tables, empty where the analysis has not written one (an older results folder)."""
    out = {}
    for name in NAMES:
        path = Path(analysis) / f"beyond_{name}.parquet"
        out[name] = pd.read_parquet(path) if path.is_file() else pd.DataFrame()
    return out


def numbers(t: dict[str, pd.DataFrame]) -> dict[str, str]:
    """Macros for the text: the criterion, cell counts, each activation's depth ratio."""
    values = {
        "BeyondTrainedAccuracy": number(beyond.TRAINED_ACCURACY),
        "BeyondAgreement": number(100 * beyond.AGREEMENT) + r"\%",
        "BeyondPhaseCells": number(len(t["phase_cells"])),
        "BeyondWidthCells": number(len(t["width"])),
        "BeyondJacobianCells": number(len(t["jacobian"])),
        "BeyondResidualCells": number(len(t["residual_scale"])),
    }
    # The text names tanh's ratio: defined ("--") even where the profile has no phase sweep.
    values["BeyondRatioTanh"] = values["BeyondRatioPointsTanh"] = NONE
    for r in t["phase_ratio"].itertuples():
        values[macro_name("beyond ratio", r.activation)] = _ci(r.ratio, r.low, r.high)
        values[macro_name("beyond ratio points", r.activation)] = number(r.n_points)
    jac = t["jacobian"]
    for column, name in (("var_agrees", "BeyondJacobianVarAgree"),
                         ("shape_agrees", "BeyondJacobianShapeAgree")):  # fmt: skip
        values[name] = f"{int(jac[column].sum())} of {len(jac)}" if column in jac else NONE
    return values


def xi_table(t: dict[str, pd.DataFrame]) -> str:
    """Mean-field q*, chi_1, phase and xi_c at every sigma_w^2 of the phase sweep, beside the
    deepest trainable net of the grid and its ratio to xi_c."""
    xi, depths = t["xi_c"], t["phase_depths"]
    if xi.empty:
        body = [[NONE] * 8]
    else:
        measured = depths[["activation", "sigma_w2", "trainable_depth", "censored", "testable"]]
        merged = xi.merge(measured, on=["activation", "sigma_w2"], how="left")
        body = [[escape(r.activation), number(r.sigma_w2), number(r.q_star), number(r.chi_1),
                 escape(r.phase), number(r.xi_c),
                 number(6 * r.xi_c) + ("" if r.testable is True else r"$^\dagger$"),
                 (("$\\geq$" if r.censored else "") + number(r.trainable_depth))
                 if pd.notna(r.trainable_depth) else NONE]
                for r in merged.itertuples()]  # fmt: skip
    header = ["activation", r"$\sigma_w^2$", "$q^*$", r"$\chi_1$", "phase", r"$\xi_c$",
              r"$6\xi_c$", "trains to"]  # fmt: skip
    caption = (r"Mean-field fixed point $q^*$, $\chi_1 = \chi(q^*)$ and correlation depth "
               r"$\xi_c$ at every $\sigma_w^2$ of the phase sweep ($\sigma_b^2$ as in "
               r"Figure~\ref{fig:beyond-phase}), beside the deepest net of the grid that trains "
               r"(mean test accuracy $\geq$ \BeyondTrainedAccuracy{}, every shallower depth too; "
               r"$\geq$: the grid's deepest trains; $\dagger$: $6\xi_c$ beyond the grid's "
               r"deepest depth, left out of the ratio).")  # fmt: skip
    return table(header, body, "lrrrlrrr", caption, "tab:beyond-xi", size=r"\scriptsize")


def claim_rows(t: dict[str, pd.DataFrame]) -> list[list[str]]:
    """One row per result: (result, theory predicts, we measure, agreement)."""
    rows = []
    for r in t["phase_ratio"].itertuples():
        inside = r.low <= r.theory <= r.high if np.isfinite(r.low) else None
        rows.append([f"trainable depth / $\\xi_c$, {escape(r.activation)}", number(r.theory),
                     f"{_ci(r.ratio, r.low, r.high)} ({number(r.n_points)} $\\sigma_w^2$)",
                     NONE if inside is None else NO if not inside
                     # an interval down to 0 or below cannot tell the prediction from nothing
                     else YES if r.low > 0 else "interval too wide"])  # fmt: skip
    jac = t["jacobian"]
    if len(jac):
        deepest = jac.loc[jac.groupby(["activation", "init"], observed=True)["depth"].idxmax()]
        for r in deepest.itertuples():
            kind = "orth." if "orthogonal" in str(r.init) else "Gauss."
            rows.append([f"var.\\ of $JJ^T$ eigenvalues, {escape(r.activation)} {kind}, "
                         f"$L$={r.depth}", number(r.theory_var),
                         _ci(r.eig_var, r.eig_var_low, r.eig_var_high),
                         YES if r.var_agrees else "interval holds it" if r.var_covered
                         else NO])  # fmt: skip
            if "shape" in jac:  # each net's v/m^2, free probability's own statistic
                rows.append([f"per net $v/m^2$, {escape(r.activation)} {kind}, $L$={r.depth}",
                             number(r.theory_shape), _ci(r.shape, r.shape_low, r.shape_high),
                             YES if r.shape_agrees else NO])  # fmt: skip
        rows.append([r"mean of $JJ^T$ eigenvalues, every cell", r"$\prod_l \chi_l$",
                     f"{int(jac['mean_agrees'].sum())} of {len(jac)} within "
                     r"\BeyondAgreement", _share(jac["mean_agrees"])])  # fmt: skip
    width = t["width"]
    if len(width):
        for key, part in width.groupby(["activation", "init", "skip"], observed=True):
            name = ("res.\\ " if key[2] == "residual" else "") + escape(key[0])
            slope, intercept = part["slope"].iloc[0], part["intercept"].iloc[0]
            at_zero = 10 ** (2 * intercept) - 1 if np.isfinite(intercept) else math.nan
            rows.append([f"finite-width excess vs depth/width, {name}",
                         "0 at depth/width $\\to 0$",
                         f"slope {number(slope, 2, True)}, at 0: {number(intercept, 2, True)}",
                         NONE if math.isnan(at_zero) else
                         (YES if abs(at_zero) <= beyond.AGREEMENT else NO)])  # fmt: skip
    res = t["residual_scale"]
    if len(res):
        for scaling, part in res.groupby("residual_scaling", observed=True):
            if part.empty:
                continue
            rows.append([f"residual growth per block, {escape(scaling)}",
                         r"$1 + s^2\chi$ stream",
                         f"median ratio {number(float(part['ratio'].median()))}, "
                         f"{int(part['agrees'].sum())} of {len(part)} within "
                         r"\BeyondAgreement", _share(part["agrees"])])  # fmt: skip
    return rows or [[NONE] * 4]


def _ci(estimate: float, low: float, high: float) -> str:
    """ "x [low, high]" unsigned (variances, ratios); the estimate alone without bounds."""
    if not np.isfinite(low):
        return number(estimate)
    return f"{number(estimate)} [{number(low)}, {number(high)}]"


def _share(agrees: pd.Series) -> str:
    """yes if every cell agrees, no if none does, else the share that does."""
    share = float(agrees.astype(bool).mean())
    return YES if share == 1 else NO if share == 0 else f"{number(100 * share, 2)}\\%"


def claims_table(t: dict[str, pd.DataFrame]) -> str:
    caption = (r"Beyond the articles: each result against its theory (agreement: the "
               r"interval holds the prediction, or within \BeyondAgreement{}).")  # fmt: skip
    return table(["result", "theory predicts", "we measure", "agrees"], claim_rows(t),
                 "Q{0.3\\textwidth}Q{0.16\\textwidth}Q{0.36\\textwidth}l", caption,
                 "tab:beyond-claims", size=r"\scriptsize")  # fmt: skip


def texts(analysis: Path) -> dict[str, str]:
    """The generated files, by their path under ``paper/generated``."""
    t = read(analysis)
    return {"tables/beyond_numbers.tex": macros(numbers(t)),
            "tables/beyond_xi.tex": xi_table(t),
            "tables/beyond_claims.tex": claims_table(t)}  # fmt: skip
