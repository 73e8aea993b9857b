"""The bulk path (study.tracking.bulk) against MLflow's public client, row for row: every
table a logged run writes to, every column but ids and times, on SQLite and PostgreSQL; what
either refuses; and ``tracking.bulk: false``, the way back to the client for SQL stores."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from study import records
from study.config import as_dict
from study.tracking import bulk, cell_runs, mirror
from study.tracking.__main__ import tracking_of
from study.tracking.run_spec import RunSpec

from .conftest import compose_config
from .test_runlog import assert_same_runs, config, mixed_group
from .test_tracking_server import postgres_uri  # noqa: F401 - a fixture of the store param

# How a run's rows are found in each table that logging it writes to (and no other table
# is written to: :func:`changed_tables`). Every column is compared as the database holds it,
# read with SELECT *, so that a column a later MLflow adds is compared as well.
RUN_ROWS = {
    "runs": "SELECT * FROM runs WHERE run_uuid = :run",
    "tags": "SELECT * FROM tags WHERE run_uuid = :run",
    "params": "SELECT * FROM params WHERE run_uuid = :run",
    "metrics": "SELECT * FROM metrics WHERE run_uuid = :run",
    "latest_metrics": "SELECT * FROM latest_metrics WHERE run_uuid = :run",
    "inputs": "SELECT * FROM inputs WHERE destination_id = :run",
    "input_tags": "SELECT * FROM input_tags WHERE input_uuid IN "
    "(SELECT input_uuid FROM inputs WHERE destination_id = :run)",
    "datasets": "SELECT * FROM datasets WHERE dataset_uuid IN "
    "(SELECT source_id FROM inputs WHERE destination_id = :run)",
}
# Columns whose values differ from one logging of the same runs to the next, and why: each
# is compared as set or NULL only. (A run's id in another column, its experiment's id and
# artifact folder are named by what they stand for: :func:`run_rows`' aliases.)
VARIES = {
    ("runs", "run_uuid"): "the run's id, drawn at random; its rows are found by it",
    ("runs", "deleted_time"): "when it was moved to the trash",
    ("tags", "run_uuid"): "the run's id",
    ("params", "run_uuid"): "the run's id",
    ("metrics", "run_uuid"): "the run's id",
    ("latest_metrics", "run_uuid"): "the run's id",
    # cell_runs.metrics stamps each value with the time the run is logged.
    ("metrics", "timestamp"): "when the run was logged",
    ("latest_metrics", "timestamp"): "when the run was logged",
    ("inputs", "input_uuid"): "drawn at random; the input's tags are found by it",
    ("inputs", "source_id"): "the dataset's uuid; the dataset is found by it",
    ("inputs", "destination_id"): "the run's id; its inputs are found by it",
    ("input_tags", "input_uuid"): "the input's uuid",
    ("datasets", "dataset_uuid"): "drawn at random; found through the run's input",
}


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path, monkeypatch) -> str:
    """A SQLite file, or the module's PostgreSQL database; artifacts go to ./mlruns."""
    monkeypatch.chdir(tmp_path)
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'mlflow.db'}"
    return request.getfixturevalue("postgres_uri")


def unique(name: str) -> str:
    """An experiment name of its own: the PostgreSQL database is shared by the module."""
    return f"{name}-{uuid.uuid4().hex[:8]}"


def query(uri: str, sql: str, **bound: Any) -> list[dict[str, Any]]:
    engine = sqlalchemy.create_engine(uri)
    try:
        with engine.connect() as connection:
            return [dict(row._mapping) for row in connection.execute(sqlalchemy.text(sql), bound)]
    finally:
        engine.dispose()


def row_counts(uri: str) -> dict[str, int]:
    """Rows per table, for every table of the database."""
    engine = sqlalchemy.create_engine(uri)
    try:
        with engine.connect() as connection:
            return {
                table: connection.exec_driver_sql(f'SELECT count(*) FROM "{table}"').scalar()
                for table in sqlalchemy.inspect(connection).get_table_names()
            }
    finally:
        engine.dispose()


