"""Multi-machine tracking: a sweep logging to an MLflow server backed by PostgreSQL.

Starts a throwaway PostgreSQL cluster (Debian's ``postgresql``, installed by ``make``
set-up when missing) and ``mlflow server`` on 127.0.0.1, as the README's recipe does.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient

from study import records, runlog, tracking

from .conftest import train
from .test_runlog import assert_same_runs, config, mixed_group
from .test_sweeps import check_one_run_per_cell

pytestmark = pytest.mark.slow

PG_BIN = next(iter(sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)), None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def as_postgres(cmd: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: run its tools as the ``postgres`` user then."""
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


@pytest.fixture(scope="module")
def postgres_uri():
    if PG_BIN is None:
        pytest.fail("PostgreSQL is not installed: `make setup` installs it (as root)")
    # Outside pytest's private temp dirs: the postgres user must be able to reach it.
    root = Path(tempfile.mkdtemp(prefix="study-pg-"))
    if os.geteuid() == 0:
        shutil.chown(root, user="postgres")
    data, port = root / "data", free_port()
    subprocess.run(as_postgres([f"{PG_BIN}/initdb", "-D", str(data), "-A", "trust",
                                "-U", "postgres", "--no-sync"]),
                   check=True, capture_output=True)  # fmt: skip
    subprocess.run(as_postgres([f"{PG_BIN}/pg_ctl", "-D", str(data), "-l", str(root / "log"),
                                "-o", f"-p {port} -k {root} -c listen_addresses=127.0.0.1",
                                "-w", "start"]),
                   check=True, capture_output=True)  # fmt: skip
    try:
        subprocess.run([f"{PG_BIN}/createdb", "-h", "127.0.0.1", "-p", str(port),
                        "-U", "postgres", "mlflow"], check=True)  # fmt: skip
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/mlflow"
    finally:
        subprocess.run(as_postgres([f"{PG_BIN}/pg_ctl", "-D", str(data), "-m", "fast", "stop"]),
                       capture_output=True)  # fmt: skip
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def mlflow_server(postgres_uri, tmp_path_factory):
    port = free_port()
    artifacts = tmp_path_factory.mktemp("mlartifacts")
    log = open(artifacts.parent / "mlflow-server.log", "w")  # noqa: SIM115
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "mlflow"), "server",
         "--backend-store-uri", postgres_uri, "--artifacts-destination", str(artifacts),
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert server.poll() is None, Path(log.name).read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "mlflow server did not come up"
            time.sleep(1)
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
        log.close()


def test_smoke_sweep_with_two_workers_reaches_the_postgres_backed_server(workdir, mlflow_server):
    proc = train(workdir, "-m", "+sweep=smoke", "tracking=server",
                 f"tracking.uri={mlflow_server}", "hydra.launcher.n_jobs=2")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    check_one_run_per_cell(workdir, workdir / "multirun" / "smoke", mlflow_server, "smoke")
    assert not (workdir / "mlflow.db").exists()  # nothing went to a local store


def test_log_cells_to_a_server_logs_run_by_run_what_the_bulk_path_writes(
    mlflow_server, postgres_uri, tmp_path, monkeypatch
):
    """A server gets the client calls (it does its own transactions); its runs look as
    the bulk path's runs in SQLite and PostgreSQL stores look, and a rerun trashes what it
    replaces."""
    monkeypatch.chdir(tmp_path)  # the local store's artifacts go to ./mlruns
    assert tracking.tracker(mlflow_server, "direct").sql_store is None
    cells = mixed_group(tmp_path / "server")
    first = runlog.log_cells(config(mlflow_server, "direct"), cells, None)
    for (record, _, out_dir), info in zip(cells, first, strict=True):
        records.write_json(out_dir / records.RUN_FILE, {**record, "mlflow": info})
    second = runlog.log_cells(config(mlflow_server, "direct"), cells, None)
    server = MlflowClient(mlflow_server)
    live = server.search_runs([second[0]["experiment_id"]], run_view_type=ViewType.ACTIVE_ONLY)
    assert {r.info.run_id for r in live} == {info["run_id"] for info in second}
    assert {server.get_run(i["run_id"]).info.lifecycle_stage for i in first} == {"deleted"}
    for name, store in (("sqlite", f"sqlite:///{tmp_path / 'mlflow.db'}"), ("pg", postgres_uri)):
        assert tracking.tracker(store, f"bulk-{name}").sql_store is not None
        cfg = config(store, f"bulk-{name}")
        bulk = runlog.log_cells(cfg, mixed_group(tmp_path / name), None)
        assert_same_runs(server, second, MlflowClient(store), bulk)
