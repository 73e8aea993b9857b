"""Stage ``analyze``: the tidy tables -> theory beside measurement, factor effects,
trainable depth, and a verdict for every claim.

    python -m study.analysis.analyze

reads ``results/tables/{runs,layers,curves}.parquet`` and writes ``results/analysis/``:

- ``decay_rates.parquet``: per cell, the measured per-layer signal- and weight-gradient
  rates at initialization (mean over seeds, Student-t interval) beside the mean-field
  prediction (``study.analysis.theory``), judged on the rate itself (:func:`rate_agreement`)
  and, the old way, on the per-layer ratio;
- ``factor_effects.parquet``: factorial models (type-II ANOVA, partial eta squared,
  descriptive) of the log10 gradient rate at init and of the test accuracy of finished runs;
- ``trainable_depth.parquet``: per activation x init x norm x skip, the first depth that
  fails to train, beside 6 xi_c from theory;
- ``tuning.parquet``: per configuration of the train sweep, the learning rate it is judged
  at (the best on validation), its validation accuracy at every rate tried, and how much
  it still gained over the last quarter of the budget (has training levelled off?);
- ``chosen_runs.parquet``: every run of the sweeps that try several learning rates, and
  whether it is at its configuration's chosen rate (what the figures draw);
- ``convergence.parquet``: per configuration of the tuned sweeps, its chosen rate, whether
  it is interior to the grid, whether it was still improving at the end, whether it lies
  in a claim's target (``study.analysis.tuning``);
- ``claims.parquet`` and ``claims.json`` (DVC metrics): the hypotheses of ``study.analysis.claims``
  tested by ``study.analysis.verdicts`` -- every target, within-target and secondary row.

The analysis draws no random numbers, so two runs give identical files.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from study import records
from study.analysis import beyond, claims, hypotheses, isometry, outcomes, stats, theory, verdicts
from study.analysis import tuning as convergence
from study.config import interruptible
from study.records import Status, summary_column, write_table

# Theory is judged on the rate itself, in decades per layer (``agrees``):
#     |measured - predicted| <= max(RATE_ABS, RATE_REL |predicted|).
# RATE_ABS: 0.01 decades/layer is a factor 10**0.64 = 4.4 over 64 layers, a quarter of the old
# measure's 0.041, and twice the seed-mean bias of a width-128 net's fitted slope against the
# expected profile (0.005, study.analysis.residual), so an exact theory passes. RATE_REL covers
# steep rates, where corrections scale with the rate itself: a finite-width correction to q_l
# moves log chi, and so the rate, in proportion.
RATE_ABS = 0.01
RATE_REL = 0.05
# The old measure, kept beside it (``agrees_ratio``): the per-layer gradient ratio
# 10**(measured - predicted) within 10% of 1, i.e. |gap| <= 0.041 decades/layer at any rate:
# a flat prediction passes a measured 0.04 decades/layer, 2.5 decades over 64 layers.
AGREEMENT = 0.10
TRAINABLE_MARGIN = 0.05  # a depth fails if its mean accuracy is below the shallowest's - this
TRAINABLE_FLOOR = 0.5  # ... or if the shallowest itself is below this (it fails there)
# Training has levelled off if the mean validation accuracy at the chosen rate rose by less
# than this over the last quarter of the budget (about 2 standard errors of a 5-seed mean
# on the 360 validation images).
LEVELLED_OFF = 0.01
AXES = outcomes.MODEL_KEYS  # a configuration: every axis of the model
# The sweeps whose configurations are judged at their best learning rate: their keys.
TUNED = {"train": AXES, "regularize": outcomes.FRAME_KEYS["regularize"],
         "curriculum": outcomes.FRAME_KEYS["curriculum"]}  # fmt: skip

# ---------------------------------------------------------------------------- decay rates


def decay_rates(runs: pd.DataFrame, num_features: dict[str, int]) -> pd.DataFrame:
    """Per cell (all seeds), the measured rates at init beside the mean-field prediction."""
    runs = outcomes.with_branch(runs)
    ok = runs[runs["status"] != Status.failed]
    rows = []
    for (sweep, cell), group in ok.groupby(["sweep", "cell_id"], observed=True, sort=True):
        first = group.iloc[0]
        measured = {
            name: stats.t_interval(group[summary_column(grad, stat, "init")])
            for name, grad, stat in (("signal_rate", "signal", "log10_rate"),
                                     ("weight_rate", "weight", "log10_rate"),
                                     ("signal_first_last", "signal", "log10_first_last"))
        }  # fmt: skip
        p = theory.predict(first["activation"], first["init"], first["norm"], first["skip"],
                           int(first["depth"]), int(first["width"]),
                           num_features[str(first["dataset"])],
                           input_second_moment=float(first["input_scale"]) ** 2,
                           batch_size=int(first["probe_batch_size"]),
                           residual_scale=float(first["residual_scale"]),
                           residual_scaling=str(first.get("residual_scaling", "constant")),
                           **_explicit_variances(first))  # fmt: skip
        signal = measured["signal_rate"].estimate
        judged = rate_agreement(signal, p.reference)
        censored = group[summary_column("signal", "first_last_censored", "init")]
        rows.append({
            "sweep": sweep, "cell_id": cell,
            **{axis: first[axis] for axis in (*AXES, "width", "dataset", "input_scale",
                                              "residual_scale", "probe_batch_size")},
            "n_seeds": len(group),
            **{f"{name}{suffix}": getattr(interval, field)
               for name, interval in measured.items()
               for suffix, field in (("", "estimate"), ("_low", "low"), ("_high", "high"))},
            "n_censored": int(censored.fillna(False).sum()),
            "theory_rate": _float(p.log10_rate),
            "theory_rate_finite_batch": _float(p.log10_rate_finite_batch),
            "theory_chi": _float(p.chi),
            "theory_q_star": _float(p.q_star),
            "theory_depth_scale": _float(p.depth_scale),
            "theory_basis": p.basis,
            "sigma_w2": p.sigma_w2,
            **judged,
        })  # fmt: skip
    frame = pd.DataFrame(rows)
    for column in ("agrees", "agrees_ratio"):
        frame[column] = frame[column].astype("boolean")
    return frame


def rate_agreement(measured: float, predicted: float | None) -> dict[str, object]:
    """Measured against predicted per-layer rate (decades per layer), both ways.

    ``rate_gap`` = measured - predicted; ``rate_tolerance`` = max(RATE_ABS, RATE_REL |predicted|)
    and ``criterion`` says which of the two it is ("absolute" or "relative"); ``agrees`` if
    |rate_gap| <= rate_tolerance. Beside it the old measure: ``ratio_vs_theory`` =
    10**rate_gap, and ``agrees_ratio`` if it is within AGREEMENT of 1. Without a prediction
    (or a measurement) the gaps are NaN, the verdicts <NA> and the criterion None.
    """
    if predicted is None or not np.isfinite(predicted) or not np.isfinite(measured):
        return {"rate_gap": np.nan, "rate_tolerance": np.nan, "criterion": None,
                "agrees": pd.NA, "ratio_vs_theory": np.nan, "agrees_ratio": pd.NA}  # fmt: skip
    gap = measured - predicted
    relative = RATE_REL * abs(predicted)
    tolerance = max(RATE_ABS, relative)
    ratio = 10**gap
    return {
        "rate_gap": gap,
        "rate_tolerance": tolerance,
        "criterion": "relative" if relative > RATE_ABS else "absolute",
        "agrees": bool(abs(gap) <= tolerance),
        "ratio_vs_theory": ratio,
        "agrees_ratio": bool(abs(ratio - 1) <= AGREEMENT),
    }


def agreement_counts(rates: pd.DataFrame) -> dict[str, int]:
    """For the report's "N of M cells agree on the rate": ``cells`` with a prediction and a
    measurement (M), ``agree_rate`` (N, the ``agrees`` column) and ``agree_ratio`` (the old
    per-layer-ratio measure, ``agrees_ratio``) among them."""
    judged = rates[rates["agrees"].notna()]
    return {"cells": len(judged), "agree_rate": int(judged["agrees"].astype(bool).sum()),
            "agree_ratio": int(judged["agrees_ratio"].astype(bool).sum())}  # fmt: skip


def _float(value: float | None) -> float:
    return float(value) if value is not None else np.nan


EXPLICIT = ("sigma_w2", "sigma_b2")  # the runs' model.sigma_w2, model.sigma_b2, where written


def _explicit_variances(run: pd.Series) -> dict[str, float]:
    """An explicit-variance init's model.sigma_w2 and model.sigma_b2 from a run's row, as
    keywords of ``theory.predict``; none where the row has no value (every other init)."""
    return {k: float(run[k]) for k in EXPLICIT if k in run.index and pd.notna(run[k])}


# ------------------------------------------------------------------------- factor effects

INTERACTIONS = [("depth", "skip"), ("activation", "init"), ("norm", "skip")]


def factor_effects(runs: pd.DataFrame) -> pd.DataFrame:
    """Type-II ANOVA tables: log10 signal rate at init (init sweep), test accuracy of the
    finished runs (train sweep). Descriptive: the rows are runs."""
    tables = []
    for sweep, response in (("init", summary_column("signal", "log10_rate", "init")),
                            ("train", "test_accuracy")):  # fmt: skip
        data = runs[(runs["sweep"] == sweep) & (runs["status"] == Status.finished)]
        if sweep == "train":  # each configuration at its best learning rate
            data = tuned(runs)[lambda r: r["status"] == Status.finished]
        table = stats.factorial_model(data, response, AXES, INTERACTIONS)
        table.insert(0, "response", response)
        table.insert(0, "sweep", sweep)
        table["n"] = len(data)
        tables.append(table)
    return pd.concat(tables, ignore_index=True)


# ------------------------------------------------------------------------ trainable depth


def trainable_depth(runs: pd.DataFrame, num_features: dict[str, int]) -> pd.DataFrame:
    """Per activation x init x norm x skip of the train sweep: the first depth that fails.

    A depth fails if most of its seeds diverged, or if the mean test accuracy of its finished
    seeds is below the shallowest depth's minus TRAINABLE_MARGIN; the shallowest fails if it
    is below TRAINABLE_FLOOR. ``fails_at`` is <NA> when no depth of the grid fails. Beside it,
    6 xi_c of the plain net (Schoenholz et al. 2017: signals cross about 6 depth scales) at
    the configuration's variances -- an explicit-variance init's sigma_w^2, sigma_b^2 (one
    row each) where the runs carry them: finite off the edge of chaos with sigma_b^2 > 0 --
    where theory gives a depth scale (infinite at the edge)."""
    train = tuned(runs)[lambda r: r["status"] != Status.failed]
    rows = []
    keys = ["activation", "init", "norm", "skip", *(k for k in EXPLICIT if k in train.columns)]
    for key, group in train.groupby(keys, observed=True, sort=True, dropna=False):
        by_depth = group.groupby("depth")
        accuracy = by_depth["test_accuracy"].mean()  # NaN for diverged runs: left out
        diverged = by_depth["status"].agg(lambda s: float((s == Status.diverged).mean()))
        depths = list(accuracy.index)
        bar = accuracy.iloc[0] - TRAINABLE_MARGIN
        fails = [d for d in depths if diverged[d] > 0.5 or not accuracy[d] >= bar
                 or accuracy.iloc[0] < TRAINABLE_FLOOR]  # fmt: skip
        first = group.iloc[0]
        p = theory.predict(key[0], key[1], "none", "none", int(max(depths)), int(first["width"]),
                           num_features[str(first["dataset"])],
                           **_explicit_variances(first))  # fmt: skip
        rows.append({
            **dict(zip(keys, key, strict=True)),
            "depths": ",".join(map(str, depths)),
            "accuracy_by_depth": ",".join(f"{a:.3f}" for a in accuracy),
            "divergence_by_depth": ",".join(f"{d:.2f}" for d in diverged),
            "fails_at": fails[0] if fails else pd.NA,
            "trains_to": max([d for d in depths if not fails or d < fails[0]], default=0),
            "six_xi_c": 6 * p.depth_scale if p.depth_scale is not None else np.nan,
        })  # fmt: skip
    frame = pd.DataFrame(rows)
    frame["fails_at"] = frame["fails_at"].astype("Int64")
    return frame


# ---------------------------------------------------------------------------------- tuning


def tuned(runs: pd.DataFrame) -> pd.DataFrame:
    """The train sweep's runs at each configuration's best learning rate."""
    train = runs[(runs["sweep"] == "train") & (runs["status"] != Status.failed)]
    return outcomes.at_best_lr(outcomes.with_branch(train), AXES)


def chosen_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """Every run of the ``TUNED`` sweeps: ``chosen`` if it is at its configuration's best
    learning rate (failed runs never are)."""
    parts = []
    for sweep, keys in TUNED.items():
        of = runs[runs["sweep"] == sweep]
        done = of[of["status"] != Status.failed]
        picked = outcomes.at_best_lr(done, keys)["run_name"] if len(done) else []
        parts.append(of[["sweep", "run_name"]].assign(chosen=of["run_name"].isin(picked)))
    return pd.concat(parts, ignore_index=True)


def tuning(runs: pd.DataFrame, curves: pd.DataFrame) -> pd.DataFrame:
    """Per configuration of the train sweep: the rate it is judged at, the mean validation
    accuracy (diverged runs 0) at each rate tried, and, at the chosen rate, the mean gain in
    validation accuracy of its finished runs over the last quarter of their training."""
    train = runs[(runs["sweep"] == "train") & (runs["status"] != Status.failed)]
    columns = [*AXES, "lr", "val_accuracy", "rates", "val_by_lr", "steps",
               "last_quarter_gain", "levelled_off"]  # fmt: skip
    if train.empty:
        return pd.DataFrame(columns=columns)
    best = outcomes.best_lr(train, AXES)
    by_rate = outcomes.rate_scores(train, AXES)
    listed = by_rate.groupby(list(AXES), observed=True).apply(
        lambda g: ",".join(f"{lr:g}:{v:.3f}" for lr, v in zip(g["lr"], g["val_accuracy"],
                                                               strict=True)),
        include_groups=False,
    ).rename("val_by_lr")  # fmt: skip
    best = best.merge(listed.reset_index(), on=list(AXES))
    # The validation accuracy of each finished run at its last evaluation -- the budget, or
    # the plateau where early stopping ended it -- and at the one nearest three quarters of
    # that (the runs of tuned(runs), without ranking again).
    chosen = train.merge(best[[*AXES, "lr"]], on=[*AXES, "lr"], how="inner")
    finished = chosen[chosen["status"] == Status.finished][["sweep", "run_name"]]
    run = ["sweep", "run_name"]
    points = curves.merge(finished, on=run)
    end = points.groupby(run)["step"].transform("max")
    points = points.assign(end=end, distance=(points["step"] - 0.75 * end).abs())
    last = points[points["step"] == points["end"]].set_index(run)["val_accuracy"]
    early = points.sort_values("distance").drop_duplicates(run).set_index(run)["val_accuracy"]
    gain = (last - early).rename("gain").reset_index().merge(chosen[[*run, *AXES]], on=run)
    per_config = gain.groupby(list(AXES), observed=True)["gain"].mean().rename(
        "last_quarter_gain").reset_index()  # fmt: skip
    best = best.merge(per_config, on=list(AXES), how="left")
    steps = train.groupby(list(AXES), observed=True)["steps"].max().rename("steps")
    best = best.merge(steps.reset_index(), on=list(AXES))
    best["levelled_off"] = (best["last_quarter_gain"] < LEVELLED_OFF).astype("boolean")
    best.loc[best["last_quarter_gain"].isna(), "levelled_off"] = pd.NA
    return best[columns]


# ------------------------------------------------------------------------------- fragility


def fragile(values: pd.DataFrame, table: pd.DataFrame) -> pd.Series:
    """Per row: does a target row's verdict change when any one seed is left out of every
    sweep? (A verdict that turns on one seed is marked fragile in the paper.)"""
    key = ["part", "stratum", "role", "measurement"]
    verdict = table.set_index(key)["verdict"]
    changed = pd.Series(False, index=verdict.index)
    for seed in sorted(values["seed"].unique()):
        again = hypotheses.table(claims.HYPOTHESES, outcomes.tables(values[values["seed"] != seed]))
        other = again.set_index(key)["verdict"].reindex(verdict.index)
        changed |= (table["role"].to_numpy() == "target") & (other != verdict).to_numpy()
    return pd.Series(changed.to_numpy(), index=table.index)


# ------------------------------------------------------------------------------ the stage


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m study.analysis.analyze",
                                     description=__doc__.split("\n")[0])  # fmt: skip
    parser.add_argument("--tables", type=Path, default=Path("results/tables"))
    parser.add_argument("--data", type=Path, default=Path("data/prepared"))
    parser.add_argument("--out", type=Path, default=Path("results/analysis"))
    args = parser.parse_args(argv)
    try:
        runs = pd.read_parquet(args.tables / "runs.parquet")
        layers = pd.read_parquet(args.tables / "layers.parquet")
        curves = pd.read_parquet(args.tables / "curves.parquet")
        manifest = json.loads((args.data / "manifest.json").read_text())
    except FileNotFoundError as exc:
        print(f"study.analysis.analyze: error: {exc.filename} not found; "
              "run `dvc repro collect` first", file=sys.stderr)  # fmt: skip
        sys.exit(1)
    num_features = {name: entry["num_features"] for name, entry in manifest.items()}
    # The inputs' second moments per dataset (the .npz files the manifest checksums).
    moments = {name: isometry.second_moments(args.data / f"{name}.npz") for name in manifest}
    everything = runs  # beyond.tables reads its own sweeps, the articles' analysis the rest
    runs, layers, curves = (t[~t["sweep"].isin(beyond.SWEEPS)] for t in (runs, layers, curves))
    runs = outcomes.with_branch(runs)
    values = outcomes.run_values(runs, layers, curves, manifest)
    table = hypotheses.table(claims.HYPOTHESES, outcomes.tables(values))
    table["fragile"] = fragile(values, table)
    outputs = {
        "decay_rates": decay_rates(runs, num_features),
        "factor_effects": factor_effects(runs),
        "trainable_depth": trainable_depth(runs, num_features),
        "tuning": tuning(runs, curves),
        "chosen_runs": chosen_runs(runs),
        "convergence": convergence.mark_targets(
            convergence.configurations(values, manifest), claims.HYPOTHESES
        ),
        "claims": table,
        **beyond.tables(everything, num_features, moments),  # issue 26: analysis/beyond_*.parquet
    }
    for name, frame in outputs.items():
        write_table(frame.reset_index(drop=True), args.out / f"{name}.parquet")
    by_claim = verdicts.claim_verdicts(table)
    records.write_json(args.out / "claims.json", by_claim)
    summary = ", ".join(f"{c} {v['verdict']}" for c, v in by_claim.items())
    rates = outputs["decay_rates"]
    count = agreement_counts(rates)
    print(f"analyze: {len(rates)} cells ({count['agree_rate']} of {count['cells']} with a "
          f"prediction agree on the rate, within max({RATE_ABS}, {RATE_REL:.0%}) "
          f"decades/layer; {count['agree_ratio']} on the per-layer ratio, within "
          f"{AGREEMENT:.0%}); claims: {summary}")  # fmt: skip


if __name__ == "__main__":
    interruptible("study.analysis.analyze", main)