def changed_tables(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """The tables that gained (or lost) rows, and how many."""
    return {t: n - before.get(t, 0) for t, n in after.items() if n != before.get(t, 0)}


def run_rows(
    uri: str, run_id: str, experiment_id: str, aliases: dict[str, str], varies: dict = VARIES,
    timings: frozenset[str] = frozenset(),
) -> dict[str, list[tuple]]:  # fmt: skip
    """Every row of run ``run_id``, table by table, whole: ``varies``' columns as set or
    NULL, and the values of the metrics named in ``timings``; ``aliases``' ids (and the
    run's own id, experiment and artifact folder) by name."""
    [location] = query(
        uri, "SELECT artifact_location FROM experiments WHERE experiment_id = :e",
        e=int(experiment_id),
    )  # fmt: skip
    names = {run_id: "{run}", location["artifact_location"]: "{artifacts}", **aliases}
    out = {}
    for table, sql in RUN_ROWS.items():
        rows = []
        for row in query(uri, sql, run=run_id):
            timed = table in ("metrics", "latest_metrics") and row["key"] in timings
            for column, value in row.items():
                if (table, column) in varies or (timed and column == "value"):
                    row[column] = "set" if value is not None else None
                elif column == "experiment_id":
                    row[column] = "{experiment}" if str(value) == experiment_id else value
                elif isinstance(value, str):
                    for real, name in names.items():
                        value = value.replace(real, name)
                    row[column] = value
            rows.append(tuple(sorted(row.items())))
        out[table] = sorted(rows, key=repr)
    return out


def assert_same_rows(
    uri_a: str, a: list[dict], uri_b: str, b: list[dict], aliases: dict[str, str] | None = None,
    varies: dict = VARIES, timings: frozenset[str] = frozenset(),
) -> None:  # fmt: skip
    """Runs ``a`` and ``b`` (log_cells' infos), pairwise, have the same rows in every table,
    each row whole (:func:`run_rows`)."""
    assert len(a) == len(b) > 0
    for info_a, info_b in zip(a, b, strict=True):
        rows_a, rows_b = (
            run_rows(uri, info["run_id"], info["experiment_id"], aliases or {}, varies, timings)
            for uri, info in ((uri_a, info_a), (uri_b, info_b))
        )
        assert rows_a["runs"]  # the run is there: not two empty lists alike
        for table in RUN_ROWS:
            assert rows_b[table] == rows_a[table], (table, info_b["run_id"])


def log_both_ways(store: str, root: Path, monkeypatch) -> tuple[list, list, list, list, dict]:
    """Cells logged through the client and by the bulk path, each into its own experiment:
    then logged again (trashing the first runs), then moved under another parent run.
    (client runs, client reruns, bulk runs, bulk reruns, the tables each logging changed)."""
    client = MlflowClient(store)
    parents = client.create_experiment(unique("parents"))
    first, second = (client.create_run(parents).info.run_id for _ in range(2))
    wrote = []  # the bulk path's writes: tracking.bulk decides whether there are any
    write, relink = bulk.SqlRows.write, mirror.relink_rows

    def bulk_write(self, trash):
        wrote.append("rows")
        write(self, trash)

    def bulk_relink(*args):
        wrote.append("relink")
        relink(*args)

    monkeypatch.setattr(bulk.SqlRows, "write", bulk_write)
    monkeypatch.setattr(mirror, "relink_rows", bulk_relink)
    out, changed = [], {}
    for path, on in (("client", False), ("bulk", True)):
        wrote.clear()
        cfg = config(store, unique(path), profile_plot=True, bulk=on)
        mirror.tracker(store, cfg.experiment, on)  # the experiment: before the count
        cells = mixed_group(root / path)
        before = row_counts(store)
        logged = cell_runs.log_cells(cfg, cells, first)
        changed[path] = changed_tables(before, row_counts(store))
        for (record, _, out_dir), info in zip(cells, logged, strict=True):
            records.write_json(out_dir / records.RUN_FILE, {**record, "mlflow": info})
        again = cell_runs.log_cells(cfg, cells, first)
        mirror.tracker(store, cfg.experiment, on).relink([i["run_id"] for i in again], second)
        assert wrote == (["rows", "rows", "relink"] if on else []), path
        out += [logged, again]
    return *out, changed


def test_the_bulk_path_writes_the_rows_the_client_path_writes(store, tmp_path, monkeypatch):
    client_runs, client_reruns, bulk_runs, bulk_reruns, changed = log_both_ways(
        store, tmp_path, monkeypatch
    )
    # These tables and no others, as many rows each.
    assert set(changed["client"]) == set(RUN_ROWS)
    assert changed["bulk"] == changed["client"]
    # The first runs, now in the trash, and the reruns under the second parent.
    assert_same_rows(store, client_runs, store, bulk_runs)
    assert_same_rows(store, client_reruns, store, bulk_reruns)
    trashed = "SELECT lifecycle_stage FROM runs WHERE run_uuid = :r"
    assert {query(store, trashed, r=i["run_id"])[0]["lifecycle_stage"] for i in bulk_runs} == {
        "deleted"
    }
    client = MlflowClient(store)
    assert_same_runs(client, client_reruns, client, bulk_reruns)  # and as the API shows them


# Nullable columns the bulk path might leave NULL (a NOT NULL one fails its insert): each
# must fail the comparison above.
BREAKS = [
    ("runs", "source_version"),
    ("runs", "end_time"),
    ("runs", "user_id"),
    ("tags", "value"),
]


@pytest.mark.parametrize(("table", "column"), BREAKS, ids=lambda x: x)
def test_a_column_the_bulk_path_leaves_null_fails_the_comparison(
    tmp_path, monkeypatch, table, column
):
    monkeypatch.chdir(tmp_path)
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    insert = bulk.SqlRows.insert

    def incomplete(self, session, sql_table, rows):
        if sql_table.name == table:
            rows = [{k: v for k, v in row.items() if k != column} for row in rows]
        insert(self, session, sql_table, rows)

    client = cell_runs.log_cells(
        config(store, "client", bulk=False), mixed_group(tmp_path / "a"), None
    )
    with monkeypatch.context() as patched:
        patched.setattr(bulk.SqlRows, "insert", incomplete)
        logged = cell_runs.log_cells(config(store, "bulk"), mixed_group(tmp_path / "b"), None)
    with pytest.raises(AssertionError) as failed:
        assert_same_rows(store, client, store, logged)
    assert str(failed.value).startswith(f"('{table}'")  # the very table, said first


def spec(name: str, **changes: Any) -> RunSpec:
    """A run with times of its own (as cells have: cell_runs.times), not the time it is logged."""
    fields = dict(run_name=name, params={"lr": "0.1"}, tags={}, artifacts=[],
                  metrics=[Metric("loss", 1.0, 1, 0)], status="FINISHED",
                  start_time=1_000, end_time=2_000)  # fmt: skip
    return RunSpec(**{**fields, **changes})


def test_long_values_are_truncated_and_bad_keys_refused_as_the_client_does(store):
    trackers = [mirror.tracker(store, unique(path), path == "bulk") for path in ("client", "bulk")]
    long = spec("long", params={"lr": "0.1", "note": "x" * 7000})
    client_id, bulk_id = (t.log_runs([long])[0] for t in trackers)
    infos = [{"run_id": i, "experiment_id": t.experiment_id}
             for i, t in zip((client_id, bulk_id), trackers, strict=True)]  # fmt: skip
    assert_same_rows(store, infos[:1], store, infos[1:])
    [note] = query(
        store, "SELECT value FROM params WHERE run_uuid = :r AND key = 'note'", r=bulk_id
    )
    assert len(note["value"]) == 6000  # MLflow's limit on a param value
    for bad in (
        spec("bad-metric", metrics=[Metric("a*b", 1.0, 1, 0)]),
        spec("long-metric", metrics=[Metric("m" * 251, 1.0, 1, 0)]),
        spec("bad-param", params={"a/../b": 1}),
    ):
        codes = []
        for tracker in trackers:
            with pytest.raises(MlflowException) as refused:
                tracker.log_runs([bad])
            codes.append(refused.value.error_code)
        assert codes == ["INVALID_PARAMETER_VALUE"] * 2, bad.run_name
    # A bad tag key: create_run stores it unchecked (a server's too); the bulk path checks
    # tags as log_batch checks them.
    with pytest.raises(MlflowException):
        trackers[1].log_runs([spec("bad-tag", tags={"a*b": "x"})])
    # The bulk path wrote nothing of the refused runs (the client's are half-logged: FAILED).
    assert not query(store, "SELECT * FROM runs WHERE experiment_id = :e AND run_uuid != :r",
                     e=int(trackers[1].experiment_id), r=bulk_id)  # fmt: skip


def test_a_deleted_experiment_is_refused_as_the_client_refuses_it(store):
    for bulk_on in (False, True):
        tracker = mirror.tracker(store, unique("deleted"), bulk_on)
        tracker.client.delete_experiment(tracker.experiment_id)
        with pytest.raises(MlflowException) as refused:
            tracker.log_runs([spec("late")])
        assert refused.value.error_code == "INVALID_PARAMETER_VALUE"
        assert "must be in the 'active' state" in refused.value.message
        assert not query(store, "SELECT * FROM runs WHERE experiment_id = :e",
                         e=int(tracker.experiment_id))  # fmt: skip


def test_tracking_bulk_is_a_knob_of_how_not_of_what():
    default, off = compose_config(), compose_config("tracking.bulk=false")
    assert default.tracking.bulk is True and off.tracking.bulk is False
    assert records.cell_key(as_dict(off), "0" * 64) == records.cell_key(as_dict(default), "0" * 64)
    # A record from before the knob existed is mirrored (python -m study.tracking mirror)
    # with the knob's default.
    old = {"config": {"tracking": {"enabled": True, "uri": "sqlite:///m.db", "experiment": "e",
                                   "profile_plot": False, "layer_metrics": []}}}  # fmt: skip
    assert tracking_of(old, None, None).bulk is True
