"""Multi-machine tracking: a sweep logging to an authenticated MLflow server on PostgreSQL.

Starts a throwaway PostgreSQL cluster (Debian's ``postgresql``, installed by ``make``
set-up when missing) and ``mlflow server --app-name basic-auth`` on 127.0.0.1 with
``deploy/basic_auth.ini``, as the README's recipe does: the admin's credentials from the
environment, a researcher's account created by the admin, workers signed in through
MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD (or a URI that carries them).

Researchers read every experiment and write to their own (``default_permission = READ``);
a run or sweep the server will not take is refused before any work where it can be told
(a wrong password, a sweep into another's experiment), and otherwise recorded first and
mirrored later (``python -m study.tracking mirror``).
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
from urllib.parse import quote

import pytest
from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient
from sqlalchemy.engine import make_url

from study import records
from study.config import ConfigError
from study.runs.sweep import LOCK_FILE
from study.tracking import cell_runs, mirror

from .conftest import ROOT, subprocess_env, train
from .test_runlog import assert_same_runs, config, mixed_group
from .test_sweeps import SMOKE_CELLS, check_one_run_per_cell

pytestmark = pytest.mark.slow

PG_BIN = next(iter(sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)), None)
AUTH_CONFIG = ROOT / "deploy" / "basic_auth.ini"


class Credentials(NamedTuple):
    username: str
    password: str


def request(url: str, body: dict | None = None, auth: Credentials | None = None):
    """One REST call, GET or POST with a JSON ``body``: (HTTP status, the answer's JSON)."""
    headers = {"Content-Type": "application/json"}
    if auth is not None:
        token = base64.b64encode(f"{auth.username}:{auth.password}".encode()).decode()
        headers["Authorization"] = f"Basic {token}"
    data = None if body is None else json.dumps(body).encode()
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data, headers), timeout=30) as r:
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as refused:
        return refused.code, {}


def call(url: str, body: dict | None = None, auth: Credentials | None = None) -> int:
    """The HTTP status of one REST call."""
    return request(url, body, auth)[0]


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


def account(url: str, admin: Credentials, name: str, password: str = "") -> Credentials:
    """A researcher's account, as the admin creates one for each (not an admin itself)."""
    who = Credentials(name, password or secrets.token_urlsafe(16))
    status = call(f"{url}/api/2.0/mlflow/users/create", who._asdict(), admin)
    assert status == 200, status
    return who


@pytest.fixture(scope="module")
def researcher(mlflow_server, admin) -> Credentials:
    return account(mlflow_server, admin, "researcher")


@pytest.fixture(scope="module")
def alice(mlflow_server, admin) -> Credentials:
    return account(mlflow_server, admin, "alice")


@pytest.fixture(scope="module")
def bob(mlflow_server, admin) -> Credentials:
    return account(mlflow_server, admin, "bob")


def create_experiment(url: str, who: Credentials, name: str) -> str:
    status, made = request(f"{url}/api/2.0/mlflow/experiments/create", {"name": name}, who)
    assert status == 200, status
    return made["experiment_id"]


def permission(url: str, admin: Credentials, who: Credentials, experiment_id: str) -> str:
    """What ``who`` may do in an experiment, as the server resolves it."""
    status, answer = request(f"{url}/api/3.0/mlflow/users/permissions/get?username="
                             f"{who.username}&resource_type=experiment&resource_id="
                             f"{experiment_id}", auth=admin)  # fmt: skip
    assert status == 200, status
    return answer["permission"]


def grant(url: str, admin: Credentials, who: Credentials, experiment_id: str, level: str | None):
    """The admin's grant (``level`` READ, EDIT, MANAGE) or, with None, its revocation."""
    body = {"username": who.username, "resource_type": "experiment", "resource_id": experiment_id}
    if level is None:
        assert call(f"{url}/api/3.0/mlflow/users/permissions/revoke", body, admin) == 200
    else:
        body["permission"] = level
        assert call(f"{url}/api/3.0/mlflow/users/permissions/grant", body, admin) == 200


