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
import os
import platform
import shutil
import sys
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

import hydra
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import ConfigCompositionException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from study import allocator, kernels, loop, nets, records, runlog, sweep
from study import data as datasets
from study.config import (
    Config,
    ConfigError,
    DataConfig,
    Device,
    as_dict,
    from_dict,
    prepared_path,
    validate,
)
from study.probes import profile_summary
from study.records import GRADIENTS, RESULT_STATUSES, Status, summary_column
from study.stack import Stack

log = logging.getLogger("study.train")


def resolve_device(device: Device) -> torch.device:
    if device is Device.auto:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device is Device.cuda and not torch.cuda.is_available():
        raise ConfigError("train.device", "cuda requested but no CUDA device is available")
    return torch.device(str(device))


def summarize(layers: dict[str, np.ndarray]) -> dict[str, Any]:
    """Profile summaries for both gradients at initialization and at the last probe."""
    out: dict[str, Any] = {}
    for when, rows in records.profile_points(layers):
        for grad in GRADIENTS:
            for name, value in profile_summary(layers[f"{grad}_grad_norm"][rows]).items():
                out[summary_column(grad, name, when)] = value
    return out


@dataclass
class Cell:
    """One job of a group: its typed config, the config as recorded, its key and folder."""

    cfg: Config
    resolved: dict[str, Any]
    key: str
    out_dir: Path


def build_stack(cells: Sequence[Cell], splits: datasets.Splits, device: torch.device):
    """Each net initialized alone from its own seed (as a single run would), then stacked."""
    states = [
        nets.initial_state(splits.num_features, splits.num_classes, c.cfg.model, c.cfg.seed)
        for c in cells
    ]
    return Stack(states, cells[0].cfg.model, device)


