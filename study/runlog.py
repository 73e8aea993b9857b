"""A group's MLflow runs: what each cell's record becomes in the MLflow UI.

Kept out of the run modules (``records.RUN_MODULES``): editing what MLflow shows, or the
profile plot, reuses every record instead of retraining every cell. The records on disk
are the source of truth; MLflow mirrors them (params = the resolved config, tags = status
and provenance, metrics = outcomes, summaries, per-layer profiles and curves, artifacts =
``layers.parquet``, ``config.json`` and optionally a profile plot).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from study import records, tracking
from study.config import TrackingConfig
from study.records import Status

MLFLOW_STATUS = {Status.finished: "FINISHED", Status.diverged: "FINISHED", Status.failed: "FAILED"}
# The cell's run id, and the ids of the runs it supersedes until they are in the trash,
# one a line: written as soon as the run has an id (on SQL stores, before its rows are
# committed), so that the rerun of a job killed while logging trashes what it left.
MLFLOW_MARKER = ".mlflow_run"
CONFIG_ARTIFACT = "config.json"


def profile_plot(layers: dict[str, np.ndarray], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(8, 3), sharex=True)
    steps = sorted(set(layers["step"].tolist()))
    for ax, grad in zip(axes, ("signal", "weight"), strict=True):
        for step in (steps[0], steps[-1]) if len(steps) > 1 else steps[:1]:
            rows = layers["step"] == step
            norms = layers[f"{grad}_grad_norm"][rows]
            with np.errstate(divide="ignore"):
                ax.plot(layers["layer"][rows], np.log10(norms), marker=".", label=f"step {step}")
        ax.set_title(f"{grad} gradient")
        ax.set_xlabel("layer (1 = input side)")
        ax.set_ylabel("log10 norm")
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def metrics(
    record: dict[str, Any], layers: dict[str, np.ndarray], layer_metrics: Sequence[str]
) -> list:
    """Outcomes, summaries and timings; per-layer profiles at init and at the last probe
    (step = layer); the learning curves (step = training step). NaN is left out."""
    now = int(time.time() * 1000)
    scalars = {**record["metrics"], **record["summary"], **record["timings"]}
    out = [
        tracking.metric(k, v, timestamp=now)
        for k, v in scalars.items()
        if v is not None and not isinstance(v, bool) and math.isfinite(v)
    ]
    for when, rows in records.profile_points(layers):
        for stat in layer_metrics:
            out += tracking.finite_metrics(
                f"{when}/{stat}", layers[stat][rows], layers["layer"][rows], now
            )
    curve = record["curve"]
    for key in ("train_loss", "val_loss", "val_accuracy"):
        out += tracking.finite_metrics(
            f"curve/{key}", curve.get(key, []), curve.get("step", []), now
        )
    return out


def superseded_runs(out_dir: Path, tracking_uri: str) -> list[str]:
    """MLflow runs an earlier attempt at this cell left: its record's, or half-logged ones."""
    ids = set()
    previous = records.read_run(out_dir)
    if previous and (previous.get("mlflow") or {}).get("tracking_uri") == tracking_uri:
        ids.add(previous["mlflow"]["run_id"])
    marker = out_dir / MLFLOW_MARKER
    if marker.exists():
        ids.update(marker.read_text().split())
    return sorted(ids)


def write_marker(out_dir: Path, run_ids: Sequence[str]) -> None:
    (out_dir / MLFLOW_MARKER).write_text("\n".join(run_ids) + "\n")


def run_spec(
    tracking_cfg: TrackingConfig,
    record: dict[str, Any],
    layers: dict[str, np.ndarray],
    out_dir: Path,
    parent_run_id: str | None,
    supersedes: list[str],
) -> tracking.RunSpec:
    """The cell's MLflow run (its profile plot, if any, is drawn into ``out_dir``)."""
    artifacts = [out_dir / records.LAYERS_FILE]
    if tracking_cfg.profile_plot and len(layers["step"]):
        plot = out_dir / "profile.png"
        profile_plot(layers, plot, record["run_name"])
        artifacts.append(plot)
    tags = {
        "study.status": record["status"],
        "study.cell_key": record["cell_key"],
        "study.code_version": record["code_version"],
        "study.data_sha256": record["data"]["sha256"],
    }
    if record["error"]:
        tags["study.error"] = record["error"][:5000]
    if parent_run_id:
        tags["mlflow.parentRunId"] = parent_run_id
    return tracking.RunSpec(
        run_name=record["run_name"],
        params=records.flatten(record["config"]),
        tags=tags,
        metrics=metrics(record, layers, tracking_cfg.layer_metrics),
        artifacts=artifacts,
        status=MLFLOW_STATUS[Status(record["status"])],
        supersedes=supersedes,
        # JSON, not YAML: the resolved config as run.json holds it, which the MLflow UI
        # shows as well, at a tenth of PyYAML's cost per cell.
        documents={CONFIG_ARTIFACT: json.dumps(records.json_safe(record["config"]), indent=2)},
    )


def log_cells(
    tracking_cfg: TrackingConfig,
    cells: Sequence[tuple[dict[str, Any], dict[str, np.ndarray], Path]],
    parent_run_id: str | None,
) -> list[dict[str, str]]:
    """One MLflow run per cell: (record, layers, out_dir) -> {"run_id", "experiment_id",
    "tracking_uri"} each, in order. ``layers.parquet`` is in ``out_dir`` already.

    The runs an earlier attempt at a cell left go to the trash first (in the same
    transaction on SQL stores), so a rerun never leaves two active runs for one cell.
    """
    if not cells:
        return []
    tracker = tracking.tracker(tracking_cfg.uri, tracking_cfg.experiment)
    out_dirs = [Path(out_dir) for _, _, out_dir in cells]
    specs = [
        run_spec(tracking_cfg, record, layers, out_dir, parent_run_id,
                 superseded_runs(out_dir, tracker.uri))
        for (record, layers, _), out_dir in zip(cells, out_dirs, strict=True)
    ]  # fmt: skip

    def on_create(i: int, run_id: str) -> None:
        # The new id joins the superseded ones, which stay listed until they are trashed:
        # a job killed anywhere from here leaves its rerun every id it must trash.
        write_marker(out_dirs[i], [*specs[i].supersedes, run_id])

    run_ids = tracker.log_runs(specs, on_create)
    for out_dir, spec, run_id in zip(out_dirs, specs, run_ids, strict=True):
        if spec.supersedes:
            write_marker(out_dir, [run_id])  # the superseded runs are in the trash now
    return [
        {"run_id": run_id, "experiment_id": tracker.experiment_id, "tracking_uri": tracker.uri}
        for run_id in run_ids
    ]
