"""Sweeps: parallel, resumable, tracked as one parent with its children, failures reported."""

from __future__ import annotations

import json
import operator
import os
import re
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
from study.runs.pool import Pool

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


def test_smoke_sweep_runs_in_parallel_then_skips_every_cell(workdir):
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


def test_killed_sweep_completes_on_rerun_without_duplicates(workdir):
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
    proc = train(workdir, "-m", "+sweep=smoke", "hydra.launcher.n_jobs=8")
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-3000:]
    for symptom in ("database is locked", "OperationalError", "Traceback", "already exists"):
        assert symptom not in output
    check_one_run_per_cell(
        workdir, workdir / "multirun" / "smoke", f"sqlite:///{workdir / 'mlflow.db'}", "smoke"
    )
    pids = {json.loads((d / "run.json").read_text())["environment"]["pid"]
            for d in record_dirs(workdir / "multirun" / "smoke")}  # fmt: skip
    assert len(pids) > 2


def test_submitit_local_launcher_runs_the_smoke_sweep(workdir):
    proc = train(workdir, "-m", "+sweep=smoke", "hydra/launcher=submitit_local",
                 "model.depth=2", "train.steps=0", timeout=900)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    dirs = record_dirs(workdir / "multirun" / "smoke")
    assert len(dirs) == 4
    assert all(records.read_run(d)["status"] == "finished" for d in dirs)
    [parent], children = sweep_runs(f"sqlite:///{workdir / 'mlflow.db'}", "smoke")
    assert len(children) == 4 and parent.data.metrics["cells_finished"] == 4


def test_a_crashing_cell_is_recorded_as_failed_the_sweep_goes_on_and_exits_1(workdir, prepared):
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


def test_grouped_sweep_equals_the_job_by_job_sweep(workdir):
    # Job by job in spawned workers (macOS's way), grouped in forked ones (Linux's default).
    grid = ("+sweep=smoke", "model.depth=8", "model.activation=tanh", "model.skip=residual",
            "train.steps=20", "seed=0,1,2", "model.init=xavier_normal,kaiming_normal")  # fmt: skip
    found = {}
    for mode, extra in (
        ("group", []),
        ("alone", ["hydra.launcher.group_task=null", "hydra.launcher.start_method=spawn"]),
    ):
        sweep_dir = workdir / mode
        proc = train(workdir, "-m", *grid, f"hydra.sweep.dir={sweep_dir}", *extra)
        assert proc.returncode == 0, proc.stderr[-3000:]
        found[mode] = {d.name: records.read_run(d) for d in record_dirs(sweep_dir)}
    assert len(found["group"]) == 6 and found["group"].keys() == found["alone"].keys()
    for name, grouped in found["group"].items():
        alone = found["alone"][name]
        assert grouped["timings"]["group_size"] == 6 and alone["timings"]["group_size"] == 1
        for key in ("metrics", "summary", "curve", "status", "cell_key"):
            assert grouped[key] == alone[key], (name, key)
        pd.testing.assert_frame_equal(
            pd.read_parquet(workdir / "group" / name / records.LAYERS_FILE),
            pd.read_parquet(workdir / "alone" / name / records.LAYERS_FILE),
            check_exact=True,
        )


# ------------------------------------------------------------------ dying workers

SUMMARY = re.compile(r"^\[sweep\] .*?: (\d+)/(\d+) cells in [0-9.]+s: (\d+) finished, "
                     r"(\d+) diverged, (\d+) failed, (\d+) skipped$", re.M)  # fmt: skip


def summary(stdout: str) -> dict[str, int]:
    """The counts of the sweep's last line (study.runs.sweep.Session.finish)."""
    found = SUMMARY.findall(stdout)
    assert found, stdout[-3000:]
    keys = ("done", "total", "finished", "diverged", "failed", "skipped")
    return dict(zip(keys, map(int, found[-1]), strict=True))


