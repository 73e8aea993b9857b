"""One cell of the grid, or a group of cells of one shape trained as one stack.

:func:`execute_group` probes at initialization, trains for ``train.steps`` with probes on
their schedule, evaluates, then records each cell: ``layers.parquet``, then ``run.json`` in
the cell's folder (what makes it recorded), and nothing else: MLflow mirrors the records
afterwards (``study.runs.jobs``, ``study.runs.train``). A non-finite loss ends a net as
``diverged`` (a result); an exception ends the group's cells as ``failed``, recorded with
its error. This module and what it imports are what a cell's numbers come from
(``records.code_version``).
"""

from __future__ import annotations

import os
import platform
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from study import data as datasets
from study import records
from study.config import STACKABLE, Config
from study.engine import allocator, kernels, loop, nets
from study.engine.probes import profile_summary
from study.engine.stack import Stack
from study.records import GRADIENTS, Status, summary_column


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


def timings(outcome: loop.Outcome | None, setup: float, crashed: float) -> dict[str, float]:
    """A cell's costs: its share of building the stack, then of training and probing while
    it was in it (``loop.Clock``); a crashed group's cells share its time alike."""
    if outcome is None:
        return {"wall_s": crashed}
    spent = outcome.timings
    return {**spent, "wall_s": setup + spent["train_s"] + spent["probe_s"]}


@dataclass
class Recorded:
    """A cell's record as written: ``run.json``'s content, the layer table, the folder."""

    record: dict[str, Any]
    layers: dict[str, np.ndarray]
    out_dir: Path


def execute_group(cells: Sequence[Cell], splits: datasets.Splits) -> list[Recorded]:
    """Train, measure and record cells that share a shape, as one stack.

    For each cell, in order: ``layers.parquet``, then ``run.json`` (so a record on disk
    means the cell is complete). A crash fails the whole group: its nets ran as one
    computation; each cell records the error. MLflow is not touched here: the records are
    the source of truth, mirrored afterwards (``study.tracking.cell_runs.mirror``).
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
    device = kernels.resolve_device(cfg.train.device)
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
    setup = 0.0
    try:
        stack = build_stack(cells, splits, device)
        setup = (time.perf_counter() - t0) / len(cells)  # shared alike: every net was built
        outcomes = list(loop.run(stack, splits, [c.cfg for c in cells], device))
    except Exception as exc:  # noqa: BLE001 - any crash is recorded, then reported
        error = {
            "error": "".join(traceback.format_exception_only(exc)).strip(),
            "traceback": traceback.format_exc(),
        }
    crashed = (time.perf_counter() - t0) / len(cells)  # what each cell of a crashed group cost

    logged: list[Recorded] = []
    for cell, outcome in zip(cells, outcomes, strict=True):
        layers = outcome.layers if outcome else loop.stack_rows([], cell.cfg.model.depth)
        summary = summarize(layers)
        if outcome is not None:
            summary.update(
                steps_done=outcome.steps_done,
                diverged_at_step=outcome.diverged_at_step,
                steps_to_target=outcome.steps_to_target,
                plateau_at_step=outcome.plateau_at_step,
                **outcome.jacobian,  # probe.jacobian: study.config.JACOBIAN_STATS
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
            "timings": timings(outcome, setup, crashed),
        }
        records.write_parquet(cell.out_dir / records.LAYERS_FILE, layers)
        logged.append(Recorded(record, layers, cell.out_dir))
    finished = datetime.now(UTC).isoformat()
    for done in logged:
        done.record["finished_at"] = finished
        records.write_json(done.out_dir / records.RUN_FILE, done.record)
    return logged


def execute(
    cfg: Config, resolved: dict[str, Any], splits: datasets.Splits, out_dir: Path, cell_key: str
) -> Recorded:
    """One cell alone: a group of one."""
    [done] = execute_group([Cell(cfg, resolved, cell_key, Path(out_dir))], splits)
    return done


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
