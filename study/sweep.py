"""Bookkeeping of a sweep (a Hydra multirun): its MLflow parent run, its counts, its summary.

The sweep's folder (``hydra.sweep.dir``) is its identity. ``sweep.json`` there names the
MLflow parent run, so that every job links its run to it and a rerun of the same sweep
(to resume it) reports under the same parent instead of starting a second one.

Cells are resumable: a job whose folder already holds a finished (or diverged) record with
the same cell key does nothing and reports ``skipped`` (see ``study.train``).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, RunStatus

from study import records, tracking

SWEEP_FILE = "sweep.json"


def parent_run_id(sweep_dir: Path) -> str | None:
    """The sweep's MLflow parent run, for a job to link to."""
    path = Path(sweep_dir) / SWEEP_FILE
    return json.loads(path.read_text()).get("parent_run_id") if path.exists() else None


class Session:
    """One invocation of a sweep: counts outcomes and reports them at the end."""

    def __init__(self, sweep_dir: Path, total: int, tracker: tracking.Tracker | None):
        self.sweep_dir, self.total, self.tracker = sweep_dir, total, tracker
        self.counts: Counter[str] = Counter()
        self.failures: list[tuple[str, str]] = []
        self.parent_id: str | None = None
        self.t0 = time.monotonic()

    @classmethod
    def start(cls, config: Any, sweep_dir: Path, total: int) -> Session:
        """Create the MLflow schema, experiment and parent run before any worker starts."""
        tracker = None
        if config.tracking.enabled:
            tracker = tracking.Tracker(config.tracking.uri, config.tracking.experiment)
        session = cls(sweep_dir, total, tracker)
        previous = _read(sweep_dir)
        if tracker is not None:
            session.parent_id = tracker.open_parent(
                previous.get("parent_run_id")
                if previous.get("tracking_uri") == tracker.uri
                and previous.get("experiment_id") == tracker.experiment_id
                else None,
                run_name=f"sweep {sweep_dir.name}",
                tags={"study.role": "sweep", "study.sweep_dir": str(sweep_dir)},
            )
        records.write_json(
            sweep_dir / SWEEP_FILE,
            {
                "parent_run_id": session.parent_id,
                "experiment_id": tracker.experiment_id if tracker else None,
                "tracking_uri": tracker.uri if tracker else None,
                "total": total,
                "started_at": datetime.now(UTC).isoformat(),
            },
        )
        return session

    def add(self, run_name: str, status: str, error: str | None = None) -> None:
        self.counts[status] += 1
        if status == "failed":
            self.failures.append((run_name, error or "no error recorded"))

    def finish(self) -> None:
        done = sum(self.counts.values())
        wall = time.monotonic() - self.t0
        if self.tracker is not None and self.parent_id is not None:
            now = int(time.time() * 1000)
            metrics = [
                Metric(f"cells_{k}", float(self.counts[k]), now, 0)
                for k in ("finished", "diverged", "failed", "skipped")
            ]
            metrics += [
                Metric("cells_total", float(self.total), now, 0),
                Metric("cells_not_run", float(self.total - done), now, 0),
                Metric("wall_s", wall, now, 0),
            ]
            tags = {"study.failed_cells": " ".join(n for n, _ in self.failures)[:5000]}
            complete = done == self.total
            self.tracker.close_parent(
                self.parent_id,
                metrics,
                tags,
                RunStatus.to_string(RunStatus.FINISHED if complete else RunStatus.KILLED),
            )
        c = self.counts
        print(
            f"[sweep] {self.sweep_dir}: {done}/{self.total} cells in {wall:.1f}s: "
            f"{c['finished']} finished, {c['diverged']} diverged, {c['failed']} failed, "
            f"{c['skipped']} skipped",
            flush=True,
        )
        for name, line in self.failures:
            print(f"[sweep] failed: {name}: {line}", flush=True)


def _read(sweep_dir: Path) -> dict[str, Any]:
    path = sweep_dir / SWEEP_FILE
    return json.loads(path.read_text()) if path.exists() else {}
