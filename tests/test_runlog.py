"""MLflow runs of a group of cells (study.tracking.cell_runs.log_cells): the bulk path into SQL
stores writes what the client path writes, in one transaction, and reruns trash what they
replace."""

from __future__ import annotations

import os
import shlex
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import numpy as np
import pytest
import sqlalchemy
from mlflow.entities import ViewType
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, TEMPORARILY_UNAVAILABLE
from mlflow.tracking import MlflowClient

from study import records
from study.config import LAYER_STATS, TrackingConfig, as_dict
from study.tracking import bulk, cell_runs, mirror, profile_svg, reproduce

from .conftest import compose_config

LAYER_METRICS = ["signal_grad_norm", "weight_grad_norm", "activation_rms"]


def synthetic_cell(
    out_dir: Path, index: int, depth: int = 16, steps: tuple[int, ...] = (0, 20),
    status: str = "finished", error: str | None = None,
) -> tuple[dict[str, Any], dict[str, np.ndarray], Path]:  # fmt: skip
    """A cell as ``train.execute_group`` hands it over: record, per-layer columns, folder
    (``layers.parquet`` written), shaped like a real record, with NaN and None in it."""
    rng = np.random.default_rng(index)
    out_dir.mkdir(parents=True, exist_ok=True)
    layers: dict[str, np.ndarray] = {
        "step": np.repeat(np.array(steps, dtype=np.int64), depth),
        "layer": np.tile(np.arange(1, depth + 1, dtype=np.int64), len(steps)),
    }
    for stat in LAYER_STATS:
        values = rng.lognormal(size=depth * len(steps))
        values[rng.random(values.size) < 0.1] = np.nan  # not measured
        layers[stat] = values
    records.write_parquet(out_dir / records.LAYERS_FILE, layers)
    trained = max(steps, default=0) > 0
    name = f"d{depth}-tanh-xavier_normal-none-none-s{index}"
    config = {  # a real record's, 35 params
        "data": {"dir": "data/prepared", "input_scale": 1.0, "name": "mnist1d",
                 "num_samples": 5000, "seed": 0, "target_accuracy": 0.5,
                 "test_fraction": 0.2, "val_fraction": 0.1},
        "model": {"activation": "tanh", "dense": {"growth": 32}, "depth": depth,
                  "highway": {"gate_bias": -2.0}, "init": "xavier_normal", "norm": "none",
                  "residual": {"scale": 1.0}, "skip": "none", "width": 128},
        "optim": {"betas": [0.9, 0.999], "clip_norm": None, "lr": 0.05, "momentum": 0.9,
                  "name": "sgd", "weight_decay": 0.0},
        "probe": {"batch_size": 128, "batches": 1, "enabled": True, "schedule": "log125"},
        "run_name": name,
        "seed": index,
        "tracking": {"enabled": True, "experiment": "init", "layer_metrics": LAYER_METRICS,
                     "profile_plot": False, "uri": "sqlite:///mlflow.db"},
        "train": {"batch_size": 128, "device": "auto", "eval_every": 50,
                  "steps": max(steps, default=0), "threads": 1},
    }  # fmt: skip
    record = {
        "run_name": name,
        "cell_key": f"{index:016x}",
        "config": config,
        "code_version": "c3c8a752e4c7",
        "git_commit": "40de92c0aa65a4cd7bb94d4d1a0e8c2f1d4a8b13-dirty",
        "started_at": f"2026-12-02T17:12:{index % 60:02d}.250000+00:00",
        "data": {"name": "mnist1d", "sha256": "4f9c" * 16},
        "status": status,
        "error": error,
        "metrics": {"val_loss": 1.5 + index, "val_accuracy": 0.5, "test_loss": None}
        if trained
        else {"val_loss": None},
        "summary": {"signal_log10_rate_init": 0.03 * index, "signal_n_zero_init": 0,
                    "signal_first_last_censored_init": False, "steps_done": max(steps, default=0),
                    "diverged_at_step": None, "weight_log10_rate_init": float("inf")},
        "curve": {"step": [0, 10, 20], "train_loss": [2.3, 1.9, 1.5],
                  "val_loss": [2.2, float("nan"), 1.6], "val_accuracy": [0.1, 0.3, 0.5]}
        if trained
        else {"step": [], "train_loss": [], "val_loss": [], "val_accuracy": []},
        "timings": {"group_size": 4, "probe_s": 0.01, "train_s": 0.0, "wall_s": 0.02},
    }  # fmt: skip
    return record, layers, out_dir


