"""MLflow: the browsable mirror of the records.

One tracker per process and experiment, talking to the tracking URI of ``tracking.uri``
(a SQLite file by default, a tracking server for multi-machine sweeps).

A group's runs go to a SQLAlchemy-backed store (``sqlite://``, ``postgresql://``) in one
transaction, written with MLflow's own table models: the rows ``create_run``, ``log_batch``
and ``set_terminated`` would write, row for row, without their four-plus transactions per
run (each a lock and a commit on SQLite). A tracking server does its own transactions: it
gets those client calls, run by run, each ``log_batch`` within MLflow's limits.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import random
import shutil
import sqlite3
import tempfile
import time
import uuid
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlparse

from mlflow.entities import LifecycleStage, Metric, Param, RunTag, SourceType
from mlflow.exceptions import MlflowException
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
from mlflow.store.tracking.dbmodels.models import (
    SqlLatestMetric,
    SqlMetric,
    SqlParam,
    SqlRun,
    SqlTag,
)
from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
from mlflow.tracking import MlflowClient
from mlflow.utils.file_utils import local_file_uri_to_path
from mlflow.utils.mlflow_tags import MLFLOW_RUN_NAME
from mlflow.utils.uri import append_to_uri_path
from mlflow.utils.validation import _validate_metric_name, _validate_param, _validate_tag
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError

# A study's runs are nobody else's business, and usage pings cost time on every call
# (MLflow reads this at each call).
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

# MLflow's limits per log_batch call.
MAX_ENTITIES = 1000
MAX_PARAMS_TAGS = 100
# A locked database: tries of a group's transaction, and the first wait between them.
LOCKED_TRIES = 5
LOCKED_WAIT_S = 0.05

T = TypeVar("T")


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


# Every engine this process has connected through, so that a forked sweep worker can let go
# of the parent's pooled connections (SQLAlchemy's recipe for os.fork: dispose with
# close=False, which leaves the parent's connections open for the parent).
_ENGINES: weakref.WeakSet[Engine] = weakref.WeakSet()


@event.listens_for(Engine, "engine_connect")
def _remember(connection: Any) -> None:
    _ENGINES.add(connection.engine)


def _forget_inherited_connections() -> None:
    for engine in list(_ENGINES):
        engine.dispose(close=False)


os.register_at_fork(after_in_child=_forget_inherited_connections)


# Keep alembic's schema-migration chatter out of the run's console.
for _name in ("alembic", "mlflow.store.db.utils", "mlflow.tracking"):
    logging.getLogger(_name).setLevel(logging.WARNING)


def now_ms() -> int:
    return int(time.time() * 1000)


def metric(key: str, value: float, step: int = 0, timestamp: int | None = None) -> Metric:
    return Metric(key, float(value), timestamp or now_ms(), int(step))


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


def retry_locked(write: Callable[[], T], tries: int = LOCKED_TRIES) -> T:
    """``write()``, tried again while the database is locked, after growing random waits.

    Sweep workers share one SQLite file, which takes one writer at a time: MLflow's
    sessions wait up to 20 s for the lock (``busy_timeout``), but SQLite also refuses some
    lock requests at once. MLflow reports either as TEMPORARILY_UNAVAILABLE (as it does a
    PostgreSQL deadlock); the transaction was rolled back whole, so trying it again is safe.
    """
    for attempt in range(tries - 1):
        try:
            return write()
        except (MlflowException, OperationalError) as exc:
            if getattr(exc, "error_code", "TEMPORARILY_UNAVAILABLE") != "TEMPORARILY_UNAVAILABLE":
                raise
        time.sleep(LOCKED_WAIT_S * 2**attempt * (1 + random.random()))
    return write()


@dataclass
class RunSpec:
    """A finished run to log: what create_run, log_batch and set_terminated would take."""

    run_name: str
    params: dict[str, Any]
    tags: dict[str, str]
    metrics: list[Metric]
    artifacts: list[Path]  # files, copied (or linked) into the run's artifacts
    status: str  # FINISHED or FAILED
    supersedes: list[str] = field(default_factory=list)  # runs to trash first
    documents: dict[str, str] = field(default_factory=dict)  # file name -> text, written there

    def validated(self) -> tuple[list[Metric], list[Param], list[RunTag]]:
        """As log_batch validates them: bad keys raise, overlong values are truncated.

        Each distinct key, and each distinct param, is checked once per process (a sweep
        logs the same few hundred keys, and mostly the same params, for thousands of runs);
        a metric's value, step and timestamp are numbers by construction (:func:`metric`),
        which is the rest of what log_batch checks."""
        params = [_checked_param(k, str(v)) for k, v in self.params.items()]
        tags = [_validate_tag(k, v, path="tags") for k, v in self.tags.items()]
        if MLFLOW_RUN_NAME not in self.tags:  # create_run adds it
            tags.append(_validate_tag(MLFLOW_RUN_NAME, self.run_name, path="tags"))
        for m in self.metrics:
            _checked_metric_key(m.key)
        return self.metrics, params, tags


@functools.cache
def _checked_metric_key(key: str) -> None:
    _validate_metric_name(key)


@functools.lru_cache(maxsize=1 << 16)
def _checked_param(key: str, value: str) -> Param:
    return _validate_param(key, value, path="params")  # truncates an overlong value


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
        store = self.client._tracking_client.store
        # None: a tracking server (or another store), logged to through the client.
        self.sql_store = store if isinstance(store, SqlAlchemyStore) else None

    def log_runs(
        self, runs: Sequence[RunSpec], on_create: Callable[[int, str], None] | None = None
    ) -> list[str]:
        """Log finished runs, their superseded runs trashed first; their ids, in order.

        ``on_create(i, run_id)`` is told the i-th run's id before its rows are committed
        (SQL stores) or as soon as it exists (server), so that a job killed while logging
        can find and trash a half-logged run when it is rerun.
        """
        on_create = on_create or (lambda i, run_id: None)
        if self.sql_store is None:
            return [
                self._log_run(spec, functools.partial(on_create, i)) for i, spec in enumerate(runs)
            ]
        return self._log_runs_sql(runs, on_create)

    def _log_run(self, spec: RunSpec, on_create: Callable[[str], None]) -> str:
        """Through the client: create_run, log_batch calls, artifacts, set_terminated."""
        self.delete_runs(spec.supersedes)
        run = self.client.create_run(self.experiment_id, run_name=spec.run_name, tags=spec.tags)
        run_id = run.info.run_id
        on_create(run_id)
        try:
            params = [Param(k, str(v)) for k, v in spec.params.items()]
            for batch in batches(params, list(spec.metrics)):
                self.client.log_batch(run_id, **batch)
            # The run's artifact store is known from create_run: copy straight into it
            # instead of looking the run up again for every file.
            self._copy_artifacts(run.info.artifact_uri, spec)
        except BaseException:
            self.client.set_terminated(run_id, status="FAILED")
            raise
        self.client.set_terminated(run_id, status=spec.status)
        return run_id

    def _log_runs_sql(self, runs: Sequence[RunSpec], on_create: Callable[[int, str], None]):
        """The rows of all ``runs`` in one transaction, artifacts copied before it: a run
        in the store is complete, and a crash before the commit leaves no run at all."""
        store = self.sql_store
        experiment = store.get_experiment(self.experiment_id)
        store._check_experiment_is_active(experiment)  # as create_run checks
        start = now_ms()
        run_ids = [uuid.uuid4().hex for _ in runs]  # what create_run would draw
        for i, run_id in enumerate(run_ids):
            on_create(i, run_id)
        artifact_uris = [
            append_to_uri_path(experiment.artifact_location, run_id, store.ARTIFACTS_FOLDER_NAME)
            for run_id in run_ids
        ]
        for spec, artifact_uri in zip(runs, artifact_uris, strict=True):
            self._copy_artifacts_before_commit(artifact_uri, spec)
        rows = SqlRows(store, int(self.experiment_id), start, now_ms())
        for spec, run_id, artifact_uri in zip(runs, run_ids, artifact_uris, strict=True):
            rows.add(spec, run_id, artifact_uri)
        trash = sorted({run_id for spec in runs for run_id in spec.supersedes})
        retry_locked(lambda: rows.write(trash))
        return run_ids

    def _copy_artifacts(self, artifact_uri: str, spec: RunSpec) -> None:
        repository = get_artifact_repository(artifact_uri, tracking_uri=self.uri)
        for path in spec.artifacts:
            repository.log_artifact(str(path))
        if spec.documents:
            with tempfile.TemporaryDirectory(prefix="mlflow-documents-") as folder:
                for name, text in spec.documents.items():
                    (Path(folder) / name).write_text(text)
                    repository.log_artifact(str(Path(folder) / name))

    def _copy_artifacts_before_commit(self, artifact_uri: str, spec: RunSpec) -> None:
        """A local artifact store gets hard links (copies across file systems) and the
        documents written in place: its repository's staging file and rename per file (a
        millisecond per cell) buy nothing while no row names the run. A record rewritten
        later is a new file (records are renamed into place), so a link never changes."""
        if urlparse(artifact_uri).scheme not in ("", "file"):
            return self._copy_artifacts(artifact_uri, spec)
        folder = Path(local_file_uri_to_path(artifact_uri))
        folder.mkdir(parents=True, exist_ok=True)
        for path in spec.artifacts:
            try:
                os.link(path, folder / path.name)
            except OSError:  # another file system, or one without links
                shutil.copyfile(path, folder / path.name)
        for name, text in spec.documents.items():
            (folder / name).write_text(text)

    def delete_runs(self, run_ids: Iterable[str]) -> None:
        """Move superseded or half-logged runs to MLflow's trash (``mlflow gc`` purges it)."""
        for run_id in run_ids:
            try:
                if self.client.get_run(run_id).info.lifecycle_stage == "active":
                    self.client.delete_run(run_id)
            except MlflowException:
                pass  # already purged, never created, or logged to another store

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


