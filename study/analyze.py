"""Stage ``analyze``: the tidy tables -> effects with intervals, theory beside measurement,
and a verdict for every claim.

    python -m study.analyze

reads ``results/tables/{runs,layers}.parquet`` and writes ``results/analysis/``:

- ``decay_rates.parquet``: per cell, the measured per-layer signal- and weight-gradient
  rates at initialization (mean over seeds, 95% bootstrap interval) beside the mean-field
  prediction (``study.theory``) and their ratio;
- ``factor_effects.parquet``: factorial models (type-II ANOVA, partial eta squared) of the
  log10 gradient rate at initialization and of the test accuracy after training;
- ``trainable_depth.parquet``: per activation x init x norm x skip, the deepest depth that
  still trains (:data:`TRAINABLE_MARGIN`, :data:`TRAINABLE_FLOOR`), with a bootstrap interval;
- ``claims.parquet`` and ``claims.json`` (DVC metrics): for each claim of CLAIMS.md, its
  pre-declared hypotheses (:data:`HYPOTHESES`), each with the measurement, the test, the
  effect with interval, the Holm-corrected p-value and a verdict.

Every random draw comes from generators seeded here, so two runs give identical files.
"""

from __future__ import annotations

import argparse
import json
import sys
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from study import records, stats, theory
from study.tables import write_table

ALPHA = 0.05  # family-wise, Holm-corrected across every hypothesis tested
AGREEMENT = 0.15  # measured vs predicted per-layer gradient ratio: "agrees" within 15%
TRAINABLE_MARGIN = 0.05  # a depth trains if its mean accuracy is within this of the shallowest
TRAINABLE_FLOOR = 0.5  # ... and the shallowest itself reaches this test accuracy
STABLE_ACCURACY = 0.5  # a learning rate is stable if the run finished with this accuracy
FLAT_RATE = 0.01  # "constant across layers": |log10 rate| under 0.01 decades per layer
SEED = 20190204  # the analysis' bootstrap streams derive from this and the table's name

RELU_FAMILY = ("relu", "leaky_relu", "prelu", "elu")
SATURATING = ("sigmoid", "tanh")
AXES = ("activation", "init", "norm", "skip", "depth")


def accuracy(runs: pd.DataFrame) -> pd.Series:
    """Test accuracy, with 0 for runs that have none (diverged or failed: they learned
    nothing, which is not the same as missing)."""
    return runs["test_accuracy"].fillna(0.0)


def rng_for(name: str) -> np.random.Generator:
    """A generator of its own for each result, so adding one never shifts another."""
    return np.random.default_rng([SEED, zlib.crc32(name.encode())])


# ---------------------------------------------------------------------------- decay rates


def decay_rates(runs: pd.DataFrame, num_features: dict[str, int]) -> pd.DataFrame:
    """Per cell (all seeds), the measured rates at init beside the mean-field prediction."""
    ok = runs[runs["status"] != "failed"]
    rows = []
    rng = rng_for("decay_rates")
    for (sweep, cell), group in ok.groupby(["sweep", "cell_id"], observed=True, sort=True):
        first = group.iloc[0]
        signal = stats.bootstrap_mean(group["signal_log10_rate_init"], rng)
        weight = stats.bootstrap_mean(group["weight_log10_rate_init"], rng)
        first_last = stats.bootstrap_mean(group["signal_log10_first_last_init"], rng)
        p = theory.predict(first["activation"], first["init"], first["norm"], first["skip"],
                           int(first["depth"]), int(first["width"]),
                           num_features[str(first["dataset"])],
                           input_second_moment=float(first["input_scale"]) ** 2,
                           batch_size=int(first["probe_batch_size"]))  # fmt: skip
        finite_batch = p.log10_rate_finite_batch
        reference = finite_batch if finite_batch is not None else p.log10_rate
        ratio = 10 ** (signal.estimate - reference) if reference is not None else np.nan
        rows.append({
            "sweep": sweep, "cell_id": cell,
            **{axis: first[axis] for axis in (*AXES, "width", "dataset", "input_scale")},
            "n_seeds": len(group),
            "signal_rate": signal.estimate, "signal_rate_low": signal.low,
            "signal_rate_high": signal.high,
            "weight_rate": weight.estimate, "weight_rate_low": weight.low,
            "weight_rate_high": weight.high,
            "signal_first_last": first_last.estimate, "signal_first_last_low": first_last.low,
            "signal_first_last_high": first_last.high,
            "n_censored": int(group["signal_first_last_censored_init"].fillna(False).sum()),
            "theory_rate": _float(p.log10_rate),
            "theory_rate_finite_batch": _float(finite_batch),
            "theory_chi": _float(p.chi),
            "theory_q_star": _float(p.q_star),
            "theory_depth_scale": _float(p.depth_scale),
            "theory_basis": p.basis,
            "sigma_w2": p.sigma_w2,
            "ratio_vs_theory": ratio,
            "agrees": bool(abs(ratio - 1) <= AGREEMENT) if np.isfinite(ratio) else pd.NA,
        })  # fmt: skip
    frame = pd.DataFrame(rows)
    frame["agrees"] = frame["agrees"].astype("boolean")
    return frame


