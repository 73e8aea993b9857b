"""The figures of the regularize and curriculum sweeps (C15-C18, C16): the generalization
gap over dropout x norm x skip, and the learning curves of each order of examples.
``study.report.figures`` runs them; each has a ``*_rows`` function selecting what it draws from,
and both draw each configuration at its chosen learning rate only.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from study.analysis import stats
from study.engine.curriculum import SCHEDULES
from study.report import style
from study.report.style import FULL, SKIP_COLORS, label, no_data

# Norm as the marker and line style, skip as the colour: four combinations on one panel.
NORM_STYLES: dict[str, tuple[str, object]] = {"none": ("o", "-"), "batch": ("s", (0, (3, 1.5))),
                                              "layer": ("^", ":")}  # fmt: skip
STEP_LABEL = "training step"


def _interval(values: pd.Series) -> tuple[float, float, float]:
    e = stats.t_interval(values.dropna().to_numpy(dtype=float))
    return e.estimate, e.low, e.high


# ------------------------------------------------------------------ generalization gap


def gap_rows(runs: pd.DataFrame) -> pd.DataFrame:
    return runs[(runs["sweep"] == "regularize") & (runs["status"] != "failed")]


def _gap_table(rows: pd.DataFrame) -> pd.DataFrame:
    out, keys = [], ["depth", "norm", "skip", "dropout"]
    for key, group in rows.groupby(keys, observed=True, sort=True):
        done = group[group["status"] == "finished"]
        gap = done["train_split_accuracy"] - done["test_accuracy"]
        entry = dict(zip(keys, key, strict=True))
        for name, values in (("gap", gap), ("test", done["test_accuracy"])):
            entry[name], entry[f"{name}_low"], entry[f"{name}_high"] = _interval(values)
        entry["diverged"] = float((group["status"] == "diverged").mean())
        out.append(entry)
    return pd.DataFrame(out)


def generalization_gap(runs: pd.DataFrame) -> Figure:
    """Per depth (columns): the generalization gap (training-split minus test accuracy,
    top) and the test accuracy (bottom) against the dropout rate, one line per norm x skip;
    mean over the finished seeds with its 95% t-interval. A hollow marker: some seeds
    diverged (their accuracy is not in the mean)."""
    rows = gap_rows(runs)
    depths = sorted(rows["depth"].unique()) if len(rows) else []
    fig, axes = plt.subplots(2, max(len(depths), 1), figsize=(FULL, 3.9), squeeze=False,
                             sharex=True, sharey="row")  # fmt: skip
    if not depths:
        for ax in axes.flat:
            no_data(ax)
        return fig
    table = _gap_table(rows)
    for j, depth in enumerate(depths):
        for (norm, skip), line in table[table["depth"] == depth].groupby(
            ["norm", "skip"], observed=True, sort=True
        ):
            marker, ls = NORM_STYLES[str(norm)]
            color = SKIP_COLORS[str(skip)]
            for i, what in enumerate(("gap", "test")):
                ax = axes[i, j]
                ax.plot(line["dropout"], line[what], color=color, ls=ls, lw=1.0)
                ax.fill_between(line["dropout"], line[f"{what}_low"], line[f"{what}_high"],
                                color=color, alpha=0.10, lw=0)  # fmt: skip
                hollow = line["diverged"] > 0
                ax.scatter(line["dropout"][~hollow], line[what][~hollow], marker=marker, s=14,
                           color=color, zorder=3)  # fmt: skip
                ax.scatter(line["dropout"][hollow], line[what][hollow], marker=marker, s=14,
                           facecolors="white", edgecolors=color, zorder=3)  # fmt: skip
        axes[0, j].set_title(f"depth {depth}")
        axes[0, j].axhline(0, color="#999999", lw=0.5)
        axes[1, j].set_xlabel("dropout rate")
        axes[1, j].set_xticks(sorted(rows["dropout"].unique()))
    axes[0, 0].set_ylabel("train − test accuracy")
    axes[1, 0].set_ylabel("test accuracy")
    handles = [Line2D([], [], color=SKIP_COLORS[s], label=label("skip", s))
               for s in style.present(rows, "skip")]  # fmt: skip
    handles += [
        Line2D(
            [],
            [],
            color="black",
            marker=NORM_STYLES[n][0],
            ls=NORM_STYLES[n][1],
            ms=4,
            label=label("norm", n),
        )
        for n in style.present(rows, "norm")
    ]
    handles.append(Line2D([], [], color="black", marker="o", ls="none", mfc="white",
                          label="some seeds diverged"))  # fmt: skip
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles))
    return fig


# --------------------------------------------------------------------- curriculum curves


def curriculum_rows(curves: pd.DataFrame) -> pd.DataFrame:
    return curves[curves["sweep"] == "curriculum"]


def curriculum_curves(curves: pd.DataFrame, runs: pd.DataFrame) -> Figure:
    """Validation accuracy along training for each order of examples (curriculum sweep),
    per norm x skip (columns) and depth (rows): mean over the seeds that finished, with
    its 95% t-interval; the dotted line marks where the pool holds every example."""
    rows = curriculum_rows(curves)
    meta = runs[(runs["sweep"] == "curriculum") & (runs["status"] == "finished")]
    rows = rows.merge(meta[["run_name", "depth", "norm", "skip", "curriculum", "steps"]],
                      on="run_name")  # fmt: skip
    depths = sorted(rows["depth"].unique()) if len(rows) else []
    have = set(zip(rows["norm"].astype(str), rows["skip"].astype(str), strict=True))
    combos = [(n, s) for n in style.present(rows, "norm") for s in style.present(rows, "skip")
              if (n, s) in have]  # fmt: skip
    fig, axes = plt.subplots(max(len(depths), 1), max(len(combos), 1), squeeze=False,
                             figsize=(FULL, 1.0 + 1.7 * max(len(depths), 1)),
                             sharex=True, sharey=True)  # fmt: skip
    if not depths:
        for ax in axes.flat:
            no_data(ax)
        return fig
    full_at = next(p.full_at for p in SCHEDULES.values() if p is not None)  # one pacing
    for i, depth in enumerate(depths):
        for j, (norm, skip) in enumerate(combos):
            ax = axes[i, j]
            panel = rows[(rows["depth"] == depth) & (rows["norm"].astype(str) == norm)
                         & (rows["skip"].astype(str) == skip)]  # fmt: skip
            if panel.empty:
                no_data(ax)
                continue
            for order in style.present(panel, "curriculum"):
                line = panel[panel["curriculum"].astype(str) == order]
                by_step = line.groupby("step")["val_accuracy"].apply(_interval)
                steps = by_step.index.to_numpy()
                mean, low, high = (np.array([v[k] for v in by_step]) for k in range(3))
                color = style.COLORS["curriculum"][order]
                ax.plot(steps, mean, color=color, lw=1.0)
                ax.fill_between(steps, low, high, color=color, alpha=0.12, lw=0)
            ax.axvline(full_at * panel["steps"].max(), color="#999999", lw=0.6, ls=":")
            ax.set_ylim(0, 1)
            if i == 0:
                ax.set_title(f"{label('norm', norm)}, {label('skip', skip)}")
            if j == 0:
                ax.set_ylabel(f"depth {depth}\nvalidation accuracy")
            if i == len(depths) - 1:
                ax.set_xlabel(STEP_LABEL)
    style.legend(fig, "curriculum", style.present(rows, "curriculum"))
    return fig
