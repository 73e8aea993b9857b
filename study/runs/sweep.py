"""Bookkeeping of a sweep (a Hydra multirun): its MLflow parent run, its counts, its summary.

The sweep's folder (``hydra.sweep.dir``) is its identity. ``sweep.json`` there names the
MLflow parent run, so that every job links its run to it and a rerun of the same sweep
(to resume it) reports under the same parent instead of starting a second one. When the
sweep ends, ``sweep.json`` also lists its cells (folder, cell key, status): the grid as it
was run, which is what ``study.analysis.collect`` gathers. Records of other grids or code versions
left in the same folder are not in that list, so they are never mixed in.

Cells are resumable: a job whose folder already holds a finished (or diverged) record with
the same cell key does nothing and reports ``skipped`` (see ``study.train``).
"""

from __future__ import annotations

import fcntl
import os
import re
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, RunStatus
from mlflow.exceptions import MlflowException

from study import records
from study.config import ConfigError, TrackingConfig, from_dict
from study.tracking import experiment, mirror, reproduce
from study.tracking.reserve import Reserve

# Held (flock) by the process running the sweep, released when it ends or dies: a second
# invocation of the same sweep, on this machine or on another one sharing the folder,
# would run the same cells at the same time. A SLURM sweep's job array outlives its
# process when that is killed outright (kill -9, a lost login node), so the launcher names
# the array in this file too, and the sweep stays refused while squeue lists the array.
LOCK_FILE = ".sweep.lock"
ARRAY = re.compile(r"SLURM job array (\d+)")


