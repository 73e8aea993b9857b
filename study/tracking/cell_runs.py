"""A group's MLflow runs: what each cell's record becomes in the MLflow UI.

Kept out of the run modules (``records.run_modules``): editing what MLflow shows, or the
profile picture, reuses every record instead of retraining every cell. The records on disk
are the source of truth; MLflow mirrors them:

- times: start = the record's ``started_at``, end = start + ``timings.wall_s`` (a group's
  cells start together and each lasts its share of the group's wall time: the UI's
  Duration is the cell's own time, not the group's);
- params: the study's knobs (the resolved config less ``run_name`` and ``tracking``);
- tags: status and provenance (``study.*``), MLflow's own (``mlflow.source.*``,
  ``mlflow.user``) and a description (``mlflow.note.content``) holding the command that
  reproduces the cell, one override a line (the run page does not wrap a code block);
- the dataset, as a run input with the data file's checksum as its digest;
- metrics: outcomes, summaries and timings under their record names; the per-layer
  profiles as ``{init,final}_by_layer/<stat>`` with step = layer (1 = input side), the
  statistics that span decades as their log10 (``log10_<stat>``); the learning curves;
  each value to 6 significant digits;
- artifacts: ``layers.parquet``, ``config.json`` and a ``profile.svg`` picture.
"""

from __future__ import annotations

import functools
import getpass
import json
import math
import numbers
import shlex
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from mlflow.entities import Dataset, DatasetInput, InputTag

from study import records
from study.config import TrackingConfig
from study.records import Status
from study.tracking import mirror, profile_svg, reproduce
from study.tracking.run_spec import RunSpec, finite_metrics, metric

MLFLOW_STATUS = {Status.finished: "FINISHED", Status.diverged: "FINISHED", Status.failed: "FAILED"}
# The cell's run id, and the ids of the runs it supersedes until they are in the trash,
# one a line: written as soon as the run has an id (on SQL stores, before its rows are
# committed), so that the rerun of a job killed while logging trashes what it left.
MLFLOW_MARKER = ".mlflow_run"
CONFIG_ARTIFACT = "config.json"
PROFILE_ARTIFACT = "profile.svg"
# What a run looks like in MLflow. Records carry it (``record["mlflow"]["mirror"]``), so a
# sweep logs a skipped cell again when what MLflow shows has changed since it was logged.
MIRROR_VERSION = 3  # 3: metrics to SIGNIFICANT digits, the command one override a line
# Per-layer statistics that span decades across layers: logged as their log10, so that the
# MLflow chart of a vanishing profile is a line, not a flat zero with one spike. (Their
# linear values are in layers.parquet; logging both would cost a third more rows, each
# ~6 us of a cell's bookkeeping and ~200 bytes of the database, for a flat chart.)
LOG10_STATS = ("weight_grad_norm", "signal_grad_norm", "activation_rms", "update_ratio")
# Chart sections of the per-layer profiles: the metric name says the x axis is the layer.
BY_LAYER = {"init": "init_by_layer", "final": "final_by_layer"}
DATA_CONTEXT = "training"  # the input tag MLflow's Dataset column shows beside the name
DIGEST_CHARS = 36  # MLflow keeps at most 36 characters of a dataset digest
SIGNIFICANT = 6  # digits of a logged metric (the UI prints all 17); records keep them all


def layer_metric(when: str, stat: str) -> str:
    return f"{BY_LAYER[when]}/{stat}"


def epoch_ms(stamp: str) -> int:
    return int(datetime.fromisoformat(stamp).timestamp() * 1000)


def times(record: dict[str, Any]) -> tuple[int | None, int | None]:
    """(start, end) in ms: ``started_at`` and ``started_at + wall_s``."""
    if not record.get("started_at"):
        return None, None
    start = epoch_ms(record["started_at"])
    wall = (record.get("timings") or {}).get("wall_s")
    return start, (start + round(1000 * wall) if wall is not None else None)


@functools.cache
def user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (some containers)
        return "unknown"