def execute_group(
    cells: Sequence[Cell], splits: datasets.Splits, parent_run_id: str | None = None
) -> list[dict[str, Any]]:
    """Train, measure and record cells that share a shape, as one stack; their records.

    For each cell, in order: ``layers.parquet``, its MLflow run, and last ``run.json``
    (so a record on disk means the cell is complete). A crash fails the whole group: its
    nets ran as one computation; each cell records the error.
    """
    started = datetime.now(UTC)
    t0 = time.perf_counter()
    cfg = cells[0].cfg
    if cfg.train.threads > 0:
        torch.set_num_threads(cfg.train.threads)
    # Subnormal floats (below 1.2e-38) cost an x86 CPU up to 100x per operation, and a deep
    # net whose gradient vanishes is full of them: flushed to zero (this thread's FTZ/DAZ),
    # they read as 0, which the probes treat as below float32's range. A depth-64 sigmoid
    # net trains 3.4x faster. (Only results within ~1e-31 of zero can differ at all.)
    torch.set_flush_denormal(True)
    allocator.keep_freed_memory()
    kernels.strict_blas()
    device = resolve_device(cfg.train.device)
    if device.type == "cuda":
        # CPU kernels are deterministic already (and this call costs seconds of imports).
        torch.use_deterministic_algorithms(True, warn_only=True)
    base = {
        "schema_version": records.SCHEMA_VERSION,
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
    outcomes: list[loop.Outcome | None] = [None] * len(cells)
    error: dict[str, str] = {}
    try:
        stack = build_stack(cells, splits, device)
        outcomes = list(loop.run(stack, splits, [c.cfg for c in cells], device))
    except Exception as exc:  # noqa: BLE001 - any crash is recorded, then reported
        error = {
            "error": "".join(traceback.format_exception_only(exc)).strip(),
            "traceback": traceback.format_exc(),
        }
    wall = (time.perf_counter() - t0) / len(cells)

    logged = []
    for cell, outcome in zip(cells, outcomes, strict=True):
        layers = outcome.layers if outcome else loop.stack_rows([], cell.cfg.model.depth)
        summary = summarize(layers)
        if outcome is not None:
            summary.update(
                steps_done=outcome.steps_done,
                diverged_at_step=outcome.diverged_at_step,
                steps_to_target=outcome.steps_to_target,
            )
        record = {
            **base,
            "run_name": cell.cfg.run_name,
            "cell_key": cell.key,
            "config": cell.resolved,
            **error,
            "status": outcome.status if outcome else Status.failed,
            "metrics": outcome.metrics if outcome else {},
            "summary": summary,
            "curve": outcome.curve if outcome else {},
            "timings": {**(outcome.timings if outcome else {}), "wall_s": wall},
        }
        records.write_parquet(cell.out_dir / records.LAYERS_FILE, layers)
        logged.append((record, layers, cell.out_dir))
    if cfg.tracking.enabled:
        for (record, _, _), info in zip(
            logged, runlog.log_cells(cfg.tracking, logged, parent_run_id), strict=True
        ):
            record["mlflow"] = info
    finished = datetime.now(UTC).isoformat()
    for record, _, out_dir in logged:
        record["finished_at"] = finished
        records.write_json(out_dir / records.RUN_FILE, record)
    return [record for record, _, _ in logged]


def execute(
    cfg: Config,
    resolved: dict[str, Any],
    splits: datasets.Splits,
    out_dir: Path,
    cell_key: str,
    parent_run_id: str | None = None,
) -> dict[str, Any]:
    """One cell alone: a group of one."""
    [record] = execute_group([Cell(cfg, resolved, cell_key, Path(out_dir))], splits, parent_run_id)
    return record


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


def run_group(jobs: Sequence[tuple[dict[str, Any], Path]], sweep_dir: Path) -> list[dict[str, Any]]:
    """The pool launcher's entry point: jobs of one sweep that share a shape, run together.

    ``jobs`` are (the task's config, resolved, as plain containers; the job's output
    folder); returns one
    :func:`study.sweep.job_result` per job, in order. Cells already done are skipped; the
    rest run as one stack. The launcher groups only jobs that differ in what a stack
    allows (seed, init, learning rate); a group that mixes shapes is a bug, and says so.
    """
    results: list[dict[str, Any] | None] = [None] * len(jobs)
    todo: list[tuple[int, Cell]] = []
    splits = None
    for i, (task_cfg, out_dir) in enumerate(jobs):
        cfg: Config = from_dict(Config, task_cfg)
        validate(cfg)
        splits = load_data(cfg.data)
        resolved = as_dict(cfg)
        key = records.cell_key(resolved, splits.sha256)
        if is_done(records.read_run(out_dir), key):
            results[i] = sweep.job_result(cfg.run_name, "skipped", key, out_dir)
            continue
        records.clear_partial(out_dir)  # an earlier attempt killed mid-write
        todo.append((i, Cell(cfg, resolved, key, Path(out_dir))))
    if todo:
        cells = [cell for _, cell in todo]
        check_stackable(cells)
        parent_id = sweep.parent_run_id(Path(sweep_dir))
        for (i, cell), record in zip(todo, execute_group(cells, splits, parent_id), strict=True):
            results[i] = sweep.job_result(
                cell.cfg.run_name, record["status"], cell.key, cell.out_dir, record["error"]
            )
    return results  # type: ignore[return-value]


# What may differ between the nets of one stack (the launchers' default ``group_over``, plus
# the run name made from them): each net draws its own init, and keeps its own learning
# rate, dropout rate and masks, and batches.
STACKABLE = ("seed", "run_name", "model.init", "optim.lr", "model.dropout", "train.curriculum")


def check_stackable(cells: Sequence[Cell]) -> None:
    """Raise, naming the keys, if the cells differ in more than :data:`STACKABLE`."""

    def shape(cell: Cell) -> dict[str, Any]:
        flat = records.flatten(cell.resolved)
        return {k: v for k, v in flat.items() if k not in STACKABLE}

    first = shape(cells[0])
    for cell in cells[1:]:
        other = shape(cell)
        if other != first:
            differ = sorted(k for k in first.keys() | other.keys() if first.get(k) != other.get(k))
            raise ValueError(f"cells of one group differ in {', '.join(differ)}")


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