def mixed_group(root: Path) -> list:
    """Trained, probe-only, diverged, and a failed cell with no layers."""
    failed = synthetic_cell(root / "c3", 3, steps=(), status="failed", error="IndexError: 99")
    return [
        synthetic_cell(root / "c0", 0),
        synthetic_cell(root / "c1", 1, steps=(0,)),
        synthetic_cell(root / "c2", 2, status="diverged"),
        failed,
    ]


@pytest.fixture
def store(tmp_path, monkeypatch) -> str:
    """A fresh SQLite store; artifacts go to ./mlruns, so the test works in tmp_path."""
    monkeypatch.chdir(tmp_path)
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def config(uri: str, experiment: str, **overrides: Any) -> TrackingConfig:
    fields = {"profile_plot": False, "layer_metrics": LAYER_METRICS, **overrides}
    return TrackingConfig(uri=uri, experiment=experiment, **fields)


def active_runs(uri: str, experiment_id: str) -> list:
    return MlflowClient(uri).search_runs([experiment_id], run_view_type=ViewType.ACTIVE_ONLY)


def histories(client: MlflowClient, run) -> dict[str, list[tuple[int, float]]]:
    return {
        key: sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))
        for key in run.data.metrics
    }


def assert_same_runs(client_a: MlflowClient, a: list, client_b: MlflowClient, b: list) -> None:
    """What the UI and the client API show of runs ``a`` and ``b``, pairwise, is the same
    but for their ids, times and metric timestamps."""
    assert len(a) == len(b)
    for info_a, info_b in zip(a, b, strict=True):
        ra, rb = client_a.get_run(info_a["run_id"]), client_b.get_run(info_b["run_id"])
        for field in ("run_name", "status", "lifecycle_stage", "user_id", "start_time",
                      "end_time"):  # fmt: skip
            assert getattr(rb.info, field) == getattr(ra.info, field), field
        assert rb.info.start_time <= rb.info.end_time
        assert rb.data.params == ra.data.params
        assert rb.data.tags == ra.data.tags
        assert rb.data.metrics == ra.data.metrics
        assert histories(client_b, rb) == histories(client_a, ra)
        assert datasets(rb) == datasets(ra) != []
        assert [f.path for f in client_b.list_artifacts(info_b["run_id"])] == [
            f.path for f in client_a.list_artifacts(info_a["run_id"])
        ]


def datasets(run) -> list[tuple]:
    """A run's dataset inputs as the UI's Dataset column reads them."""
    return sorted(
        (d.dataset.name, d.dataset.digest, d.dataset.source_type, d.dataset.source,
         d.dataset.profile, tuple((t.key, t.value) for t in d.tags))
        for d in run.inputs.dataset_inputs
    )  # fmt: skip