def dataset(record: dict[str, Any]) -> DatasetInput:
    """The prepared data file the cell read, identified by its SHA-256."""
    data, config = record["data"], record["config"]["data"]
    path = Path(config["dir"]) / f"{data['name']}.npz"
    source = json.dumps({"uri": str(path)})
    profile = json.dumps({"sha256": data["sha256"], "input_scale": config.get("input_scale")})
    entry = Dataset(data["name"], data["sha256"][:DIGEST_CHARS], "local", source, None, profile)
    return DatasetInput(entry, [InputTag("mlflow.data.context", DATA_CONTEXT)])


def command_lines(config: dict[str, Any]) -> str:
    """:func:`reproduce.command`, one override a line, continued: the run page does not wrap
    a code block (a train cell's one line made it ~3,000 px wide). The same shell command."""
    return " \\\n  ".join([reproduce.ENTRY, *map(shlex.quote, reproduce.overrides(config))])


def description(record: dict[str, Any]) -> str:
    """The run's description (markdown): the command that reproduces the cell."""
    return (
        "Reproduce this cell (from the project root, data prepared):\n\n"
        f"```\n{command_lines(record['config'])}\n```\n\n"
        f"Cell key `{record['cell_key']}`, code version `{record['code_version']}`. "
        "Per-layer charts (`init_by_layer/*`, `final_by_layer/*`): step = layer, "
        "1 = input side; the Metrics table shows their last point, the layer nearest the "
        "output. The record: `run.json` and `layers.parquet` in the cell's folder.\n"
    )


def tags(record: dict[str, Any], parent_run_id: str | None) -> dict[str, str]:
    out = {
        "study.status": record["status"],
        "study.cell_key": record["cell_key"],
        "study.code_version": record["code_version"],
        "study.data_sha256": record["data"]["sha256"],
        "mlflow.source.type": "LOCAL",
        "mlflow.source.name": reproduce.ENTRY,
        "mlflow.user": user(),
        "mlflow.note.content": description(record),
    }
    if record.get("git_commit"):
        out["mlflow.source.git.commit"] = record["git_commit"]
    if record["error"]:
        out["study.error"] = record["error"][:5000]
    if parent_run_id:
        out["mlflow.parentRunId"] = parent_run_id
    return out


def params(record: dict[str, Any]) -> dict[str, Any]:
    """The study's knobs: not the run's name nor where it is logged."""
    flat = records.flatten(record["config"])
    return {k: v for k, v in flat.items() if k != "run_name" and not k.startswith("tracking.")}


def shown(value: float) -> float:
    """A value to :data:`SIGNIFICANT` digits: the float nearest that decimal, whose shortest
    form (what the UI prints) is the decimal. Counts stay exact; NaN and inf stay."""
    if isinstance(value, numbers.Integral):
        return value
    return float(f"{value:.{SIGNIFICANT}g}")


def metrics(
    record: dict[str, Any], layers: dict[str, np.ndarray], layer_metrics: Sequence[str]
) -> list:
    """Outcomes, summaries and timings; per-layer profiles at init and at the last probe
    (step = layer); the learning curves (step = training step); to :data:`SIGNIFICANT`
    digits. NaN is left out."""
    now = int(time.time() * 1000)
    scalars = {**record["metrics"], **record["summary"], **record["timings"]}
    out = [
        metric(k, shown(v), timestamp=now)
        for k, v in scalars.items()
        if v is not None and not isinstance(v, bool) and math.isfinite(v)
    ]
    for when, rows in records.profile_points(layers):
        depth = layers["layer"][rows]
        for stat in layer_metrics:
            name, values = stat, layers[stat][rows]
            if stat in LOG10_STATS:
                name = f"log10_{stat}"
                with np.errstate(divide="ignore", invalid="ignore"):
                    values = np.log10(values.astype(float))  # 0 -> -inf: left out, as NaN
            out += finite_metrics(layer_metric(when, name), map(shown, values), depth, now)
    curve = record["curve"]
    for key in ("train_loss", "val_loss", "val_accuracy"):
        values = map(shown, curve.get(key, []))
        out += finite_metrics(f"curve/{key}", values, curve.get("step", []), now)
    return out


