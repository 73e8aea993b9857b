"""What the claims compare: per-run outcomes and the per-cell tables built from them.

A *cell* is one configuration (every axis but the seed); its value is the mean over its
seeds, with the standard error of that mean (column ``<outcome>_se``). Where a sweep tries
several learning rates for a configuration, its trainability is judged at its best one
(:func:`best_lr`: chosen on validation accuracy, the outcomes then read on the test split),
so no claim turns on one rate suiting some nets and not others. The claims' tests run over
cells (``study.analysis.verdicts``), so this module is where a run's numbers become a
cell's, and where every outcome a claim names is defined once (:data:`OUTCOMES`).

No run drops out silently. A diverged or failed run scores chance in the accuracy outcomes
(it learned nothing it can be evaluated on); divergence is also an outcome of its own
(``finite``). Steps to the target are a time to an event that may not happen within the
budget: each run contributes min(steps, budget) -- the restricted mean time to the target,
a Kaplan-Meier quantity under censoring at the budget -- and a unit where no run on either
side reached the target carries no information about speed and is left out, counted.
"""

from __future__ import annotations

import functools

import numpy as np
import pandas as pd

from study.analysis import theory
from study.engine import nets
from study.engine.probes import profile_summary
from study.records import Status, summary_column

STABLE_ACCURACY = 0.5  # a learning rate is stable if the run finished with this accuracy
# "At matched training loss" (C18): the first evaluation at which the mean training loss
# since the previous one is at or below this (cross-entropy: about 97% of the digits'
# training batches right; nearly every net of the regularize sweep without dropout gets
# there, a fifth of the way through its budget, before it has memorized the split).
MATCHED_TRAIN_LOSS = 0.1

# outcome column -> what it is (its unit follows the colon); the README and the claims'
# "measurement" text use these words.
SE = "_se"  # the column suffix of a cell's standard error over its seeds
OUTCOMES = {
    "signal_rate": "per-layer log10 signal-gradient rate at init (< 0 vanishing): decades/layer",
    "flatness": "-|signal_rate|, distance from a flat profile negated (0 = flat): decades/layer",
    "first_last": "log10(g_1/g_L) of the signal gradient at init: decades",
    "weight_rate": "per-layer log10 weight-gradient rate at init: decades/layer",
    "activation_rms_rate": "per-layer log10 rate of the layers' output RMS at init: decades/layer",
    "dead_final": "fraction of units never positive on the probe batch, mean over layers, "
    "at the last probe: fraction",
    "relative_mean_final": "|mean| / RMS of the layers' outputs, mean over layers, at the last "
    "probe: fraction of RMS",
    "accuracy": "test accuracy at the end of training, a diverged or failed run at chance "
    "(one over the classes): accuracy",
    "finite": "1 - divergence rate (the loss stayed finite), over the seeds and every "
    "learning rate tried: fraction of runs",
    "finite_chosen": "1 - divergence rate at the configuration's chosen learning rate, over "
    "its seeds: fraction of runs",
    "steps_needed": "restricted mean steps to the target validation accuracy: min(steps, "
    "budget), a run that never reached it (diverged or stopped) counting the budget: steps",
    "reached": "fraction of runs that reached the target validation accuracy within the "
    "budget: fraction of runs",
    "train_loss": "training loss over the last evaluation interval, finished runs only: loss",
    "weight_grad_level": "median over layers of log10 ||dL/dW_l|| at init: decades",
    "gap": "generalization gap, accuracy on the whole training split minus test accuracy "
    "(both in evaluation mode, at the end of training), finished runs only: accuracy",
    "val_at_matched_loss": "validation accuracy at the first evaluation where the mean "
    f"training loss is <= {MATCHED_TRAIN_LOSS} (finished runs that reach it): accuracy",
    # per configuration over a swept level (the derived tables of ``frames``):
    "max_stable_log10_lr": "log10 of the largest learning rate that finishes with test "
    f"accuracy >= {STABLE_ACCURACY} (none: half a decade below the grid): decades of lr",
    "depth_accuracy_gap": "accuracy at the deepest minus at the shallowest depth: accuracy",
    "weight_grad_shrink": "weight_grad_level at the largest minus at the smallest input "
    "scale: decades",
    "accuracy_gain": "test accuracy with dropout minus without, same configuration: accuracy",
}

