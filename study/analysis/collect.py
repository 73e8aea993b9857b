"""Stage ``collect``: the run records of a profile's sweeps -> three tidy tables.

    python -m study.analysis.collect --profile standard

reads ``multirun/<profile>/<sweep>/sweep.json`` for each sweep of ``study.profiles.SWEEPS``
(the cells of the grid as it was last run, with their cell keys), loads each cell's
``run.json`` and ``layers.parquet``, and writes

- ``results/tables/runs.parquet``: one row per run (:data:`RUN_COLUMNS`);
- ``results/tables/layers.parquet``: one row per run, probe step and layer, with the run's
  axes repeated on every row (:data:`LAYER_COLUMNS`), so a plot needs no join;
- ``results/tables/curves.parquet``: one row per run and evaluation of its training
  (:data:`CURVE_COLUMNS`), the axes repeated likewise;
- ``results/metrics/collect.json``: run counts by sweep and status (DVC metrics).

Only the listed cells are gathered, and each record must carry the listed cell key: records
of other grids, code or data versions left in the same folders are never mixed in. Every
record is checked before anything is written (``study.analysis.checks``): a sweep that did
not complete or whose sweep.json cannot be read, and each cell whose record is missing,
unreadable, incomplete, of another cell or of other code, or whose layer table does not fit
its depth and probe steps, gets one line saying what is wrong and how to redo it (the first
:data:`MAX_LINES`, then how many more); a duplicated cell x seed gets one too. The stage then
exits 1 and writes nothing, so the previous tables stay.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from study import records
from study.analysis import checks
from study.analysis.checks import CURVE_STATS, LAYER_TABLE, METRICS
from study.config import (
    JACOBIAN_STATS,
    LAYER_STATS,
    Activation,
    Curriculum,
    Dataset,
    Init,
    Norm,
    Optimizer,
    Scaling,
    Schedule,
    Skip,
)
from study.profiles import SWEEPS, Profile
from study.records import SUMMARY_COLUMNS, Status, write_table

STATUSES = tuple(Status)


def _categories(values) -> pd.CategoricalDtype:
    return pd.CategoricalDtype([str(v) for v in values], ordered=False)


# Column -> dtype, in table order. The README ("Tables") documents every column.
AXES: dict[str, Any] = {
    "sweep": _categories(SWEEPS),
    "depth": "int64",
    "width": "int64",
    "activation": _categories(Activation),
    "init": _categories(Init),
    "norm": _categories(Norm),
    "skip": _categories(Skip),
    "residual_scaling": _categories(Scaling),  # a residual branch's s (study.config.Scaling)
    "dropout": "float64",
    "curriculum": _categories(Curriculum),
    "seed": "int64",
    "dataset": _categories(Dataset),
    "input_scale": "float64",
    "train_examples": "Int64",  # <NA>: the whole training split
    "label_noise": "float64",
    "optimizer": _categories(Optimizer),
    "lr": "float64",
    "clip_norm": "float64",  # NaN: no clipping
    "steps": "int64",
    "cell_id": "string",  # the cell without its seed: what seeds replicate
    "run_name": "string",
    "status": _categories(STATUSES),
}
RUN_COLUMNS: dict[str, Any] = {
    **AXES,
    "profile": _categories(Profile),
    "momentum": "float64",
    "weight_decay": "float64",
    "batch_size": "int64",
    "residual_scale": "float64",
    "sigma_w2": "float64",  # NaN: the init sets its own variances (model.sigma_w2)
    "sigma_b2": "float64",
    "highway_gate_bias": "float64",
    "dense_growth": "int64",
    "probe_batch_size": "int64",
    "probe_schedule": _categories(Schedule),
    "test_accuracy": "float64",
    "test_loss": "float64",
    "val_accuracy": "float64",
    "val_loss": "float64",
    "train_loss": "float64",
    "train_split_accuracy": "float64",
    "train_split_loss": "float64",
    "steps_done": "Int64",
    "diverged_at_step": "Int64",  # <NA>: did not diverge
    "steps_to_target": "Int64",  # <NA>: never reached data.target_accuracy
    "plateau_at_step": "Int64",  # <NA>: still improving at its last step (train.patience)
    **{
        column: (
            "boolean"
            if "_first_last_censored_" in column
            else "Int64"
            if "_n_zero_" in column
            else "float64"
        )
        for column in SUMMARY_COLUMNS
    },
    # The Jacobian's spectrum at init (probe.jacobian); <NA>/NaN where not measured.
    **{k: "boolean" if k == "jacobian_singular" else "float64" for k in JACOBIAN_STATS},
    "wall_s": "float64",
    "train_s": "float64",
    "probe_s": "float64",
    "error": "string",
    "cell_key": "string",
    "code_version": "string",
    "git_commit": "string",
    "data_sha256": "string",
    "mlflow_run_id": "string",
    "run_dir": "string",
}
LAYER_COLUMNS: dict[str, Any] = {
    **AXES,
    "step": "int64",
    "layer": "int64",
    **{stat: "float64" for stat in LAYER_STATS},
}


# The training curve of run.json (checks.CURVE_STATS): per evaluation, the mean training
# loss since the previous one, the validation loss and accuracy, and (train.eval_train) the
# whole training split's loss and accuracy, NaN where not measured.
CURVE_COLUMNS: dict[str, Any] = {
    **AXES,
    "step": "int64",
    **{stat: "float64" for stat in CURVE_STATS},
}


# Bad cells named one by one, at most; then how many more.
MAX_LINES = 20


class CollectError(Exception):
    """The records cannot make a complete, consistent table; the message says why, one
    line per problem."""


def cell_id(record: dict[str, Any]) -> str:
    """Identity of a cell across seeds: the cell key of its config without the seed."""
    config = {k: v for k, v in record["config"].items() if k != "seed"}
    return records.cell_key(config, record["data"]["sha256"])


def _or_nan(value: float | None) -> float:
    return float(value) if value is not None else np.nan


def run_row(record: dict[str, Any], sweep_name: str, profile: str, run_dir: str) -> dict:
    """One row of runs.parquet from one run.json."""
    config = record["config"]
    model, optim, train, probe = (config[k] for k in ("model", "optim", "train", "probe"))
    summary = record.get("summary") or {}
    row = {
        "sweep": sweep_name,
        "depth": model["depth"],
        "width": model["width"],
        "activation": model["activation"],
        "init": model["init"],
        "norm": model["norm"],
        "skip": model["skip"],
        "residual_scaling": model["residual"]["scaling"],
        "dropout": model["dropout"],
        "curriculum": train["curriculum"],
        "seed": config["seed"],
        "dataset": config["data"]["name"],
        "input_scale": config["data"]["input_scale"],
        "train_examples": config["data"]["train_examples"],
        "label_noise": config["data"]["label_noise"],
        "optimizer": optim["name"],
        "lr": optim["lr"],
        "clip_norm": optim["clip_norm"] if optim["clip_norm"] is not None else np.nan,
        "steps": train["steps"],
        "cell_id": cell_id(record),
        "run_name": record["run_name"],
        "status": record["status"],
        "profile": profile,
        "momentum": optim["momentum"],
        "weight_decay": optim["weight_decay"],
        "batch_size": train["batch_size"],
        "residual_scale": model["residual"]["scale"],
        "sigma_w2": _or_nan(model.get("sigma_w2")),
        "sigma_b2": _or_nan(model.get("sigma_b2")),
        "highway_gate_bias": model["highway"]["gate_bias"],
        "dense_growth": model["dense"]["growth"],
        "probe_batch_size": probe["batch_size"],
        "probe_schedule": probe["schedule"],
        **{k: (record.get("metrics") or {}).get(k) for k in METRICS},
        **{k: summary.get(k) for k in _SUMMARY},
        **{k: summary.get(k) for k in JACOBIAN_STATS},
        **{k: (record.get("timings") or {}).get(k) for k in ("wall_s", "train_s", "probe_s")},
        "error": record.get("error"),
        "cell_key": record["cell_key"],
        "code_version": record["code_version"],
        "git_commit": record.get("git_commit"),
        "data_sha256": record["data"]["sha256"],
        "mlflow_run_id": None,  # from the cell's mlflow.json, by gather
        "run_dir": run_dir,
    }
    if summary.get("jacobian_singular"):  # +inf, which run.json holds as null
        row["jacobian_log10_cond"] = np.inf
    return row


_SUMMARY = ("steps_done", "diverged_at_step", "steps_to_target", "plateau_at_step",
            *SUMMARY_COLUMNS)  # fmt: skip


def typed(frame: pd.DataFrame, columns: dict[str, Any]) -> pd.DataFrame:
    """The frame with exactly ``columns``, in order, each cast to its declared dtype."""
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise CollectError(f"internal: columns {missing} were not built")
    out = frame[list(columns)].copy()
    for name, dtype in columns.items():
        if dtype in ("Int64", "boolean", "string"):
            out[name] = out[name].astype("object").where(out[name].notna(), None).astype(dtype)
        else:
            out[name] = out[name].astype(dtype)
    return out


def curve_arrays(record: dict[str, Any]) -> dict[str, np.ndarray]:
    curve = record.get("curve") or {}
    out = {"step": np.asarray(curve.get("step", []), dtype=np.int64)}
    for stat in CURVE_STATS:  # null in run.json: NaN (a diverged evaluation); absent: NaN
        values = curve.get(stat, [None] * len(out["step"]))
        out[stat] = np.asarray([np.nan if v is None else v for v in values], dtype=np.float64)
    return out


def rerun(sweep_name: str, delete: str | None = None) -> str:
    """How to redo a sweep's bad part. DVC sees only sweep.json, so the sweep stage is up to
    date in its eyes (--force); the sweep reruns the cells without a current record."""
    command = f"dvc repro --force --single-item sweep@{sweep_name}"
    return f"delete {delete} and rerun: {command}" if delete else f"rerun the sweep: {command}"


def gather(sweep_dir: Path, sweep_name: str, profile: str, root: Path):
    """(run rows, per-run layer arrays, per-run curve arrays, problems) of one sweep, its
    records checked against its cell list; problems are lines saying what is wrong."""
    rows, layers, curves, problems = [], [], [], []
    info, problem = checks.read_sweep(sweep_dir)
    if problem:  # the sweep itself reads it when it starts: it must go
        return rows, layers, curves, [f"{sweep_dir}: {problem}; {rerun(sweep_name, 'it')}"]
    cells, problem = checks.sweep_cells(info)
    if problem:
        return rows, layers, curves, [f"{sweep_dir}: {problem}; {rerun(sweep_name)}"]
    stale = []
    for cell in cells:
        if not cell.get("dir"):
            problems.append(
                f"{sweep_dir}: cell {cell['run_name']} ({cell.get('status')}) has no record: "
                f"{cell.get('error')}; {rerun(sweep_name)}"
            )
            continue
        where = sweep_dir / cell["dir"]
        record, problem = checks.read_record(where)
        if problem is None:
            problem = checks.record_problem(record, cell)
        if problem is None:
            if checks.stale(record):
                stale.append(where)
            else:
                problem = checks.key_problem(record)
        if problem is None:
            arrays, problem = checks.read_layers(where, record)
        if problem is not None:
            # A record with the cell's key would be skipped as done; its run.json must go,
            # the rest stays: the rerun replaces the layer table and trashes the MLflow run
            # that mlflow.json names.
            delete = None if problem == checks.NO_RECORD else f"its {records.RUN_FILE}"
            problems.append(f"{where}: {problem}; {rerun(sweep_name, delete)}")
            continue
        rows.append(run_row(record, sweep_name, profile, _relative(where, root)))
        rows[-1]["mlflow_run_id"] = mirror_run_id(where)
        layers.append(arrays)
        curves.append(curve_arrays(record))
    if stale:
        # Every cell of a sweep is stale after an edit of the engine: one line, not thousands.
        problems.append(
            f"{sweep_dir}: {len(stale)} of {len(cells)} records (the first {stale[0].name}) "
            f"were written by other code than this checkout's (code version "
            f"{records.code_version()}); {rerun(sweep_name)}"
        )
    return rows, layers, curves, problems


def mirror_run_id(where: Path) -> str | None:
    """The MLflow run the record is mirrored to. None if it is not (yet) or mlflow.json is
    damaged: the mirror is optional (``python -m study.tracking mirror`` redoes it)."""
    try:
        info = records.read_mirror(where)
    except (OSError, ValueError):
        return None
    run_id = info.get("run_id") if isinstance(info, dict) else None
    return run_id if isinstance(run_id, str) else None


def _relative(path: Path, root: Path) -> str:
    path = path.resolve()
    return path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)


def build(sweep_dirs: dict[str, Path], profile: str, root: Path):
    """(runs, layers, curves) tables of the given sweeps, validated."""
    rows: list[dict] = []
    per_run: list[dict[str, np.ndarray]] = []
    per_curve: list[dict[str, np.ndarray]] = []
    problems: list[str] = []
    for name, sweep_dir in sweep_dirs.items():
        r, ly, cv, bad = gather(sweep_dir, name, profile, root.resolve())
        rows += r
        per_run += ly
        per_curve += cv
        problems += bad
    if problems:
        more = len(problems) - MAX_LINES
        lines = problems[:MAX_LINES] + ([f"and {more} more"] if more > 0 else [])
        raise CollectError("\n".join(lines))
    if not rows:
        raise CollectError("no runs to collect: the sweeps list no cells")
    runs = typed(pd.DataFrame(rows), RUN_COLUMNS)
    duplicated = runs.duplicated(["sweep", "cell_id", "seed"], keep=False)
    if duplicated.any():
        names = ", ".join(runs.loc[duplicated, "run_name"].head(4))
        raise CollectError(f"the same cell and seed was recorded twice: {names}")

    layers = long_table(runs, per_run, LAYER_TABLE, LAYER_COLUMNS)
    curves = long_table(runs, per_curve, ("step", *CURVE_STATS), CURVE_COLUMNS)
    return runs, layers, curves


def long_table(runs: pd.DataFrame, per_run: list[dict[str, np.ndarray]], names: tuple[str, ...],
               columns: dict[str, Any]) -> pd.DataFrame:  # fmt: skip
    """Per-run arrays stacked into one table, each row with its run's axes."""
    lengths = np.array([len(arrays["step"]) for arrays in per_run], dtype=np.int64)
    run_index = np.repeat(np.arange(len(runs)), lengths)
    data = {axis: runs[axis].to_numpy()[run_index] for axis in AXES}
    for name in names:
        data[name] = np.concatenate([arrays[name] for arrays in per_run])
    return typed(pd.DataFrame(data), columns)