def mirror_command(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    """``python -m study.tracking mirror ...`` in ``workdir``, as a user would type it."""
    command = [sys.executable, "-m", "study.tracking", "mirror", *args]
    return subprocess.run(
        command, cwd=workdir, env=subprocess_env(), capture_output=True, text=True, timeout=600
    )


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
    # Four cells (probe-only and trained, plain and residual): each a run over HTTP.
    proc = train(workdir, "-m", "+sweep=smoke", "tracking=server",
                 f"tracking.uri={mlflow_server}", "hydra.launcher.n_jobs=2",
                 "model.depth=2", "model.activation=relu")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    check_one_run_per_cell(
        workdir, workdir / "multirun" / "smoke", mlflow_server, "smoke", cells=SMOKE_CELLS // 4
    )
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


# A cell that trains a few steps: what the server sees of it is what matters here.
SMALL = ("train.steps=5", "model.width=16", "model.depth=2")


def scanned_files(root: Path) -> dict[Path, bytes]:
    """Every file under ``root`` (symbolic links, the prepared data, not followed)."""
    return {Path(d) / name: (Path(d) / name).read_bytes()
            for d, _, names in os.walk(root) for name in names}  # fmt: skip


def mlflow_texts(url: str, experiment_ids: list[str], folder: Path) -> dict[str, bytes]:
    """All an account that reads these experiments sees of them: their fields and tags, and
    each run's (trashed ones too) params, tags, description, inputs and artifacts."""
    client = MlflowClient(url)
    out = {}
    for experiment_id in experiment_ids:
        found = client.get_experiment(experiment_id)
        out[f"experiment {found.name}"] = repr(vars(found)).encode()
        for run in client.search_runs([experiment_id], run_view_type=ViewType.ALL):
            run_id = run.info.run_id
            out[f"run {run_id}"] = json.dumps(run.to_dictionary(), default=str).encode()
            local = Path(client.download_artifacts(run_id, "", str(folder / run_id)))
            for path, content in scanned_files(local).items():
                out[f"artifact {run_id}/{path.relative_to(local)}"] = content
    return out


def test_credentials_typed_into_the_uri_sign_in_and_are_written_nowhere(
    workdir, mlflow_server, admin, monkeypatch, tmp_path_factory
):
    """A user name and password in tracking.uri, typed on the command line (in Hydra's
    quotes too) or exported as MLFLOW_TRACKING_URI, sign a run and a sweep in as that user
    (over the variables exported before), and reach no record, Hydra file, log, console
    line or MLflow field: they are moved into the client's variables first."""
    token = secrets.token_urlsafe(16)  # in the password, raw or percent-encoded alike
    who = account(mlflow_server, admin, f"leak-{secrets.token_hex(4)}", f"{token}/@:x")
    host = mlflow_server.removeprefix("http://")
    typed = f"http://{who.username}:{quote(who.password, safe='')}@{host}"
    sign_in(monkeypatch, Credentials("nobody", "exported-long-ago"))
    sweep_dir = workdir / "multirun" / "leak"
    procs = [
        train(workdir, "tracking=server", f"tracking.uri={typed}",
              "tracking.experiment=leak-run", *SMALL),
        train(workdir, "-m", "tracking=server", f"tracking.uri='{typed}'",
              "tracking.experiment=leak-sweep", *SMALL, "seed=0,1", "model.skip=none,residual",
              f"hydra.sweep.dir={sweep_dir}"),
    ]  # fmt: skip
    monkeypatch.setenv("MLFLOW_TRACKING_URI", typed)
    procs.append(train(workdir, "tracking=server", "tracking.experiment=leak-env", *SMALL))
    for proc in procs:
        assert proc.returncode == 0, proc.stderr[-3000:]

    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    sign_in(monkeypatch, admin)
    client = MlflowClient(mlflow_server)
    experiments = [client.get_experiment_by_name(f"leak-{kind}").experiment_id
                   for kind in ("run", "sweep", "env")]  # fmt: skip
    # Signed in as the URI's user: the creator of each experiment, whom the server made
    # its only manager (everyone else reads).
    assert {permission(mlflow_server, admin, who, e) for e in experiments} == {"MANAGE"}
    files = scanned_files(workdir)
    names = {path.name for path in files}
    assert {"run.json", "mlflow.json", "layers.parquet", "train.log", "sweep.json",
            "multirun.yaml", "overrides.yaml", "config.yaml", "hydra.yaml"} <= names  # fmt: skip
    seen = {str(path): content for path, content in files.items()}
    for i, proc in enumerate(procs):
        seen[f"stdout {i}"], seen[f"stderr {i}"] = proc.stdout.encode(), proc.stderr.encode()
    mirrored = mlflow_texts(mlflow_server, experiments, tmp_path_factory.mktemp("artifacts"))
    assert len([k for k in mirrored if k.startswith("run ")]) == 2 + 4 + 1  # + the parent
    assert any(k.endswith("/sweep.json") for k in mirrored)
    seen.update(mirrored)
    for secret in (token, who.username):
        assert [where for where, content in seen.items() if secret.encode() in content] == []


def test_researchers_read_each_others_experiments_and_write_only_to_their_own(
    mlflow_server, alice, bob
):
    """deploy/basic_auth.ini: READ for everyone, MANAGE for an experiment's creator. Bob can
    neither log a better accuracy into Alice's run nor delete her experiment."""
    api = f"{mlflow_server}/api/2.0/mlflow"
    experiment_id = create_experiment(mlflow_server, alice, "alice-own")
    status, made = request(f"{api}/runs/create", {"experiment_id": experiment_id}, alice)
    assert status == 200, status
    run_id = made["run"]["info"]["run_id"]
    metric = {"run_id": run_id, "key": "test_accuracy", "timestamp": 0, "step": 0}
    assert call(f"{api}/runs/log-metric", {**metric, "value": 0.5}, alice) == 200
    assert call(f"{api}/experiments/get?experiment_id={experiment_id}", auth=bob) == 200
    assert call(f"{api}/runs/get?run_id={run_id}", auth=bob) == 200
    refused = {
        "runs/log-metric": {**metric, "value": 0.99},
        "runs/create": {"experiment_id": experiment_id},
        "experiments/set-experiment-tag": {"experiment_id": experiment_id,
                                           "key": "mlflow.note.content", "value": "mine"},
        "runs/delete": {"run_id": run_id},
        "experiments/delete": {"experiment_id": experiment_id},
    }  # fmt: skip
    answers = {path: call(f"{api}/{path}", body, bob) for path, body in refused.items()}
    assert answers == dict.fromkeys(refused, 403)
    status, got = request(f"{api}/runs/get?run_id={run_id}", auth=alice)
    [kept] = got["run"]["data"]["metrics"]
    assert (kept["key"], kept["value"]) == ("test_accuracy", 0.5)
    assert call(f"{api}/runs/delete", {"run_id": run_id}, alice) == 200  # hers to manage


def test_a_sweep_into_a_colleagues_experiment_stops_in_one_line_before_any_cell(
    workdir, mlflow_server, alice, bob, monkeypatch
):
    """Bob may read Alice's experiment, not log to it: his sweep is refused when it opens
    its parent run, saying what to ask the admin for, and nothing is written."""
    experiment_id = create_experiment(mlflow_server, alice, "alice-sweeps")
    sign_in(monkeypatch, bob)
    sweep_dir = workdir / "multirun" / "into-alices"
    proc = train(workdir, "-m", "tracking=server", f"tracking.uri={mlflow_server}",
                 "tracking.experiment=alice-sweeps", *SMALL, "seed=0,1",
                 f"hydra.sweep.dir={sweep_dir}")  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.splitlines() == [
        f"study.train: error: tracking.uri: {mlflow_server}: 403 Forbidden: user bob may not "
        "log to experiment alice-sweeps: ask the server's admin for EDIT permission on it, or "
        "use an experiment of your own"
    ]
    assert [p.name for p in sweep_dir.iterdir() if p.name != LOCK_FILE] == []
    assert MlflowClient(mlflow_server).search_runs([experiment_id]) == []


def test_a_single_run_with_a_wrong_password_is_refused_before_it_trains(
    workdir, mlflow_server, bob, monkeypatch
):
    """The password typed into the URI is the one tried (not Bob's right one, exported
    before): refused in one line, exit 2, no folder, nothing in MLflow."""
    sign_in(monkeypatch, bob)
    host = mlflow_server.removeprefix("http://")
    wrong = f"http://bob:not-{bob.password}@{host}"
    proc = train(workdir, "tracking=server", f"tracking.uri={wrong}",
                 "tracking.experiment=wrong-password", *SMALL)  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.splitlines() == [
        f"study.train: error: tracking.uri: {mlflow_server}: 401 Unauthorized: user bob was "
        "rejected: check MLFLOW_TRACKING_PASSWORD"
    ]
    assert sorted(p.name for p in workdir.iterdir()) in (["data"], ["data", "outputs"])
    assert list((workdir / "outputs").rglob("*")) == []  # Hydra's job folder removed
    assert MlflowClient(mlflow_server).get_experiment_by_name("wrong-password") is None


def test_a_run_the_server_will_not_take_is_recorded_then_mirrored_once_it_will(
    workdir, mlflow_server, admin, alice, bob, monkeypatch
):
    """Bob reads Alice's experiment but may not log to it: his run trains, is recorded and
    exits 1 saying so. Mirrored to an experiment of his own meanwhile, then, once the admin
    grants him EDIT, to Alice's: one run there, the record's."""
    experiment_id = create_experiment(mlflow_server, alice, "alice-runs")
    sign_in(monkeypatch, bob)
    proc = train(workdir, "tracking=server", f"tracking.uri={mlflow_server}",
                 "tracking.experiment=alice-runs", *SMALL)  # fmt: skip
    assert proc.returncode == 1, proc.stderr[-3000:]
    [run_dir] = [p.parent for p in (workdir / "outputs").glob("*/*/run.json")]
    record = records.read_run(run_dir)
    assert record["status"] == "finished"
    assert proc.stderr.splitlines() == [
        f"study.train: {record['run_name']} is recorded in {run_dir} but not mirrored to "
        f"MLflow: tracking.uri: {mlflow_server}: 403 Forbidden: user bob may not log to "
        "experiment alice-runs: ask the server's admin for EDIT permission on it, or use an "
        f"experiment of your own; mirror it later: python -m study.tracking mirror {run_dir}"
    ]
    assert records.read_mirror(run_dir) in (None, {})
    client = MlflowClient(mlflow_server)
    assert client.search_runs([experiment_id]) == []

    own = mirror_command(workdir, str(run_dir), "--experiment", "bob-runs")
    assert own.returncode == 0, own.stderr[-3000:]
    bobs = client.get_experiment_by_name("bob-runs").experiment_id
    assert records.read_mirror(run_dir)["experiment_id"] == bobs

    grant(mlflow_server, admin, bob, experiment_id, "EDIT")
    proc = mirror_command(workdir, str(run_dir))
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = records.read_mirror(run_dir)
    [run] = client.search_runs([experiment_id])
    assert (info["experiment_id"], info["run_id"]) == (experiment_id, run.info.run_id)
    assert (run.data.tags["study.cell_key"], run.info.status) == (record["cell_key"], "FINISHED")


def test_a_sweep_whose_mirror_is_refused_mid_way_keeps_its_records_and_mirrors_them_later(
    workdir, mlflow_server, admin, alice, bob, monkeypatch
):
    """Bob may log to Alice's experiment (EDIT) when his sweep opens its parent run; the
    admin revokes it before the cells log. Every cell is recorded, the sweep exits 1 naming
    how many are not mirrored, and once EDIT is back the mirror command logs one run per
    cell under the parent."""
    experiment_id = create_experiment(mlflow_server, alice, "alice-shared")
    grant(mlflow_server, admin, bob, experiment_id, "EDIT")
    sign_in(monkeypatch, bob)
    sweep_dir = workdir / "multirun" / "shared"
    proc = subprocess.Popen(
        [sys.executable, "-m", "study.train", "-m", "tracking=server",
         f"tracking.uri={mlflow_server}", "tracking.experiment=alice-shared", *SMALL,
         "seed=0,1", "model.skip=none,residual", f"hydra.sweep.dir={sweep_dir}"],
        cwd=workdir, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    # sweep.json is written once the parent run exists, before any worker starts.
    while not (sweep_dir / records.SWEEP_FILE).exists() and proc.poll() is None:
        time.sleep(0.02)
    grant(mlflow_server, admin, bob, experiment_id, None)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 1, err[-3000:]
    cells = sorted(p.parent for p in sweep_dir.glob("*/run.json"))
    assert len(cells) == 4
    missing = [d for d in cells if not (d / records.MIRROR_FILE).exists()]
    assert missing, "every cell was mirrored before the revocation"
    assert (
        f"[sweep] {len(missing)} cells are recorded but not mirrored to MLflow: tracking.uri: "
        f"{mlflow_server}: 403 Forbidden: user bob may not log to experiment alice-shared: ask "
        "the server's admin for EDIT permission on it, or use an experiment of your own; "
        f"mirror them later: python -m study.tracking mirror {sweep_dir}"
    ) in out.splitlines()

    grant(mlflow_server, admin, bob, experiment_id, "EDIT")
    again = mirror_command(workdir, str(sweep_dir))
    assert again.returncode == 0, again.stderr[-3000:]
    check_one_run_per_cell(workdir, sweep_dir, mlflow_server, "alice-shared", cells=4)
