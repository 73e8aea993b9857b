"""The claims' forest plot: every target row on the scale of its own outcome, one facet per
outcome (unit), each row's margin drawn. ``study.report.figures`` runs it.

A row is drawn as d = direction * (effect - null), in the outcome's unit: the claim's side
is always to the right of 0. Each row carries its margin: a shaded band over (-margin,
+margin) for superiority and level rows (an interval inside it is "no effect of the
claimed size"), and a dashed bound at -margin for non-inferiority rows (an interval right
of it is "no worse"). A fragile verdict (it changes when one seed is left out) is marked †.
"""

from __future__ import annotations

import re

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle

from study.report.style import (
    ACTIVATION_LABELS,
    FULL,
    INIT_LABELS,
    VERDICT_COLORS,
    label,
    no_data,
    present,
)

MARGIN_BAND = "margin band"  # gid of a superiority/level row's (-margin, +margin) band
NI_BOUND = "non-inferiority bound"  # gid of a non-inferiority row's bound at -margin
FRAGILE = "†"


def _claim_number(claim: str) -> int:
    digits = re.sub(r"\D", "", str(claim))
    return int(digits) if digits else 0


def shorten(stratum: str) -> str:
    """A stratum as a row label: "norm=none, skip=none, family=relu" -> "plain, ReLU family"."""
    text = str(stratum).replace("norm=none, skip=none", "plain")
    text = re.sub(r"family=(\w+)", r"\1 family", text)
    for key in ("activation in ", "activation=", "init="):
        text = text.replace(key, "")
    text = re.sub(r"init_quality=(\w+)", r"\1 initialized", text).replace(">=", " ≥ ")
    names = {**ACTIVATION_LABELS, **INIT_LABELS}
    return re.sub(r"\b[a-z_]+\b", lambda m: names.get(m.group(0), m.group(0)), text) or "all"


def forest_rows(claims: pd.DataFrame) -> pd.DataFrame:
    """The target rows, by claim number, with ``d``, ``d_low``, ``d_high`` in the claim's
    direction and the facet (``outcome``: the row's unit)."""
    rows = claims[claims["carries_verdict"].fillna(False).astype(bool)]
    rows = rows.assign(_n=rows["claim"].map(_claim_number)).sort_values("_n", kind="stable")
    sign = np.where(rows["direction"].astype(float) < 0, -1.0, 1.0)
    ends = np.sort(np.stack([sign * (rows["effect_low"] - rows["null"]),
                             sign * (rows["effect_high"] - rows["null"])]), axis=0)  # fmt: skip
    return rows.assign(d=sign * (rows["effect"] - rows["null"]), d_low=ends[0], d_high=ends[1],
                       outcome=rows["unit"].fillna("").replace("", "no unit"))  # fmt: skip


def _tested(row) -> bool:
    bounds = np.array([row.d, row.d_low, row.d_high], dtype=float)
    return row.verdict != "not tested" and bool(np.isfinite(bounds).all())


def _name(row) -> str:
    text = f"{row.part}: {shorten(row.stratum)}" if row.stratum else str(row.part)
    return text + (f" {FRAGILE}" if bool(getattr(row, "fragile", False)) else "")


def _facet(ax, rows: pd.DataFrame, outcome: str) -> None:
    """One outcome's rows on its own scale, with each row's margin."""
    ax.axvline(0, color="#999999", lw=0.6, zorder=0)
    reach = [1e-12]
    for k, row in enumerate(rows.itertuples()):
        margin = float(row.margin) if np.isfinite(row.margin) else np.nan
        if np.isfinite(margin):
            reach.append(1.3 * margin)
            if row.form == "non-inferiority":
                ax.add_line(Line2D([-margin, -margin], [k - 0.42, k + 0.42], color="#444444",
                                   ls=(0, (2, 1.5)), lw=0.8, gid=NI_BOUND))  # fmt: skip
            else:
                ax.add_patch(Rectangle((-margin, k - 0.42), 2 * margin, 0.84, color="#E4E4E4",
                                       lw=0, zorder=0, gid=MARGIN_BAND))  # fmt: skip
        if not _tested(row):
            ax.text(0, k, "not tested", ha="center", va="center", fontsize=6.5,
                    color="#666666", style="italic")  # fmt: skip
            continue
        color = VERDICT_COLORS.get(row.verdict, VERDICT_COLORS["not tested"])
        ax.plot([row.d_low, row.d_high], [k, k], color=color, lw=1.4, solid_capstyle="butt",
                gid="interval")  # fmt: skip
        ax.plot(row.d, k, "o", color=color, ms=3.5, gid="estimate")
        reach += [abs(row.d_low), abs(row.d_high)]
    ax.set_yticks(range(len(rows)), [_name(r) for r in rows.itertuples()])
    ax.tick_params(axis="y", labelsize=6.5, length=0)
    ax.set_ylim(len(rows) - 0.5, -0.5)
    limit = 1.05 * max(reach)
    ax.set_xlim(-limit, limit)
    ax.set_title(outcome, loc="left")


def claims_forest(claims: pd.DataFrame) -> Figure:
    """Every target row of every claim, one facet per outcome (see the module's docstring)."""
    targets = forest_rows(claims)
    facets = list(dict.fromkeys(targets["outcome"]))
    fig = plt.figure(figsize=(FULL, 1.2 + 0.17 * max(len(targets), 3) + 0.3 * len(facets)))
    if targets.empty:
        no_data(fig.add_subplot())
        return fig
    heights = [max((targets["outcome"] == f).sum(), 1) + 1.2 for f in facets]
    axes = fig.subplots(len(facets), 1, squeeze=False, gridspec_kw={"height_ratios": heights})
    for ax, outcome in zip(axes[:, 0], facets, strict=True):
        _facet(ax, targets[targets["outcome"] == outcome], outcome)
    axes[-1, 0].set_xlabel("effect in the claim's direction, in the outcome's unit "
                           "(the claim's side: right of 0)")  # fmt: skip
    handles = [Line2D([], [], ls="", marker="o", color=VERDICT_COLORS[v],
                      label=label("verdict", v))
               for v in present(targets, "verdict") if v != "not tested"]  # fmt: skip
    handles += [Patch(color="#E4E4E4", label="±margin"),
                Line2D([], [], color="#444444", ls=(0, (2, 1.5)), label="non-inferiority bound"),
                Line2D([], [], ls="", label=f"{FRAGILE} fragile (one seed out)")]  # fmt: skip
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 4))
    return fig