def mirrored(record: dict[str, Any], info: dict[str, Any] | None, tracker: mirror.Tracker) -> bool:
    """Whether ``info`` (a cell's ``mlflow.json``) says this record is in ``tracker``'s
    experiment as this version of the mirror logs it."""
    return bool(info) and (
        info.get("record") == record_id(record)
        and info.get("mirror") == MIRROR_VERSION
        and info.get("tracking_uri") == tracker.uri
        and info.get("experiment_id") == tracker.experiment_id
    )


def record_id(record: dict[str, Any]) -> dict[str, Any]:
    """Which record a mirror is of: a rerun cell has the same key but another end time."""
    return {"cell_key": record["cell_key"], "finished_at": record.get("finished_at")}


def superseded_runs(out_dir: Path, tracking_uri: str) -> list[str]:
    """MLflow runs an earlier attempt at this cell left: its last mirror's (of this record or
    an earlier one), or half-logged ones."""
    ids = set()
    previous = records.read_mirror(out_dir)
    if previous and previous.get("tracking_uri") == tracking_uri:
        ids.add(previous["run_id"])
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
) -> RunSpec:
    """The cell's MLflow run."""
    documents = {
        # JSON, not YAML: the resolved config as run.json holds it, which the MLflow UI
        # shows as well, at a tenth of PyYAML's cost per cell.
        CONFIG_ARTIFACT: json.dumps(records.json_safe(record["config"]), indent=2)
    }
    if tracking_cfg.profile_plot and len(layers["step"]):
        steps = sorted({int(s) for s in layers["step"]})
        documents[PROFILE_ARTIFACT] = profile_svg.svg(layers, record["run_name"], steps)
    start, end = times(record)
    return RunSpec(
        run_name=record["run_name"],
        params=params(record),
        tags=tags(record, parent_run_id),
        metrics=metrics(record, layers, tracking_cfg.layer_metrics),
        artifacts=[out_dir / records.LAYERS_FILE],
        status=MLFLOW_STATUS[Status(record["status"])],
        supersedes=supersedes,
        documents=documents,
        start_time=start,
        end_time=end,
        datasets=[dataset(record)],
    )


def log_cells(
    tracking_cfg: TrackingConfig,
    cells: Sequence[tuple[dict[str, Any], dict[str, np.ndarray], Path]],
    parent_run_id: str | None,
) -> list[dict[str, Any]]:
    """One MLflow run per recorded cell (record, layers, out_dir), and its ``mlflow.json``
    there: {"run_id", "experiment_id", "tracking_uri", "mirror", "parent", "record"} each,
    returned in order. Raises whatever MLflow raises (:func:`mirror_cells` catches it).

    The runs an earlier attempt at a cell left go to the trash first (in the same
    transaction on SQL stores), so a rerun never leaves two active runs for one cell.
    """
    if not cells:
        return []
    tracker = mirror.tracker(tracking_cfg.uri, tracking_cfg.experiment, tracking_cfg.bulk)
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
    infos = []
    for (record, _, _), out_dir, spec, run_id in zip(cells, out_dirs, specs, run_ids, strict=True):
        if spec.supersedes:
            write_marker(out_dir, [run_id])  # the superseded runs are in the trash now
        info = {"run_id": run_id, "experiment_id": tracker.experiment_id,
                "tracking_uri": tracker.uri, "mirror": MIRROR_VERSION,
                "parent": parent_run_id, "record": record_id(record)}  # fmt: skip
        records.write_json(out_dir / records.MIRROR_FILE, info)
        infos.append(info)
    return infos


def mirror_cells(
    tracking_cfg: TrackingConfig,
    cells: Sequence[tuple[dict[str, Any], dict[str, np.ndarray], Path]],
    parent_run_id: str | None,
) -> str | None:
    """:func:`log_cells`, for cells whose records are written already: None when they are
    mirrored, else why not, in one line (they stay recorded and can be mirrored later:
    ``python -m study.tracking mirror``)."""
    try:
        log_cells(tracking_cfg, cells, parent_run_id)
    except Exception as exc:  # noqa: BLE001 - any failure of the mirror leaves the records
        return mirror.error_line(exc)
    return None
