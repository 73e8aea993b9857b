"""Stage ``sweep``: one run = one cell of the grid.

    python -m study.train model.depth=32 model.activation=tanh
    python -m study.train -m model.depth=2,8,32 seed=0,1,2

Probe at initialization, train for ``train.steps`` with probes on their schedule, evaluate,
then record: ``layers.parquet``, the MLflow run, and last ``run.json`` in the job's output
directory. A non-finite loss ends the run as ``diverged`` (exit 0: it is a result); an
exception ends it as ``failed``, recorded with its error.
"""

from __future__ import annotations

import logging
import math
import os
import platform
import shutil
import sys
import time
import traceback
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

import hydra
import numpy as np
import torch
import yaml
from hydra.core.hydra_config import HydraConfig
from hydra.errors import ConfigCompositionException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from study import data as datasets
from study import loop, nets, records, sweep, tracking
from study.config import (
    Config,
    ConfigError,
    DataConfig,
    Device,
    as_dict,
    prepared_path,
    validate,
)
from study.probes import profile_summary
from study.records import GRADIENTS, RESULT_STATUSES, Status, summary_column

log = logging.getLogger("study.train")

MLFLOW_STATUS = {Status.finished: "FINISHED", Status.diverged: "FINISHED", Status.failed: "FAILED"}
MLFLOW_MARKER = ".mlflow_run"  # the run id, written as soon as the MLflow run exists


def resolve_device(device: Device) -> torch.device:
    if device is Device.auto:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device is Device.cuda and not torch.cuda.is_available():
        raise ConfigError("train.device", "cuda requested but no CUDA device is available")
    return torch.device(str(device))


def profile_points(layers: dict[str, np.ndarray]) -> list[tuple[str, np.ndarray]]:
    """("init", rows) and, when training moved past it, ("final", rows of the last probe)."""
    steps = layers["step"]
    if not len(steps):
        return []
    points = [("init", steps == 0)]
    if steps.max() > 0:
        points.append(("final", steps == steps.max()))
    return [(when, rows) for when, rows in points if rows.any()]


def summarize(layers: dict[str, np.ndarray]) -> dict[str, Any]:
    """Profile summaries for both gradients at initialization and at the last probe."""
    out: dict[str, Any] = {}
    for when, rows in profile_points(layers):
        for grad in GRADIENTS:
            for name, value in profile_summary(layers[f"{grad}_grad_norm"][rows]).items():
                out[summary_column(grad, name, when)] = value
    return out


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


def mlflow_metrics(
    outcome: loop.Outcome, summary: dict[str, Any], layer_metrics: Sequence[str]
) -> list:
    now = int(time.time() * 1000)
    metrics = [
        tracking.metric(k, v, timestamp=now)
        for k, v in {**outcome.metrics, **summary}.items()
        if v is not None and not isinstance(v, bool) and math.isfinite(v)
    ]
    layers = outcome.layers
    for when, rows in profile_points(layers):
        for stat in layer_metrics:
            metrics += tracking.finite_metrics(
                f"{when}/{stat}", layers[stat][rows], layers["layer"][rows], now
            )
    for key in ("train_loss", "val_loss", "val_accuracy"):
        metrics += tracking.finite_metrics(
            f"curve/{key}", outcome.curve.get(key, []), outcome.curve.get("step", []), now
        )
    return metrics


