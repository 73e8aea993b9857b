"""Beyond the articles: the edge of chaos measured against its theory (issue 26).

Each table puts a measurement of the ``phase``, ``width``, ``jacobian`` and ``init`` sweeps
beside the prediction it tests:

- ``phase_cells``: per activation x sigma_w^2 x depth of the phase sweep, trained or not by
  the declared criterion (TRAINED_ACCURACY), with the mean-field xi_c;
- ``phase_depths``: per activation x sigma_w^2, the deepest trainable net of the grid and
  its ratio to xi_c (Schoenholz et al. 2017: about 6);
- ``depth_ratio``: that ratio's mean over the sigma_w^2 points with a t interval;
- ``xi_table``: the mean-field xi_c (and q*, chi_1, phase) at every sigma_w^2 of the grid;
- ``width_table``: the measured per-layer rate minus mean field against depth / width
  (Hanin & Nica 2019), with each configuration's fitted slope;
- ``jacobian_table``: the eigenvalue mean and variance of J J^T against free probability;
- ``residual_table``: the per-block growth of scaled residual branches against the
  mean-field 1 + s^2 chi stream (``theory.predict`` at the effective branch scale).

No random numbers: two runs give identical tables.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pandas as pd

from study.analysis import isometry, phase, stats, theory
from study.config import ModelConfig, ResidualConfig, Scaling
from study.records import Status, summary_column

# The declared criterion of the phase sweep: a cell trains if its seeds' mean test accuracy
# reaches 2.5x chance on MNIST-1D's ten classes (most of them diverged: it does not).
TRAINED_ACCURACY = 0.25
# This module's sweeps: the articles' analysis (analyze.py) leaves them out -- their
# explicit-variance inits are beyond theory.predict, and their claims are these tables'.
SWEEPS = ("phase", "width", "jacobian")
AGREEMENT = 0.10  # measured vs predicted: "agrees" within 10%
RATE = summary_column("signal", "log10_rate", "init")


@functools.cache  # the chaotic side iterates c* to convergence: seconds near the edge
def _xi(activation: str, sigma_w2: float, sigma_b2: float) -> float:
    """The mean-field xi_c (study.analysis.phase): NaN where it is undefined."""
    return float(phase.xi_c(str(activation), float(sigma_w2), float(sigma_b2)))


def _of(runs: pd.DataFrame, sweep: str) -> pd.DataFrame:
    return runs[(runs["sweep"] == sweep) & (runs["status"] != Status.failed)]


# ------------------------------------------------------------------------ phase diagram


def phase_cells(runs: pd.DataFrame) -> pd.DataFrame:
    """Per activation x sigma_w^2 x sigma_b^2 x depth: trained by the declared criterion?"""
    keys = ["activation", "sigma_w2", "sigma_b2", "depth"]
    rows = []
    for key, group in _of(runs, "phase").groupby(keys, observed=True, sort=True):
        # A diverged seed scores chance, so it pulls the mean below the criterion.
        accuracy = group["test_accuracy"].where(group["status"] == Status.finished, 0.1)
        xi = _xi(key[0], key[1], key[2])
        rows.append({**dict(zip(keys, key, strict=True)), "n_seeds": len(group),
                     "test_accuracy": float(accuracy.mean()),
                     "diverged": float((group["status"] == Status.diverged).mean()),
                     "trained": bool(accuracy.mean() >= TRAINED_ACCURACY),
                     "xi_c": xi, "six_xi_c": 6 * xi})  # fmt: skip
    columns = [*keys, "n_seeds", "test_accuracy", "diverged", "trained", "xi_c", "six_xi_c"]
    return pd.DataFrame(rows, columns=columns)


def phase_depths(cells: pd.DataFrame) -> pd.DataFrame:
    """Per activation x sigma_w^2: the deepest net that trains (every shallower one of the
    grid too); ``censored`` where the grid's deepest trains (the ratio is a lower bound);
    ``testable`` where 6 xi_c is within the grid's depths (near the edge it is not, and the
    deepest trainable net measures the training budget, not xi_c)."""
    rows = []
    deepest = cells["depth"].max() if len(cells) else 0
    for key, group in cells.groupby(["activation", "sigma_w2", "sigma_b2"], observed=True):
        group = group.sort_values("depth")
        failed = group.loc[~group["trained"], "depth"]
        below = group[group["depth"] < failed.min()] if len(failed) else group
        depth = int(below["depth"].max()) if len(below) else 0
        xi = float(group["xi_c"].iloc[0])
        rows.append({"activation": key[0], "sigma_w2": key[1], "sigma_b2": key[2],
                     "trainable_depth": depth, "first_failing": int(failed.min())
                     if len(failed) else pd.NA, "censored": not len(failed), "xi_c": xi,
                     "six_xi_c": 6 * xi, "testable": bool(6 * xi <= deepest),
                     "ratio": depth / xi if depth and xi > 0 else math.nan})  # fmt: skip
    frame = pd.DataFrame(rows, columns=["activation", "sigma_w2", "sigma_b2", "trainable_depth",
                                        "first_failing", "censored", "xi_c", "six_xi_c",
                                        "testable", "ratio"])  # fmt: skip
    frame["first_failing"] = frame["first_failing"].astype("Int64")
    frame[["censored", "testable"]] = frame[["censored", "testable"]].astype(bool)
    return frame


def depth_ratio(depths: pd.DataFrame) -> pd.DataFrame:
    """Per activation: the mean ratio trainable depth / xi_c over the sigma_w^2 points where
    it is measured (testable: 6 xi_c within the grid; some depth trains; a failing depth
    bounds it), with a t interval."""
    rows = []
    for activation, group in depths.groupby("activation", observed=True):
        ok = group[group["testable"] & ~group["censored"] & np.isfinite(group["ratio"])]
        interval = stats.t_interval(ok["ratio"].to_numpy(float))
        rows.append({"activation": activation, "n_points": len(ok),
                     "ratio": interval.estimate, "low": interval.low, "high": interval.high,
                     "theory": 6.0, "n_censored": int(group["censored"].sum())})  # fmt: skip
    return pd.DataFrame(rows, columns=["activation", "n_points", "ratio", "low", "high",
                                       "theory", "n_censored"])  # fmt: skip


def xi_table(grid: pd.DataFrame) -> pd.DataFrame:
    """Mean-field q*, chi_1, xi_c and the phase (study.analysis.phase.phase_table) at each
    (activation, sigma_w^2, sigma_b^2) of ``grid``."""
    groups = grid.groupby(["activation", "sigma_b2"], observed=True)
    parts = [phase.phase_table(a, sorted(g["sigma_w2"].unique()), b)
             .assign(activation=a, sigma_b2=b) for (a, b), g in groups]  # fmt: skip
    return pd.concat(parts).sort_values(["activation", "sigma_w2"], ignore_index=True)


# -------------------------------------------------------------------------------- width


def width_table(runs: pd.DataFrame, num_features: dict[str, int]) -> pd.DataFrame:
    """Per configuration x depth x width: measured rate minus mean field (decades per layer),
    against depth / width; ``slope``/``intercept`` fit it per configuration."""
    keys = ["activation", "init", "skip", "depth", "width"]
    rows = []
    for key, group in _of(runs, "width").groupby(keys, observed=True, sort=True):
        first = group.iloc[0]
        p = theory.predict(key[0], key[1], "none", key[2], int(key[3]), int(key[4]),
                           num_features[str(first["dataset"])])  # fmt: skip
        measured = stats.t_interval(group[RATE].to_numpy(float))
        predicted = p.log10_rate if p.log10_rate is not None else math.nan
        rows.append({**dict(zip(keys, key, strict=True)), "n_seeds": len(group),
                     "depth_over_width": key[3] / key[4], "measured_rate": measured.estimate,
                     "low": measured.low, "high": measured.high, "theory_rate": predicted,
                     "excess": measured.estimate - predicted,
                     # per block, the measured squared-gradient factor over mean field's
                     "excess_factor": 10 ** (2 * (measured.estimate - predicted))})  # fmt: skip
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    fits = {}
    for config, group in frame.groupby(["activation", "init", "skip"], observed=True):
        ok = group[np.isfinite(group["excess"])]
        if ok["depth_over_width"].nunique() >= 2:
            fits[config] = np.polyfit(ok["depth_over_width"], ok["excess"], 1)
    config = list(zip(frame["activation"], frame["init"], frame["skip"], strict=True))
    frame["slope"] = [fits[c][0] if c in fits else math.nan for c in config]
    frame["intercept"] = [fits[c][1] if c in fits else math.nan for c in config]
    return frame


# ----------------------------------------------------------------------------- jacobian


def jacobian_table(
    runs: pd.DataFrame,
    num_features: dict[str, int],
    moments: dict[str, np.ndarray] | None = None,
) -> pd.DataFrame:
    """Per cell of the jacobian sweep: the seeds' mean eigenvalue mean and variance of J J^T
    beside the free-probability prediction, and whether each agrees within AGREEMENT. The
    prediction is averaged over the dataset's second ``moments`` where given
    (``isometry.predict_over``: the probe averages over examples whose q_1 differ).

    Also each net's variance over its own squared mean, v/m^2 (``shape``), against theory's:
    free probability predicts v/m^2 for every net, while the seeds' mean of v also carries the
    spread of the nets' m (E[m^2] > E[m]^2), an excess that grows with depth/width."""
    keys = ["activation", "init", "sigma_w2", "sigma_b2", "depth", "width"]
    rows = []
    for key, group in _of(runs, "jacobian").groupby(keys, observed=True, sort=True):
        a, init, w, b, depth, width = key
        model = ModelConfig(depth=int(depth), width=int(width), activation=a, init=init,
                            sigma_w2=float(w), sigma_b2=float(b))  # fmt: skip
        dataset = str(group["dataset"].iloc[0])
        mean, var = isometry.predict_over(model, num_features[dataset],
                                          (moments or {}).get(dataset))  # fmt: skip
        per_net_mean = group["jacobian_eig_mean"].to_numpy(float)
        per_net_var = group["jacobian_eig_var"].to_numpy(float)
        m, v = stats.t_interval(per_net_mean), stats.t_interval(per_net_var)
        shape = stats.t_interval(per_net_var / per_net_mean**2)
        theory_shape = var / mean**2
        rows.append({**dict(zip(keys, key, strict=True)), "n_seeds": len(group),
                     "eig_mean": m.estimate, "eig_mean_low": m.low, "eig_mean_high": m.high,
                     "theory_mean": mean, "eig_var": v.estimate, "eig_var_low": v.low,
                     "eig_var_high": v.high, "theory_var": var,
                     "mean_ratio": m.estimate / mean, "var_ratio": v.estimate / var,
                     "mean_agrees": bool(abs(m.estimate / mean - 1) <= AGREEMENT),
                     "var_agrees": bool(abs(v.estimate / var - 1) <= AGREEMENT),
                     # the seeds' spread is wide at depth: does their interval hold it?
                     "var_covered": bool(v.low <= var <= v.high),
                     "shape": shape.estimate, "shape_low": shape.low, "shape_high": shape.high,
                     "theory_shape": theory_shape, "shape_ratio": shape.estimate / theory_shape,
                     "shape_agrees": bool(abs(shape.estimate / theory_shape - 1)
                                          <= AGREEMENT)})  # fmt: skip
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- residual


