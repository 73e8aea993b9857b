"""Bookkeeping of a sweep (a Hydra multirun): its MLflow parent run, its counts, its summary.

The sweep's folder (``hydra.sweep.dir``) is its identity. ``sweep.json`` there names the
MLflow parent run, so that every job links its run to it and a rerun of the same sweep
(to resume it) reports under the same parent instead of starting a second one. When the
sweep ends, ``sweep.json`` also lists its cells (folder, cell key, status): the grid as it
was run, which is what ``study.collect`` gathers. Records of other grids or code versions
left in the same folder are not in that list, so they are never mixed in.

Cells are resumable: a job whose folder already holds a finished (or diverged) record with
the same cell key does nothing and reports ``skipped`` (see ``study.train``).
"""

from __future__ import annotations

import enum
import fcntl
import json
import os
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, RunStatus

from study import mlflow_sweep, records, reproduce, tracking
from study.config import ConfigError, TrackingConfig, from_dict

SWEEP_FILE = "sweep.json"
# Held (flock) by the process running the sweep, released when it ends or dies: a second
# invocation of the same sweep, on this machine or on another one sharing the folder,
# would run the same cells at the same time.
LOCK_FILE = ".sweep.lock"


class Profile(enum.StrEnum):
    """How big the study is (params.yaml ``profile``; conf/sweep/<profile>/<sweep>.yaml)."""

    quick = "quick"  # minutes: tests and a first look
    standard = "standard"  # the study of the report: an hour on 2 cores
    full = "full"  # clusters: more depths, seeds and steps


# The sweeps of a profile, in pipeline order (dvc.yaml stages sweep_<name>). They live here,
# not in study.config, so that adding a sweep leaves every run's code_version unchanged.
SWEEPS = ("init", "train", "optim", "scale", "theory", "regularize", "curriculum")


def parent_run_id(sweep_dir: Path) -> str | None:
    """The sweep's MLflow parent run, for a job to link to."""
    return read(sweep_dir).get("parent_run_id")


def job_result(
    run_name: str, status: str, cell_key: str, out_dir: Path, error: str | None = None
) -> dict[str, Any]:
    """What a job hands back to the sweep (small: it crosses a process boundary)."""
    return {
        "run_name": run_name,
        "status": status,
        "error": error,
        "cell_key": cell_key,
        "dir": str(Path(out_dir).resolve()),
    }


def recorded(task_cfg: dict[str, Any], out_dir: Path) -> dict[str, Any] | None:
    """The cell's result if its folder already holds it (a finished or diverged record with
    the cell's key), else None: what ``study.train.run_group`` would skip, decided before
    any task is sent to a cluster."""
    from study import train  # imports this module
    from study.config import Config, as_dict, from_dict

    record = records.read_run(out_dir)
    if record is None:  # most cells of a first run: no need for the key
        return None
    cfg = from_dict(Config, task_cfg)
    key = records.cell_key(as_dict(cfg), train.load_data(cfg.data).sha256)
    if not train.is_done(record, key):
        return None
    return job_result(cfg.run_name, record["status"], key, out_dir)


