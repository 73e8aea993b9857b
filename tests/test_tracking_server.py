"""Multi-machine tracking: a sweep logging to an authenticated MLflow server on PostgreSQL.

Starts a throwaway PostgreSQL cluster (Debian's ``postgresql``, installed by ``make``
set-up when missing) and ``mlflow server --app-name basic-auth`` on 127.0.0.1 with
``deploy/basic_auth.ini``, as the README's recipe does: the admin's credentials from the
environment, a researcher's account created by the admin, workers signed in through
MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD.
"""

from __future__ import annotations

import base64
import glob
import json
import os
import pickle
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import NamedTuple

import pytest
from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient
from sqlalchemy.engine import make_url

from study import records
from study.config import ConfigError
from study.runs.sweep import LOCK_FILE
from study.tracking import cell_runs, mirror

from .conftest import ROOT, train
from .test_runlog import assert_same_runs, config, mixed_group
from .test_sweeps import check_one_run_per_cell

pytestmark = pytest.mark.slow

PG_BIN = next(iter(sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)), None)
AUTH_CONFIG = ROOT / "deploy" / "basic_auth.ini"


class Credentials(NamedTuple):
    username: str
    password: str


def call(url: str, body: dict | None = None, auth: Credentials | None = None) -> int:
    """The HTTP status of one REST call: GET, or POST with a JSON ``body``."""
    headers = {"Content-Type": "application/json"}
    if auth is not None:
        token = base64.b64encode(f"{auth.username}:{auth.password}".encode()).decode()
        headers["Authorization"] = f"Basic {token}"
    data = None if body is None else json.dumps(body).encode()
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data, headers), timeout=30) as r:
            return r.status
    except urllib.error.HTTPError as refused:
        return refused.code


def sign_in(monkeypatch, who: Credentials | None) -> None:
    """What a worker exports (README: "Tracking server"); None: nothing."""
    for var, value in (("MLFLOW_TRACKING_USERNAME", who and who.username),
                       ("MLFLOW_TRACKING_PASSWORD", who and who.password)):  # fmt: skip
        if value is None:
            monkeypatch.delenv(var, raising=False)
        else:
            monkeypatch.setenv(var, value)


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
        for database in ("mlflow", "mlflow_auth"):  # runs; users and permissions
            subprocess.run([f"{PG_BIN}/createdb", "-h", "127.0.0.1", "-p", str(port),
                            "-U", "postgres", database], check=True)  # fmt: skip
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/mlflow"
    finally:
        subprocess.run(as_postgres([f"{PG_BIN}/pg_ctl", "-D", str(data), "-m", "fast", "stop"]),
                       capture_output=True)  # fmt: skip
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def admin() -> Credentials:
    return Credentials("admin", secrets.token_urlsafe(16))


@pytest.fixture(scope="module")
def mlflow_server(postgres_uri, admin, tmp_path_factory):
    port = free_port()
    artifacts = tmp_path_factory.mktemp("mlartifacts")
    log = open(artifacts.parent / "mlflow-server.log", "w")  # noqa: SIM115
    db = make_url(postgres_uri)
    # The README's recipe: the databases through libpq's variables (no password on the
    # command line), the admin and the session key from the environment, this config.
    env = {**os.environ, "PGHOST": db.host, "PGPORT": str(db.port), "PGUSER": db.username,
           "MLFLOW_AUTH_CONFIG_PATH": str(AUTH_CONFIG),
           "MLFLOW_AUTH_ADMIN_USERNAME": admin.username,
           "MLFLOW_AUTH_ADMIN_PASSWORD": admin.password,
           "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16)}  # fmt: skip
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "mlflow"), "server", "--app-name", "basic-auth",
         "--backend-store-uri", "postgresql+psycopg2:///mlflow",
         "--artifacts-destination", str(artifacts),
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env,
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


@pytest.fixture(scope="module")
def researcher(mlflow_server, admin) -> Credentials:
    """A researcher's account, as the admin creates one for each (not an admin itself)."""
    who = Credentials("researcher", secrets.token_urlsafe(16))
    status = call(f"{mlflow_server}/api/2.0/mlflow/users/create", who._asdict(), admin)
    assert status == 200, status
    return who


def test_the_server_refuses_a_read_and_a_write_without_valid_credentials(mlflow_server, researcher):
    api = f"{mlflow_server}/api/2.0/mlflow"
    read = f"{api}/experiments/search?max_results=10"
    write = f"{api}/experiments/create"
    refused = [None, Credentials(researcher.username, "not-" + researcher.password),
               Credentials("nobody", researcher.password)]  # fmt: skip
    for who in refused:
        assert call(read, auth=who) == 401, who
        assert call(write, {"name": "refused"}, who) == 401, who
    assert call(read, auth=researcher) == 200
    assert call(f"{api}/experiments/get-by-name?experiment_name=refused", auth=researcher) == 404
    assert call(write, {"name": "allowed"}, researcher) == 200


