"""study.analysis.beyond on synthetic runs with a known answer: the phase diagram's
trainable depth and ratio, xi_c's phases, the width slope, the Jacobian and residual-scale
comparisons with theory."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from study.analysis import beyond, isometry, phase, theory
from study.config import ModelConfig

FEATURES = {"mnist1d": 40}


def phase_runs(accuracy: dict[float, dict[int, list[float | None]]]) -> pd.DataFrame:
    """A phase sweep of tanh, sigma_b^2 = 0.05; a None accuracy is a diverged seed."""
    return pd.DataFrame([
        {"sweep": "phase", "activation": "tanh", "sigma_w2": w, "sigma_b2": 0.05, "depth": d,
         "seed": s, "status": "diverged" if a is None else "finished",
         "test_accuracy": np.nan if a is None else a}
        for w, by_depth in accuracy.items() for d, seeds in by_depth.items()
        for s, a in enumerate(seeds)
    ])  # fmt: skip


def test_trainable_depth_is_the_deepest_before_the_first_failure():
    runs = phase_runs({
        1.0: {8: [0.4, 0.4], 16: [0.3, 0.3], 32: [0.1, 0.1], 64: [0.3, 0.3]},
        3.0: {8: [0.4, 0.4], 16: [0.4, 0.4], 32: [0.4, None], 64: [0.4, 0.4]},
    })  # fmt: skip
    cells = beyond.phase_cells(runs)
    # A diverged seed scores chance: (0.4 + 0.1) / 2 = 0.25 still meets the criterion.
    assert cells.set_index(["sigma_w2", "depth"]).loc[(3.0, 32), "test_accuracy"] == 0.25
    depths = beyond.phase_depths(cells).set_index("sigma_w2")
    xi = phase.xi_c("tanh", 1.0, 0.05)
    assert depths.loc[1.0, "trainable_depth"] == 16  # not 64: every shallower one must train
    assert depths.loc[1.0, "first_failing"] == 32 and not depths.loc[1.0, "censored"]
    assert depths.loc[1.0, "ratio"] == pytest.approx(16 / xi)
    assert depths.loc[1.0, "six_xi_c"] == pytest.approx(6 * xi)
    assert depths.loc[3.0, "censored"] and depths.loc[3.0, "trainable_depth"] == 64
    # 6 xi_c = 22 at 1.0 is within the grid's depths, 54 at 3.0 too.
    assert depths["testable"].all()


def test_depth_ratio_is_a_t_interval_over_uncensored_testable_points():
    depths = pd.DataFrame({"activation": "tanh", "sigma_w2": [1.0, 2.0, 3.0, 4.0, 1.75],
                           "ratio": [4.0, 6.0, 8.0, 50.0, 1.0],
                           "censored": [False, False, False, True, False],
                           "testable": [True, True, True, True, False]})  # fmt: skip
    [row] = beyond.depth_ratio(depths).itertuples()
    half = sps.t.ppf(0.975, 2) * 2.0 / math.sqrt(3)
    assert (row.n_points, row.n_censored, row.ratio) == (3, 1, pytest.approx(6.0))
    assert (row.low, row.high) == (pytest.approx(6 - half), pytest.approx(6 + half))


def test_xi_table_names_the_phases():
    grid = pd.DataFrame({"activation": ["tanh", "tanh", "relu"], "sigma_w2": [1.0, 3.0, 2.0],
                         "sigma_b2": [0.05, 0.05, 0.0]})  # fmt: skip
    table = beyond.xi_table(grid).set_index(["activation", "sigma_w2"])
    assert table.loc[("tanh", 1.0), "phase"] == "ordered"
    assert table.loc[("tanh", 3.0), "phase"] == "chaotic"
    edge = table.loc[("relu", 2.0)]
    assert edge["phase"] == "critical" and edge["xi_c"] == np.inf
    # chi_1 < 1 in order: xi_c = -1 / ln chi_1 there.
    ordered = table.loc[("tanh", 1.0)]
    assert ordered["xi_c"] == pytest.approx(-1 / math.log(ordered["chi_1"]))


def test_width_table_recovers_the_slope_of_the_excess():
    rows = []
    for width in (32, 128, 512):
        for depth in (16, 64):
            p = theory.predict("relu", "kaiming_normal", "none", "none", depth, width, 40)
            for seed in (0, 1):
                rows.append({"sweep": "width", "status": "finished", "activation": "relu",
                             "init": "kaiming_normal", "skip": "none", "depth": depth,
                             "width": width, "dataset": "mnist1d", "seed": seed,
                             beyond.RATE: p.log10_rate + 0.3 * depth / width})  # fmt: skip
    table = beyond.width_table(pd.DataFrame(rows), FEATURES)
    assert len(table) == 6 and (table["n_seeds"] == 2).all()
    assert table["excess"].to_numpy() == pytest.approx(0.3 * table["depth_over_width"])
    assert table["slope"].to_numpy() == pytest.approx(0.3)
    assert table["intercept"].to_numpy() == pytest.approx(0.0, abs=1e-12)


def test_jacobian_table_compares_with_free_probability():
    model = ModelConfig(depth=8, width=256, activation="relu", init="gaussian", sigma_w2=2.0,
                        sigma_b2=0.0)  # fmt: skip
    mean, var = isometry.predict(model, 40)
    assert var == pytest.approx(16.0, rel=0.02)  # 2L for ReLU with Gaussian weights at chi = 1
    runs = pd.DataFrame([{"sweep": "jacobian", "status": "finished", "activation": "relu",
                          "init": "gaussian", "sigma_w2": 2.0, "sigma_b2": 0.0, "depth": 8,
                          "width": 256, "dataset": "mnist1d", "seed": s,
                          "jacobian_eig_mean": mean * f, "jacobian_eig_var": var * f}
                         for s, f in enumerate((0.9, 1.1))])  # fmt: skip
    [row] = beyond.jacobian_table(runs, FEATURES).itertuples()
    assert row.mean_ratio == pytest.approx(1.0) and row.var_ratio == pytest.approx(1.0)
    assert row.mean_agrees and row.var_agrees and row.var_covered and row.n_seeds == 2
    # Each net's v/m^2: (var f) / (mean f)^2 = theory's v/m^2 / f, so 1/0.9 and 1/1.1.
    assert row.theory_shape == pytest.approx(var / mean**2)
    assert row.shape_ratio == pytest.approx((1 / 0.9 + 1 / 1.1) / 2)
    assert row.shape_agrees


def test_jacobian_table_judges_each_net_by_its_own_mean():
    """Nets whose spectra have theory's shape (v = m^2 x theory's v/m^2) but whose means
    spread from seed to seed: the seeds' mean v overshoots theory, the per-net shape does not."""
    model = ModelConfig(depth=32, width=256, activation="relu", init="gaussian",
                        sigma_w2=2.0, sigma_b2=0.0)  # fmt: skip
    mean, var = isometry.predict(model, 40)
    means = [0.6, 1.4]  # E[m] = 1 = theory's m, E[m^2] = 1.16
    runs = pd.DataFrame([{"sweep": "jacobian", "status": "finished", "activation": "relu",
                          "init": "gaussian", "sigma_w2": 2.0, "sigma_b2": 0.0, "depth": 32,
                          "width": 256, "dataset": "mnist1d", "seed": s,
                          "jacobian_eig_mean": m, "jacobian_eig_var": m**2 * var / mean**2}
                         for s, m in enumerate(means)])  # fmt: skip
    [row] = beyond.jacobian_table(runs, FEATURES).itertuples()
    assert row.var_ratio == pytest.approx(1.16) and not row.var_agrees
    assert row.shape_ratio == pytest.approx(1.0) and row.shape_agrees


