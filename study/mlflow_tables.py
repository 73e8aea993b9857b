"""MLflow's SQL store, written directly: its connections and a group's rows.

``study.tracking`` logs a group's runs to a SQLAlchemy-backed store in one transaction of
MLflow's own table models (:class:`SqlRows`), tried again while SQLite is locked
(:func:`retry_locked`). Connections get write-ahead logging on SQLite, and a forked sweep
worker lets go of the ones it inherits from its parent.
"""

from __future__ import annotations

import os
import random
import sqlite3
import time
import weakref
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from mlflow.entities import LifecycleStage, Metric, SourceType
from mlflow.exceptions import MlflowException
from mlflow.store.tracking.dbmodels.models import (
    SqlLatestMetric,
    SqlMetric,
    SqlParam,
    SqlRun,
    SqlTag,
)
from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError

if TYPE_CHECKING:
    from study.tracking import RunSpec

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