# Derived factors: a column made of two axes, matched as one.
COMBINED = {"norm_skip": ("norm", "skip", "scaling"), "branch": ("skip", "scaling")}
# What a residual branch is, by its scaling (study.config.Scaling): x + s f(x), s / sqrt(L),
# or a learned scale from 0 (ReZero, SkipInit); "none" for the other skips.
BRANCH = {"constant": "residual", "sqrt_depth": "residual/sqrt(L)", "rezero": "rezero"}

# The axes that tell a table's cells apart (besides the seed).
MODEL_KEYS = ("activation", "init", "norm", "skip", "scaling", "depth")
OPTIM_KEYS = ("setup", "activation", "depth", "norm", "skip", "init")
FRAME_KEYS = {
    "init": MODEL_KEYS,
    "train": MODEL_KEYS,
    "init_runs": (*MODEL_KEYS, "seed"),
    "optim": (*OPTIM_KEYS, "lr"),
    "optim_runs": (*OPTIM_KEYS, "lr", "seed"),
    "lr_range": OPTIM_KEYS,
    "train_runs": (*MODEL_KEYS, "seed"),
    "degradation": ("activation", "init", "norm", "skip", "scaling"),
    "scale_shrink": ("activation", "init", "skip", "depth"),
    "regularize": ("activation", "norm", "skip", "depth", "dropout"),
    "dropout_gain": ("activation", "norm", "skip", "depth", "dropout"),
    "curriculum": ("activation", "norm", "skip", "depth", "label_noise", "curriculum"),
}

# Well initialized: the plain net of the same activation, init and depth has a mean-field
# per-layer rate within 0.02 decades/layer of flat (chi within [0.91, 1.10]).
WELL_INITIALIZED = 0.02


def run_values(
    runs: pd.DataFrame, layers: pd.DataFrame, curves: pd.DataFrame, datasets: dict
) -> pd.DataFrame:
    """Every run with every outcome of :data:`OUTCOMES` (``datasets``: the prepared data's
    manifest, for each dataset's features and classes)."""
    runs = runs.copy()
    finished = runs["status"] == Status.finished
    runs["signal_rate"] = runs[summary_column("signal", "log10_rate", "init")]
    runs["flatness"] = -runs["signal_rate"].abs()
    runs["first_last"] = runs[summary_column("signal", "log10_first_last", "init")]
    runs["weight_rate"] = runs[summary_column("weight", "log10_rate", "init")]
    classes = {name: entry["num_classes"] for name, entry in datasets.items()}
    chance = 1.0 / runs["dataset"].astype(str).map(classes).astype(float)
    runs["accuracy"] = runs["test_accuracy"].where(finished, chance)
    runs["finite"] = (runs["status"] != Status.diverged).astype(float).where(
        runs["status"] != Status.failed)  # a crash says nothing of divergence  # fmt: skip
    budget = runs["steps"].astype(float)
    steps = runs["steps_to_target"].astype("Float64").astype(float)
    runs["reached"] = (steps.notna() & finished).astype(float)
    runs["steps_needed"] = steps.where(finished).clip(upper=budget).fillna(budget)
    runs["train_loss"] = runs["train_loss"].where(finished)
    runs["gap"] = (runs["train_split_accuracy"] - runs["test_accuracy"]).where(finished)
    per_run = _layer_outcomes(layers).merge(_matched_loss(curves), how="outer")
    runs = runs.merge(per_run, on=["sweep", "run_name"], how="left")
    runs["val_at_matched_loss"] = runs["val_at_matched_loss"].where(finished)
    runs["family"] = runs["activation"].map(_family_of()).astype("category")
    runs = with_branch(runs)
    runs["setup"] = runs["optimizer"].astype(str) + np.where(runs["clip_norm"].notna(), "+clip", "")
    regimes = [
        _regime(r.activation, r.init, r.depth, r.width, datasets[str(r.dataset)]["num_features"])
        for r in runs[["activation", "init", "depth", "width", "dataset"]].itertuples()
    ]
    runs["init_quality"] = [quality for quality, _ in regimes]
    runs["phase"] = [phase for _, phase in regimes]
    return runs