def test_residual_table_uses_the_effective_branch_scale():
    assert beyond.branch_scale(16, "sqrt_depth", 1.0) == 0.25
    assert beyond.branch_scale(16, "rezero", 1.0) == 0.0
    rows = []
    for scaling in ("constant", "sqrt_depth", "rezero"):
        s = beyond.branch_scale(16, scaling, 1.0)
        p = theory.predict("relu", "kaiming_normal", "none", "residual", 16, 128, 40,
                           residual_scale=s)  # fmt: skip
        rows.append({"sweep": "init", "status": "finished", "activation": "relu",
                     "init": "kaiming_normal", "norm": "none", "skip": "residual",
                     "residual_scaling": scaling, "residual_scale": 1.0, "depth": 16,
                     "width": 128, "dataset": "mnist1d", "seed": 0,
                     beyond.RATE: p.log10_rate * 1.05})  # fmt: skip
    table = beyond.residual_table(pd.DataFrame(rows), FEATURES).set_index("residual_scaling")
    assert list(table.index) == ["constant", "sqrt_depth"]  # ReZero has no gradient to measure
    growth = table.loc["constant", "theory_growth"]
    assert growth > table.loc["sqrt_depth", "theory_growth"] > 1.0  # a smaller s grows less
    assert table.loc["constant", "ratio"] == pytest.approx(growth**0.05)


