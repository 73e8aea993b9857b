"""The figures drawn from the tidy tables (``results/tables/``): per-layer gradient profiles
at initialization and along training, dead and saturated units, and accuracy against
depth. ``study.report.figures`` runs them with the figures drawn from the analysis.

Each figure has a ``*_rows`` function that selects what it draws from, so the stage can
count the runs behind it with the same selection.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from study.analysis import stats
from study.config import Activation, Init
from study.report import style
from study.report.style import ACTIVATION_COLORS, FULL, INIT_LINESTYLES, label, no_data

# The init each activation was derived for: Glorot for the saturating ones, He for the
# rectifiers (and GELU, close to one), LeCun for SELU (Klambauer et al.).
MATCHED_INIT: dict[str, str] = {
    Activation.sigmoid: Init.xavier_normal,
    Activation.tanh: Init.xavier_normal,
    Activation.relu: Init.kaiming_normal,
    Activation.leaky_relu: Init.kaiming_normal,
    Activation.prelu: Init.kaiming_normal,
    Activation.elu: Init.kaiming_normal,
    Activation.gelu: Init.kaiming_normal,
    Activation.selu: Init.lecun_normal,
}
DYNAMICS_DEPTH = 32
DYNAMICS = (  # (title, activation, init, norm, skip): contrasting ways to train a deep net
    ("plain ReLU, He", "relu", "kaiming_normal", "none", "none"),
    ("plain ReLU, Xavier", "relu", "xavier_normal", "none", "none"),
    ("plain tanh, Xavier", "tanh", "xavier_normal", "none", "none"),
    ("batch norm, ReLU, He", "relu", "kaiming_normal", "batch", "none"),
    ("residual + layer norm, ReLU, He", "relu", "kaiming_normal", "layer", "residual"),
)
LAYER_LABEL = "layer (1 = input side)"
DEPTH_LABEL = "depth (hidden blocks)"


def deepest(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[frame["depth"] == frame["depth"].max()] if len(frame) else frame


def geomean(frame: pd.DataFrame, keys: list[str], value: str) -> pd.DataFrame:
    """Mean over seeds of log10 of a norm (zeros, i.e. underflow, left out), back in units:
    the seeds of a deep net differ by decades, which an arithmetic mean would hide."""
    logs = np.log10(frame[value].where(frame[value] > 0))
    means = frame.assign(_log=logs).groupby(keys, observed=True, sort=True)["_log"].mean()
    return (10**means).rename(value).reset_index()


def _init_handles(frame: pd.DataFrame) -> list[Line2D]:
    return [Line2D([], [], color="black", ls=INIT_LINESTYLES[k], label=label("init", k))
            for k in style.present(frame, "init")]  # fmt: skip


def _facets(frame: pd.DataFrame) -> tuple[list[str], list[str]]:
    return style.present(frame, "norm") or [""], style.present(frame, "skip") or [""]


# ------------------------------------------------------------------- per-layer profiles


def profile_rows(layers: pd.DataFrame) -> pd.DataFrame:
    rows = layers[(layers["sweep"] == "init") & (layers["status"] != "failed")
                  & (layers["step"] == 0)]  # fmt: skip
    rows = deepest(rows)
    return rows[rows["init"].astype(str) == rows["activation"].astype(str).map(MATCHED_INIT)]


def profiles_init(layers: pd.DataFrame) -> Figure:
    """Per-layer gradient norms at initialization (init sweep, its deepest depth), each
    activation with its matched init (``MATCHED_INIT``), geometric mean over seeds; solid:
    signal gradient dL/dz_l, dashed: weight gradient dL/dW_l."""
    rows = profile_rows(layers)
    norms, skips = _facets(rows)
    fig, axes = plt.subplots(len(norms), len(skips), figsize=(FULL, 1.0 + 1.55 * len(norms)),
                             sharex=True, sharey="row", squeeze=False)  # fmt: skip
    keys = ["norm", "skip", "activation", "layer"]
    lines = (("signal_grad_norm", "-"), ("weight_grad_norm", "--"))
    tables = {column: geomean(rows, keys, column) for column, _ in lines}
    for i, norm in enumerate(norms):
        for j, skip in enumerate(skips):
            ax = axes[i, j]
            for column, ls in lines:
                table = tables[column]
                panel = table[(table["norm"] == norm) & (table["skip"] == skip)]
                for act in style.present(panel, "activation"):
                    one = panel[panel["activation"] == act]
                    ax.plot(one["layer"], one[column], color=ACTIVATION_COLORS[act], ls=ls)
            if not ax.lines:
                no_data(ax)
                continue
            ax.set_yscale("log")
        axes[i, 0].set_ylabel("gradient norm")
    for ax in axes[-1]:
        ax.set_xlabel(LAYER_LABEL)
    style.facet_labels(axes, [label("norm", n) for n in norms], [label("skip", s) for s in skips])
    kinds = [Line2D([], [], color="black", ls="-", label="signal ‖∂L/∂z‖"),
             Line2D([], [], color="black", ls="--", label="weight ‖∂L/∂W‖")]  # fmt: skip
    style.legend(fig, "activation", style.present(rows, "activation"), kinds, ncol=5)
    return fig


# -------------------------------------------------------------------------- trainability


def train_rows(runs: pd.DataFrame) -> pd.DataFrame:
    return runs[(runs["sweep"] == "train") & (runs["status"] != "failed")]


def _by_depth(rows: pd.DataFrame) -> pd.DataFrame:
    out, keys = [], ["norm", "skip", "activation", "init", "depth"]
    for key, group in rows.groupby(keys, observed=True, sort=True):
        finished = group.loc[group["status"] == "finished", "test_accuracy"]
        interval = stats.t_interval(finished.to_numpy(dtype=float))
        out.append({**dict(zip(keys, key, strict=True)), "accuracy": interval.estimate,
                    "low": interval.low, "high": interval.high,
                    "diverged": float((group["status"] == "diverged").mean())})  # fmt: skip
    return pd.DataFrame(out, columns=[*keys, "accuracy", "low", "high", "diverged"])


def trainability(runs: pd.DataFrame) -> Figure:
    """Test accuracy against depth (train sweep): mean over the finished seeds with its 95%
    t-interval; the strip beneath each panel is the fraction of seeds that diverged (drawn
    only for the configurations where some did)."""
    rows = train_rows(runs)
    table = _by_depth(rows)
    norms, skips = _facets(rows)
    fig = plt.figure(figsize=(FULL, 1.0 + 1.9 * len(norms)))
    grid = fig.add_gridspec(2 * len(norms), len(skips), height_ratios=[3, 1] * len(norms))
    axes = np.empty((len(norms), len(skips)), dtype=object)
    for i, norm in enumerate(norms):
        for j, skip in enumerate(skips):
            ax = axes[i, j] = fig.add_subplot(grid[2 * i, j])
            strip = fig.add_subplot(grid[2 * i + 1, j], sharex=ax)
            panel = table[(table["norm"] == norm) & (table["skip"] == skip)]
            if panel.empty:
                no_data(ax)
                strip.set_visible(False)
                continue
            for (act, init), line in panel.groupby(["activation", "init"], observed=True):
                kw = {"color": ACTIVATION_COLORS[act], "ls": INIT_LINESTYLES[init]}
                ax.plot(line["depth"], line["accuracy"], marker=".", ms=3, **kw)
                ax.fill_between(line["depth"], line["low"], line["high"], color=kw["color"],
                                alpha=0.12, lw=0)  # fmt: skip
                if (line["diverged"] > 0).any():
                    strip.plot(line["depth"], line["diverged"], marker=".", ms=3, **kw)
            if not strip.lines:
                strip.text(0.5, 0.5, "none diverged", transform=strip.transAxes, ha="center",
                           va="center", fontsize=6, color="#666666")  # fmt: skip
            ax.set_ylim(0, 1)
            strip.set(ylim=(-0.08, 1.08), yticks=[0, 1], xticks=sorted(panel["depth"].unique()))
            ax.tick_params(labelbottom=False)
            if j == 0:
                ax.set_ylabel("test accuracy")
                strip.set_ylabel("diverged", fontsize=6.5)
            else:
                ax.tick_params(labelleft=False)
                strip.tick_params(labelleft=False)
            if i == len(norms) - 1:
                strip.set_xlabel(DEPTH_LABEL)
    style.facet_labels(axes, [label("norm", n) for n in norms], [label("skip", s) for s in skips])
    style.legend(fig, "activation", style.present(rows, "activation"), _init_handles(rows))
    return fig


# ------------------------------------------------------------------------------ dynamics


def dynamics_rows(layers: pd.DataFrame) -> pd.DataFrame:
    rows = layers[(layers["sweep"] == "train") & (layers["status"] == "finished")]
    depth = DYNAMICS_DEPTH if (rows["depth"] == DYNAMICS_DEPTH).any() else rows["depth"].max()
    rows = rows[rows["depth"] == depth]
    keep = np.zeros(len(rows), dtype=bool)
    for _, act, init, norm, skip in DYNAMICS:
        keep |= ((rows["activation"] == act) & (rows["init"] == init) & (rows["norm"] == norm)
                 & (rows["skip"] == skip)).to_numpy()  # fmt: skip
    return rows[keep]


def dynamics(layers: pd.DataFrame) -> Figure:
    """Signal-gradient profiles at each probe step along training (train sweep, finished
    runs, depth 32 or the deepest the profile has), geometric mean over seeds, for five
    contrasting configurations (``DYNAMICS``)."""
    rows = dynamics_rows(layers)
    table = geomean(rows, ["activation", "init", "norm", "skip", "step", "layer"],
                    "signal_grad_norm")  # fmt: skip
    steps = sorted(table["step"].unique())
    colors = dict(zip(steps, plt.get_cmap("viridis")(np.linspace(0, 0.85, len(steps))),
                      strict=True))  # fmt: skip
    fig, axes = plt.subplots(2, 3, figsize=(FULL, 4.0), squeeze=False)
    for ax, (title, act, init, norm, skip) in zip(axes.flat, DYNAMICS, strict=False):
        ax.set_title(title)
        one = table[(table["activation"] == act) & (table["init"] == init)
                    & (table["norm"] == norm) & (table["skip"] == skip)]  # fmt: skip
        if one.empty:
            no_data(ax)
            continue
        for step, line in one.groupby("step", sort=True):
            ax.plot(line["layer"], line["signal_grad_norm"], color=colors[step])
        ax.set(yscale="log", xlabel=LAYER_LABEL)
    for ax in axes[:, 0]:
        ax.set_ylabel("signal gradient norm ‖∂L/∂z‖")
    key = axes.flat[-1]
    key.axis("off")
    handles = [Line2D([], [], color=colors[s], label=f"{s}") for s in steps]
    if handles:
        title = f"depth {int(rows['depth'].iloc[0])}:\nprobe after this\nmany updates"
        key.legend(handles=handles, title=title, loc="center")
    return fig


# ------------------------------------------------------------------ dead and saturated


def dead_rows(layers: pd.DataFrame) -> pd.DataFrame:
    rows = layers[(layers["sweep"] == "train") & (layers["status"] == "finished")
                  & (layers["norm"] == "none") & (layers["skip"] == "none")]  # fmt: skip
    rows = deepest(rows)
    last = rows.groupby("run_name", observed=True)["step"].transform("max")
    rows = rows[(rows["step"] == 0) | (rows["step"] == last)]
    return rows.assign(when=np.where(rows["step"] == 0, "init", "last"))


def dead_saturated(layers: pd.DataFrame) -> Figure:
    """Plain nets of the train sweep at its deepest depth, finished runs, mean over seeds:
    dead units (ReLU family) and saturated units (sigmoid, tanh) per layer, at step 0 and
    at the last probe."""
    rows = dead_rows(layers)
    fig, axes = plt.subplots(2, 2, figsize=(FULL, 3.6), sharex=True, sharey="row")
    measures = (("dead_fraction", "dead"), ("saturated_fraction", "saturated"))
    for i, (column, name) in enumerate(measures):
        top = 0.0  # one y range per row, from both panels (a shared axis keeps the first's)
        for j, when in enumerate(("init", "last")):
            ax = axes[i, j]
            panel = rows[(rows["when"] == when) & rows[column].notna()]
            if panel.empty:
                no_data(ax)
                continue
            means = panel.groupby(["activation", "init", "layer"], observed=True)[column].mean()
            top = max(top, float(means.max()))
            for (act, init), line in means.reset_index().groupby(["activation", "init"],
                                                                  observed=True):  # fmt: skip
                ax.plot(line["layer"], line[column], color=ACTIVATION_COLORS[act],
                        ls=INIT_LINESTYLES[init])  # fmt: skip
        axes[i, 0].set_ylim(0, 1.05 * top or 1)
        axes[i, 0].set_ylabel(f"fraction of units {name}")
    for ax in axes[-1]:
        ax.set_xlabel(LAYER_LABEL)
    when = ["at initialization", "at the last probe"]
    if len(rows):
        when = [f"depth {int(rows['depth'].max())}, {when[0]}",
                f"after {int(rows['step'].max())} updates"]  # fmt: skip
    style.facet_labels(axes, ["ReLU family", "sigmoid, tanh"], when)
    style.legend(fig, "activation", style.present(rows, "activation"), _init_handles(rows))
    return fig
