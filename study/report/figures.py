"""Stage ``figures``: the tidy tables and the analysis -> the paper's figures.

    python -m study.report.figures [--tables results/tables] [--analysis results/analysis]
                            [--out paper/generated/figures]

writes every figure as PDF (for the paper) and PNG (for people and MLflow), in the style of
``study.report.style``, and ``figures.json``: per figure stem, a one-sentence description and how
many runs, cells or rows it drew on and from which sweeps (the report puts it in the
captions). Every figure is
written whatever the profile: a panel whose data the profile lacks says so.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # a stage writes files; it never opens a window

import pandas as pd  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from study.config import interruptible  # noqa: E402
from study.records import write_json  # noqa: E402
from study.report import figures_analysis as fa  # noqa: E402
from study.report import (
    figures_beyond,  # noqa: E402
    style,  # noqa: E402
)
from study.report import figures_claims as fc  # noqa: E402
from study.report import figures_generalization as fg  # noqa: E402
from study.report import figures_tables as ft  # noqa: E402


@dataclass(frozen=True)
class Inputs:
    """What the figures draw on; the runs, layers and curves of the sweeps that try several
    learning rates only at each configuration's chosen rate (``chosen``), as the analysis
    judges them."""

    runs: pd.DataFrame
    layers: pd.DataFrame
    curves: pd.DataFrame
    decay: pd.DataFrame
    claims: pd.DataFrame
    trainable: pd.DataFrame
    chosen: pd.DataFrame


# field: (folder argument, file, columns the figures read)
FILES: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "runs": ("tables", "runs.parquet", ("sweep", "run_name", "depth", "activation", "init",
                                        "norm", "skip", "dropout", "curriculum", "lr", "seed",
                                        "steps", "status", "test_accuracy",
                                        "train_split_accuracy")),
    "layers": ("tables", "layers.parquet", ("sweep", "depth", "activation", "init", "norm",
                                            "skip", "lr", "run_name", "status", "step", "layer",
                                            "signal_grad_norm", "weight_grad_norm",
                                            "dead_fraction", "saturated_fraction")),
    "curves": ("tables", "curves.parquet", ("sweep", "run_name", "step", "val_accuracy")),
    "decay": ("analysis", "decay_rates.parquet", ("sweep", "cell_id", "depth", "activation",
                                                  "init", "norm", "skip", "signal_rate",
                                                  "signal_rate_low", "signal_rate_high",
                                                  "theory_rate", "theory_rate_finite_batch",
                                                  "agrees")),
    "claims": ("analysis", "claims.parquet", ("claim", "part", "stratum", "role", "unit",
                                              "carries_verdict", "n", "effect", "effect_low",
                                              "effect_high", "null", "direction", "verdict",
                                              "note", "form", "margin", "fragile")),
    "trainable": ("analysis", "trainable_depth.parquet", ("activation", "init", "norm", "skip",
                                                          "depths", "fails_at", "six_xi_c")),
    "chosen": ("analysis", "chosen_runs.parquet", ("sweep", "run_name", "chosen")),
}  # fmt: skip


@dataclass(frozen=True)
class Spec:
    stem: str
    description: str
    draw: Callable[[Inputs], Figure]
    count: Callable[[Inputs], int]
    unit: str
    sweeps: tuple[str, ...]  # the sweeps it draws on (the caption's provenance)


def _runs(frame: pd.DataFrame) -> int:
    return int(frame["run_name"].nunique()) if len(frame) else 0


FIGURES: tuple[Spec, ...] = (
    Spec("profiles_init", "Per-layer signal and weight gradient norms at initialization in the "
         "deepest nets of the init sweep, each activation with its matched init.",
         lambda d: ft.profiles_init(d.layers),
         lambda d: _runs(ft.profile_rows(d.layers)), "runs", ("init",)),
    Spec("theory_vs_measured", "Measured against mean-field per-layer gradient ratio of every "
         "cell with a prediction.", lambda d: fa.theory_vs_measured(d.decay),
         lambda d: len(fa.theory_rows(d.decay)), "cells",
         ("init", "train", "optim", "scale", "theory")),
    Spec("rate_heatmaps", "Mean per-layer signal-gradient decay rate at initialization per "
         "activation, init, norm and skip, at the init sweep's deepest depth.",
         lambda d: fa.rate_heatmaps(d.decay),
         lambda d: len(fa.heatmap_rows(d.decay)), "cells", ("init",)),
    Spec("trainability", "Test accuracy and divergence rate against depth in the train sweep, "
         "each configuration at its best learning rate.",
         lambda d: ft.trainability(d.runs),
         lambda d: len(ft.train_rows(d.runs)), "runs", ("train",)),
    Spec("trainable_depth", "First depth that fails to train beside mean field's 6 xi_c, plain "
         "nets.", lambda d: fa.trainable_depth(d.trainable),
         lambda d: len(fa.trainable_rows(d.trainable)), "configurations", ("train",)),
    Spec("dynamics", "Signal-gradient profiles along training for contrasting configurations.",
         lambda d: ft.dynamics(d.layers),
         lambda d: _runs(ft.dynamics_rows(d.layers)), "runs", ("train",)),
    Spec("dead_saturated", "Dead and saturated units per layer in deep plain nets, before and "
         "after training.", lambda d: ft.dead_saturated(d.layers),
         lambda d: _runs(ft.dead_rows(d.layers)), "runs", ("train",)),
    Spec("claims_forest", "Every claim's target rows on their outcome's scale: effect, "
         "interval, margin and verdict.",
         lambda d: fc.claims_forest(d.claims), lambda d: len(fc.forest_rows(d.claims)),
         "target rows", ("init", "train", "optim", "scale", "regularize", "curriculum")),
    Spec("generalization_gap", "Generalization gap and test accuracy against the dropout rate, "
         "per norm and skip, each configuration at its best learning rate.",
         lambda d: fg.generalization_gap(d.runs), lambda d: len(fg.gap_rows(d.runs)), "runs",
         ("regularize",)),
    Spec("curriculum_curves", "Validation accuracy along training for each order of the "
         "training examples, each configuration at its best learning rate.",
         lambda d: fg.curriculum_curves(d.curves, d.runs),
         lambda d: int(fg.curriculum_rows(d.curves)["run_name"].nunique()), "runs",
         ("curriculum",)),
)  # fmt: skip


def render(inputs: Inputs, out: Path) -> dict[str, dict]:
    """Every figure of ``FIGURES`` into ``out``, and ``figures.json`` describing them."""
    style.use()
    listing = {}
    for order, spec in enumerate(FIGURES):
        paths = style.save(spec.draw(inputs), out, spec.stem)
        listing[spec.stem] = {"order": order, "description": spec.description,
                              "n": spec.count(inputs),
                              "unit": spec.unit, "sweeps": list(spec.sweeps),
                              "files": [p.name for p in paths]}  # fmt: skip
    write_json(Path(out) / "figures.json", listing)
    return listing


def read_inputs(tables: Path, analysis: Path) -> Inputs:
    """The five input files, checked for the columns the figures read; ``ValueError`` names
    the file and what is wrong with it."""
    folders = {"tables": Path(tables), "analysis": Path(analysis)}
    frames = {}
    for field, (folder, name, columns) in FILES.items():
        path = folders[folder] / name
        if not path.is_file():
            raise ValueError(f"{path} not found")
        try:
            missing = [c for c in columns if c not in pq.read_schema(path).names]
            if missing:
                raise ValueError(f"{path} lacks the columns {', '.join(missing)}")
            # Only the columns drawn: layers.parquet has many more, and rows by the 100,000.
            frames[field] = pd.read_parquet(path, columns=list(columns))
        except (OSError, pa.ArrowException) as exc:
            raise ValueError(f"{path} is not a readable parquet file ({exc})") from exc
    for field in ("runs", "layers", "curves"):
        frames[field] = at_chosen_lr(frames[field], frames["chosen"])
    return Inputs(**frames)


def at_chosen_lr(frame: pd.DataFrame, chosen: pd.DataFrame) -> pd.DataFrame:
    """The rows of runs at their configuration's chosen learning rate, and of sweeps that
    try one rate only (``chosen`` lists the runs of the others)."""

    def key(rows: pd.DataFrame) -> pd.MultiIndex:
        return pd.MultiIndex.from_arrays([rows["sweep"].astype(str), rows["run_name"].astype(str)])

    passed_over = chosen[~chosen["chosen"].astype(bool)]
    return frame[~key(frame).isin(key(passed_over))].reset_index(drop=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m study.report.figures",
                                     description=__doc__.split("\n")[0])  # fmt: skip
    parser.add_argument("--tables", type=Path, default=Path("results/tables"))
    parser.add_argument("--analysis", type=Path, default=Path("results/analysis"))
    parser.add_argument("--out", type=Path, default=Path("paper/generated/figures"))
    args = parser.parse_args(argv)
    try:
        inputs = read_inputs(args.tables, args.analysis)
    except ValueError as exc:
        print(f"study.report.figures: error: {exc}; run `dvc repro analyze` first", file=sys.stderr)
        sys.exit(1)
    listing = render(inputs, args.out)
    listing.update(figures_beyond.render(args.analysis, args.out))  # paper/beyond.tex's
    print(f"figures: {len(listing)} figures -> {args.out}")


if __name__ == "__main__":
    interruptible("study.report.figures", main)