def lock(sweep_dir: Path) -> int:
    """Hold the sweep's lock (an open descriptor; closing it releases the lock), or raise
    the one-line error that says who has it."""
    fd = os.open(Path(sweep_dir) / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
        os.close(fd)
        raise ConfigError(
            str(sweep_dir), f"this sweep is running already ({holder}); wait for it to end"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} on {os.uname().nodename}\n".encode(), 0)
    return fd


def read(sweep_dir: Path) -> dict[str, Any]:
    """The sweep's ``sweep.json`` (empty if the sweep never started)."""
    path = Path(sweep_dir) / SWEEP_FILE
    return json.loads(path.read_text()) if path.exists() else {}


class Session:
    """One invocation of a sweep: counts outcomes, reports them and lists the cells at the end."""

    def __init__(self, sweep_dir: Path, total: int, tracker: tracking.Tracker | None, held: int):
        self.sweep_dir, self.total, self.tracker = sweep_dir, total, tracker
        self.held = held  # the sweep's lock
        self.counts: Counter[str] = Counter()
        self.failures: list[tuple[str, str]] = []
        self.cells: list[dict[str, Any]] = []
        self.info: dict[str, Any] = {}
        self.parent_id: str | None = None
        self.previous_parent: str | None = None  # the parent run of the last invocation
        self.tracking_cfg: TrackingConfig | None = None
        self.t0 = time.monotonic()

    @classmethod
    def start(
        cls, config: Any, sweep_dir: Path, total: int, about: mlflow_sweep.About | None = None
    ) -> Session:
        """Take the sweep's lock, then create the MLflow schema, experiment and parent run
        before any worker starts. ``about``: how the sweep was asked for (its command,
        preset and grid), which the parent run and the experiment show."""
        held = lock(sweep_dir)
        try:
            return cls._open(config, sweep_dir, total, held, about or mlflow_sweep.About())
        except BaseException:
            os.close(held)
            raise

    @classmethod
    def _open(
        cls, config: Any, sweep_dir: Path, total: int, held: int, about: mlflow_sweep.About
    ) -> Session:
        tracker = None
        if config.tracking.enabled:
            tracker = tracking.Tracker(config.tracking.uri, config.tracking.experiment)
        session = cls(sweep_dir, total, tracker, held)
        previous = read(sweep_dir)
        if tracker is not None:
            session.tracking_cfg = from_dict(TrackingConfig, _plain(config.tracking))
            if (previous.get("tracking_uri"), previous.get("experiment_id")) == (
                tracker.uri, tracker.experiment_id,
            ):  # fmt: skip
                session.previous_parent = previous.get("parent_run_id")
            name = sweep_dir.name
            session.parent_id = mlflow_sweep.open_parent(
                tracker, session.previous_parent, about, name, sweep_dir, total
            )
            mlflow_sweep.prepare_experiment(tracker, about, name, session.parent_id)
            # Composed once here, inherited by forked workers: each cell's description
            # (the command that reproduces it) is built against these defaults.
            reproduce.defaults()
        session.info = {
            "parent_run_id": session.parent_id,
            "experiment_id": tracker.experiment_id if tracker else None,
            "tracking_uri": tracker.uri if tracker else None,
            "total": total,
            "started_at": datetime.now(UTC).isoformat(),
        }
        # Until this invocation ends, the folder's cell list is unknown: a killed sweep
        # must not leave the previous (complete) list behind.
        records.write_json(sweep_dir / SWEEP_FILE, {**session.info, "complete": False})
        return session

    def add(self, cell: dict[str, Any]) -> None:
        """One job's result: :func:`job_result`, or what the launcher knows of a crashed job."""
        status = cell["status"]
        self.counts[status] += 1
        if status == "failed":
            self.failures.append((cell["run_name"], cell.get("error") or "no error recorded"))
        self.cells.append(cell)

    def finish(self) -> None:
        try:
            self._finish()
        finally:
            os.close(self.held)

    def _finish(self) -> None:
        done = sum(self.counts.values())
        wall = time.monotonic() - self.t0
        self._write_cells(done == self.total, wall)
        if self.tracker is not None and self.parent_id is not None:
            self._close_parent(done, wall)
        c = self.counts
        print(
            f"[sweep] {self.sweep_dir}: {done}/{self.total} cells in {wall:.1f}s: "
            f"{c['finished']} finished, {c['diverged']} diverged, {c['failed']} failed, "
            f"{c['skipped']} skipped",
            flush=True,
        )
        for name, line in self.failures:
            print(f"[sweep] failed: {name}: {line}", flush=True)

    def _close_parent(self, done: int, wall: float) -> None:
        """The cells' runs under the parent, the summary on it, then its counts and end."""
        assert self.tracker is not None and self.parent_id is not None
        recorded, skipped = [], []
        for cell in self.cells:
            record = records.read_run(Path(cell["dir"])) if cell.get("dir") else None
            if record is not None:
                recorded.append(record)
                if cell["status"] == "skipped" and record.get("mlflow"):
                    skipped.append((record, Path(cell["dir"])))
        relogged = mlflow_sweep.adopt(
            self.tracker, self.tracking_cfg, self.parent_id, self.previous_parent, skipped
        )
        try:
            mlflow_sweep.publish_summary(
                self.tracker, self.parent_id, self.sweep_dir / SWEEP_FILE, recorded
            )
        except Exception as exc:  # noqa: BLE001 - the cells are logged; say what is missing
            print(f"[sweep] the parent run's summary is incomplete: {exc}", flush=True)
        now = int(time.time() * 1000)
        metrics = [
            Metric(f"cells_{k}", float(self.counts[k]), now, 0)
            for k in ("finished", "diverged", "failed", "skipped")
        ]
        metrics += [
            Metric("cells_total", float(self.total), now, 0),
            Metric("cells_not_run", float(self.total - done), now, 0),
            Metric("cells_relogged", float(relogged), now, 0),
            Metric("wall_s", wall, now, 0),
        ]
        tags = {"study.failed_cells": " ".join(n for n, _ in self.failures)[:5000]}
        self.tracker.close_parent(
            self.parent_id,
            metrics,
            tags,
            RunStatus.to_string(RunStatus.FINISHED if done == self.total else RunStatus.KILLED),
        )

    def _write_cells(self, complete: bool, wall: float) -> None:
        root = self.sweep_dir.resolve()
        cells = []
        for cell in self.cells:
            where = Path(cell["dir"]) if cell.get("dir") else None
            if where is not None and where.is_relative_to(root):
                where = where.relative_to(root)
            cells.append({**cell, "dir": where.as_posix() if where else None})
        cells.sort(key=lambda c: (c["dir"] or "", c["run_name"]))
        records.write_json(
            self.sweep_dir / SWEEP_FILE,
            {
                **self.info,
                "complete": complete,
                "finished_at": datetime.now(UTC).isoformat(),
                "wall_s": wall,
                "counts": {k: self.counts[k] for k in sorted(self.counts)},
                "cells": cells,
            },
        )


def _plain(node: Any) -> dict[str, Any]:
    """A config node (DictConfig or dict) as plain, resolved containers."""
    from omegaconf import DictConfig, OmegaConf

    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node
