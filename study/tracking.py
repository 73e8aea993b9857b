"""MLflow: the browsable mirror of the records.

One client per process, talking to the tracking URI of ``tracking.uri`` (a SQLite file by
default, a tracking server for multi-machine sweeps). Everything a run logs goes out in
``log_batch`` calls of at most 1000 entities: one call per metric would cost milliseconds
each on SQLite, and a sweep logs hundreds of thousands.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
from mlflow.tracking import MlflowClient
from sqlalchemy import event
from sqlalchemy.engine import Engine

# A study's runs are nobody else's business, and usage pings cost time on every call
# (MLflow reads this at each call).
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

# MLflow's limits per log_batch call.
MAX_ENTITIES = 1000
MAX_PARAMS_TAGS = 100


@event.listens_for(Engine, "connect")
def _sqlite_pragmas(dbapi_connection: Any, connection_record: Any) -> None:
    """SQLite stores: write-ahead logging, so that sweep workers' reads never wait on a
    writer and commits skip the rollback journal's fsyncs. A crash of the process loses
    nothing; a power cut may lose the last commits, which the on-disk records still hold."""
    if isinstance(dbapi_connection, sqlite3.Connection):
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()


# Keep alembic's schema-migration chatter out of the run's console.
for _name in ("alembic", "mlflow.store.db.utils", "mlflow.tracking"):
    logging.getLogger(_name).setLevel(logging.WARNING)


def metric(key: str, value: float, step: int = 0, timestamp: int | None = None) -> Metric:
    return Metric(key, float(value), timestamp or int(time.time() * 1000), int(step))


def finite_metrics(
    key: str, values: Iterable[float], steps: Iterable[int], timestamp: int
) -> list[Metric]:
    """A series as MLflow metrics, leaving out NaN (not applicable / not measured)."""
    return [
        Metric(key, float(v), timestamp, int(s))
        for v, s in zip(values, steps, strict=True)
        if math.isfinite(v)
    ]


def batches(params: list[Param], metrics: list[Metric]) -> list[dict[str, list]]:
    """log_batch payloads within MLflow's limits: <= 100 params, <= 1000 entities each."""
    out = []
    while params or metrics or not out:
        p, params = params[:MAX_PARAMS_TAGS], params[MAX_PARAMS_TAGS:]
        room = MAX_ENTITIES - len(p)
        m, metrics = metrics[:room], metrics[room:]
        out.append({"params": p, "metrics": m})
    return out


@functools.cache
def tracker(uri: str, experiment: str) -> Tracker:
    """One tracker per process and experiment: a sweep worker reuses it job after job."""
    return Tracker(uri, experiment)


class Tracker:
    """Logs finished runs to one MLflow experiment."""

    def __init__(self, uri: str, experiment: str):
        self.uri = uri
        self.client = MlflowClient(tracking_uri=uri)
        found = self.client.get_experiment_by_name(experiment)
        self.experiment_id = (
            found.experiment_id if found else self.client.create_experiment(experiment)
        )

    def log_run(
        self,
        run_name: str,
        params: dict[str, Any],
        tags: dict[str, str],
        metrics: Sequence[Metric],
        artifacts: Sequence[Path],
        status: str,
        on_create: Callable[[str], None] | None = None,
    ) -> str:
        """Create a run, log everything in batches, and close it with ``status``; its id.

        ``on_create`` receives the id as soon as the run exists, so that a job killed
        while logging can find and delete its half-logged run when it is rerun.
        """
        run = self.client.create_run(self.experiment_id, run_name=run_name, tags=tags)
        run_id = run.info.run_id
        if on_create is not None:
            on_create(run_id)
        try:
            for batch in batches([Param(k, str(v)) for k, v in params.items()], list(metrics)):
                self.client.log_batch(run_id, **batch)
            # The run's artifact store is known from create_run: copy straight into it
            # instead of looking the run up again for every file.
            repository = get_artifact_repository(run.info.artifact_uri, tracking_uri=self.uri)
            for path in artifacts:
                repository.log_artifact(str(path))
        except BaseException:
            self.client.set_terminated(run_id, status="FAILED")
            raise
        self.client.set_terminated(run_id, status=status)
        return run_id

    def delete_runs(self, run_ids: Iterable[str]) -> None:
        """Move superseded or half-logged runs to MLflow's trash (``mlflow gc`` purges it)."""
        for run_id in run_ids:
            try:
                if self.client.get_run(run_id).info.lifecycle_stage == "active":
                    self.client.delete_run(run_id)
            except MlflowException:
                pass  # already purged, or logged to another store

    def open_parent(self, run_id: str | None, run_name: str, tags: dict[str, str]) -> str:
        """Reopen the sweep's parent run if it still exists, else create it; its id."""
        if run_id is not None:
            try:
                if self.client.get_run(run_id).info.lifecycle_stage == "active":
                    self.client.update_run(run_id, status="RUNNING")
                    return run_id
            except MlflowException:
                pass
        return self.client.create_run(self.experiment_id, run_name=run_name, tags=tags).info.run_id

    def close_parent(
        self, run_id: str, metrics: Sequence[Metric], tags: dict[str, str], status: str
    ) -> None:
        self.client.log_batch(run_id, metrics=metrics, tags=[RunTag(k, v) for k, v in tags.items()])
        self.client.set_terminated(run_id, status=status)