def counts(runs: pd.DataFrame) -> dict[str, Any]:
    """Runs by sweep and status: the stage's DVC metrics."""

    def by_status(frame: pd.DataFrame) -> dict[str, int]:
        c = Counter(frame["status"].astype(str))
        return {"runs": len(frame), **{s: c[s] for s in STATUSES}}

    out: dict[str, Any] = {"all": by_status(runs)}
    for name in runs["sweep"].cat.categories:
        part = runs[runs["sweep"] == name]
        if len(part):
            out[name] = by_status(part)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m study.analysis.collect", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--profile", default="standard", help="quick | standard | full")
    parser.add_argument("--multirun", type=Path, default=Path("multirun"), help="sweeps' root")
    parser.add_argument("--out", type=Path, default=Path("results"), help="results' root")
    args = parser.parse_args(argv)
    if args.profile not in list(Profile):
        fail(f"--profile: invalid value '{args.profile}', expected one of: "
             f"{', '.join(Profile)}")  # fmt: skip
    sweep_dirs = {name: args.multirun / args.profile / name for name in SWEEPS}
    try:
        runs, layers, curves = build(sweep_dirs, args.profile, Path.cwd())
    except CollectError as exc:
        fail(str(exc))
    metrics = counts(runs)
    write_table(runs, args.out / "tables" / "runs.parquet")
    write_table(layers, args.out / "tables" / "layers.parquet")
    write_table(curves, args.out / "tables" / "curves.parquet")
    records.write_json(args.out / "metrics" / "collect.json", metrics)
    per_sweep = ", ".join(
        f"{name} {m['runs']} ({m['finished']} finished, {m['diverged']} diverged, "
        f"{m['failed']} failed)"
        for name, m in metrics.items()
        if name != "all"
    )
    print(f"collect: {len(runs)} runs, {len(layers)} layer rows, {len(curves)} curve rows: "
          f"{per_sweep} -> {args.out}/tables")  # fmt: skip


def fail(message: str) -> None:
    for line in message.splitlines():
        print(f"study.analysis.collect: error: {line}", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
    main()
