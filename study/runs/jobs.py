"""What a sweep's worker runs: a group of jobs of one shape, from configs to records to
their MLflow runs, and the small result each job hands back to the sweep.

:func:`run_group` is the launchers' group task (``hydra.launcher.group_task``): cells whose
folder holds their result already are skipped; the rest run as one stack
(``study.runs.cell``), are recorded, then mirrored. An MLflow failure leaves them recorded
and says so in their results ("not mirrored"); the sweep counts them and its end, or
``python -m study.tracking mirror``, mirrors them.

While a group runs, it holds each of its cells' lock (:data:`CELL_LOCK`, an flock in the
cell's folder): a cell that another process is training (a second sweep, or a SLURM array
left running by a killed one) is not trained again here; its result says who has it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from study import data as datasets
from study import records
from study.config import Config, TrackingConfig, as_dict, from_dict, validate
from study.runs.cell import Cell, Recorded, check_stackable, execute_group
from study.runs.sweep import hold, name_holder
from study.tracking import cell_runs

CELL_LOCK = ".cell.lock"


def job_result(
    run_name: str,
    status: str,
    cell_key: str | None,
    out_dir: Path | None,
    error: str | None = None,
    mirror_error: str | None = None,
) -> dict[str, Any]:
    """What a job hands back to the sweep (small: it crosses a process boundary).
    ``mirror_error``: why its MLflow run could not be logged (None: it was, or MLflow is
    off)."""
    return {
        "run_name": run_name,
        "status": status,
        "error": error,
        "mirror_error": mirror_error,
        "cell_key": cell_key,
        "dir": str(Path(out_dir).resolve()) if out_dir is not None else None,
    }


def mirror(tracking: TrackingConfig, done: Sequence[Recorded], parent: str | None) -> str | None:
    """Mirror recorded cells to MLflow (when it is on): None, or why it failed."""
    if not tracking.enabled or not done:
        return None
    return cell_runs.mirror_cells(tracking, [(d.record, d.layers, d.out_dir) for d in done], parent)


def recorded(task_cfg: dict[str, Any], out_dir: Path) -> dict[str, Any] | None:
    """The cell's result if its folder already holds it (a finished or diverged record with
    the cell's key), else None: what :func:`run_group` would skip, decided before any task
    is sent to a cluster."""
    record = records.read_run(out_dir)
    if record is None:  # most cells of a first run: no need for the key
        return None
    cfg = from_dict(Config, task_cfg)
    key = records.cell_key(as_dict(cfg), datasets.load_cached(cfg.data).sha256)
    if not records.is_done(record, key):
        return None
    return job_result(cfg.run_name, record["status"], key, out_dir)


def run_group(jobs: Sequence[tuple[dict[str, Any], Path]], sweep_dir: Path) -> list[dict[str, Any]]:
    """Jobs of one sweep that share a shape, run together: one :func:`job_result` each.

    ``jobs`` are (the task's config, resolved, as plain containers; the job's output
    folder). The launcher groups only jobs that differ in what a stack allows
    (``cell.STACKABLE``); a group that mixes shapes is a bug, and says so.
    """
    results: list[dict[str, Any] | None] = [None] * len(jobs)
    todo: list[tuple[int, Cell]] = []
    splits = None
    held: list[int] = []  # the cells' locks, released when the group has answered
    try:
        for i, (task_cfg, out_dir) in enumerate(jobs):
            cfg: Config = from_dict(Config, task_cfg)
            validate(cfg)
            splits = datasets.load_cached(cfg.data)
            resolved = as_dict(cfg)
            key = records.cell_key(resolved, splits.sha256)
            Path(out_dir).mkdir(parents=True, exist_ok=True)
            lock = hold(Path(out_dir) / CELL_LOCK)
            if isinstance(lock, str):
                error = f"being trained by another process ({lock})"
                results[i] = job_result(cfg.run_name, "failed", key, out_dir, error)
                continue
            held.append(lock)
            name_holder(lock)
            # Read under the lock: a process that held it may have just recorded the cell.
            if records.is_done(records.read_run(out_dir), key):
                results[i] = job_result(cfg.run_name, "skipped", key, out_dir)
                continue
            records.clear_partial(out_dir)  # an earlier attempt killed mid-write
            todo.append((i, Cell(cfg, resolved, key, Path(out_dir))))
        if todo:
            cells = [cell for _, cell in todo]
            check_stackable(cells)
            done = execute_group(cells, splits)
            parent = records.read_sweep(sweep_dir).get("parent_run_id")
            failure = mirror(cells[0].cfg.tracking, done, parent)
            for (i, cell), d in zip(todo, done, strict=True):
                results[i] = job_result(cell.cfg.run_name, d.record["status"], cell.key,
                                        cell.out_dir, d.record["error"], failure)  # fmt: skip
    finally:
        for fd in held:
            os.close(fd)
    return results  # type: ignore[return-value]
