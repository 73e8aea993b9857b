"""Credentials typed into a tracking URI: moved into the client's environment before Hydra
records anything, or refused in one line that does not show them. (With a real server:
tests/test_tracking_server.py.)"""

from __future__ import annotations

import os

import pytest

from study.config import ConfigError
from study.runs.train import clean_credentials
from study.tracking import __main__ as mirror_command
from study.tracking import uri

from .conftest import train

SECRET = "s3cret-Pw"
VARIABLES = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_URI",
             "PGUSER", "PGPASSWORD")  # fmt: skip


@pytest.fixture
def no_variables(monkeypatch):
    """Whatever the tests set in os.environ is undone after each."""
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize(
    ("typed", "clean", "moved"),
    [
        ("http://alice:s3cret-Pw@host:5000", "http://host:5000",
         {"MLFLOW_TRACKING_USERNAME": "alice", "MLFLOW_TRACKING_PASSWORD": SECRET}),
        # percent-encoded: the client gets the password itself
        ("https://alice:s3cret%2FPw%40x@host/mlflow", "https://host/mlflow",
         {"MLFLOW_TRACKING_USERNAME": "alice", "MLFLOW_TRACKING_PASSWORD": "s3cret/Pw@x"}),
        # in Hydra's quotes (a password with a comma): the quotes stay, the password goes
        ("'http://alice:s3cret,Pw@host:5000'", "'http://host:5000'",
         {"MLFLOW_TRACKING_USERNAME": "alice", "MLFLOW_TRACKING_PASSWORD": "s3cret,Pw"}),
        ("postgresql+psycopg2://bob:s3cret-Pw@db:5432/mlflow", "postgresql+psycopg2://db:5432/mlflow",
         {"PGUSER": "bob", "PGPASSWORD": SECRET}),
        ("http://alice@host:5000", "http://host:5000", {"MLFLOW_TRACKING_USERNAME": "alice"}),
        ("sqlite:////data/runs@v2/mlflow.db", "sqlite:////data/runs@v2/mlflow.db", {}),
    ],
)  # fmt: skip
def test_credentials_move_from_the_uri_into_the_clients_variables(typed, clean, moved):
    environ: dict[str, str] = {}
    assert uri.move_credentials(typed, environ) == clean
    assert environ == moved


def test_credentials_in_the_uri_replace_the_variables_set_before():
    """The URI typed for this run says who signs in, not a variable exported long ago."""
    environ = {"MLFLOW_TRACKING_USERNAME": "bob", "MLFLOW_TRACKING_PASSWORD": "bobs"}
    uri.move_credentials("http://alice:s3cret-Pw@host", environ)
    assert environ == {"MLFLOW_TRACKING_USERNAME": "alice", "MLFLOW_TRACKING_PASSWORD": SECRET}


@pytest.mark.parametrize(
    ("typed", "shown"),
    [
        # urlsplit ends the host part at the first "/", "?" or "#": unencoded in a
        # password, they would leave it in the URI as if it were a path
        ("http://alice:s3cret-Pw/x@host:5000", "http://***@host:5000"),
        ("http://alice:s3cret-Pw?x@host:5000", "http://***@host:5000"),
        ("http://alice:s3cret-Pw#x@host:5000", "http://***@host:5000"),
        ("http://alice:s3cret-Pw@a,http://alice:s3cret-Pw@b", "http://***@b"),  # a sweep list
        ("mysql://alice:s3cret-Pw@host/db", "mysql://host/db"),  # its driver reads no variables
    ],
)
def test_credentials_that_cannot_be_moved_are_refused_without_showing_them(typed, shown):
    with pytest.raises(ConfigError) as refused:
        uri.move_credentials(typed, {})
    assert str(refused.value).startswith(f"tracking.uri: {shown}: ")
    assert "s3cret" not in str(refused.value)


def test_a_uri_that_reaches_the_checks_with_credentials_is_refused_without_them():
    """From a config file or an interpolation: past move_credentials, caught by check."""
    with pytest.raises(ConfigError) as refused:
        uri.check("http://alice:s3cret-Pw@host:5000")
    assert str(refused.value).startswith("tracking.uri: http://***@host:5000: ")
    assert "s3cret" not in str(refused.value)


def test_clean_credentials_cleans_the_command_line_and_the_environment(no_variables, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://carol:envs3cret@host:5000")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "exported-long-ago")
    argv = ["-m", "+tracking.uri='http://alice:s3cret,Pw@host:5000'", "model.depth=2,8",
            "++tracking.uri=http://alice:s3cret-Pw@host:5000"]  # fmt: skip
    assert clean_credentials(argv) == [
        "-m", "+tracking.uri='http://host:5000'", "model.depth=2,8",
        "++tracking.uri=http://host:5000",
    ]  # fmt: skip
    environ = {name: os.environ[name] for name in VARIABLES if name in os.environ}
    # The command line's last URI wins, as Hydra takes its last override.
    assert environ == {"MLFLOW_TRACKING_URI": "http://host:5000",
                       "MLFLOW_TRACKING_USERNAME": "alice",
                       "MLFLOW_TRACKING_PASSWORD": SECRET}  # fmt: skip


def test_the_mirror_command_refuses_a_uri_it_cannot_clean_in_one_line(
    no_variables, tmp_path, capsys
):
    with pytest.raises(SystemExit) as stopped:
        mirror_command.main(["mirror", str(tmp_path), "--uri", "http://alice:s3cret-Pw/x@host"])
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert err.splitlines() == [
        "study.tracking: error: tracking.uri: http://***@host: cannot tell the user name and "
        "password from the host; percent-encode the password's / ? # @ (/ as %2F), or set "
        "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD instead"
    ]


@pytest.mark.parametrize(
    "args",
    [
        # a single run: refused on the command line, before Hydra makes the job's folder
        ("tracking=server", "tracking.uri=http://alice:s3cret-Pw/x@127.0.0.1:9"),
        # a sweep whose URI gets credentials from an interpolation: refused by the sweep's
        # checks, before its folder, multirun.yaml or any cell
        ("-m", "tracking=server", "tracking.uri=${oc.env:STUDY_TEST_URI}", "model.depth=2,3"),
    ],
)
def test_a_run_given_credentials_it_cannot_keep_out_stops_in_one_line_and_writes_nothing(
    workdir, no_variables, monkeypatch, args
):
    monkeypatch.setenv("STUDY_TEST_URI", "http://alice:s3cret-Pw@127.0.0.1:9")
    proc = train(workdir, *args, "train.steps=0")
    assert proc.returncode == 2, proc.stderr[-3000:]
    [line] = proc.stderr.splitlines()
    assert line.startswith("study.train: error: tracking.uri: http://***@127.0.0.1:9: ")
    assert "s3cret" not in proc.stdout + proc.stderr
    assert sorted(p.name for p in workdir.iterdir()) == ["data"]
