"""Stage ``publish`` (study.tracking.publish): the study as one MLflow run that leads to the report.

Runs the real module on a project folder holding what the earlier stages leave (a paper, a
figure, the claims' verdicts, a sweep's ``sweep.json``); the whole pipeline with it is
tests/test_pipeline.py's."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient

from .conftest import empty_store, subprocess_env

pytestmark = pytest.mark.slow  # subprocesses

VERDICTS = {"C1": {"verdict": "supported"}, "C2": {"verdict": "not tested"},
            "C3": {"verdict": "supported"}}  # fmt: skip


def publish(folder: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "study.tracking.publish", *args], cwd=folder, env=subprocess_env(),
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip


@pytest.fixture
def project(tmp_path) -> Path:
    (tmp_path / "paper" / "generated" / "figures").mkdir(parents=True)
    (tmp_path / "paper" / "main.pdf").write_bytes(b"%PDF-1.4 the paper\n")
    (tmp_path / "paper" / "generated" / "figures" / "claims_forest.png").write_bytes(b"\x89PNG")
    (tmp_path / "results" / "analysis").mkdir(parents=True)
    (tmp_path / "results" / "analysis" / "claims.json").write_text(json.dumps(VERDICTS))
    sweep = tmp_path / "multirun" / "quick" / "init"
    sweep.mkdir(parents=True)
    (sweep / "sweep.json").write_text(json.dumps({
        "parent_run_id": "abc123", "experiment_id": "7", "total": 64,
        "counts": {"finished": 64}, "cells": [],
    }))  # fmt: skip
    return tmp_path


def test_the_study_run_carries_the_paper_figures_and_verdicts(project, mlflow_template):
    empty_store(mlflow_template, project / "mlflow.db")  # made once per test process
    proc = publish(project, "--profile", "quick")
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads((project / "results" / "publish" / "study_run.json").read_text())
    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    run = client.get_run(info["run_id"])
    assert client.get_experiment(info["experiment_id"]).name == "quick-study"
    assert run.info.run_name == "study quick" and run.info.status == "FINISHED"
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {
        "main.pdf", "claims.json", "figures",
    }  # fmt: skip
    assert [a.path for a in client.list_artifacts(run.info.run_id, "figures")] == [
        "figures/claims_forest.png"
    ]
    tags = run.data.tags
    assert {k: v for k, v in tags.items() if k.startswith("study.claim.")} == {
        "study.claim.C1": "supported", "study.claim.C2": "not tested",
        "study.claim.C3": "supported",
    }  # fmt: skip
    assert run.data.metrics == {"claims_supported": 2.0, "claims_not_tested": 1.0}
    assert "#/experiments/7/runs/abc123" in tags["mlflow.note.content"]  # the sweep's parent
    assert run.data.params == {"profile": "quick", "tracking": "sqlite", "cells.init": "64"}

    again = publish(project, "--profile", "quick")  # the study again: it replaces the first
    assert again.returncode == 0, again.stderr[-3000:]
    second = json.loads((project / "results" / "publish" / "study_run.json").read_text())
    live = client.search_runs([info["experiment_id"]], run_view_type=ViewType.ACTIVE_ONLY)
    assert [r.info.run_id for r in live] == [second["run_id"]] != [info["run_id"]]


@pytest.mark.parametrize(("args", "remove", "line"), [
    (("--profile", "quick"), "paper/main.pdf",
     "study.tracking.publish: error: paper/main.pdf: missing; run `dvc repro` (make study) first"),
    (("--profile", "huge"), None,
     "study.tracking.publish: error: --profile: 'huge': expected one of quick, standard, full"),
    (("--profile", "quick", "--tracking", "cloud"), None,
     "study.tracking.publish: error: --tracking: 'cloud': expected one of server, sqlite"),
])  # fmt: skip
def test_bad_input_is_one_line_and_logs_nothing(project, args, remove, line):
    if remove:
        (project / remove).unlink()
    proc = publish(project, *args)
    assert proc.returncode == 2 and proc.stderr.splitlines() == [line]
    assert not (project / "mlflow.db").exists()
    assert not (project / "results" / "publish").exists()