def _layer_outcomes(layers: pd.DataFrame) -> pd.DataFrame:
    """Per run: dead units and centring at the last probe; the weight-gradient level and
    the activation-RMS rate at init."""
    run = ["sweep", "run_name"]
    last = layers[layers["step"] == layers.groupby(run, observed=True)["step"].transform("max")]
    last = last.assign(relative_mean=np.abs(last["activation_mean"]) / last["activation_rms"])
    final = last.groupby(run, observed=True).agg(
        dead_final=("dead_fraction", "mean"), relative_mean_final=("relative_mean", "mean")
    )
    at_init = layers[layers["step"] == 0]
    # The median ignores the layers whose gradient underflowed to 0 (-inf) at the input end
    # of a deep vanishing net, as long as they are fewer than half.
    with np.errstate(divide="ignore"):
        at_init = at_init.assign(log_weight=np.log10(at_init["weight_grad_norm"]))
    grouped = at_init.groupby(run, observed=True)
    level = grouped["log_weight"].median().rename("weight_grad_level")
    rms = grouped["activation_rms"].apply(
        lambda s: profile_summary(s.to_numpy())["log10_rate"]
    ).rename("activation_rms_rate")  # fmt: skip
    return pd.concat([final, level, rms], axis=1).reset_index()


def _matched_loss(curves: pd.DataFrame) -> pd.DataFrame:
    """Per run: the validation accuracy at its first evaluation with the mean training loss
    at or below MATCHED_TRAIN_LOSS (runs that never get there are left out)."""
    fit = curves[curves["train_loss"] <= MATCHED_TRAIN_LOSS].sort_values("step")
    first = fit.drop_duplicates(["sweep", "run_name"], keep="first")
    return first[["sweep", "run_name", "val_accuracy"]].rename(
        columns={"val_accuracy": "val_at_matched_loss"})  # fmt: skip


@functools.cache
def _family_of() -> dict[str, str]:
    return {a: f for f in nets.FAMILIES for a in nets.family(f)}


# The depth at which a configuration's phase is read: its deep nets' regime (a plain net
# reaches its fixed point within a few layers, so the phase is the configuration's).
PHASE_DEPTH = 64


def _rate(activation: str, init: str, depth: int, width: int, features: int) -> float:
    """The mean-field per-layer rate of the plain net (-inf where q_l -> 0: vanishing)."""
    p = theory.predict(activation, init, "none", "none", int(depth), int(width), features)
    return p.log10_rate if p.log10_rate is not None else -np.inf


@functools.cache
def _regime(activation: str, init: str, depth: int, width: int, features: int) -> tuple[str, str]:
    """By the mean-field rate of the plain net of this activation and init: "well" or
    "badly" initialized at this depth, and its phase at init: gradients "vanishing" toward
    the input, "flat", or "exploding" (the chaotic side of the edge of chaos)."""
    quality = "well" if abs(_rate(activation, init, depth, width, features)) <= (
        WELL_INITIALIZED) else "badly"  # fmt: skip
    rate = _rate(activation, init, PHASE_DEPTH, width, features)
    phase = "flat" if abs(rate) <= WELL_INITIALIZED else "vanishing" if rate < 0 else "exploding"
    return quality, phase