def _float(value: float | None) -> float:
    return float(value) if value is not None else np.nan


# ------------------------------------------------------------------------- factor effects

INTERACTIONS = [("depth", "skip"), ("activation", "init"), ("norm", "skip")]


def factor_effects(runs: pd.DataFrame) -> pd.DataFrame:
    """Type-II ANOVA tables: log10 signal rate at init (init sweep), test accuracy (train)."""
    tables = []
    for sweep, response in (("init", "signal_log10_rate_init"), ("train", "test_accuracy")):
        data = runs[(runs["sweep"] == sweep) & (runs["status"] != "failed")].copy()
        if response == "test_accuracy":
            data[response] = accuracy(data)
        table = stats.factorial_model(data, response, AXES, INTERACTIONS)
        table.insert(0, "response", response)
        table.insert(0, "sweep", sweep)
        table["n"] = len(data)
        tables.append(table)
    return pd.concat(tables, ignore_index=True)


# ------------------------------------------------------------------------ trainable depth


def trainable_depth(runs: pd.DataFrame, n_boot: int = 1000) -> pd.DataFrame:
    """Per activation x init x norm x skip: the deepest depth that trains, with an interval.

    A depth trains if its mean test accuracy over seeds is at least that of the shallowest
    depth minus TRAINABLE_MARGIN, and the shallowest reaches TRAINABLE_FLOOR (otherwise no
    depth trains: 0). The interval resamples the seeds of each depth (percentile bootstrap).
    """
    train = runs[runs["sweep"] == "train"].copy()
    train["test_accuracy"] = accuracy(train)
    rng = rng_for("trainable_depth")
    rows = []
    keys = ["activation", "init", "norm", "skip"]
    for key, group in train.groupby(keys, observed=True, sort=True):
        by_depth = {int(d): g["test_accuracy"].to_numpy() for d, g in group.groupby("depth")}
        depths = sorted(by_depth)
        point = _deepest(depths, [by_depth[d].mean() for d in depths])
        boots = [
            _deepest(depths, [rng.choice(by_depth[d], len(by_depth[d])).mean() for d in depths])
            for _ in range(n_boot)
        ]
        low, high = np.quantile(boots, [0.025, 0.975], method="nearest")
        rows.append({
            **dict(zip(keys, key, strict=True)),
            "depths": ",".join(map(str, depths)),
            "accuracy_by_depth": ",".join(f"{by_depth[d].mean():.3f}" for d in depths),
            "trainable_depth": point, "trainable_depth_low": int(low),
            "trainable_depth_high": int(high),
        })  # fmt: skip
    return pd.DataFrame(rows)


def _deepest(depths: list[int], accuracy: list[float]) -> int:
    if accuracy[0] < TRAINABLE_FLOOR:
        return 0
    ok = [d for d, a in zip(depths, accuracy, strict=True) if a >= accuracy[0] - TRAINABLE_MARGIN]
    return max(ok)


# --------------------------------------------------------------------------------- claims


@dataclass(frozen=True)
class Hypothesis:
    """A pre-declared test of (part of) a claim: 'a > b' over matched pairs, or a factor's
    F-test. ``pairs`` (a :class:`Paired`, or a function for the odd ones) builds the matched
    values from the prepared frames."""

    claim: str
    part: str
    statement: str
    measurement: str
    unit: str
    pairs: Callable[[dict[str, pd.DataFrame]], tuple[np.ndarray, np.ndarray]] | None = None
    anova: tuple[str, str] | None = None  # (frame, term): the factor's effect in a model