def test_smoke_sweep_with_two_workers_reaches_the_postgres_backed_server(
    workdir, mlflow_server, researcher, monkeypatch
):
    sign_in(monkeypatch, researcher)  # the workers inherit it; check_one_run_per_cell reads
    proc = train(workdir, "-m", "+sweep=smoke", "tracking=server",
                 f"tracking.uri={mlflow_server}", "hydra.launcher.n_jobs=2")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    check_one_run_per_cell(workdir, workdir / "multirun" / "smoke", mlflow_server, "smoke")
    assert not (workdir / "mlflow.db").exists()  # nothing went to a local store


def test_a_sweep_the_server_refuses_stops_in_one_line_and_writes_nothing(
    workdir, mlflow_server, researcher, monkeypatch
):
    fixes = {
        None: "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD",
        Credentials(researcher.username, "not-" + researcher.password):
            f"user {researcher.username} was rejected: check MLFLOW_TRACKING_PASSWORD",
    }  # fmt: skip
    sweep_dir = workdir / "multirun" / "refused"
    for who, fix in fixes.items():
        sign_in(monkeypatch, who)
        proc = train(workdir, "-m", "+sweep=smoke", "tracking=server",
                     f"tracking.uri={mlflow_server}", "tracking.experiment=refused",
                     f"hydra.sweep.dir={sweep_dir}")  # fmt: skip
        assert proc.returncode == 2, proc.stderr[-3000:]
        line = f"study.train: error: tracking.uri: {mlflow_server}: 401 Unauthorized: {fix}"
        assert proc.stderr.splitlines() == [line]
        # The sweep never started: no sweep.json, no multirun.yaml, no cell; its lock only.
        assert [p.name for p in sweep_dir.iterdir() if p.name != LOCK_FILE] == []
    sign_in(monkeypatch, researcher)
    assert MlflowClient(mlflow_server).get_experiment_by_name("refused") is None
    assert not (workdir / "mlflow.db").exists()


def test_a_refusal_in_a_worker_reaches_the_sweep_whole(mlflow_server, monkeypatch):
    """A worker refused mid-sweep (its password changed) fails its cells with the one
    line: the error crosses back to the sweep's process by pickle, as the pool sends it."""
    sign_in(monkeypatch, None)
    with pytest.raises(mirror.Refused) as refused:
        mirror.Tracker(mlflow_server, "refused")
    back = pickle.loads(pickle.dumps(refused.value))
    assert isinstance(back, ConfigError)
    assert (
        str(back)
        == str(refused.value)
        == (
            f"tracking.uri: {mlflow_server}: 401 Unauthorized: "
            "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"
        )
    )


def test_log_cells_to_a_server_logs_run_by_run_what_the_bulk_path_writes(
    mlflow_server, researcher, postgres_uri, tmp_path, monkeypatch
):
    """A server gets the client calls (it does its own transactions); its runs look as
    the bulk path's runs in SQLite and PostgreSQL stores look, and a rerun trashes what it
    replaces."""
    monkeypatch.chdir(tmp_path)  # the local store's artifacts go to ./mlruns
    sign_in(monkeypatch, researcher)
    assert mirror.tracker(mlflow_server, "direct").sql_store is None
    cells = mixed_group(tmp_path / "server")
    first = cell_runs.log_cells(config(mlflow_server, "direct"), cells, None)
    for (record, _, out_dir), info in zip(cells, first, strict=True):
        records.write_json(out_dir / records.RUN_FILE, {**record, "mlflow": info})
    second = cell_runs.log_cells(config(mlflow_server, "direct"), cells, None)
    server = MlflowClient(mlflow_server)
    live = server.search_runs([second[0]["experiment_id"]], run_view_type=ViewType.ACTIVE_ONLY)
    assert {r.info.run_id for r in live} == {info["run_id"] for info in second}
    assert {server.get_run(i["run_id"]).info.lifecycle_stage for i in first} == {"deleted"}
    for name, store in (("sqlite", f"sqlite:///{tmp_path / 'mlflow.db'}"), ("pg", postgres_uri)):
        assert mirror.tracker(store, f"bulk-{name}").sql_store is not None
        cfg = config(store, f"bulk-{name}")
        bulk = cell_runs.log_cells(cfg, mixed_group(tmp_path / name), None)
        assert_same_runs(server, second, MlflowClient(store), bulk)
