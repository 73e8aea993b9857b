"""MLflow's SQL store, written directly: its connections and a group's rows.

``study.tracking`` logs a group's runs to a SQLAlchemy-backed store in one transaction of
MLflow's own table models (:class:`SqlRows`: runs, tags, params, metrics, and the datasets
the runs read, as ``log_inputs`` records them), tried again while SQLite is locked
(:func:`retry_locked`). Connections get write-ahead logging on SQLite, and a forked sweep
worker lets go of the ones it inherits from its parent.

MLflow's tables, its table models (``dbmodels.models``) and its store's sessions and helpers
are private to MLflow, with no public equivalent for writing many runs at once: pyproject.toml
pins the minor version they are tested with, and tests/test_bulk.py compares every row the
bulk path writes, whole, with what MLflow's public client writes (``tracking.bulk: false``
logs through that client instead).
"""

from __future__ import annotations

import math
import os
import random
import sqlite3
import time
import uuid
import weakref
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from mlflow.entities import Dataset, LifecycleStage, Metric, SourceType
from mlflow.exceptions import MlflowException
from mlflow.store.tracking.dbmodels.models import (
    SqlDataset,
    SqlInput,
    SqlInputTag,
    SqlLatestMetric,
    SqlMetric,
    SqlParam,
    SqlRun,
    SqlTag,
)
from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_USER
from sqlalchemy import event, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError

from study.tracking.run_spec import RunSpec

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
        # (run id, dataset, its input tags): the dataset's row id is known at write time only.
        self.inputs: list[tuple[str, Dataset, list[tuple[str, str]]]] = []

    def add(self, spec: RunSpec, run_id: str, artifact_uri: str) -> None:
        metrics, params, tags = spec.validated()
        start = self.start if spec.start_time is None else spec.start_time
        self.tables[SqlRun].append({
            "run_uuid": run_id, "name": spec.run_name, "artifact_uri": artifact_uri,
            "experiment_id": self.experiment_id,
            "user_id": spec.tags.get(MLFLOW_USER, "unknown"),  # as create_run takes it
            "source_type": SourceType.to_string(SourceType.UNKNOWN), "source_name": "",
            "entry_point_name": "", "source_version": "", "status": spec.status,
            "start_time": start, "end_time": self.end if spec.end_time is None else spec.end_time,
            "deleted_time": None, "lifecycle_stage": LifecycleStage.ACTIVE,
        })  # fmt: skip
        self.tables[SqlTag] += [{"run_uuid": run_id, "key": t.key, "value": t.value} for t in tags]
        self.tables[SqlParam] += [
            {"run_uuid": run_id, "key": p.key, "value": p.value} for p in params
        ]
        history = self.metric_rows(run_id, metrics)
        self.tables[SqlMetric] += history
        self.tables[SqlLatestMetric] += latest_metrics(history)
        seen = set()
        for entry in spec.datasets:  # log_inputs keeps the first of a name and digest
            key = (entry.dataset.name, entry.dataset.digest)
            if key not in seen:
                seen.add(key)
                self.inputs.append((run_id, entry.dataset, [(t.key, t.value) for t in entry.tags]))

    def metric_rows(self, run_id: str, metrics: Sequence[Metric]) -> list[dict[str, Any]]:
        """Sanitized (NaN -> 0 flagged, inf -> max float) and de-duplicated, as log_batch.
        (Per-layer profiles make these a cell's thousand-odd rows: the loop is kept lean.)"""
        rows: dict[tuple, dict[str, Any]] = {}
        sanitize, isfinite = self.store.sanitize_metric_value, math.isfinite
        for m in metrics:
            value, is_nan = m.value, False
            if not isfinite(value):
                is_nan, value = sanitize(value)
            key = (m.key, m.timestamp, m.step, value, is_nan)
            if key not in rows:
                rows[key] = {
                    "run_uuid": run_id, "key": m.key, "value": value,
                    "timestamp": m.timestamp, "step": m.step, "is_nan": is_nan,
                }  # fmt: skip
        return list(rows.values())

    def write(self, trash: Sequence[str]) -> None:
        """One transaction: the datasets the runs read (if new to the experiment), superseded
        runs to the trash, then every row of the group."""
        with self.store.ManagedSessionMaker(read_only=False) as session:
            uuids = {}
            for _, dataset, _ in self.inputs:
                key = (dataset.name, dataset.digest)
                if key not in uuids:
                    uuids[key] = self.dataset_uuid(session, dataset)
            if trash:
                stale = session.query(SqlRun).filter(
                    SqlRun.run_uuid.in_(trash), SqlRun.lifecycle_stage == LifecycleStage.ACTIVE
                )
                for run in stale.all():
                    # delete_run's own step, in this transaction (it also drops what else
                    # MLflow keeps of the run); tests/test_bulk.py compares trashed runs' rows.
                    self.store._mark_run_deleted(session, run)
            for model, rows in [*self.tables.items(), *self.input_rows(uuids).items()]:
                if rows:
                    self.insert(session, model.__table__, rows)

    def insert(self, session: Any, table: Any, rows: list[dict[str, Any]]) -> None:
        """Core inserts (the ORM's per-row bookkeeping is half the cost); on SQLite straight
        through the driver's executemany, without SQLAlchemy's per-row parameter processing
        (a third of the cost of a cell's thousand-odd metric rows). Elsewhere SQLAlchemy's
        own batching (psycopg2 would otherwise send a statement a row)."""
        if self.store.db_type != "sqlite":
            session.execute(table.insert(), rows)
            return
        columns = list(rows[0])
        names = ", ".join(f'"{c}"' for c in columns)
        sql = f'INSERT INTO "{table.name}" ({names}) VALUES ({", ".join("?" * len(columns))})'
        session.connection().exec_driver_sql(sql, [tuple(r[c] for c in columns) for r in rows])

    def input_rows(self, uuids: dict[tuple[str, str], str]) -> dict[type, list[dict[str, Any]]]:
        """The run -> dataset edges and their tags, as log_inputs writes them."""
        edges, tags = [], []
        for run_id, dataset, input_tags in self.inputs:
            input_uuid = uuid.uuid4().hex
            edges.append({
                "input_uuid": input_uuid, "source_type": "DATASET",
                "source_id": uuids[dataset.name, dataset.digest],
                "destination_type": "RUN", "destination_id": run_id, "step": 0,
            })  # fmt: skip
            tags += [{"input_uuid": input_uuid, "name": k, "value": v} for k, v in input_tags]
        return {SqlInput: edges, SqlInputTag: tags}

    def dataset_uuid(self, session: Any, dataset: Dataset) -> str:
        """The experiment's row for ``dataset`` (by name and digest), inserted if missing.

        First in the transaction, so that on SQLite it takes the write lock before any read;
        ``ON CONFLICT DO NOTHING`` lets two workers that log the same new dataset at once
        both succeed (the datasets table's key is experiment, name and digest)."""
        table = SqlDataset.__table__
        row = {"dataset_uuid": uuid.uuid4().hex, "experiment_id": self.experiment_id,
               "name": dataset.name, "digest": dataset.digest,
               "dataset_source_type": dataset.source_type, "dataset_source": dataset.source,
               "dataset_schema": dataset.schema, "dataset_profile": dataset.profile}  # fmt: skip
        key = (table.c.experiment_id == self.experiment_id, table.c.name == dataset.name,
               table.c.digest == dataset.digest)  # fmt: skip
        dialect = {"sqlite": sqlite, "postgresql": postgresql}.get(self.store.db_type)
        if dialect is not None:
            session.execute(dialect.insert(table).values(row).on_conflict_do_nothing())
        elif session.execute(select(table.c.dataset_uuid).where(*key)).first() is None:
            session.execute(table.insert().values(row))  # MySQL, MSSQL: a race is retried
        return session.execute(select(table.c.dataset_uuid).where(*key)).scalar_one()


def relink_rows(store: SqlAlchemyStore, run_ids: Sequence[str], parent_id: str) -> None:
    """Point the runs' ``mlflow.parentRunId`` tags at ``parent_id``, in one transaction."""
    with store.ManagedSessionMaker(read_only=False) as session:
        for start in range(0, len(run_ids), 500):  # SQLite's limit on bound variables
            chunk = list(run_ids[start : start + 500])
            session.query(SqlTag).filter(
                SqlTag.run_uuid.in_(chunk), SqlTag.key == MLFLOW_PARENT_RUN_ID
            ).update({SqlTag.value: parent_id}, synchronize_session=False)


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