def test_bulk_path_logs_the_runs_the_client_path_logs(store, tmp_path):
    client = MlflowClient(store)
    parent = client.create_run(client.create_experiment("parents")).info.run_id
    old = cell_runs.log_cells(  # through the client, as to a tracking server
        config(store, "old", profile_plot=True, bulk=False), mixed_group(tmp_path / "old"), parent
    )
    new = cell_runs.log_cells(
        config(store, "new", profile_plot=True), mixed_group(tmp_path / "new"), parent
    )
    assert mirror.tracker(store, "new").sql_store is not None  # really the bulk path
    assert len(new) == 4 and old[0]["experiment_id"] != new[0]["experiment_id"]
    assert mirror.tracker(store, "old", bulk=False).sql_store is None
    assert_same_runs(client, old, client, new)  # row for row, whole: tests/test_bulk.py
    runs = [client.get_run(info["run_id"]) for info in new]
    assert [r.info.status for r in runs] == ["FINISHED", "FINISHED", "FINISHED", "FAILED"]
    assert {r.data.tags["mlflow.parentRunId"] for r in runs} == {parent}
    assert runs[0].data.params["model.depth"] == "16"
    assert "final_by_layer/log10_signal_grad_norm" in runs[0].data.metrics
    assert "final_by_layer/signal_grad_norm" not in runs[0].data.metrics  # its log10 only
    assert "curve/val_loss" in runs[0].data.metrics
    assert "weight_log10_rate_init" not in runs[0].data.metrics  # inf left out, as NaN is
    assert runs[3].data.tags["study.error"] == "IndexError: 99"
    assert runs[0].info.artifact_uri.endswith(
        f"/{new[0]['experiment_id']}/{new[0]['run_id']}/artifacts"
    )
    # What the UI's search runs on: the same runs found through tags, params and metrics.
    for experiment in ("old", "new"):
        found = client.search_runs(
            [MlflowClient(store).get_experiment_by_name(experiment).experiment_id],
            "tags.`study.status` = 'finished' and params.`model.depth` = '16' "
            "and metrics.`curve/val_accuracy` >= 0.5",
            order_by=["metrics.`val_loss` DESC"],
        )
        assert [r.info.run_name for r in found] == ["d16-tanh-xavier_normal-none-none-s0"]


def test_a_rerun_trashes_the_runs_it_replaces_in_the_same_transaction(store, tmp_path):
    cfg = config(store, "rerun")
    cells = [synthetic_cell(tmp_path / f"c{i}", i) for i in range(3)]
    first = cell_runs.log_cells(cfg, cells, None)
    for (record, _, out_dir), info in zip(cells, first, strict=True):
        records.write_json(out_dir / records.RUN_FILE, {**record, "mlflow": info})
    # A half-logged run an attempt left behind, named only by the marker of cell 2.
    tracker = mirror.tracker(store, "rerun")
    orphan = tracker.client.create_run(tracker.experiment_id).info.run_id
    cell_runs.write_marker(cells[2][2], [orphan])
    second = cell_runs.log_cells(cfg, cells, None)
    live = {r.info.run_id for r in active_runs(store, tracker.experiment_id)}
    assert live == {info["run_id"] for info in second}
    client = MlflowClient(store)
    for gone in [info["run_id"] for info in first[:2]] + [orphan]:
        assert client.get_run(gone).info.lifecycle_stage == "deleted"
    for (_, _, out_dir), info in zip(cells, second, strict=True):
        assert (out_dir / cell_runs.MLFLOW_MARKER).read_text().split() == [info["run_id"]]


def test_a_failed_commit_leaves_no_run_and_the_rerun_one_per_cell(store, tmp_path, monkeypatch):
    cfg = config(store, "crash")
    cells = [synthetic_cell(tmp_path / f"c{i}", i) for i in range(2)]
    cell_runs.log_cells(cfg, cells[:1], None)  # cell 0 has a run from an earlier attempt

    def crash(self, trash):
        raise KeyboardInterrupt  # killed just before the commit

    with monkeypatch.context() as patched, pytest.raises(KeyboardInterrupt):
        patched.setattr(bulk.SqlRows, "write", crash)
        cell_runs.log_cells(cfg, cells, None)
    experiment_id = mirror.tracker(store, "crash").experiment_id
    assert len(active_runs(store, experiment_id)) == 1
    # Both the old run and the unborn one stay named for the rerun.
    assert len((cells[0][2] / cell_runs.MLFLOW_MARKER).read_text().split()) == 2
    logged = cell_runs.log_cells(cfg, cells, None)
    assert {r.info.run_id for r in active_runs(store, experiment_id)} == {
        info["run_id"] for info in logged
    }