def branch_scale(depth: int, scaling: str, scale: float) -> float:
    """The effective branch factor at init (``ModelConfig.branch_scale``, from table columns)."""
    residual = ResidualConfig(scale=float(scale), scaling=Scaling(scaling))
    return ModelConfig(depth=int(depth), residual=residual).branch_scale()


def residual_table(runs: pd.DataFrame, num_features: dict[str, int]) -> pd.DataFrame:
    """Residual nets without norm (init and width sweeps): the measured per-block factor of
    the squared gradient, 10^(2 rate), against mean field at the effective branch scale s
    (the stream's 1 + s^2 chi with the E[phi'^2] ratio); a ReZero branch (s = 0) has no
    gradient at init to measure, so it is left out."""
    ok = runs["sweep"].isin(["init", "width"]) & (runs["status"] != Status.failed)
    plain = runs[ok & (runs["skip"] == "residual") & (runs["norm"] == "none")]
    keys = ["activation", "init", "residual_scaling", "residual_scale", "depth", "width"]
    rows = []
    for key, group in plain.groupby(keys, observed=True, sort=True):
        a, init, scaling, scale, depth, width = key
        s = branch_scale(depth, scaling, scale)
        if s == 0.0:
            continue
        features = num_features[str(group["dataset"].iloc[0])]
        p = theory.predict(a, init, "none", "residual", int(depth), int(width), features,
                           residual_scale=s)  # fmt: skip
        measured = stats.t_interval(group[RATE].to_numpy(float))
        growth = 10 ** (2 * measured.estimate)
        predicted = 10 ** (2 * p.log10_rate) if p.log10_rate is not None else math.nan
        rows.append({**dict(zip(keys, key, strict=True)), "branch_scale": s,
                     "n_seeds": len(group), "growth": growth, "theory_growth": predicted,
                     "ratio": growth / predicted,
                     "agrees": bool(abs(growth / predicted - 1) <= AGREEMENT)})  # fmt: skip
    return pd.DataFrame(rows)


def tables(
    runs: pd.DataFrame,
    num_features: dict[str, int],
    moments: dict[str, np.ndarray] | None = None,
) -> dict[str, pd.DataFrame]:
    """Every table of this module, written as results/analysis/<name>.parquet (``moments``:
    each dataset's second moments, for the Jacobian's prediction)."""
    cells = phase_cells(runs)
    depths = phase_depths(cells)
    frames = {
        "phase_cells": cells,
        "phase_depths": depths,
        "phase_ratio": depth_ratio(depths),
        "xi_c": xi_table(cells) if len(cells) else pd.DataFrame(),
        "width": width_table(runs, num_features),
        "jacobian": jacobian_table(runs, num_features, moments),
        "residual_scale": residual_table(runs, num_features),
    }
    return {f"beyond_{name}": frame for name, frame in frames.items()}