def matched(
    frame: pd.DataFrame, factor: str, a: tuple, b: tuple, value: str, keys: list[str]
) -> tuple[np.ndarray, np.ndarray]:
    """Values of ``a``-levels vs ``b``-levels of ``factor``, matched on ``keys`` (each side
    averaged over its levels): one pair per combination of the keys present on both sides."""
    sub = frame[frame[factor].astype(str).isin([*a, *b])]
    if sub.empty:
        return np.array([]), np.array([])
    side = np.where(sub[factor].astype(str).isin(a), "a", "b")
    grouped = sub.assign(_side=side).groupby([*keys, "_side"], observed=True)[value].mean()
    wide = grouped.unstack("_side")
    if not {"a", "b"} <= set(wide.columns):
        return np.array([]), np.array([])
    wide = wide.dropna()
    return wide["a"].to_numpy(), wide["b"].to_numpy()


def prepare_frames(runs: pd.DataFrame, layers: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """The per-run values the hypotheses compare, one frame per sweep."""
    runs = runs[runs["status"] != "failed"].copy()
    runs["abs_rate"] = -runs["signal_log10_rate_init"].abs()  # closer to 0 = steadier flow
    runs["abs_first_last"] = -runs["signal_log10_first_last_init"].abs()
    runs["accuracy"] = accuracy(runs)
    # Never reaching the target ranks behind every run that did (rank tests need no value).
    never = runs["steps"] + 1
    runs["steps_needed"] = runs["steps_to_target"].astype("Float64").fillna(never).astype(float)
    run = ["sweep", "run_name"]  # a run's name is unique within its sweep
    last = layers[layers["step"] == layers.groupby(run, observed=True)["step"]
                  .transform("max")]  # fmt: skip
    # |mean| / RMS of a layer's output: 0 = centred, 1 = all of the signal is its mean.
    last = last.assign(relative_mean=np.abs(last["activation_mean"]) / last["activation_rms"])
    per_run = last.groupby(run, observed=True).agg(
        dead_final=("dead_fraction", "mean"),
        relative_mean_final=("relative_mean", "mean"),
    )
    # The typical layer's weight gradient at init: the median is robust to the layers whose
    # gradient underflowed to 0 (-inf here) at the input end of a deep vanishing net.
    at_init = layers[layers["step"] == 0]
    with np.errstate(divide="ignore"):
        log_weight = np.log10(at_init["weight_grad_norm"])
    level = at_init.assign(log_weight=log_weight).groupby(run, observed=True)["log_weight"]
    runs = runs.merge(per_run.reset_index(), on=run, how="left")
    runs = runs.merge(level.median().rename("weight_grad_level").reset_index(), on=run,
                      how="left")  # fmt: skip
    # Every sweep of study.sweep.SWEEPS is a category of the column, run or not.
    frames = {name: runs[runs["sweep"] == name].copy() for name in runs["sweep"].cat.categories}
    init = frames["init"]
    init["norm_skip"] = init["norm"].astype(str) + "+" + init["skip"].astype(str)
    frames["degradation"] = level_gap(frames["train"], "depth", "accuracy", "accuracy_gain",
                                      ["activation", "init", "norm", "skip", "seed"])  # fmt: skip
    optim = frames["optim"]
    if not optim.empty:
        optim["stable"] = (optim["status"] == "finished") & (optim["accuracy"] >= STABLE_ACCURACY)
        optim["log10_lr"] = np.log10(optim["lr"])
        optim["clipped"] = optim["clip_norm"].notna()
        optim["setup"] = optim["optimizer"].astype(str) + np.where(optim["clipped"], "+clip", "")
        keys = ["setup", "norm", "skip", "init", "seed"]
        floor = optim["log10_lr"].min() - 0.5  # no stable rate: below the grid
        frames["lr_range"] = (
            optim.assign(stable_lr=np.where(optim["stable"], optim["log10_lr"], floor))
            .groupby(keys, observed=True)
            .agg(max_stable_log10_lr=("stable_lr", "max"),
                 diverged=("status", lambda s: float((s == "diverged").mean())),
                 best_steps=("steps_needed", "min"))
            .reset_index()
        )  # fmt: skip
    else:
        frames["lr_range"] = pd.DataFrame()
    frames["scale_shrink"] = _scale_shrink(frames["scale"])
    return frames


def _scale_shrink(scale: pd.DataFrame) -> pd.DataFrame:
    """Per net and seed, how many decades the typical weight gradient loses from the
    largest to the smallest input scale of the sweep."""
    return level_gap(scale, "input_scale", "weight_grad_level", "weight_grad_shrink",
                     [*SCALE_KEYS, "skip"])  # fmt: skip


def level_gap(
    frame: pd.DataFrame, factor: str, value: str, name: str, keys: list[str]
) -> pd.DataFrame:
    """``value`` at the largest level of a numeric ``factor`` minus ``value`` at its smallest
    (whichever levels were swept), as column ``name``, per combination of ``keys``."""
    if frame.empty or frame[factor].nunique() < 2:
        return pd.DataFrame(columns=[*keys, name])
    wide = frame.pivot_table(index=keys, columns=factor, values=value, observed=True,
                             aggfunc="mean")  # fmt: skip
    gap = wide[wide.columns.max()] - wide[wide.columns.min()]
    return gap.rename(name).dropna().reset_index()


PLAIN = "norm == 'none' and skip == 'none'"
TRAINED_KEYS = ("init", "norm", "skip", "depth", "seed")  # the train sweep, but activation
SCALE_KEYS = ("activation", "init", "depth", "seed")  # the scale sweep, but scale and skip


@dataclass(frozen=True)
class Paired:
    """'a > b': ``value`` at the ``a`` levels of ``factor`` against the ``b`` levels, over
    the rows of ``frame`` that ``where`` keeps, matched on ``keys`` (see :func:`matched`)."""

    frame: str
    factor: str
    a: tuple[str, ...]
    b: tuple[str, ...]
    value: str
    keys: tuple[str, ...]
    where: str | None = None

    def __call__(self, frames: dict[str, pd.DataFrame]) -> tuple[np.ndarray, np.ndarray]:
        frame = frames[self.frame]
        if self.where and len(frame):
            frame = frame.query(self.where, engine="python")
        return matched(frame, self.factor, self.a, self.b, self.value, list(self.keys))


def ends(
    frame: pd.DataFrame, factor: str, value: str, keys: list[str], smallest_first: bool
) -> tuple[np.ndarray, np.ndarray]:
    """``value`` at the smallest against the largest level of a numeric ``factor``
    (whichever levels were swept; ``smallest_first=False`` swaps the sides)."""
    levels = sorted(frame[factor].unique()) if len(frame) else []
    if len(levels) < 2:
        return np.array([]), np.array([])
    low, high = (str(levels[0]),), (str(levels[-1]),)
    a, b = (low, high) if smallest_first else (high, low)
    return matched(frame.assign(_level=frame[factor].astype(str)), "_level", a, b, value, keys)


def _c1(f):
    """Shallowest against deepest depth of the plain nets."""
    return ends(f["init"].query(PLAIN), "depth", "signal_log10_first_last_init",
                ["activation", "init", "seed"], smallest_first=True)  # fmt: skip


def _c14a(f):
    """Largest against smallest input scale, residual nets."""
    residual = f["scale"][f["scale"]["skip"] == "residual"]
    return ends(residual, "input_scale", "weight_grad_level", list(SCALE_KEYS),
                smallest_first=False)  # fmt: skip


def _c5a(f):
    """Tolerance against |rate| of plain sigmoid/tanh nets under xavier (one-sample)."""
    flat = f["init"].query(
        f"{PLAIN} and activation in {SATURATING} and init.str.startswith('xavier')",
        engine="python",
    )["abs_rate"]
    return np.full(len(flat), FLAT_RATE), -flat.to_numpy()


# fmt: off
HYPOTHESES: list[Hypothesis] = [
    Hypothesis(
        "C1", "C1",
        "Plain nets: the input-side gradient is smaller, relative to the output side, at the "
        "deepest depth than at the shallowest",
        "log10(g_1/g_L) of the signal gradient at init; plain nets; shallowest minus deepest "
        "depth, matched on activation, init, seed",
        "decades", _c1,
    ),
    Hypothesis(
        "C2", "C2",
        "ReLU-family activations keep gradients better than saturating ones",
        "per-layer log10 signal-gradient rate at init; mean of relu, leaky_relu, prelu, elu "
        "minus mean of sigmoid, tanh; matched on init, norm, skip, depth, seed",
        "decades/layer",
        Paired("init", "activation", RELU_FAMILY, SATURATING, "signal_log10_rate_init",
               TRAINED_KEYS),
    ),
    Hypothesis(
        "C3", "C3",
        "Plain ReLU ends training with more dead units than leaky ReLU/PReLU",
        "fraction of units with no positive pre-activation on the probe batch, mean over "
        "layers at the last probe; relu minus mean of leaky_relu, prelu; matched on init, "
        "norm, skip, depth, seed",
        "fraction",
        Paired("train", "activation", ("relu",), ("leaky_relu", "prelu"), "dead_final",
               TRAINED_KEYS),
    ),
    Hypothesis(
        "C4", "C4a",
        "ELU keeps mean activations closer to zero than ReLU",
        "|mean| / RMS of each layer's output, mean over layers at the last probe; relu minus "
        "elu; matched on init, norm, skip, depth, seed",
        "fraction of RMS",
        Paired("train", "activation", ("relu",), ("elu",), "relative_mean_final",
               TRAINED_KEYS),
    ),
    Hypothesis(
        "C4", "C4b",
        "ELU reaches the target accuracy in fewer steps than ReLU",
        "steps to the target validation accuracy (never = budget + 1); relu minus elu; "
        "matched on init, norm, skip, depth, seed",
        "steps",
        Paired("train", "activation", ("relu",), ("elu",), "steps_needed", TRAINED_KEYS),
    ),
    Hypothesis(
        "C5", "C5a",
        "Xavier init keeps the gradient constant across layers for sigmoid/tanh",
        f"|per-layer log10 signal-gradient rate| at init under xavier, plain sigmoid and tanh "
        f"nets, against the tolerance {FLAT_RATE} decades/layer (tolerance minus |rate|)",
        "decades/layer", _c5a,
    ),
    Hypothesis(
        "C5", "C5b",
        "For sigmoid/tanh, Xavier init keeps gradients steadier than PyTorch's default init",
        "-|per-layer log10 signal-gradient rate| at init, plain sigmoid/tanh nets; xavier "
        "(normal, uniform) minus default; matched on activation, depth, seed",
        "decades/layer",
        Paired("init", "init", ("xavier_normal", "xavier_uniform"), ("default",), "abs_rate",
               ("activation", "depth", "seed"), where=f"{PLAIN} and activation in {SATURATING}"),
    ),
    Hypothesis(
        "C6", "C6a",
        "For ReLU, He init keeps gradients steadier than Xavier",
        "-|per-layer log10 signal-gradient rate| at init, plain ReLU nets; kaiming (normal, "
        "uniform) minus xavier (normal, uniform); matched on depth, seed",
        "decades/layer",
        Paired("init", "init", ("kaiming_normal", "kaiming_uniform"),
               ("xavier_normal", "xavier_uniform"), "abs_rate", ("depth", "seed"),
               where=f"{PLAIN} and activation == 'relu'"),
    ),
    Hypothesis(
        "C6", "C6b",
        "For ReLU, He init trains to a higher accuracy than Xavier",
        "test accuracy after training (diverged = 0), ReLU nets; kaiming_normal minus "
        "xavier_normal; matched on norm, skip, depth, seed",
        "accuracy",
        Paired("train", "init", ("kaiming_normal",), ("xavier_normal",), "accuracy",
               ("norm", "skip", "depth", "seed"), where="activation == 'relu'"),
    ),
    Hypothesis(
        "C7", "C7a",
        "Batch norm keeps the gradient steadier across layers at init (nets without skips)",
        "-|per-layer log10 signal-gradient rate| at init, no skip; batch minus none; matched "
        "on activation, init, depth, seed",
        "decades/layer",
        Paired("init", "norm", ("batch",), ("none",), "abs_rate",
               ("activation", "init", "depth", "seed"), where="skip == 'none'"),
    ),
    Hypothesis(
        "C7", "C7b",
        "Batch norm trains deep nets to a higher accuracy",
        "test accuracy after training (diverged = 0); batch minus none; matched on "
        "activation, init, skip, depth, seed",
        "accuracy",
        Paired("train", "norm", ("batch",), ("none",), "accuracy",
               ("activation", "init", "skip", "depth", "seed")),
    ),
    Hypothesis(
        "C8", "C8",
        "Batch norm raises the largest stable learning rate",
        f"log10 of the largest learning rate that finishes with test accuracy >= "
        f"{STABLE_ACCURACY} (none: half a decade below the grid); batch minus none; matched "
        "on optimizer+clip, skip, init, seed",
        "decades of lr",
        Paired("lr_range", "norm", ("batch",), ("none",), "max_stable_log10_lr",
               ("setup", "skip", "init", "seed")),
    ),
    Hypothesis(
        "C9", "C9a",
        "Residual connections keep input-side gradients larger than the plain net's",
        "log10(g_1/g_L) of the signal gradient at init, no norm; residual minus none; "
        "matched on activation, init, depth, seed",
        "decades",
        Paired("init", "skip", ("residual",), ("none",), "signal_log10_first_last_init",
               ("activation", "init", "depth", "seed"), where="norm == 'none'"),
    ),
    Hypothesis(
        "C9", "C9b",
        "Residual nets lose less accuracy with depth than plain nets",
        "test accuracy at the deepest minus the shallowest depth; residual minus none; "
        "matched on activation, init, norm, seed",
        "accuracy",
        Paired("degradation", "skip", ("residual",), ("none",), "accuracy_gain",
               ("activation", "init", "norm", "seed")),
    ),
    Hypothesis(
        "C10", "C10a",
        "Dense connectivity improves gradient flow",
        "-|log10(g_1/g_L)| of the signal gradient at init; dense minus none; matched on "
        "activation, init, norm, depth, seed",
        "decades",
        Paired("init", "skip", ("dense",), ("none",), "abs_first_last",
               ("activation", "init", "norm", "depth", "seed")),
    ),
    Hypothesis(
        "C10", "C10b",
        "Highway connections improve gradient flow",
        "-|log10(g_1/g_L)| of the signal gradient at init; highway minus none; matched on "
        "activation, init, norm, depth, seed",
        "decades",
        Paired("init", "skip", ("highway",), ("none",), "abs_first_last",
               ("activation", "init", "norm", "depth", "seed")),
    ),
    Hypothesis(
        "C11", "C11",
        "Layer norm with residual connections keeps gradients steadier than the alternatives",
        "-|log10(g_1/g_L)| at init; layer+residual minus the mean of none+none, batch+none, "
        "layer+none, none+residual, batch+residual; matched on activation, init, depth, seed",
        "decades",
        Paired("init", "norm_skip", ("layer+residual",),
               ("none+none", "batch+none", "layer+none", "none+residual", "batch+residual"),
               "abs_first_last", ("activation", "init", "depth", "seed")),
    ),
    Hypothesis(
        "C12", "C12a",
        "AdamW with clipping diverges less often than SGD",
        "fraction of the learning-rate grid that diverges; sgd minus adamw+clip; matched on "
        "norm, skip, init, seed",
        "fraction",
        Paired("lr_range", "setup", ("sgd",), ("adamw+clip",), "diverged",
               ("norm", "skip", "init", "seed")),
    ),
    Hypothesis(
        "C12", "C12b",
        "AdamW with clipping reaches the target faster than SGD",
        "fewest steps to the target over the learning-rate grid (never = budget + 1); sgd "
        "minus adamw+clip; matched on norm, skip, init, seed",
        "steps",
        Paired("lr_range", "setup", ("sgd",), ("adamw+clip",), "best_steps",
               ("norm", "skip", "init", "seed")),
    ),
    Hypothesis(
        "C12", "C12c",
        "With AdamW and clipping, Xavier init reaches the target faster than the other inits",
        "fewest steps to the target over the learning-rate grid, adamw+clip; mean of default, "
        "kaiming_normal minus xavier_normal; matched on norm, skip, seed",
        "steps",
        Paired("lr_range", "init", ("default", "kaiming_normal"), ("xavier_normal",),
               "best_steps", ("norm", "skip", "seed"), where="setup == 'adamw+clip'"),
    ),
    Hypothesis(
        "C13", "C13a",
        "In residual nets the init still matters",
        "test accuracy (diverged = 0) of the residual nets of the optim sweep; partial eta^2 "
        "of init with its interaction with the optimizer setup, in accuracy ~ setup * (lr + "
        "init) + norm (nested-model F-test)",
        "partial eta^2", anova=("optim", "init"),
    ),
    Hypothesis(
        "C13", "C13b",
        "In residual nets the learning rate still matters",
        "as C13a, for lr with its interaction with the optimizer setup",
        "partial eta^2", anova=("optim", "lr"),
    ),
    Hypothesis(
        "C14", "C14a",
        "In residual nets, small inputs still shrink the gradients",
        "median over layers of log10 ||dL/dW_l|| at init, residual nets of the scale sweep; "
        "largest minus smallest input scale; matched on activation, init, depth, seed",
        "decades", _c14a,
    ),
    Hypothesis(
        "C14", "C14b",
        "Small inputs shrink the gradients of residual nets less than those of plain nets",
        "decades the median log10 ||dL/dW_l|| at init loses from the largest to the smallest "
        "input scale; plain minus residual; matched on activation, init, depth, seed",
        "decades",
        Paired("scale_shrink", "skip", ("none",), ("residual",), "weight_grad_shrink",
               SCALE_KEYS),
    ),
]
# fmt: on


RESIDUAL_MODEL = ("setup", "lr", "init", "norm", "setup:lr", "setup:init")


def _anova_effect(frame: pd.DataFrame, term: str, rng: np.random.Generator, n_boot: int = 200):
    """(partial eta^2 with a bootstrap interval over runs, p-value, n) of a factor together
    with its interaction with the optimizer setup, in the residual nets' accuracy model.
    The best learning rate differs between SGD and AdamW, so a main effect alone would
    understate how much the factor matters."""
    data = frame[frame["skip"] == "residual"].copy()
    if data.empty or data[term].nunique() < 2:
        return None
    full = [t for t in RESIDUAL_MODEL if all(data[c].nunique() > 1 for c in t.split(":"))]
    dropped = [t for t in full if term in t.split(":")]

    def eta(d: pd.DataFrame) -> tuple[float, float]:
        return stats.nested_f_test(d, "accuracy", full, dropped)

    estimate, pvalue = eta(data)
    if not np.isfinite(estimate):
        return None
    boots = [eta(data.iloc[rng.integers(0, len(data), len(data))])[0] for _ in range(n_boot)]
    low, high = np.nanquantile(boots, [0.025, 0.975])
    return stats.Interval(estimate, float(low), float(high)), pvalue, len(data)


def claims(frames: dict[str, pd.DataFrame]) -> pd.DataFrame:
    rows = []
    for h in HYPOTHESES:
        rows.append({"claim": h.claim, "part": h.part, "hypothesis": h.statement,
                     "measurement": h.measurement, "unit": h.unit,
                     **_evaluate(h, frames, rng_for(h.part))})  # fmt: skip
    table = pd.DataFrame(rows)
    table["p_holm"] = stats.holm(table["pvalue"].to_numpy(dtype=float))
    table["verdict"] = [_verdict(r) for r in table.itertuples()]
    table["directional"] = table["directional"].astype("boolean")
    order = [int(c[1:]) for c in table["claim"]]
    return table.assign(_o=order).sort_values(["_o", "part"], kind="stable").drop(columns="_o")


def _evaluate(h: Hypothesis, frames: dict[str, pd.DataFrame], rng: np.random.Generator):
    """The test's columns of a hypothesis' row (or why it could not be tested)."""
    if h.anova is not None:
        frame_name, term = h.anova
        frame = frames[frame_name]
        found = _anova_effect(frame, term, rng) if len(frame) else None
        if found is None:
            return _untested(f"no residual nets with several levels of {term} in this "
                             "profile's optim sweep")  # fmt: skip
        effect, pvalue, n = found
        return _tested("nested-model F-test in a factorial OLS model", n, effect, pvalue,
                       directional=False)  # fmt: skip
    result = stats.paired_wilcoxon(*h.pairs(frames), rng, alternative="two-sided")
    if result.n < 6:  # fewer nonzero pairs than a two-sided test at 5% can ever reject
        return _untested(f"{result.n} matched pairs with a difference in this profile's "
                         "sweeps; at least 6 are needed")  # fmt: skip
    return _tested("Wilcoxon signed-rank, two-sided, over matched pairs", result.n,
                   result.difference, result.pvalue, directional=True,
                   median_difference=result.median_difference,
                   rank_biserial=result.rank_biserial, statistic=result.statistic)  # fmt: skip


def _tested(test: str, n: int, effect: stats.Interval, pvalue: float, directional: bool,
            median_difference: float = np.nan, rank_biserial: float = np.nan,
            statistic: float = np.nan) -> dict[str, Any]:  # fmt: skip
    return {"test": test, "n": n, "effect": effect.estimate, "effect_low": effect.low,
            "effect_high": effect.high, "median_difference": median_difference,
            "rank_biserial": rank_biserial, "statistic": statistic, "pvalue": pvalue,
            "directional": directional, "note": ""}  # fmt: skip


def _untested(reason: str) -> dict[str, Any]:
    return {"test": "", "n": 0, "effect": np.nan, "effect_low": np.nan, "effect_high": np.nan,
            "median_difference": np.nan, "rank_biserial": np.nan, "statistic": np.nan,
            "pvalue": np.nan, "directional": pd.NA, "note": f"not tested: {reason}"}  # fmt: skip


def _verdict(row: Any) -> str:
    """Holm-adjusted p < ALPHA: supported if the effect points the claim's way, refuted if
    it points the other way (or, for an F-test, supported); otherwise inconclusive."""
    if not np.isfinite(row.p_holm):
        return "not tested"
    if row.p_holm >= ALPHA:
        return "inconclusive"
    if not row.directional:
        return "supported"
    sign = row.rank_biserial if np.isfinite(row.rank_biserial) else row.effect
    return "supported" if sign > 0 else "refuted"


def claim_verdicts(table: pd.DataFrame) -> dict[str, Any]:
    """One verdict per claim: supported if every part is, refuted if any part is,
    not tested if no part was, inconclusive otherwise; with each part's numbers."""
    out: dict[str, Any] = {}
    for claim, parts in table.groupby("claim", sort=False):
        verdicts = set(parts["verdict"])
        if verdicts == {"supported"}:
            verdict = "supported"
        elif "refuted" in verdicts:
            verdict = "refuted"
        elif verdicts == {"not tested"}:
            verdict = "not tested"
        else:
            verdict = "inconclusive"
        out[claim] = {"verdict": verdict}
        for r in parts.itertuples():
            if r.part != claim:
                out[claim][r.part] = r.verdict
            out[claim][f"{r.part}_effect" if r.part != claim else "effect"] = r.effect
            out[claim][f"{r.part}_p_holm" if r.part != claim else "p_holm"] = r.p_holm
    return out


# ------------------------------------------------------------------------------ the stage


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m study.analyze",
                                     description=__doc__.split("\n")[0])  # fmt: skip
    parser.add_argument("--tables", type=Path, default=Path("results/tables"))
    parser.add_argument("--data", type=Path, default=Path("data/prepared"))
    parser.add_argument("--out", type=Path, default=Path("results/analysis"))
    args = parser.parse_args(argv)
    try:
        runs = pd.read_parquet(args.tables / "runs.parquet")
        layers = pd.read_parquet(args.tables / "layers.parquet")
        manifest = json.loads((args.data / "manifest.json").read_text())
    except FileNotFoundError as exc:
        print(f"study.analyze: error: {exc.filename} not found; run `dvc repro collect` first",
              file=sys.stderr)  # fmt: skip
        sys.exit(1)
    num_features = {name: entry["num_features"] for name, entry in manifest.items()}
    outputs = {
        "decay_rates": decay_rates(runs, num_features),
        "factor_effects": factor_effects(runs),
        "trainable_depth": trainable_depth(runs),
        "claims": claims(prepare_frames(runs, layers)),
    }
    for name, frame in outputs.items():
        write_table(frame.reset_index(drop=True), args.out / f"{name}.parquet")
    verdicts = claim_verdicts(outputs["claims"])
    records.write_json(args.out / "claims.json", verdicts)
    summary = ", ".join(f"{c} {v['verdict']}" for c, v in verdicts.items())
    agree = outputs["decay_rates"]["agrees"]
    print(f"analyze: {len(outputs['decay_rates'])} cells ({int(agree.sum())} of "
          f"{int(agree.notna().sum())} with a prediction agree within {AGREEMENT:.0%}); "
          f"claims: {summary}")  # fmt: skip


if __name__ == "__main__":
    main()
