"""The figures drawn from the analysis stage's outputs (``results/analysis/``): theory
against measurement, the decay-rate heatmaps and trainable depth (the claims' forest is
``study.report.figures_claims``).
``study.report.figures`` runs them with the figures drawn from the tables."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

from study.engine import nets
from study.report.figures_tables import deepest
from study.report.style import (
    ACTIVATION_COLORS,
    COLUMN,
    FULL,
    INIT_LABELS,
    LEVELS,
    facet_labels,
    label,
    no_data,
    present,
)

DISAGREE = {  # what the cells that miss mean field are (README "Theory against measurement")
    "residual, non-saturating": ("#C0392B", "X"),
    "other": ("#7B3294", "^"),
}


# ------------------------------------------------------------------- theory vs measured


def theory_rows(decay: pd.DataFrame) -> pd.DataFrame:
    """Cells with a finite prediction; ``reference`` is the finite-batch one where it exists."""
    reference = decay["theory_rate_finite_batch"].fillna(decay["theory_rate"])
    ok = np.isfinite(reference.astype(float)) & np.isfinite(decay["signal_rate"].astype(float))
    return decay[ok].assign(reference=reference[ok].astype(float))


def _disagreement(rows: pd.DataFrame) -> pd.Series:
    saturating = set(nets.family("saturating"))
    kind = np.where((rows["skip"].astype(str) == "residual")
                    & ~rows["activation"].astype(str).isin(saturating),
                    "residual, non-saturating", "other")  # fmt: skip
    return pd.Series(np.where(rows["agrees"].fillna(True).astype(bool), "agrees", kind),
                     index=rows.index)  # fmt: skip


def theory_vs_measured(decay: pd.DataFrame) -> Figure:
    """Measured against predicted per-layer gradient ratio, 10**rate, of every cell with a
    mean-field prediction (the finite-batch one for batch norm); bars: 95% t-intervals
    over seeds; the band is the 10% agreement that ``analyze`` counts."""
    rows = theory_rows(decay)
    fig, ax = plt.subplots(figsize=(COLUMN, 3.1))
    if rows.empty:
        no_data(ax)
        return fig
    x, y = 10 ** rows["reference"], 10 ** rows["signal_rate"]
    lo, hi = 10 ** rows["signal_rate_low"], 10 ** rows["signal_rate_high"]
    span = np.array([min(x.min(), lo.min(skipna=True), y.min()),
                     max(x.max(), hi.max(skipna=True), y.max())])  # fmt: skip
    span = span * np.array([0.85, 1.15])
    line = np.geomspace(*span, 50)
    ax.fill_between(line, 0.9 * line, 1.1 * line, color="#DDDDDD", lw=0, label="±10%")
    ax.plot(line, line, color="black", lw=0.7, label="measured = predicted")
    kind = _disagreement(rows)
    styles = {"agrees": ("#4477AA", "o"), **DISAGREE}
    for name, (color, marker) in styles.items():
        pick = (kind == name).to_numpy()
        if not pick.any():
            continue
        yerr = np.vstack([(y - lo)[pick].fillna(0), (hi - y)[pick].fillna(0)])
        ax.errorbar(x[pick], y[pick], yerr=yerr, fmt="none", ecolor=color, elinewidth=0.4,
                    alpha=0.5)  # fmt: skip
        text = "agrees within 10%" if name == "agrees" else f"disagrees: {name}"
        ax.scatter(x[pick], y[pick], s=9 if name == "agrees" else 16, c=color, marker=marker,
                   lw=0, alpha=0.6 if name == "agrees" else 0.9,
                   label=f"{text} ({int(pick.sum())})")  # fmt: skip
    ax.set(xscale="log", yscale="log", xlim=span, ylim=span)
    _plain_log_ticks(ax, span)
    ax.set_xlabel("predicted per-layer gradient ratio (mean field)")
    ax.set_ylabel("measured per-layer gradient ratio")
    ax.legend(loc="upper left", fontsize=6, handletextpad=0.3)
    return fig


def _plain_log_ticks(ax, span) -> None:
    """Log axes over less than a decade or two read better as plain numbers (0.5, 1, 2)."""
    ticks = [t for t in (0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1, 1.5, 2, 3, 5, 10, 20, 50)
             if span[0] <= t <= span[1]]  # fmt: skip
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_locator(FixedLocator(ticks))
        axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        axis.set_minor_formatter(NullFormatter())


# ---------------------------------------------------------------------------- heatmaps


def _annotation(value: float) -> str:
    if not np.isfinite(value):
        return ""
    text = f"{value:.2f}".replace("0.", ".")
    return "0" if text in (".00", "-.00") else text.replace("-", "\N{MINUS SIGN}")


def heatmap_rows(decay: pd.DataFrame) -> pd.DataFrame:
    return deepest(decay[decay["sweep"] == "init"])


def rate_heatmaps(decay: pd.DataFrame) -> Figure:
    """The mean per-layer signal-gradient rate at initialization (init sweep, deepest depth)
    per activation x init, one panel per norm x skip, on one colour scale centred at 0
    (blue: vanishing toward the input, red: exploding)."""
    rows = heatmap_rows(decay)
    norms, skips = present(rows, "norm") or [""], present(rows, "skip") or [""]
    acts, inits = present(rows, "activation"), present(rows, "init")
    fig, axes = plt.subplots(len(norms), len(skips), squeeze=False, sharex=True, sharey=True,
                             figsize=(FULL, 0.35 + (0.18 * max(len(acts), 2) + 0.2) * len(norms)
                                      + 0.6 + 0.06 * max(map(len, inits), default=0)))  # fmt: skip
    limit = float(np.nanmax(np.abs(rows["signal_rate"]))) if len(rows) else 1.0
    for i, norm in enumerate(norms):
        for j, skip in enumerate(skips):
            ax = axes[i, j]
            cells = rows[(rows["norm"] == norm) & (rows["skip"] == skip)]
            if cells.empty:
                no_data(ax)
                continue
            grid = (cells.pivot_table(index="activation", columns="init", values="signal_rate",
                                      aggfunc="mean", observed=True)
                    .reindex(index=acts, columns=inits))  # fmt: skip
            sns.heatmap(grid, ax=ax, cmap="RdBu_r", vmin=-limit, vmax=limit, cbar=False,
                        annot=grid.map(_annotation), fmt="", annot_kws={"fontsize": 5.5},
                        xticklabels=[INIT_LABELS[k] for k in inits],
                        yticklabels=[label("activation", a) for a in acts])  # fmt: skip
            ax.set(xlabel="", ylabel="")
            ax.tick_params(length=0)
            ax.tick_params(axis="x", labelrotation=90)
    facet_labels(axes, [label("norm", n) for n in norms], [label("skip", s) for s in skips])
    if len(rows):
        colours = ScalarMappable(Normalize(-limit, limit), cmap="RdBu_r")  # the panels' one scale
        fig.colorbar(colours, ax=axes, location="bottom", shrink=0.45, aspect=40, pad=0.02,
                     label="per-layer log10 gradient ratio (decades/layer)")  # fmt: skip
    return fig


# ---------------------------------------------------------------------- trainable depth


def trainable_rows(trainable: pd.DataFrame) -> pd.DataFrame:
    rows = trainable[(trainable["norm"] == "none") & (trainable["skip"] == "none")]
    order = {name: k for k, name in enumerate((*LEVELS["activation"], *LEVELS["init"]))}
    key = rows["activation"].astype(str).map(order) * 100 + rows["init"].astype(str).map(order)
    return rows.assign(_order=key).sort_values("_order").drop(columns="_order")


def trainable_depth(trainable: pd.DataFrame) -> Figure:
    """Plain nets: the first depth of the train sweep that fails to train, beside 6 xi_c,
    mean field's trainable depth (Schoenholz et al.); "> max" where none fails in the grid,
    "edge of chaos" where xi_c is infinite, "undefined" where the variance map has no
    fixed point."""
    rows = trainable_rows(trainable)
    fig, ax = plt.subplots(figsize=(COLUMN, 0.9 + 0.17 * max(len(rows), 3)))
    if rows.empty:
        no_data(ax)
        return fig
    depths = [int(d) for text in rows["depths"] for d in str(text).split(",") if d]
    top = max(depths)
    right = 40 * top  # room at the right for the texts
    ax.axvspan(min(depths), top, color="#EEEEEE", lw=0)
    for k, row in enumerate(rows.itertuples()):
        color = ACTIVATION_COLORS[str(row.activation)]
        fails = row.fails_at
        if pd.isna(fails):
            ax.plot(top, k, ">", color=color, ms=5)
            ax.text(top * 1.15, k, f"> {top}", va="center", fontsize=6)
        else:
            ax.plot(int(fails), k, "o", color=color, ms=5)
        xi = float(row.six_xi_c)
        if np.isfinite(xi):
            ax.plot(xi, k, "D", mfc="none", mec="black", ms=4, mew=0.7)
        else:
            note = "edge of chaos" if np.isinf(xi) else r"$\xi_c$ undefined"
            ax.text(right / 1.1, k, note, va="center", ha="right", fontsize=6, color="#444444")
    ax.set_xscale("log", base=2)
    ax.set_xlim(1, right)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    names = [f"{label('activation', a)}, {label('init', i)}"
             for a, i in zip(rows["activation"], rows["init"], strict=True)]  # fmt: skip
    ax.set_yticks(range(len(rows)), names)
    ax.set_ylim(len(rows) - 0.5, -0.5)
    ax.set_xlabel("depth (hidden blocks)")
    handles = [Line2D([], [], ls="", marker="o", color="#555555", label="first depth that fails"),
               Line2D([], [], ls="", marker="D", mfc="none", mec="black",
                      label=r"6$\xi_c$ (mean field)"),
               Patch(color="#EEEEEE", label="depths trained")]  # fmt: skip
    fig.legend(handles=handles, loc="outside upper center", ncol=3)
    return fig
