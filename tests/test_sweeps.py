"""Sweeps: parallel, resumable, tracked as one parent with its children, failures reported."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from study import records
from study.config import ConfigError, DataConfig, Dataset
from study.data import load, write_npz
from study.runs import sweep

from .conftest import subprocess_env, train

pytestmark = pytest.mark.slow

SMOKE_CELLS = 16  # conf/sweep/smoke.yaml: 2 depths x 2 activations x 2 skips x 2 budgets


def record_dirs(sweep_dir: Path) -> list[Path]:
    return sorted(p.parent for p in sweep_dir.glob("*/run.json"))


def sweep_runs(uri: str, experiment: str):
    """(parent runs, child runs) of an experiment, active ones only (as the UI shows them)."""
    client = MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no experiment {experiment}"
    runs = client.search_runs([found.experiment_id], max_results=5000)
    parents = [r for r in runs if r.data.tags.get("study.role") == "sweep"]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return parents, children


def check_one_run_per_cell(
    workdir: Path, sweep_dir: Path, uri: str, experiment: str, cells: int = SMOKE_CELLS
) -> None:
    dirs = record_dirs(sweep_dir)
    assert len(dirs) == cells
    keys = set()
    for d in dirs:
        record = json.loads((d / "run.json").read_text())  # parses: never truncated
        assert record["status"] in ("finished", "diverged")
        keys.add(record["cell_key"])
        pd.read_parquet(d / "layers.parquet")
        assert not list(d.glob(".*.tmp")), "a half-written file was left behind"
    assert len(keys) == cells
    [parent], children = sweep_runs(uri, experiment)
    assert parent.info.status == "FINISHED"
    assert sorted(r.data.tags["study.cell_key"] for r in children) == sorted(keys)
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parent.info.run_id}
    assert {r.info.status for r in children} == {"FINISHED"}


def test_smoke_sweep_runs_in_parallel_then_skips_every_cell(stored):
    workdir = stored
    proc = train(workdir, "-m", "+sweep=smoke")
    assert proc.returncode == 0, proc.stderr[-3000:]
    sweep_dir = workdir / "multirun" / "smoke"
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    check_one_run_per_cell(workdir, sweep_dir, uri, "smoke")
    pids = {json.loads((d / "run.json").read_text())["environment"]["pid"]
            for d in record_dirs(sweep_dir)}  # fmt: skip
    assert len(pids) == 2  # one worker per core
    assert f"{SMOKE_CELLS}/{SMOKE_CELLS} cells" in proc.stdout
    [parent], _ = sweep_runs(uri, "smoke")
    assert parent.data.metrics["cells_total"] == SMOKE_CELLS

    mtimes = {d: (d / "run.json").stat().st_mtime_ns for d in record_dirs(sweep_dir)}
    again = train(workdir, "-m", "+sweep=smoke")
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"0 finished, 0 diverged, 0 failed, {SMOKE_CELLS} skipped" in again.stdout
    assert mtimes == {d: (d / "run.json").stat().st_mtime_ns for d in record_dirs(sweep_dir)}
    check_one_run_per_cell(workdir, sweep_dir, uri, "smoke")
    [parent], _ = sweep_runs(uri, "smoke")
    assert parent.data.metrics["cells_skipped"] == SMOKE_CELLS


def test_killed_sweep_completes_on_rerun_without_duplicates(stored):
    workdir = stored
    # Long enough cells that the kill lands mid-sweep.
    args = [sys.executable, "-m", "study.train", "-m", "+sweep=smoke", "train.steps=0,300"]
    sweep_dir = workdir / "multirun" / "smoke"
    proc = subprocess.Popen(
        args, cwd=workdir, env=subprocess_env(), start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 300
    while len(record_dirs(sweep_dir)) < 3 and time.monotonic() < deadline:
        assert proc.poll() is None, "the sweep ended before it could be killed"
        time.sleep(0.05)
    with pytest.raises(ConfigError, match=f"running already \\(pid {proc.pid} on "):
        sweep.lock(sweep_dir)  # the running sweep holds it
    os.killpg(proc.pid, signal.SIGKILL)  # the whole process group, workers included
    proc.wait()
    done_before = len(record_dirs(sweep_dir))
    assert 3 <= done_before < SMOKE_CELLS

    rerun = train(workdir, "-m", "+sweep=smoke", "train.steps=0,300")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"{done_before} skipped" in rerun.stdout
    check_one_run_per_cell(workdir, sweep_dir, f"sqlite:///{workdir / 'mlflow.db'}", "smoke")


def test_a_sweep_already_running_is_refused_in_one_line_with_nothing_written(workdir):
    """Two invocations of one sweep (from two shells, or two machines sharing the folder)
    would run the same cells at once: the second one stops before it writes anything."""
    sweep_dir = workdir / "multirun" / "smoke"
    sweep_dir.mkdir(parents=True)
    held = sweep.lock(sweep_dir)  # as a running sweep holds it
    try:
        proc = train(workdir, "-m", "+sweep=smoke")
    finally:
        os.close(held)
    assert proc.returncode == 2
    [line] = proc.stderr.strip().splitlines()
    assert f"{sweep_dir.relative_to(workdir)}: this sweep is running already (pid " in line
    assert sorted(p.name for p in sweep_dir.iterdir()) == [sweep.LOCK_FILE]
    assert not (workdir / "mlflow.db").exists()


def test_eight_workers_create_a_fresh_database_without_locking_errors(workdir):
    # Probe-only cells, one per worker: the race is in creating the store, not in training.
    proc = train(workdir, "-m", "+sweep=smoke", "hydra.launcher.n_jobs=8", "train.steps=0")
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-3000:]
    for symptom in ("database is locked", "OperationalError", "Traceback", "already exists"):
        assert symptom not in output
    check_one_run_per_cell(
        workdir, workdir / "multirun" / "smoke", f"sqlite:///{workdir / 'mlflow.db'}", "smoke",
        cells=SMOKE_CELLS // 2,
    )  # fmt: skip
    pids = {json.loads((d / "run.json").read_text())["environment"]["pid"]
            for d in record_dirs(workdir / "multirun" / "smoke")}  # fmt: skip
    assert len(pids) > 2


def test_submitit_local_launcher_runs_the_smoke_sweep(stored):
    # Two jobs (each a Python process of its own under submitit): as many as prove it.
    workdir = stored
    proc = train(workdir, "-m", "+sweep=smoke", "hydra/launcher=submitit_local",
                 "model.depth=2", "model.skip=none", "train.steps=0", timeout=900)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    dirs = record_dirs(workdir / "multirun" / "smoke")
    assert len(dirs) == 2
    assert all(records.read_run(d)["status"] == "finished" for d in dirs)
    [parent], children = sweep_runs(f"sqlite:///{workdir / 'mlflow.db'}", "smoke")
    assert len(children) == 2 and parent.data.metrics["cells_finished"] == 2


def test_a_crashing_cell_is_recorded_as_failed_the_sweep_goes_on_and_exits_1(stored, prepared):
    workdir = stored
    # Two data folders, one whose training labels are corrupt (-1): its cells crash.
    (workdir / "good").symlink_to(prepared)
    bad = workdir / "bad"
    bad.mkdir()
    splits = load(DataConfig(name=Dataset.mnist1d, dir=str(prepared)))
    arrays = {k: getattr(splits, k) for k in ("x_train", "x_val", "x_test", "y_val", "y_test",
                                              "difficulty_train")}  # fmt: skip
    write_npz(bad / "mnist1d.npz", {**arrays, "y_train": np.full_like(splits.y_train, -1)})
    shutil.copy(prepared / "manifest.json", bad / "manifest.json")

    proc = train(workdir, "-m", "+sweep=smoke", "model.depth=2", "model.skip=none",
                 "train.steps=5", "data.dir=good,bad",
                 "run_name=d${model.depth}-${model.activation}-${data.dir}")  # fmt: skip
    assert proc.returncode == 1, proc.stderr[-3000:]  # the other cells ran; dvc repro stops
    assert "2 finished, 0 diverged, 2 failed" in proc.stdout
    assert proc.stdout.count("[sweep] failed:") == 2 and "IndexError" in proc.stdout
    statuses = sorted(records.read_run(d)["status"]
                      for d in record_dirs(workdir / "multirun" / "smoke"))  # fmt: skip
    assert statuses == ["failed", "failed", "finished", "finished"]
    [parent], children = sweep_runs(f"sqlite:///{workdir / 'mlflow.db'}", "smoke")
    assert sorted(r.info.status for r in children) == ["FAILED", "FAILED", "FINISHED", "FINISHED"]
    assert parent.data.metrics["cells_failed"] == 2


def test_grouped_sweep_equals_the_job_by_job_sweep(stored):
    workdir = stored
    # Job by job in spawned workers (macOS's way), grouped in forked ones (Linux's default).
    grid = ("+sweep=smoke", "model.depth=8", "model.activation=tanh", "model.skip=residual",
            "train.steps=20", "seed=0,1", "model.init=xavier_normal,kaiming_normal")  # fmt: skip
    found = {}
    for mode, extra in (
        ("group", []),
        ("alone", ["hydra.launcher.group_task=null", "hydra.launcher.start_method=spawn"]),
    ):
        sweep_dir = workdir / mode
        proc = train(workdir, "-m", *grid, f"hydra.sweep.dir={sweep_dir}", *extra)
        assert proc.returncode == 0, proc.stderr[-3000:]
        found[mode] = {d.name: records.read_run(d) for d in record_dirs(sweep_dir)}
    assert len(found["group"]) == 4 and found["group"].keys() == found["alone"].keys()
    for name, grouped in found["group"].items():
        alone = found["alone"][name]
        assert grouped["timings"]["group_size"] == 4 and alone["timings"]["group_size"] == 1
        for key in ("metrics", "summary", "curve", "status", "cell_key"):
            assert grouped[key] == alone[key], (name, key)
        pd.testing.assert_frame_equal(
            pd.read_parquet(workdir / "group" / name / records.LAYERS_FILE),
            pd.read_parquet(workdir / "alone" / name / records.LAYERS_FILE),
            check_exact=True,
        )