def hold(path: Path) -> int | str:
    """An exclusive lock (flock) on ``path``, created if need be: the open descriptor
    (closing it, or this process's end, releases it); or, when another process holds it,
    who that is, as its holder wrote it (:func:`name_holder`), in one line."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        text = os.pread(fd, 200, 0).decode(errors="replace")
        os.close(fd)
        return "; ".join(line for line in text.splitlines() if line.strip()) or "another process"
    return fd


def name_holder(fd: int, also: str | None = None) -> None:
    """Write this process (and ``also``, a line) into a lock file it holds."""
    lines = [f"pid {os.getpid()} on {os.uname().nodename}", *([also] if also else [])]
    text = ("\n".join(lines) + "\n").encode()
    # Written over, then cut to length: the file never lacks the array while it runs.
    os.pwrite(fd, text, 0)
    os.ftruncate(fd, len(text))


def lock(sweep_dir: Path) -> int:
    """Hold the sweep's lock (an open descriptor; closing it releases the lock), or raise
    the one-line error that says who has it, or which of its SLURM job arrays still runs."""
    held = hold(Path(sweep_dir) / LOCK_FILE)
    if isinstance(held, str):
        message = f"this sweep is running already ({held}); wait for it to end"
        raise ConfigError(str(sweep_dir), message)
    try:
        refuse_live_array(sweep_dir, os.pread(held, 200, 0).decode(errors="replace"))
    except BaseException:
        os.close(held)
        raise
    name_holder(held)
    return held


def refuse_live_array(sweep_dir: Path, holder: str) -> None:
    """Raise if the lock file's last holder named a SLURM job array that squeue still lists
    (its tasks would train the cells a new invocation queues again)."""
    named = ARRAY.search(holder)
    if named is None:
        return
    from study.runs import slurm_queue  # imports submitit: only for a folder SLURM used

    array, where = named.group(1), Path(sweep_dir)
    try:
        tasks = slurm_queue.queued(array)
    except RuntimeError as exc:
        message = (f"{where}: cannot tell whether SLURM job array {array} of an earlier run "
                   f"of this sweep still runs ({exc}); once it has ended, delete "
                   f"{where / LOCK_FILE}")  # fmt: skip
        raise ConfigError("hydra.sweep.dir", message) from None
    if tasks:
        states = Counter(state.lower() for _, state in tasks)
        message = (f"{where}: SLURM job array {array} of an earlier run of this sweep is "
                   f"still in the queue ({', '.join(f'{n} {s}' for s, n in states.items())}); "
                   f"wait for it to end, or cancel it: scancel {array}")  # fmt: skip
        raise ConfigError("hydra.sweep.dir", message)


def name_array(sweep_dir: Path, array: str | None) -> None:
    """Name in the sweep's lock file the SLURM job array this process has just submitted,
    or, with None, stop naming it once it has ended: a later invocation asks squeue about
    a named array (:func:`refuse_live_array`) should this process die without cancelling it."""
    fd = os.open(Path(sweep_dir) / LOCK_FILE, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        name_holder(fd, f"SLURM job array {array}" if array else None)
    finally:
        os.close(fd)


class Session:
    """One invocation of a sweep: counts outcomes, reports them and lists the cells at the end."""

    def __init__(self, sweep_dir: Path, total: int, tracker: mirror.Tracker | None, held: int):
        self.sweep_dir, self.total, self.tracker = sweep_dir, total, tracker
        self.held = held  # the sweep's lock
        self.room = Reserve(tracker.uri) if tracker is not None else None
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
        cls, config: Any, sweep_dir: Path, total: int, about: experiment.About | None = None
    ) -> Session:
        """Take the sweep's lock, then create the MLflow schema, experiment and parent run
        before any worker starts. ``about``: how the sweep was asked for (its command,
        preset and grid), which the parent run and the experiment show."""
        held = lock(sweep_dir)
        try:
            return cls._open(config, sweep_dir, total, held, about or experiment.About())
        except MlflowException as exc:  # the store refused the experiment or parent run
            os.close(held)
            uri = config.tracking.uri
            raise mirror.refusal(uri, exc, config.tracking.experiment) or ConfigError(
                "tracking.uri", f"{uri}: {mirror.error_line(exc)}"
            ) from None
        except BaseException:
            os.close(held)
            raise

    @classmethod
    def _open(
        cls, config: Any, sweep_dir: Path, total: int, held: int, about: experiment.About
    ) -> Session:
        tracker = None
        if config.tracking.enabled:
            tracking = config.tracking
            tracker = mirror.Tracker(tracking.uri, tracking.experiment, tracking.bulk)
        session = cls(sweep_dir, total, tracker, held)
        if session.room is not None:
            session.room.hold()  # for ending the parent run even on a full disk
        previous = records.read_sweep(sweep_dir)
        if tracker is not None:
            session.tracking_cfg = from_dict(TrackingConfig, _plain(config.tracking))
            if (previous.get("tracking_uri"), previous.get("experiment_id")) == (
                tracker.uri, tracker.experiment_id,
            ):  # fmt: skip
                session.previous_parent = previous.get("parent_run_id")
            name = sweep_dir.name
            session.parent_id = experiment.open_parent(
                tracker, session.previous_parent, about, name, sweep_dir, total
            )
            experiment.prepare_experiment(tracker, about, name, session.parent_id)
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
        records.write_json(sweep_dir / records.SWEEP_FILE, {**session.info, "complete": False})
        return session

    def add(self, cell: dict[str, Any]) -> None:
        """One job's result: ``jobs.job_result``, or what the launcher knows of a crashed job."""
        status = cell["status"]
        self.counts[status] += 1
        if status == "failed":
            self.failures.append((cell["run_name"], cell.get("error") or "no error recorded"))
        self.cells.append(cell)

    def finish(self) -> int:
        """Write the cell list, mirror what MLflow lacks, close the parent run, print the
        summary; the sweep's exit status: 0 if every cell has a result (diverging is one)
        and is mirrored, else 1."""
        try:
            return self._finish()
        finally:
            if self.room is not None:
                self.room.release()
            os.close(self.held)

    def _finish(self) -> int:
        done = sum(self.counts.values())
        wall = time.monotonic() - self.t0
        self._write_cells(done == self.total, wall)
        mirrored = None
        if self.tracker is not None and self.parent_id is not None:
            mirrored = self._close_parent(done, wall)
        c = self.counts
        print(
            f"[sweep] {self.sweep_dir}: {done}/{self.total} cells in {wall:.1f}s: "
            f"{c['finished']} finished, {c['diverged']} diverged, {c['failed']} failed, "
            f"{c['skipped']} skipped",
            flush=True,
        )
        for name, line in self.failures:
            print(f"[sweep] failed: {name}: {line}", flush=True)
        if done < self.total:
            print(f"[sweep] {self.total - done} cells did not run; rerun the sweep to run them",
                  flush=True)  # fmt: skip
        if mirrored is not None and mirrored.error:
            print(
                f"[sweep] {mirrored.missing} cells are recorded but not mirrored to MLflow: "
                f"{mirrored.error}; mirror them later: python -m study.tracking mirror "
                f"{self.sweep_dir}",
                flush=True,
            )
        clean = done == self.total and not c["failed"] and not (mirrored and mirrored.error)
        return 0 if clean else 1

    def _close_parent(self, done: int, wall: float) -> experiment.Mirrored:
        """The cells' runs under the parent (logged from their records where MLflow lacks
        them), the summary on it, then its counts and end. If the store fails (a server
        gone, a full disk), the parent run is still ended, with as little as it takes."""
        assert self.tracker is not None and self.parent_id is not None
        recorded = []
        for cell in self.cells:
            record = records.read_run(Path(cell["dir"])) if cell.get("dir") else None
            if record is not None:
                recorded.append((record, Path(cell["dir"])))
        mirrored = experiment.mirror_sweep(
            self.tracker, self.tracking_cfg, self.parent_id, recorded
        )
        if mirrored.error is not None and self.room is not None:
            self.room.release()  # the store may be out of room: what is left is the parent's
        status = RunStatus.FINISHED if done == self.total else RunStatus.KILLED
        if mirrored.error is None:
            try:
                experiment.publish_summary(
                    self.tracker, self.parent_id, self.sweep_dir / records.SWEEP_FILE,
                    [record for record, _ in recorded],
                )  # fmt: skip
            except Exception as exc:  # noqa: BLE001 - the cells are logged; say what is missing
                print(f"[sweep] the parent run's summary is incomplete: "
                      f"{mirror.error_line(exc)}", flush=True)  # fmt: skip
            try:
                self.tracker.close_parent(
                    self.parent_id, self._parent_metrics(done, wall, mirrored),
                    {"study.failed_cells": " ".join(n for n, _ in self.failures)[:5000]},
                    RunStatus.to_string(status),
                )  # fmt: skip
                return mirrored
            except Exception as exc:  # noqa: BLE001 - ended below with less
                mirrored.error = mirrored.error or mirror.error_line(exc)
        try:  # a store that fails to take rows may still take the run's end
            self.tracker.client.set_terminated(self.parent_id, status="FAILED")
        except Exception as exc:  # noqa: BLE001 - said, and the exit status says it too
            print(f"[sweep] the parent run {self.parent_id} could not be ended: "
                  f"{mirror.error_line(exc)}", flush=True)  # fmt: skip
        return mirrored

    def _parent_metrics(self, done: int, wall: float, mirrored: experiment.Mirrored) -> list:
        now = int(time.time() * 1000)
        counts = {f"cells_{k}": self.counts[k] for k in ("finished", "diverged", "failed",
                                                          "skipped")}  # fmt: skip
        counts.update(cells_total=self.total, cells_not_run=self.total - done,
                      cells_relogged=mirrored.logged, cells_not_mirrored=mirrored.missing,
                      wall_s=wall)  # fmt: skip
        return [Metric(k, float(v), now, 0) for k, v in counts.items()]

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
            self.sweep_dir / records.SWEEP_FILE,
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