def test_the_paper_tables_come_from_the_analysis_tables(tmp_path):
    from study.report import tables_beyond

    empty = tables_beyond.texts(tmp_path)  # no phase sweep in this profile: the text still sets
    assert r"\newcommand{\BeyondRatioTanh}{--}" in empty["tables/beyond_numbers.tex"]
    depths = pd.DataFrame({"activation": "tanh", "sigma_w2": [1.0, 3.0, 4.0],
                           "ratio": [5.0, 6.0, 7.0], "censored": False,
                           "testable": True})  # fmt: skip
    beyond.depth_ratio(depths).to_parquet(tmp_path / "beyond_phase_ratio.parquet")
    texts = tables_beyond.texts(tmp_path)
    [row] = [line for line in texts["tables/beyond_claims.tex"].splitlines()
             if line.startswith("trainable depth")]  # fmt: skip
    assert row.endswith("& yes \\\\")  # 6 inside [3.5, 8.5]
    assert r"\newcommand{\BeyondRatioPointsTanh}{3}" in texts["tables/beyond_numbers.tex"]
    assert r"\newcommand{\BeyondJacobianShapeAgree}{--}" in empty["tables/beyond_numbers.tex"]
    # A Jacobian cell: the seeds' mean v 16% over theory, each net's v/m^2 on it.
    model = ModelConfig(depth=32, width=256, activation="relu", init="gaussian",
                        sigma_w2=2.0, sigma_b2=0.0)  # fmt: skip
    mean, var = isometry.predict(model, 40)
    runs = pd.DataFrame([{"sweep": "jacobian", "status": "finished", "activation": "relu",
                          "init": "gaussian", "sigma_w2": 2.0, "sigma_b2": 0.0, "depth": 32,
                          "width": 256, "dataset": "mnist1d", "seed": s,
                          "jacobian_eig_mean": m, "jacobian_eig_var": m**2 * var / mean**2}
                         for s, m in enumerate((0.6, 1.4))])  # fmt: skip
    beyond.jacobian_table(runs, FEATURES).to_parquet(tmp_path / "beyond_jacobian.parquet")
    texts = tables_beyond.texts(tmp_path)
    lines = texts["tables/beyond_claims.tex"].splitlines()
    [raw] = [line for line in lines if line.startswith("var.\\ of $JJ^T$")]
    [shape] = [line for line in lines if line.startswith("per net $v/m^2$")]
    assert not raw.endswith("& yes \\\\") and shape.endswith("& yes \\\\")
    assert r"\newcommand{\BeyondJacobianShapeAgree}{1 of 1}" in texts["tables/beyond_numbers.tex"]
