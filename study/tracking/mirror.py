"""MLflow: the browsable mirror of the records.

One tracker per process and experiment, talking to the tracking URI of ``tracking.uri``
(a SQLite file by default, a tracking server for multi-machine sweeps).

A group's runs go to a SQLAlchemy-backed store (``sqlite://``, ``postgresql://``) in one
transaction, written with MLflow's own table models: the rows ``create_run``, ``log_batch``
and ``set_terminated`` would write, row for row, without their four-plus transactions per
run (each a lock and a commit on SQLite; the rows and connections: ``bulk``). A
tracking server does its own transactions: it gets those client calls, run by run, each
``log_batch`` within MLflow's limits; so does a SQL store with ``tracking.bulk: false``.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from urllib.parse import urlparse

from mlflow.entities import DatasetInput, LifecycleStage, Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
from mlflow.tracking import MlflowClient
from mlflow.utils.credentials import read_mlflow_creds
from mlflow.utils.file_utils import local_file_uri_to_path
from mlflow.utils.uri import append_to_uri_path
from sqlalchemy.exc import SQLAlchemyError

from study.config import ConfigError
from study.tracking.bulk import SqlRows, relink_rows, retry_locked
from study.tracking.run_spec import RunSpec, now_ms

# A study's runs are nobody else's business, and usage pings cost time on every call
# (MLflow reads this at each call).
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

# MLflow's limits per log_batch call.
MAX_ENTITIES = 1000
MAX_PARAMS_TAGS = 100


# Keep alembic's schema-migration chatter out of the run's console.
for _name in ("alembic", "mlflow.tracking"):
    logging.getLogger(_name).setLevel(logging.WARNING)
# MLflow logs each failed database call with its whole traceback (a full disk: 2,000 lines
# for one sweep); every failure reaches the study as an exception, said in one line.
logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)


def batches(params: list[Param], metrics: list[Metric]) -> list[dict[str, list]]:
    """log_batch payloads within MLflow's limits: <= 100 params, <= 1000 entities each."""
    out = []
    while params or metrics or not out:
        p, params = params[:MAX_PARAMS_TAGS], params[MAX_PARAMS_TAGS:]
        room = MAX_ENTITIES - len(p)
        m, metrics = metrics[:room], metrics[room:]
        out.append({"params": p, "metrics": m})
    return out


class Refused(ConfigError):
    """The tracking server refused this client: bad input, said in one line. Picklable
    (ConfigError is not): raised in a sweep worker, it crosses back to the sweep."""

    def __init__(self, uri: str, detail: str):
        super().__init__("tracking.uri", f"{uri}: {detail}")
        self.uri, self.detail = uri, detail

    def __reduce__(self):
        return Refused, (self.uri, self.detail)


def refusal(uri: str, exc: MlflowException, experiment: str) -> Refused | None:
    """A server's 401 or 403 (its basic-auth app) as :class:`Refused`; None for any other
    error. ``experiment``: the one the client was using, which a 403 is about."""
    user = read_mlflow_creds()  # the environment's MLFLOW_TRACKING_*, else ~/.mlflow
    if exc.error_code == "UNAUTHENTICATED":
        fix = (
            f"user {user.username} was rejected: check MLFLOW_TRACKING_PASSWORD"
            if user.username and user.password
            else "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"
        )
        return Refused(uri, f"401 Unauthorized: {fix}")
    if exc.error_code == "PERMISSION_DENIED":
        # deploy/basic_auth.ini: researchers read every experiment and write to their own;
        # EDIT on another's is what creating runs and logging to them takes.
        return Refused(
            uri,
            f"403 Forbidden: user {user.username} may not log to experiment {experiment}: "
            "ask the server's admin for EDIT permission on it, or use an experiment of "
            "your own",
        )
    return None


def error_line(exc: BaseException) -> str:
    """An MLflow failure in one line: its kind and the first line of what it says (MLflow's
    messages run to tracebacks of the server's); a refusal as it is (one line already)."""
    if isinstance(exc, Refused):
        return str(exc)[:400]
    text = " ".join(str(exc).split("\n")[0].split()) or repr(exc)
    if isinstance(exc, MlflowException) and exc.error_code in ("UNAUTHENTICATED",
                                                              "PERMISSION_DENIED"):  # fmt: skip
        return f"{exc.error_code}: {text}"[:400]
    return f"{type(exc).__name__}: {text}"[:400]


def tracker(uri: str, experiment: str, bulk: bool = True) -> Tracker:
    """One tracker per process, experiment and ``bulk`` (``tracking.bulk``): a sweep worker
    reuses it job after job."""
    return _tracker(uri, experiment, bool(bulk))


@functools.cache
def _tracker(uri: str, experiment: str, bulk: bool) -> Tracker:
    return Tracker(uri, experiment, bulk)