def execute(
    cfg: Config,
    resolved: dict[str, Any],
    splits: datasets.Splits,
    out_dir: Path,
    cell_key: str,
    parent_run_id: str | None = None,
) -> dict[str, Any]:
    """Train, measure and record one run; returns its record (as written to run.json)."""
    started = datetime.now(UTC)
    t0 = time.perf_counter()
    if cfg.train.threads > 0:
        torch.set_num_threads(cfg.train.threads)
    device = resolve_device(cfg.train.device)
    if device.type == "cuda":
        # CPU kernels are deterministic already (and this call costs seconds of imports).
        torch.use_deterministic_algorithms(True, warn_only=True)
    record: dict[str, Any] = {
        "schema_version": records.SCHEMA_VERSION,
        "run_name": cfg.run_name,
        "cell_key": cell_key,
        "config": resolved,
        "code_version": records.code_version(),
        "git_commit": records.git_commit(),
        "data": {"name": str(cfg.data.name), "sha256": splits.sha256},
        "environment": {
            "torch": torch.__version__,
            "python": platform.python_version(),
            "device": str(device),
            "host": platform.node(),
            "pid": os.getpid(),
        },
        "started_at": started.isoformat(),
        "error": None,
    }
    outcome: loop.Outcome | None = None
    try:
        torch.manual_seed(cfg.seed)
        model = nets.build(splits.num_features, splits.num_classes, cfg.model).to(device)
        outcome = loop.run(model, splits, cfg, device)
        status = outcome.status
    except Exception as exc:  # noqa: BLE001 - any crash is recorded, then reported
        status = Status.failed
        record["error"] = "".join(traceback.format_exception_only(exc)).strip()
        record["traceback"] = traceback.format_exc()

    layers = outcome.layers if outcome else loop.stack_rows([], cfg.model.depth)
    summary = summarize(layers)
    if outcome is not None:
        summary.update(
            steps_done=outcome.steps_done,
            diverged_at_step=outcome.diverged_at_step,
            steps_to_target=outcome.steps_to_target,
        )
    record.update(
        status=status,
        metrics=outcome.metrics if outcome else {},
        summary=summary,
        curve=outcome.curve if outcome else {},
    )

    records.write_parquet(out_dir / records.LAYERS_FILE, layers)
    timings = {**(outcome.timings if outcome else {}), "wall_s": time.perf_counter() - t0}
    record["timings"] = timings
    if cfg.tracking.enabled:
        record["mlflow"] = log_to_mlflow(cfg, record, outcome, summary, out_dir, parent_run_id)
    record["finished_at"] = datetime.now(UTC).isoformat()
    records.write_json(out_dir / records.RUN_FILE, record)
    return record


def log_to_mlflow(
    cfg: Config,
    record: dict[str, Any],
    outcome: loop.Outcome | None,
    summary: dict[str, Any],
    out_dir: Path,
    parent_run_id: str | None = None,
) -> dict[str, str]:
    tracker = tracking.tracker(cfg.tracking.uri, cfg.tracking.experiment)
    tracker.delete_runs(superseded_runs(out_dir, tracker.uri))
    config_path = out_dir / "config.yaml"
    config_path.write_text(yaml.safe_dump(record["config"], sort_keys=False))
    artifacts = [out_dir / records.LAYERS_FILE, config_path]
    if cfg.tracking.profile_plot and outcome is not None and len(outcome.layers["step"]):
        plot = out_dir / "profile.png"
        profile_plot(outcome.layers, plot, cfg.run_name)
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
    marker = out_dir / MLFLOW_MARKER
    run_id = tracker.log_run(
        run_name=cfg.run_name,
        params=tracking.flatten(record["config"]),
        tags=tags,
        metrics=(
            mlflow_metrics(outcome, {**summary, **record["timings"]}, cfg.tracking.layer_metrics)
            if outcome
            else []
        ),
        artifacts=artifacts,
        status=MLFLOW_STATUS[record["status"]],
        on_create=marker.write_text,
    )
    return {"run_id": run_id, "experiment_id": tracker.experiment_id, "tracking_uri": tracker.uri}


def superseded_runs(out_dir: Path, tracking_uri: str) -> list[str]:
    """MLflow runs an earlier attempt at this job left: its record's, or a half-logged one."""
    ids = set()
    previous = records.read_run(out_dir)
    if previous and (previous.get("mlflow") or {}).get("tracking_uri") == tracking_uri:
        ids.add(previous["mlflow"]["run_id"])
    marker = out_dir / MLFLOW_MARKER
    if marker.exists():
        ids.add(marker.read_text().strip())
    return sorted(ids)


_DATA_CACHE: dict[tuple, datasets.Splits] = {}


