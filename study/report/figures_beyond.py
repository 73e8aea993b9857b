"""The figures of "Beyond the articles" (``paper/beyond.tex``), each measurement drawn
against its theory: the sigma_w^2 x depth phase diagram under the 6 xi_c curve, the
finite-width excess of the per-layer rate, scaled residual branches, and the Jacobian
spectrum's variance with depth.

Each figure reads one table of ``study.analysis.beyond`` (results/analysis/beyond_*.parquet);
``render`` writes them and ``beyond.json``, the rows each drew (figures.json lists the rest).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from study.analysis import beyond
from study.records import write_json
from study.report import style

THEORY = "#333333"  # every theory curve, so that measured series keep the factor colours


def _six_xi_curve(activation: str, sigma_b2: float, low: float, high: float) -> tuple:
    """6 xi_c on a fine sigma_w^2 grid: the curve Schoenholz et al. put over the diagram."""
    grid = np.linspace(low, high, 25)  # each chaotic-side point costs up to seconds
    return grid, np.array([6 * beyond._xi(activation, float(w), sigma_b2) for w in grid])


def phase_diagram(cells: pd.DataFrame) -> Figure:
    """Per activation: the mean test accuracy of each (sigma_w^2, depth) cell, filled where it
    trains by the declared criterion, with 6 xi_c over it."""
    activations = style.present(cells, "activation") or ["tanh"]
    fig, axes = plt.subplots(1, len(activations), figsize=(style.FULL, 2.9), squeeze=False)
    for ax, activation in zip(axes[0], activations, strict=True):
        part = cells[cells["activation"].astype(str) == activation]
        if part.empty:
            style.no_data(ax)
            continue
        trained = part["trained"].astype(bool)
        points = ax.scatter(part["sigma_w2"], part["depth"], c=part["test_accuracy"],
                            cmap="viridis", vmin=0.1, vmax=max(0.5, part["test_accuracy"].max()),
                            marker="s", s=90, edgecolors=np.where(trained, "black", "none"),
                            linewidths=0.8, label="cells")  # fmt: skip
        ax.scatter(part.loc[~trained, "sigma_w2"], part.loc[~trained, "depth"], marker="x",
                   color="white", s=14, linewidths=0.8, label="fails")  # fmt: skip
        low, high = float(part["sigma_w2"].min()), float(part["sigma_w2"].max())
        w, six = _six_xi_curve(activation, float(part["sigma_b2"].iloc[0]), low, high)
        ax.plot(w, np.where(np.isfinite(six), six, np.nan), color=THEORY, lw=1.2,
                label=r"$6\xi_c$ (mean field)")  # fmt: skip
        ax.set_yscale("log", base=2)
        ax.set_ylim(part["depth"].min() / 1.5, part["depth"].max() * 1.5)
        ax.set_xlabel(r"$\sigma_w^2$")
        ax.set_ylabel("depth $L$")
        ax.set_title(f"{activation}, $\\sigma_b^2$ = {part['sigma_b2'].iloc[0]:g}")
        fig.colorbar(points, ax=ax, label="test accuracy", shrink=0.9)
    fig.legend(handles=[
        Line2D([], [], marker="s", ls="", mfc="#7FCDBB", mec="black", ms=6, label="trains"),
        Line2D([], [], marker="x", ls="", color="#555555", ms=5, label="fails"),
        Line2D([], [], color=THEORY, lw=1.2, label=r"$6\xi_c$ (mean field)"),
    ], loc="outside lower center", ncol=3)  # fmt: skip
    return fig


def width_figure(width: pd.DataFrame) -> Figure:
    """Measured minus mean-field rate (decades per layer) against depth / width, per
    configuration, with its fitted line; mean field (infinite width) is the zero line."""
    fig, ax = plt.subplots(figsize=(style.COLUMN, 2.4))
    if width.empty:
        style.no_data(ax)
        return fig
    markers = {"none": "o", "residual": "s"}
    for (a, init, skip), part in width.groupby(["activation", "init", "skip"], observed=True):
        color = style.COLORS["activation"][str(a)]
        name = f"{'res. ' if skip == 'residual' else ''}{a}, {style.label('init', init)}"
        ax.errorbar(part["depth_over_width"], part["excess"],
                    yerr=[part["excess"] - (part["low"] - part["theory_rate"]),
                          (part["high"] - part["theory_rate"]) - part["excess"]],
                    fmt=markers.get(str(skip), "o"), color=color, label=name, ms=3.5,
                    mfc="white" if skip == "residual" else color, lw=0.8)  # fmt: skip
        x = np.sort(part["depth_over_width"].unique())
        ax.plot(x, part["slope"].iloc[0] * x + part["intercept"].iloc[0], color=color, lw=0.8,
                ls="--")  # fmt: skip
    ax.axhline(0.0, color=THEORY, lw=1.0, label="mean field")
    ax.set_xscale("log")
    ax.set_xlabel("depth / width")
    ax.set_ylabel("measured $-$ mean-field rate\n(decades per layer)")
    ax.legend(fontsize=6)
    return fig


def residual_figure(residual: pd.DataFrame) -> Figure:
    """Measured per-block growth of the squared gradient against mean field's, per branch
    scaling; the diagonal is agreement."""
    fig, ax = plt.subplots(figsize=(style.COLUMN, 2.6))
    if residual.empty:
        style.no_data(ax)
        return fig
    colors = {"constant": "#D55E00", "sqrt_depth": "#0072B2", "rezero": "#009E73"}
    for scaling, part in residual.groupby("residual_scaling", observed=True):
        if part.empty:
            continue
        ax.scatter(part["theory_growth"], part["growth"], s=10, color=colors.get(str(scaling)),
                   label={"constant": "$x + f(x)$", "sqrt_depth": r"$x + f(x)/\sqrt{L}$"}.get(
                       str(scaling), str(scaling)))  # fmt: skip
    low = float(np.nanmin(residual[["growth", "theory_growth"]].to_numpy())) * 0.95
    high = float(np.nanmax(residual[["growth", "theory_growth"]].to_numpy())) * 1.05
    ax.plot([low, high], [low, high], color=THEORY, lw=1.0, label=r"theory ($1 + s^2\chi$ stream)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("mean-field growth per block")
    ax.set_ylabel("measured growth per block")
    ax.legend(fontsize=6)
    return fig


def jacobian_figure(jacobian: pd.DataFrame) -> Figure:
    """The variance of the eigenvalues of J J^T against depth per configuration (points with
    the seeds' interval), and free probability's prediction at the same depths (dashed: the
    table's ``theory_var``, averaged over the inputs as the probe is)."""
    fig, ax = plt.subplots(figsize=(style.COLUMN, 2.6))
    if jacobian.empty:
        style.no_data(ax)
        return fig
    keys = ["activation", "init", "sigma_w2", "sigma_b2", "width"]
    for key, part in jacobian.groupby(keys, observed=True):
        a, init, w, _, _ = key
        part = part.sort_values("depth")
        color = style.COLORS["init"][str(init)] if a == "relu" else style.COLORS["activation"][a]
        name = f"{a}, {'orth.' if 'orthogonal' in str(init) else 'Gauss.'}, $\\sigma_w^2$={w:g}"
        ax.errorbar(part["depth"], part["eig_var"],
                    yerr=[part["eig_var"] - part["eig_var_low"].fillna(part["eig_var"]),
                          part["eig_var_high"].fillna(part["eig_var"]) - part["eig_var"]],
                    fmt="o", color=color, ms=3.5, lw=0.8, label=name)  # fmt: skip
        ax.plot(part["depth"], part["theory_var"], color=color, lw=0.9, ls="--")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("depth $L$")
    ax.set_ylabel("variance of the eigenvalues of $JJ^T$")
    handles, labels = ax.get_legend_handles_labels()
    handles.append(Line2D([], [], color=THEORY, ls="--", label="free probability"))
    ax.legend(handles=handles, fontsize=6)
    return fig


FIGURES = {  # stem -> (table, draw, description)
    "beyond_phase": ("phase_cells", phase_diagram, "The sigma_w^2 x depth phase diagram."),
    "beyond_width": ("width", width_figure, "Finite-width excess of the per-layer rate."),
    "beyond_residual": ("residual_scale", residual_figure, "Scaled residual branches."),
    "beyond_jacobian": ("jacobian", jacobian_figure, "Variance of the Jacobian spectrum."),
}


def render(analysis: Path, out: Path) -> dict[str, dict]:
    """Every figure of ``FIGURES`` into ``out``, and ``beyond.json`` listing them (the rows
    each drew); a missing table draws an empty panel."""
    style.use()
    listing = {}
    for stem, (name, draw, description) in FIGURES.items():
        path = Path(analysis) / f"beyond_{name}.parquet"
        frame = pd.read_parquet(path) if path.is_file() else pd.DataFrame()
        paths = style.save(draw(frame), out, stem)
        listing[stem] = {"description": description, "n": int(len(frame)),
                         "files": [p.name for p in paths]}  # fmt: skip
    write_json(Path(out) / "beyond.json", listing)
    return listing