def test_a_locked_database_is_waited_for_then_written(store, tmp_path):
    cfg = config(store, "locked")
    mirror.tracker(store, "locked")  # the store's tables exist
    db = sqlite3.connect(tmp_path / "mlflow.db", isolation_level=None, check_same_thread=False)
    db.execute("BEGIN IMMEDIATE")  # another worker holds the write lock...
    release = threading.Timer(1.0, lambda: db.execute("COMMIT"))
    release.start()  # ...for a second
    t0 = time.monotonic()
    logged = cell_runs.log_cells(cfg, [synthetic_cell(tmp_path / "c0", 0)], None)
    assert time.monotonic() - t0 >= 0.9
    release.join()
    db.close()
    assert [r.info.run_id for r in active_runs(store, logged[0]["experiment_id"])] == [
        logged[0]["run_id"]
    ]


def test_a_transaction_refused_as_locked_is_tried_again(store, tmp_path, monkeypatch):
    cfg = config(store, "retry")
    write, calls = bulk.SqlRows.write, []

    def flaky(self, trash):
        calls.append(1)
        if len(calls) < 3:
            raise MlflowException("database is locked", TEMPORARILY_UNAVAILABLE)
        write(self, trash)

    monkeypatch.setattr(bulk.SqlRows, "write", flaky)
    monkeypatch.setattr(bulk, "LOCKED_WAIT_S", 0.001)
    logged = cell_runs.log_cells(
        cfg, [synthetic_cell(tmp_path / f"c{i}", i) for i in range(2)], None
    )
    assert len(calls) == 3
    assert len(active_runs(store, logged[0]["experiment_id"])) == 2


def test_retry_locked_gives_up_after_its_tries_and_at_once_on_other_errors(monkeypatch):
    monkeypatch.setattr(bulk, "LOCKED_WAIT_S", 0.001)
    calls = []

    def locked():
        calls.append(1)
        raise MlflowException("database is locked", TEMPORARILY_UNAVAILABLE)

    with pytest.raises(MlflowException):
        bulk.retry_locked(locked)
    assert len(calls) == bulk.LOCKED_TRIES
    calls.clear()

    def invalid():
        calls.append(1)
        raise MlflowException("bad key", INVALID_PARAMETER_VALUE)

    with pytest.raises(MlflowException):
        bulk.retry_locked(invalid)
    assert len(calls) == 1


def test_concurrent_groups_into_one_sqlite_file_all_land(store, tmp_path):
    cfg = config(store, "concurrent")
    mirror.tracker(store, "concurrent")
    groups = [
        [synthetic_cell(tmp_path / f"g{g}c{i}", 10 * g + i) for i in range(5)] for g in range(3)
    ]
    logged: list = []
    threads = [
        threading.Thread(target=lambda g=g: logged.extend(cell_runs.log_cells(cfg, g, None)))
        for g in groups
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(logged) == 15
    assert len(active_runs(store, logged[0]["experiment_id"])) == 15


def test_a_forked_worker_opens_its_own_connections_and_leaves_the_parents_open(tmp_path):
    # The pool launcher forks its workers from a parent that has talked to the store: a
    # child that reused the parent's pooled SQLite connection would share its file locks.
    tracker = mirror.Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "fork")
    engine = tracker.sql_store.engine
    engine.dispose()  # from here on, every connection records the process that opened it
    sqlalchemy.event.listen(
        engine, "connect", lambda _, record: record.info.update(pid=os.getpid())
    )
    with engine.connect() as connection:
        assert connection.connection.info["pid"] == os.getpid()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report who opened the connection it is handed, then leave
        try:
            with engine.connect() as connection:
                opened_by = connection.connection.info["pid"]
                os.write(write, b"own" if opened_by == os.getpid() else b"inherited")
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    assert os.read(read, 64) == b"own"
    with engine.connect() as connection:  # the parent's connection is still its own, open
        assert connection.connection.info["pid"] == os.getpid()
        assert connection.exec_driver_sql("select count(*) from experiments").scalar() >= 1