class Tracker:
    """Logs finished runs to one MLflow experiment. ``bulk``: write a SQL store's rows
    directly (study.tracking.bulk); false: through MLflow's public client, as to a server."""

    def __init__(self, uri: str, experiment: str, bulk: bool = True):
        self.uri, self.experiment = uri, experiment
        try:  # a SQL store is created here; the first request to a server is the next line
            self.client = MlflowClient(tracking_uri=uri)
            found = self.client.get_experiment_by_name(experiment)
            self.experiment_id = (
                found.experiment_id if found else self.client.create_experiment(experiment)
            )
        except MlflowException as exc:
            if error := refusal(uri, exc, experiment):
                raise error from None  # the server's answer is in the line; its stack is not
            raise ConfigError("tracking.uri", f"{uri}: {error_line(exc)}") from None
        except (OSError, SQLAlchemyError) as exc:  # a store MLflow cannot open or write
            raise ConfigError("tracking.uri", f"{uri}: {error_line(exc)}") from None
        # The store the client itself writes with. Private (MLflow has no public way to
        # it): the pin in pyproject.toml and tests/test_bulk.py, which checks that the bulk
        # path is really taken, guard it.
        store = self.client._tracking_client.store
        # None: a tracking server (or another store), or bulk off: logged to through the client.
        self.sql_store = store if bulk and isinstance(store, SqlAlchemyStore) else None

    def log_runs(
        self, runs: Sequence[RunSpec], on_create: Callable[[int, str], None] | None = None
    ) -> list[str]:
        """Log finished runs, their superseded runs trashed first; their ids, in order.

        ``on_create(i, run_id)`` is told the i-th run's id before its rows are committed
        (SQL stores) or as soon as it exists (server), so that a job killed while logging
        can find and trash a half-logged run when it is rerun.
        """
        on_create = on_create or (lambda i, run_id: None)
        if self.sql_store is not None:
            return self._log_runs_sql(runs, on_create)
        try:
            return [
                self._log_run(spec, functools.partial(on_create, i)) for i, spec in enumerate(runs)
            ]
        except MlflowException as exc:
            # A reader of another's experiment, or a password changed mid-sweep: the line
            # says what to ask for, where the server's own says "Permission denied".
            if error := refusal(self.uri, exc, self.experiment):
                raise error from None
            raise

    def _log_run(self, spec: RunSpec, on_create: Callable[[str], None]) -> str:
        """Through the client: create_run, log_batch calls, log_inputs, artifacts,
        set_terminated."""
        self.delete_runs(spec.supersedes)
        run = self.client.create_run(
            self.experiment_id, start_time=spec.start_time, run_name=spec.run_name, tags=spec.tags
        )
        run_id = run.info.run_id
        on_create(run_id)
        try:
            params = [Param(k, str(v)) for k, v in spec.params.items()]
            for batch in batches(params, list(spec.metrics)):
                self.client.log_batch(run_id, **batch)
            if spec.datasets:
                self._log_inputs(run_id, spec.datasets)
            # The run's artifact store is known from create_run: copy straight into it
            # instead of looking the run up again for every file.
            self._copy_artifacts(run.info.artifact_uri, spec)
        except BaseException:
            self.client.set_terminated(run_id, status="FAILED")
            raise
        self.client.set_terminated(run_id, status=spec.status, end_time=spec.end_time)
        return run_id

    def _log_inputs(self, run_id: str, datasets: list[DatasetInput], tries: int = 3) -> None:
        """``log_inputs``, tried again if it fails: a server's store looks a dataset up, then
        inserts it if new, so two workers logging a new dataset at once collide on its key;
        the next try finds it (the bulk path inserts with ON CONFLICT DO NOTHING instead)."""
        for attempt in range(tries):
            try:
                return self.client.log_inputs(run_id, datasets=datasets)
            except MlflowException:
                if attempt == tries - 1:
                    raise
                time.sleep(0.1 * (attempt + 1))

    def _log_runs_sql(self, runs: Sequence[RunSpec], on_create: Callable[[int, str], None]):
        """The rows of all ``runs`` in one transaction, artifacts copied before it: a run
        in the store is complete, and a crash before the commit leaves no run at all."""
        store = self.sql_store
        experiment = store.get_experiment(self.experiment_id)
        if experiment.lifecycle_stage != LifecycleStage.ACTIVE:  # as create_run refuses
            raise MlflowException(
                f"The experiment {experiment.experiment_id} must be in the 'active' state. "
                f"Current state is {experiment.lifecycle_stage}.",
                INVALID_PARAMETER_VALUE,
            )
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
                # Already purged, never created, or logged to another store (a basic-auth
                # server answers a non-admin 403 for a run it does not have).
                pass

    def relink(self, run_ids: Sequence[str], parent_id: str) -> None:
        """Make ``parent_id`` the parent of runs that exist already (one statement a chunk on
        SQL stores; a tag each on a server)."""
        if self.sql_store is None:
            for run_id in run_ids:
                self.client.set_tag(run_id, "mlflow.parentRunId", parent_id)
            return
        retry_locked(lambda: relink_rows(self.sql_store, run_ids, parent_id))

    def close_parent(
        self, run_id: str, metrics: Sequence[Metric], tags: dict[str, str], status: str
    ) -> None:
        self.client.log_batch(run_id, metrics=metrics, tags=[RunTag(k, v) for k, v in tags.items()])
        self.client.set_terminated(run_id, status=status)