class SqlRows:
    """A group's rows for MLflow's tables, as its SqlAlchemyStore would write them."""

    def __init__(self, store: SqlAlchemyStore, experiment_id: int, start: int, end: int):
        self.store, self.experiment_id, self.start, self.end = store, experiment_id, start, end
        self.tables: dict[type, list[dict[str, Any]]] = {
            model: [] for model in (SqlRun, SqlTag, SqlParam, SqlMetric, SqlLatestMetric)
        }  # in this order: the later tables' rows refer to their run's row

    def add(self, spec: RunSpec, run_id: str, artifact_uri: str) -> None:
        metrics, params, tags = spec.validated()
        self.tables[SqlRun].append({
            "run_uuid": run_id, "name": spec.run_name, "artifact_uri": artifact_uri,
            "experiment_id": self.experiment_id, "user_id": "unknown",
            "source_type": SourceType.to_string(SourceType.UNKNOWN), "source_name": "",
            "entry_point_name": "", "source_version": "", "status": spec.status,
            "start_time": self.start, "end_time": self.end, "deleted_time": None,
            "lifecycle_stage": LifecycleStage.ACTIVE,
        })  # fmt: skip
        self.tables[SqlTag] += [{"run_uuid": run_id, "key": t.key, "value": t.value} for t in tags]
        self.tables[SqlParam] += [
            {"run_uuid": run_id, "key": p.key, "value": p.value} for p in params
        ]
        history = self.metric_rows(run_id, metrics)
        self.tables[SqlMetric] += history
        self.tables[SqlLatestMetric] += latest_metrics(history)

    def metric_rows(self, run_id: str, metrics: Sequence[Metric]) -> list[dict[str, Any]]:
        """Sanitized (NaN -> 0 flagged, inf -> max float) and de-duplicated, as log_batch."""
        rows: dict[tuple, dict[str, Any]] = {}
        for m in metrics:
            is_nan, value = self.store.sanitize_metric_value(m.value)
            row = {"run_uuid": run_id, "key": m.key, "value": value,
                   "timestamp": m.timestamp, "step": m.step, "is_nan": is_nan}  # fmt: skip
            rows.setdefault((m.key, m.timestamp, m.step, value, is_nan), row)
        return list(rows.values())

    def write(self, trash: Sequence[str]) -> None:
        """One transaction: superseded runs to the trash, then every row of the group."""
        with self.store.ManagedSessionMaker(read_only=False) as session:
            if trash:
                stale = session.query(SqlRun).filter(
                    SqlRun.run_uuid.in_(trash), SqlRun.lifecycle_stage == LifecycleStage.ACTIVE
                )
                for run in stale.all():
                    self.store._mark_run_deleted(session, run)
            for model, rows in self.tables.items():
                if rows:  # Core inserts: the ORM's per-row bookkeeping is half the cost
                    session.execute(model.__table__.insert(), rows)


def latest_metrics(history: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per key, the row log_batch keeps as the latest: greatest (step, timestamp, value),
    the first logged on a tie."""
    latest: dict[str, dict[str, Any]] = {}
    for row in history:
        best = latest.get(row["key"])
        if best is None or _rank(row) > _rank(best):
            latest[row["key"]] = row
    return list(latest.values())


def _rank(row: dict[str, Any]) -> tuple:
    return row["step"], row["timestamp"], row["value"]
