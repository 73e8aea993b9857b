"""The figures of "Beyond the articles" draw what they say: each measured series and its
theory curve on the named axes, an empty panel without data, and every file listed."""

from __future__ import annotations

import json

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from study.analysis import beyond, isometry  # noqa: E402
from study.config import ModelConfig  # noqa: E402
from study.report import figures_beyond as fb  # noqa: E402
from study.report import style  # noqa: E402


@pytest.fixture(autouse=True)
def _style():
    style.use()


def phase_cells() -> pd.DataFrame:
    # 6 xi_c rises from 22 to 95 over the ordered side: cells fail above it.
    rows = [{"sweep": "phase", "activation": "tanh", "sigma_w2": w, "sigma_b2": 0.05,
             "depth": d, "seed": 0, "status": "finished",
             "test_accuracy": 0.5 if d < 6 * beyond._xi("tanh", w, 0.05) else 0.1}
            for w in (1.0, 1.25, 1.5) for d in (8, 16, 32, 64)]  # fmt: skip
    return beyond.phase_cells(pd.DataFrame(rows))


def test_phase_diagram_has_the_cells_and_the_six_xi_curve():
    cells = phase_cells()
    fig = fb.phase_diagram(cells)
    ax = fig.axes[0]
    assert ax.get_xlabel() == r"$\sigma_w^2$" and ax.get_ylabel() == "depth $L$"
    [curve] = [line for line in ax.get_lines() if "xi_c" in line.get_label()]
    x, y = curve.get_data()
    assert x.min() == 1.0 and x.max() == 1.5  # the ordered side: fast to compute
    assert y[0] == pytest.approx(6 * beyond._xi("tanh", 1.0, 0.05))
    # One square per cell, a cross per failing cell.
    squares, crosses = ax.collections[:2]
    assert len(squares.get_offsets()) == 12
    assert len(crosses.get_offsets()) == int((~cells["trained"]).sum()) > 0
    assert any(a.get_ylabel() == "test accuracy" for a in fig.axes)  # the colour bar


def test_width_figure_draws_each_configuration_and_mean_field():
    rows = [{"activation": "relu", "init": "kaiming_normal", "skip": skip, "depth": d,
             "width": w, "depth_over_width": d / w, "excess": 0.1 * d / w,
             "low": 0.1 * d / w - 0.01, "high": 0.1 * d / w + 0.01, "theory_rate": 0.0,
             "slope": 0.1, "intercept": 0.0}
            for skip in ("none", "residual") for d in (16, 64) for w in (32, 512)]  # fmt: skip
    fig = fb.width_figure(pd.DataFrame(rows))
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert len(labels) == 3 and "mean field" in labels
    assert sum(label.startswith("res. relu") for label in labels) == 1
    assert ax.get_xlabel() == "depth / width" and ax.get_xscale() == "log"
    fits = [line for line in ax.get_lines() if line.get_linestyle() == "--"]
    assert len(fits) == 2


def test_jacobian_figure_has_points_and_theory_per_configuration():
    def theory(init: str, depth: int) -> float:
        model = ModelConfig(depth=depth, width=256, activation="relu", init=init,
                            sigma_w2=2.0, sigma_b2=0.0)  # fmt: skip
        return isometry.predict(model, 40)[1]

    # The points 1.5 times theory: the dashed lines must be the table's theory, not them.
    rows = [{"activation": "relu", "init": init, "sigma_w2": 2.0, "sigma_b2": 0.0, "depth": d,
             "width": 256, "eig_var": 1.5 * theory(init, d), "eig_var_low": np.nan,
             "eig_var_high": np.nan, "theory_var": theory(init, d)}
            for init in ("gaussian", "scaled_orthogonal") for d in (32, 2, 8)]  # fmt: skip
    ax = fb.jacobian_figure(pd.DataFrame(rows)).axes[0]
    theory_lines = [line for line in ax.get_lines() if line.get_linestyle() == "--"]
    assert len(theory_lines) == 2
    # ReLU at chi = 1: 2L with Gaussian weights, L with orthogonal ones.
    slopes = sorted(np.polyfit(*line.get_data(), 1)[0] for line in theory_lines)
    assert slopes == pytest.approx([1.0, 2.0], rel=0.05)
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "free probability" in labels and len(labels) == 3


def test_residual_figure_and_an_empty_table(tmp_path):
    rows = pd.DataFrame({"residual_scaling": ["constant", "sqrt_depth"],
                         "growth": [2.0, 1.1], "theory_growth": [2.1, 1.1]})  # fmt: skip
    ax = fb.residual_figure(rows).axes[0]
    assert len(ax.collections) == 2 and len(ax.get_lines()) == 1  # two series, the diagonal
    empty = fb.residual_figure(pd.DataFrame()).axes[0]
    assert "no data" in empty.texts[0].get_text()
    beyond_tables = {"phase_cells": phase_cells()}
    for name, frame in beyond_tables.items():
        frame.to_parquet(tmp_path / f"beyond_{name}.parquet")
    listing = fb.render(tmp_path, tmp_path)
    assert json.loads((tmp_path / "beyond.json").read_text()) == listing
    assert listing["beyond_phase"]["n"] == 12 and listing["beyond_width"]["n"] == 0
    for entry in listing.values():
        assert all((tmp_path / f).is_file() for f in entry["files"])