def load_data(data: DataConfig) -> datasets.Splits:
    """``datasets.load``, kept per process: a sweep worker reads each file once."""
    path = prepared_path(data)
    stat = path.stat() if path.exists() else None
    key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size) if stat else None
    if key is None or key not in _DATA_CACHE:
        splits = datasets.load(data)  # raises the one-line ConfigError when missing
        _DATA_CACHE.clear()
        _DATA_CACHE[key] = splits
    return _DATA_CACHE[key]


def _discard_job_dir(out_dir: Path) -> None:
    """Bad input leaves nothing behind: remove the folder Hydra made for this job."""
    shutil.rmtree(out_dir, ignore_errors=True)
    parent = out_dir.parent
    if parent.is_dir() and not any(parent.iterdir()):
        parent.rmdir()


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(dcfg: DictConfig) -> dict[str, Any]:
    hc = HydraConfig.get()
    out_dir = Path(hc.runtime.output_dir)
    try:
        cfg: Config = OmegaConf.to_object(dcfg)  # type: ignore[assignment]
        validate(cfg)
        resolve_device(cfg.train.device)
        splits = load_data(cfg.data)
    except ConfigError as exc:
        _discard_job_dir(out_dir)
        fail(2, f"error: {exc}")
    resolved = as_dict(cfg)  # resolved once already by to_object; re-resolving costs ms
    key = records.cell_key(resolved, splits.sha256)
    parent_id = None
    if hc.mode == RunMode.MULTIRUN:
        if is_done(records.read_run(out_dir), key):
            return sweep.job_result(cfg.run_name, "skipped", key, out_dir)
        parent_id = sweep.parent_run_id(Path(hc.sweep.dir))
    records.clear_partial(out_dir)  # an earlier attempt killed mid-write
    record = execute(cfg, resolved, splits, out_dir, key, parent_id)
    status = record["status"]
    # In a sweep the launcher's progress line speaks for the cells; one line each is noise.
    level = logging.INFO if hc.mode == RunMode.RUN else logging.DEBUG
    log.log(level, "%s: %s (record in %s)", cfg.run_name, status, out_dir)
    if status == "failed" and hc.mode == RunMode.RUN:
        fail(1, f"{cfg.run_name} failed: {record['error']} (recorded in {out_dir})")
    return sweep.job_result(cfg.run_name, status, key, out_dir, record["error"])


def is_done(record: dict[str, Any] | None, cell_key: str) -> bool:
    """A cell needs no rerun if its record has this key and a result (diverging is one)."""
    return bool(
        record and record.get("cell_key") == cell_key and record["status"] in RESULT_STATUSES
    )


def fail(code: int, message: str) -> NoReturn:
    """One line on stderr and an exit status; SystemExit passes through Hydra untouched."""
    print(f"study.train: {message}", file=sys.stderr)
    sys.exit(code)


def _one_line(exc: BaseException) -> str:
    """A composition or validation error as a single line that names the key."""
    if isinstance(exc, ConfigError):
        return str(exc)
    cause = exc.__cause__ if isinstance(exc, ConfigCompositionException) else exc
    if isinstance(cause, OmegaConfBaseException):
        key = getattr(cause, "full_key", None) or ""
        msg = str(getattr(cause, "msg", None) or cause).splitlines()[0]
        return f"{key}: {msg}" if key else msg
    # e.g. a missing group option: keep the message, drop Hydra's search-path listing.
    return " ".join(str(exc).split("Config search path")[0].split())


def cli() -> None:
    # Hydra prints errors over several lines plus a hint; we report them ourselves in one.
    os.environ.setdefault("HYDRA_FULL_ERROR", "1")
    try:
        main()
    except (ConfigError, ConfigCompositionException, OmegaConfBaseException) as exc:
        fail(2, f"error: {_one_line(exc)}")
    except Exception as exc:
        if not _raised_by_hydra(exc):
            raise  # a bug: keep the traceback
        fail(2, f"error: {_one_line(exc)}")


def _raised_by_hydra(exc: BaseException) -> bool:
    """Hydra raises on bad command lines (unknown flags, bad sweep syntax): input errors."""
    frames = traceback.extract_tb(exc.__traceback__)
    return bool(frames) and f"{os.sep}hydra{os.sep}" in frames[-1].filename


if __name__ == "__main__":
    cli()