# ------------------------- the command, the picture (study.tracking.reproduce, .profile_svg)

CELLS = [
    ("+sweep=quick/optim", "optim=adamw", "optim.lr=0.01", "optim.clip_norm=1.0",
     "model.skip=residual", "seed=4"),
    ("data=digits", "model.depth=32", "model.activation=sigmoid", "train.steps=0"),
    ("+sweep=smoke", "model.depth=2", "train.steps=20", "seed=3"),
    ("model.residual.scale=0.25", "data.input_scale=0.001", "optim.betas=[0.8,0.95]",
     "train.device=cpu", "probe.schedule=log10", "run_name='it\\'s an odd name'"),
]  # fmt: skip


@pytest.mark.parametrize("cell", CELLS, ids=lambda c: c[0])
def test_the_command_composes_back_to_the_cell(cell):
    config = as_dict(compose_config(*cell))
    args = reproduce.overrides(config)
    assert not any(a.startswith("tracking.") for a in args)
    again = as_dict(compose_config(*args))
    del config["tracking"], again["tracking"]
    assert again == config
    # The shell line splits back into the same overrides.
    assert shlex.split(reproduce.command(config))[3:] == args


def test_the_command_of_the_defaults_is_the_bare_entry_point():
    assert reproduce.command(as_dict(compose_config())) == "python -m study.train"


@pytest.mark.parametrize(("value", "text"), [
    (None, "null"), (True, "true"), (3, "3"), (1e-05, "1e-05"), (0.1, "0.1"),
    ([0.9, 0.999], "[0.9,0.999]"), ("relu", "relu"), ("data/prepared", "data/prepared"),
    ("null", "'null'"), ("a b", "'a b'"), ("it's", "'it\\'s'"), ("12", "'12'"),
])  # fmt: skip
def test_override_values_are_written_as_hydra_reads_them(value, text):
    assert reproduce.override_value(value) == text


def profile_layers(depth: int, steps=(0, 20)) -> dict:
    rng = np.random.default_rng(depth)
    layers = {"step": np.repeat(np.array(steps), depth),
              "layer": np.tile(np.arange(1, depth + 1), len(steps))}  # fmt: skip
    for grad in ("signal", "weight"):
        layers[f"{grad}_grad_norm"] = 10.0 ** -rng.uniform(0, 4, depth * len(steps))
    return layers


@pytest.mark.parametrize("depth", [1, 4, 7, 128])
def test_the_profile_picture_is_legible_svg_with_integer_layer_ticks(depth):
    layers = profile_layers(depth)
    layers["signal_grad_norm"][depth // 2] = 0.0  # an underflowed gradient: a gap, not -inf
    tree = ElementTree.fromstring(profile_svg.svg(layers, "d-name", [0, 20]))
    ns = "{http://www.w3.org/2000/svg}"
    texts = [t.text for t in tree.iter(f"{ns}text")]
    assert "d-name" in texts and "layer (1 = input side)" in texts
    assert "log10 gradient norm" in texts and "signal, step 20" in texts
    x_ticks = [int(t.text) for t in tree.iter(f"{ns}text") if t.get("class") == "layer"]
    assert x_ticks[0] == 1 and 2 <= len(x_ticks) <= 9 or depth == 1
    assert all(1 <= t <= depth for t in x_ticks)
    lines = list(tree.iter(f"{ns}polyline"))
    # Four lines; the zero splits one in two (at depth 1 it was that line's only point).
    assert len(lines) == {1: 3, 4: 5, 7: 5, 128: 5}[depth]
    for line in lines:
        assert "nan" not in line.get("points") and "inf" not in line.get("points")
