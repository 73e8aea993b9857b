"""``make ui``: the MLflow UI on the study's store, light and local.

    python -m study.tracking.ui [--port 5000] [--store mlflow.db]

Starts ``mlflow server`` bound to 127.0.0.1 with one web worker and no job runner (MLflow's
defaults: four workers plus a job runner, ~31 s to start and ~3.7 GB here; this: ~6 s and
~0.5 GB), and usage telemetry off (no "collects usage data" calls from the server). Prints
the runs view of each experiment, with the study's saved view of its cells (the swept axes as
columns), and how to read the per-layer charts; stops the server on Ctrl-C.

Bad input (no store, a port that is not a number or is taken) is one line and exit
status 2, with nothing started.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from importlib.metadata import entry_points
from pathlib import Path
from typing import NoReturn

HOST = "127.0.0.1"
# The environment the server runs in: telemetry off (MLflow's own switch and the common
# DO_NOT_TRACK), and no job runner (it starts a Huey consumer and its workers).
ENVIRONMENT = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
}
VIEW_TAG = "mlflow.sharedViewState.cells"  # study.tracking.experiment.VIEW_TAG (kept import-free)
APP = "study-ui"  # study/ui_app.py, an `mlflow.app` entry point of this package
START_TIMEOUT_S = 60.0


def fail(message: str) -> NoReturn:
    print(f"study.tracking.ui: error: {message}", file=sys.stderr)
    sys.exit(2)


def experiments(store: Path) -> list[tuple[str, str, bool]]:
    """(id, name, has the study's saved view) of the store's active experiments that hold
    runs, read straight from SQLite (importing MLflow here would cost ~3 s of the start)."""
    with sqlite3.connect(f"file:{store}?mode=ro", uri=True) as db:
        rows = db.execute(
            "SELECT e.experiment_id, e.name, EXISTS (SELECT 1 FROM experiment_tags t "
            "WHERE t.experiment_id = e.experiment_id AND t.key = ?) "
            "FROM experiments e WHERE e.lifecycle_stage = 'active' AND EXISTS "
            "(SELECT 1 FROM runs r WHERE r.experiment_id = e.experiment_id "
            "AND r.lifecycle_stage = 'active') ORDER BY e.name",
            (VIEW_TAG,),
        ).fetchall()
    return [(str(i), name, bool(view)) for i, name, view in rows]


def runs_url(base: str, experiment_id: str, view: bool) -> str:
    url = f"{base}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"
    return url + ("&viewStateShareKey=cells" if view else "")


def check_port(port: int) -> None:
    if not 0 < port < 65536:
        fail(f"--port: {port} is not a TCP port (1-65535)")
    with socket.socket() as probe:
        # As the server binds: a port whose last connections are closing (TIME_WAIT) is free.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((HOST, port))
        except OSError:
            fail(f"--port: {HOST}:{port} is in use; choose another (make ui PORT=5001)")


def wait_until_up(server: subprocess.Popen, base: str) -> float:
    start = time.monotonic()
    while time.monotonic() - start < START_TIMEOUT_S:
        if server.poll() is not None:
            fail(f"mlflow server exited with status {server.returncode} (its output is above)")
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=1) as response:
                if response.status == 200:
                    return time.monotonic() - start
        except OSError:
            time.sleep(0.1)
    fail(f"mlflow server did not answer {base}/health within {START_TIMEOUT_S:.0f} s")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="study.tracking.ui", description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", default="5000", help="TCP port on 127.0.0.1 (default 5000)")
    parser.add_argument("--store", default="mlflow.db", help="the SQLite store (mlflow.db)")
    args = parser.parse_args(argv)
    if not args.port.isdigit():
        fail(f"--port: {args.port!r} is not a number")
    port, store = int(args.port), Path(args.store).resolve()
    if not store.is_file():
        fail(f"{args.store}: no MLflow store here; run a sweep or `make study` first")
    try:
        found = experiments(store)
    except sqlite3.DatabaseError as exc:
        fail(f"{args.store}: not an MLflow store ({exc})")
    check_port(port)
    if not any(e.name == APP for e in entry_points(group="mlflow.app")):
        fail(f"the MLflow app {APP!r} is not installed: run `make setup`")
    base = f"http://{HOST}:{port}"
    command = [
        str(Path(sys.executable).parent / "mlflow"), "server",
        "--backend-store-uri", f"sqlite:///{store}", "--host", HOST, "--port", str(port),
        "--workers", "1", "--uvicorn-opts", "--no-access-log", "--app-name", APP,
    ]  # fmt: skip
    # Its own process group, so that stopping it reaches the uvicorn process `mlflow server`
    # starts (the CLI does not pass a signal on); we stop that group on Ctrl-C, on a
    # SIGTERM or SIGHUP sent to us, and when the server exits on its own.
    server = subprocess.Popen(command, env={**os.environ, **ENVIRONMENT}, start_new_session=True)
    for stop in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(stop, _interrupt)
    try:
        seconds = wait_until_up(server, base)
        print(f"\nMLflow UI on {base} (started in {seconds:.1f} s; Ctrl-C stops it)", flush=True)
        for experiment_id, name, view in found:
            print(f"  {name:<18} {runs_url(base, experiment_id, view)}", flush=True)
        print(
            "Per-layer charts (init_by_layer/*, final_by_layer/*): the x axis MLflow calls "
            '"Step" is the layer, 1 = input side; log10_* are log10 of the statistic. Each '
            "run's description holds the command that reproduces its cell.",
            flush=True,
        )
        server.wait()
    except KeyboardInterrupt:
        pass
    finally:
        _stop(server)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _stop(server: subprocess.Popen) -> None:
    """The server's whole process group: the CLI and its uvicorn worker."""
    try:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=10)
        os.killpg(server.pid, signal.SIGTERM)  # a worker the CLI left behind, if any
    except ProcessLookupError:
        return  # the group is gone
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)


if __name__ == "__main__":
    main()
