"""``tracking.bulk: false`` end to end: a sweep logged through MLflow's public client records
and logs what the default (the bulk path) does, row for row (tests/test_bulk.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient
from mlflow.utils.file_utils import local_file_uri_to_path

from study import records
from study.tracking import cell_runs

from .conftest import empty_store, train
from .test_bulk import VARIES, assert_same_rows, row_counts

pytestmark = pytest.mark.slow  # two sweeps: ~50 s on 2 cores

# What differs between two runs of one sweep, and why: where the cells were logged (the
# knob itself), which process on which host ran them, when, and how long they took.
RECORD_VARIES = ("config.tracking", "environment.pid", "environment.host", "started_at",
                 "finished_at", "timings.probe_s", "timings.train_s", "timings.wall_s")  # fmt: skip
SWEEP = ("-m", "+sweep=smoke", "model.depth=2", "model.activation=tanh")  # 4 cells


def without(record: dict[str, Any], paths: tuple[str, ...]) -> dict[str, Any]:
    record = json.loads(json.dumps(record))  # a copy
    for path in paths:
        *parents, last = path.split(".")
        node = record
        for key in parents:
            node = node[key]
        del node[last]
    return record


def test_a_sweep_with_bulk_off_records_and_logs_what_the_default_does(workdir, mlflow_template):
    found = {}
    for path, extra in (("bulk", ()), ("client", ("tracking.bulk=false",))):
        uri = f"sqlite:///{empty_store(mlflow_template, workdir / f'{path}.db')}"
        proc = train(workdir, *SWEEP, f"hydra.sweep.dir={workdir / path}",
                     f"tracking.uri={uri}", *extra)  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
        folders = sorted(p.parent for p in (workdir / path).glob("*/run.json"))
        found[path] = uri, {f.name: f for f in folders}
    (bulk_uri, bulk_cells), (client_uri, client_cells) = found["bulk"], found["client"]
    assert len(bulk_cells) == 4 and bulk_cells.keys() == client_cells.keys()
    records_of = {path: {name: records.read_run(f) for name, f in cells.items()}
                  for path, (_, cells) in found.items()}  # fmt: skip
    assert [r["config"]["tracking"]["bulk"] for r in records_of["client"].values()] == [False] * 4
    for name, record in records_of["bulk"].items():
        assert without(record, RECORD_VARIES) == without(records_of["client"][name], RECORD_VARIES)
    # The same rows in every table (the parent runs' too, in number), the cells' whole.
    assert row_counts(bulk_uri) == row_counts(client_uri)
    infos = {path: [records.read_mirror(f) for f in cells.values()]
             for path, (_, cells) in found.items()}  # fmt: skip
    parents = {info["parent"]: "{parent}" for path in infos for info in infos[path]}
    assert len(parents) == 2
    cell_times = {**VARIES, ("runs", "start_time"): "the record's started_at: another run",
                  ("runs", "end_time"): "started_at + the cell's wall time"}  # fmt: skip
    assert_same_rows(bulk_uri, infos["bulk"], client_uri, infos["client"], parents, cell_times,
                     frozenset({"probe_s", "train_s", "wall_s"}))  # fmt: skip
    # The same files; the bulk path links a cell's layers into its artifacts (a local store),
    # the client copies them: tracking.bulk=false reached every sweep worker.
    for path, (uri, cells) in found.items():
        for info, folder in zip(infos[path], cells.values(), strict=True):
            run = MlflowClient(uri).get_run(info["run_id"])
            artifacts = Path(local_file_uri_to_path(run.info.artifact_uri))
            assert sorted(p.name for p in artifacts.iterdir()) == [
                cell_runs.CONFIG_ARTIFACT,
                records.LAYERS_FILE,
                cell_runs.PROFILE_ARTIFACT,
            ]
            linked = (artifacts / records.LAYERS_FILE).samefile(folder / records.LAYERS_FILE)
            assert linked == (path == "bulk"), (path, folder.name)