def with_branch(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with the derived axes of a residual branch: ``scaling`` (the residual
    scaling, "none" without a residual skip), ``branch`` (:data:`BRANCH`, else the skip) and,
    where the norm is known, ``norm_skip``. A frame that has them already is returned as it
    is (analyze's entry derives them once; the tables it hands on call this again)."""
    if {"scaling", "branch"} <= set(frame) and ("norm" not in frame or "norm_skip" in frame):
        return frame
    residual = frame["skip"].astype(str) == "residual"
    if "scaling" not in frame:
        scaling = (frame["residual_scaling"].astype(str) if "residual_scaling" in frame
                   else pd.Series("constant", index=frame.index))  # fmt: skip
        frame = frame.assign(scaling=scaling.where(residual, "none"))
    frame = frame.assign(branch=frame["scaling"].astype(str).map(BRANCH)
                         .where(residual, frame["skip"].astype(str)))  # fmt: skip
    if "norm" in frame:
        frame = frame.assign(norm_skip=frame["norm"].astype(str) + "+" + frame["branch"])
    return frame


def cells(runs: pd.DataFrame, keys: tuple[str, ...]) -> pd.DataFrame:
    """Seed means of every outcome and their standard errors (``<outcome>_se``), one row per
    cell; descriptive columns carried along."""
    carried = [c for c in ("family", "norm_skip", "branch", "init_quality", "phase")
               if c not in keys]  # fmt: skip
    values = [c for c in OUTCOMES if c in runs]
    grouped = runs.groupby(list(keys), observed=True, sort=True)
    out = grouped[values].mean()
    out = out.join(grouped[values].sem().add_suffix(SE))
    out["n_seeds"] = grouped.size()
    for column in carried:
        if column in runs:
            out[column] = grouped[column].first()
    return out.reset_index()


def frames(runs: pd.DataFrame, layers: pd.DataFrame, curves: pd.DataFrame, datasets: dict) -> dict:
    """Every table a claim reads (:data:`FRAME_KEYS`), cells unless named ``*_runs``."""
    return tables(run_values(runs, layers, curves, datasets))


def tables(values: pd.DataFrame) -> dict:
    """:func:`frames` from the runs' outcomes (:func:`run_values`): what the analysis
    recomputes with each seed left out."""
    sweep = {name: values[values["sweep"] == name] for name in values["sweep"].cat.categories}
    tuned = at_best_lr(sweep["train"], FRAME_KEYS["train"])
    out = {
        "init": cells(sweep["init"], FRAME_KEYS["init"]),
        "train": tuned_cells(sweep["train"], tuned, FRAME_KEYS["train"]),
        "train_runs": tuned,
        "init_runs": sweep["init"],
        "optim": cells(sweep["optim"], FRAME_KEYS["optim"]),
        "optim_runs": sweep["optim"],
        "lr_range": lr_range(sweep["optim"]),
    }
    out["degradation"] = level_gap(out["train"], "depth", "accuracy", "depth_accuracy_gap",
                                   FRAME_KEYS["degradation"])  # fmt: skip
    scale = cells(sweep["scale"], (*FRAME_KEYS["scale_shrink"], "input_scale"))
    out["scale_shrink"] = level_gap(scale, "input_scale", "weight_grad_level",
                                    "weight_grad_shrink", FRAME_KEYS["scale_shrink"])  # fmt: skip
    for name in ("regularize", "curriculum"):  # each configuration at its best rate
        runs_of = sweep.get(name, values.iloc[:0])
        out[name] = tuned_cells(runs_of, at_best_lr(runs_of, FRAME_KEYS[name]), FRAME_KEYS[name])
    out["dropout_gain"] = gain_over(out["regularize"], "dropout", "accuracy", "accuracy_gain",
                                    FRAME_KEYS["dropout_gain"])  # fmt: skip
    return out


def best_lr(runs: pd.DataFrame, keys: tuple[str, ...]) -> pd.DataFrame:
    """Per configuration (``keys``: every axis but the learning rate and the seed), the
    rate of the grid with the highest mean validation accuracy over its seeds, a diverged
    run scoring 0 (a rate that sometimes diverges is worse than one that never does), the
    smaller rate on a tie; ``val_accuracy`` is that mean, ``rates`` how many were tried."""
    columns = [*keys, "lr", "val_accuracy", "rates"]
    if runs.empty:
        return pd.DataFrame(columns=columns)
    by_rate = rate_scores(runs, keys)
    by_rate["rates"] = by_rate.groupby(list(keys), observed=True)["lr"].transform("size")
    ranked = by_rate.sort_values([*keys, "val_accuracy", "lr"],
                                 ascending=[*(True for _ in keys), False, True])  # fmt: skip
    return ranked.drop_duplicates(list(keys), keep="first")[columns].reset_index(drop=True)


def rate_scores(runs: pd.DataFrame, keys: tuple[str, ...]) -> pd.DataFrame:
    """Per configuration and learning rate: ``val_accuracy``, the mean over its seeds of
    the validation accuracy, a diverged run scoring 0 (what :func:`best_lr` ranks)."""
    score = runs["val_accuracy"].where(runs["status"] == Status.finished, 0.0).fillna(0.0)
    return (
        runs.assign(score=score).groupby([*keys, "lr"], observed=True)["score"].mean()
        .rename("val_accuracy").reset_index()
    )  # fmt: skip


def tuned_cells(runs: pd.DataFrame, tuned: pd.DataFrame, keys: tuple[str, ...]) -> pd.DataFrame:
    """Cells at their best learning rate: ``finite_chosen`` there, ``finite`` over every rate
    tried (the range of rates a configuration survives is an outcome of its own)."""
    out = cells(tuned.assign(finite_chosen=tuned["finite"]), keys)
    if out.empty:
        return out
    grouped = runs.groupby(list(keys), observed=True)["finite"]
    over_grid = pd.DataFrame({"finite": grouped.mean(), f"finite{SE}": grouped.sem()})
    out = out.drop(columns=["finite", f"finite{SE}"])
    return out.merge(over_grid.reset_index(), on=list(keys), how="left")


def at_best_lr(runs: pd.DataFrame, keys: tuple[str, ...]) -> pd.DataFrame:
    """The runs of each configuration at its :func:`best_lr` (all its seeds)."""
    if runs.empty:
        return runs
    chosen = best_lr(runs, keys)[[*keys, "lr"]]
    return runs.merge(chosen, on=[*keys, "lr"], how="inner")


def lr_range(optim: pd.DataFrame) -> pd.DataFrame:
    """Per optimizer setup, norm, skip and init: the largest stable log10 learning rate
    (none stable: half a decade below the grid) and the fraction of the grid that stayed
    finite, per seed, then seed means; and the steps to the target at the configuration's
    best learning rate (:func:`best_lr`)."""
    keys = FRAME_KEYS["lr_range"]
    if optim.empty:
        return pd.DataFrame(
            columns=[*keys, "max_stable_log10_lr", "finite", "steps_needed", "reached"]
        )
    log_lr = np.log10(optim["lr"])
    stable = (optim["status"] == Status.finished) & (optim["accuracy"] >= STABLE_ACCURACY)
    per_seed = (
        optim.assign(stable_lr=np.where(stable, log_lr, log_lr.min() - 0.5))
        .groupby([*keys, "seed"], observed=True)
        .agg(max_stable_log10_lr=("stable_lr", "max"), finite=("finite", "mean"))
        .reset_index()
    )  # fmt: skip
    grid = cells(per_seed, keys)
    tuned = cells(at_best_lr(optim, keys), keys)
    tuned = tuned[[*keys, *(c for c in ("steps_needed", "reached") if c in tuned)]]
    return grid.merge(tuned, on=list(keys), how="left")


def gain_over(
    frame: pd.DataFrame, factor: str, value: str, name: str, keys: tuple[str, ...]
) -> pd.DataFrame:
    """``value`` at each level of a numeric ``factor`` above its smallest minus at the
    smallest, per combination of the other ``keys``, as column ``name``; NaN-free."""
    if frame.empty or frame[factor].nunique() < 2:
        return pd.DataFrame(columns=[*keys, name])
    others = [k for k in keys if k != factor]
    wide = frame.pivot_table(index=others, columns=factor, values=value, observed=True)
    base = wide.columns.min()
    gain = wide.drop(columns=base).sub(wide[base], axis=0)
    return gain.stack(future_stack=True).rename(name).dropna().reset_index()[[*keys, name]]


def level_gap(
    frame: pd.DataFrame, factor: str, value: str, name: str, keys: tuple[str, ...]
) -> pd.DataFrame:
    """``value`` at the largest level of a numeric ``factor`` minus at its smallest (of the
    levels swept), per combination of ``keys``, as column ``name``; NaN-free."""
    if frame.empty or frame[factor].nunique() < 2:
        return pd.DataFrame(columns=[*keys, name, "family"])
    gains = gain_over(frame, factor, value, name, (*keys, factor))
    top = gains[factor] == frame[factor].max()
    out = gains[top].drop(columns=factor).reset_index(drop=True)
    out["family"] = out["activation"].map(_family_of()) if "activation" in out else np.nan
    return with_branch(out) if "skip" in out else out