def workers_of(pid: int) -> set[int]:
    """Pool workers of a process: its children forked from it (same command line) or
    started by multiprocessing's spawn; not multiprocessing's helpers nor a passing git."""
    parent = (Path("/proc") / str(pid) / "cmdline").read_bytes()
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (entry / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        if ppid == pid and (cmdline == parent or b"spawn_main" in cmdline):
            found.add(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def test_a_dead_worker_fails_only_its_task_and_a_fresh_one_takes_its_place():
    # Standard-library tasks: the workers need nothing from the tests to run them.
    tasks = [
        (abs, (-1,)),
        (signal.raise_signal, (signal.SIGKILL,)),  # a kill -9
        (operator.truediv, (1, 0)),  # a task that raises: its worker lives on
        (os._exit, (3,)),  # a crash without a signal
        (abs, (-2,)),
        (abs, (-3,)),
    ]
    with Pool(2, time.sleep, (0,)) as pool:
        got = {index: (kind, value) for index, kind, value in pool.run(tasks)}
        workers = [w.process for w in pool.workers]
    assert {i: got[i] for i in (0, 4, 5)} == {0: ("ok", 1), 4: ("ok", 2), 5: ("ok", 3)}
    assert got[2][0] == "raised" and isinstance(got[2][1], ZeroDivisionError)
    assert got[1][0] == got[3][0] == "died"
    assert str(got[1][1]) == "worker died (signal 9, SIGKILL) while running this cell's group"
    assert str(got[3][1]) == "worker died (exit code 3) while running this cell's group"
    assert not any(p.is_alive() for p in workers)


POOL_SCRIPT = """
import time
from study.runs.pool import Pool
with Pool(2, time.sleep, (0,)) as pool:
    print("started", flush=True)
    for _ in pool.run([(time.sleep, (120,))] * 4):
        pass
"""


@pytest.mark.parametrize("how", ["SIGTERM", "Ctrl-C"])
def test_stopping_the_parent_stops_its_workers(how):
    proc = subprocess.Popen(
        [sys.executable, "-c", POOL_SCRIPT], cwd=Path(__file__).resolve().parent.parent,
        env=subprocess_env(), start_new_session=True, stdout=subprocess.PIPE, text=True,
        # A shell's background job ignores SIGINT; Ctrl-C reaches a foreground one.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    assert proc.stdout.readline() == "started\n"
    deadline = time.monotonic() + 60
    while len(workers := workers_of(proc.pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(workers) == 2
    if how == "SIGTERM":
        proc.send_signal(signal.SIGTERM)
    else:  # Ctrl-C: SIGINT to the whole foreground process group
        os.killpg(proc.pid, signal.SIGINT)
    proc.communicate(timeout=30)
    assert proc.returncode == (128 + signal.SIGTERM if how == "SIGTERM" else -signal.SIGINT)
    time.sleep(0.5)
    assert not [pid for pid in workers if alive(pid)], "a worker outlived the sweep"


def test_a_killed_worker_fails_only_its_group_and_a_rerun_completes_it(workdir):
    # 8 groups of 3 seeds; the 2000-step ones go first and take seconds, so the kill lands
    # in the middle of one.
    args = ["-m", "+sweep=smoke", "model.depth=8", "seed=0,1,2", "train.steps=0,2000"]
    sweep_dir = workdir / "multirun" / "smoke"
    out, err = workdir / "sweep.out", workdir / "sweep.err"  # files: a full pipe would block
    with out.open("w") as stdout, err.open("w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "study.train", *args], cwd=workdir, env=subprocess_env(),
            stdout=stdout, stderr=stderr,
        )  # fmt: skip
    try:
        # Both workers have started their first group when their 6 job folders exist.
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            assert proc.poll() is None, "the sweep ended before a worker could be killed"
            started = [p for p in sweep_dir.glob("*") if p.is_dir()] if sweep_dir.is_dir() else []
            if len(started) >= 6:
                break
            time.sleep(0.05)
        assert not record_dirs(sweep_dir), "a group finished before the kill"
        workers = workers_of(proc.pid)
        assert len(workers) == 2
        os.kill(min(workers), signal.SIGKILL)
        while not (workers_of(proc.pid) - workers) and time.monotonic() < deadline:
            assert proc.poll() is None, "the sweep ended without replacing the dead worker"
            time.sleep(0.05)
        proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stdout = out.read_text()
    assert proc.returncode == 1, err.read_text()[-3000:]  # three cells failed
    counts = summary(stdout)
    assert counts["done"] == counts["total"] == 24
    assert counts["failed"] == 3 and counts["finished"] + counts["diverged"] == 21
    failures = re.findall(r"^\[sweep\] failed: (\S+): (.*)$", stdout, re.M)
    assert [line for _, line in failures] == [
        "WorkerDied: worker died (signal 9, SIGKILL) while running this cell's group"
    ] * 3
    # One group: the same cell but for the seed.
    assert len({re.sub(r"-s\d+$", "", name) for name, _ in failures}) == 1
    assert len(record_dirs(sweep_dir)) == 21
    assert json.loads((sweep_dir / "sweep.json").read_text())["counts"]["failed"] == 3

    rerun = train(workdir, *args)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    counts = summary(rerun.stdout)
    assert counts["skipped"] == 21 and counts["failed"] == 0
    check_one_run_per_cell(workdir, sweep_dir, f"sqlite:///{workdir / 'mlflow.db'}", "smoke", 24)


def test_a_half_finished_group_reruns_only_its_missing_cells(workdir):
    args = ["-m", "+sweep=smoke", "seed=0,1,2"]  # 16 groups of 3 seeds
    sweep_dir = workdir / "multirun" / "smoke"
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    first = train(workdir, *args)
    assert first.returncode == 0, first.stderr[-3000:]
    before = {d.name: records.read_run(d) for d in record_dirs(sweep_dir)}
    assert len(before) == 48

    group = sorted(n for n in before if n.startswith("d8-relu-") and "-residual-t20-" in n)
    assert len(group) == 3 and all(before[n]["timings"]["group_size"] == 3 for n in group)
    lost = group[:2]  # as if the worker had died while writing the group's records
    for name in lost:
        (sweep_dir / name / records.RUN_FILE).unlink()
    mtimes = {d: (d / records.RUN_FILE).stat().st_mtime_ns for d in record_dirs(sweep_dir)}

    again = train(workdir, *args)
    assert again.returncode == 0, again.stderr[-3000:]
    counts = summary(again.stdout)
    assert counts["skipped"] == 46 and counts["failed"] == 0
    assert counts["finished"] + counts["diverged"] == 2
    after = {d.name: records.read_run(d) for d in record_dirs(sweep_dir)}
    assert mtimes == {d: (d / records.RUN_FILE).stat().st_mtime_ns
                      for d in record_dirs(sweep_dir) if d.name not in lost}  # fmt: skip
    for name in lost:
        assert after[name]["timings"]["group_size"] == 2  # the two, stacked without the third
        for key in ("metrics", "summary", "curve", "status", "cell_key"):
            assert json.dumps(after[name][key]) == json.dumps(before[name][key]), (name, key)
    check_one_run_per_cell(workdir, sweep_dir, uri, "smoke", 48)


@pytest.fixture
def small_disk(tmp_path):
    """A 10 MB file system of its own (tmpfs), for a store that fills up."""
    where = tmp_path / "small-disk"
    where.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=10m", "tmpfs", str(where)],
                             capture_output=True, text=True)  # fmt: skip
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.strip()}")
    yield where
    subprocess.run(["umount", "-l", str(where)], check=True)


@pytest.mark.slow
def test_a_store_that_fills_up_loses_no_record_and_the_sweep_ends_its_parent(workdir, small_disk):
    uri = f"sqlite:///{small_disk / 'mlflow.db'}"
    grid = ("-m", "+sweep=smoke", f"tracking.uri={uri}", "seed=0,1,2,3,4,5,6,7,8,9")
    proc = train(workdir, *grid)
    sweep_dir = workdir / "multirun" / "smoke"
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert proc.stderr.strip() == ""  # no traceback, no MLflow error log: the summary says it
    counts = summary(proc.stdout)
    assert counts["done"] == counts["total"] == 10 * SMOKE_CELLS and counts["failed"] == 0
    [line] = re.findall(r"^\[sweep\] (\d+) cells are recorded but not mirrored to MLflow: "
                        r".*database or disk is full.*$", proc.stdout, re.M)  # fmt: skip
    missing = int(line)
    assert 0 < missing < 10 * SMOKE_CELLS
    assert len(record_dirs(sweep_dir)) == 10 * SMOKE_CELLS  # every cell recorded
    assert len(list(sweep_dir.glob("*/mlflow.json"))) == 10 * SMOKE_CELLS - missing
    [parent], _ = sweep_runs(uri, "smoke")
    assert parent.info.status == "FAILED"  # ended, not left RUNNING
    # With room again, the mirror command logs what MLflow lacks, under the same parent.
    subprocess.run(["mount", "-o", "remount,size=200m", str(small_disk)], check=True)
    mirrored = subprocess.run([sys.executable, "-m", "study.tracking", "mirror", str(sweep_dir)],
                              cwd=workdir, env=subprocess_env(), capture_output=True,
                              text=True)  # fmt: skip
    assert mirrored.returncode == 0, mirrored.stderr
    assert f"{missing} logged" in mirrored.stdout
    check_one_run_per_cell(workdir, sweep_dir, uri, "smoke", cells=10 * SMOKE_CELLS)
