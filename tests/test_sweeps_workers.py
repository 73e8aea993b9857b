"""Sweeps whose workers die, are stopped or lose their store: the failure stays with its
cells and a rerun completes the sweep (split from test_sweeps.py so that the two halves run
on two workers)."""

from __future__ import annotations

import json
import operator
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from study import records
from study.runs.pool import Pool

from .conftest import foreground, subprocess_env, train
from .test_sweeps import SMOKE_CELLS, check_one_run_per_cell, record_dirs, sweep_runs

pytestmark = pytest.mark.slow

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
        preexec_fn=foreground,
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


def test_a_killed_worker_fails_only_its_group_and_a_rerun_completes_it(stored):
    # 4 groups of 3 seeds; the two 6000-step ones go first (one per worker) and take ~10 s,
    # so the kill lands in the middle of one even when the second worker is slow to start
    # on a busy machine (at 2000 steps one group once finished before the other began).
    workdir = stored
    args = ["-m", "+sweep=smoke", "model.depth=8", "model.activation=relu", "seed=0,1,2",
            "train.steps=0,6000"]  # fmt: skip
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
    assert counts["done"] == counts["total"] == 12
    assert counts["failed"] == 3 and counts["finished"] + counts["diverged"] == 9
    failures = re.findall(r"^\[sweep\] failed: (\S+): (.*)$", stdout, re.M)
    assert [line for _, line in failures] == [
        "WorkerDied: worker died (signal 9, SIGKILL) while running this cell's group"
    ] * 3
    # One group: the same cell but for the seed.
    assert len({re.sub(r"-s\d+$", "", name) for name, _ in failures}) == 1
    assert len(record_dirs(sweep_dir)) == 9
    assert json.loads((sweep_dir / "sweep.json").read_text())["counts"]["failed"] == 3

    rerun = train(workdir, *args)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    counts = summary(rerun.stdout)
    assert counts["skipped"] == 9 and counts["failed"] == 0
    check_one_run_per_cell(workdir, sweep_dir, f"sqlite:///{workdir / 'mlflow.db'}", "smoke", 12)


def test_a_half_finished_group_reruns_only_its_missing_cells(stored):
    workdir = stored
    args = ["-m", "+sweep=smoke", "model.activation=relu", "seed=0,1,2"]  # 8 groups of 3
    sweep_dir = workdir / "multirun" / "smoke"
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    first = train(workdir, *args)
    assert first.returncode == 0, first.stderr[-3000:]
    before = {d.name: records.read_run(d) for d in record_dirs(sweep_dir)}
    assert len(before) == 24

    group = sorted(n for n in before if n.startswith("d8-relu-") and "-residual-t20-" in n)
    assert len(group) == 3 and all(before[n]["timings"]["group_size"] == 3 for n in group)
    lost = group[:2]  # as if the worker had died while writing the group's records
    for name in lost:
        (sweep_dir / name / records.RUN_FILE).unlink()
    mtimes = {d: (d / records.RUN_FILE).stat().st_mtime_ns for d in record_dirs(sweep_dir)}

    again = train(workdir, *args)
    assert again.returncode == 0, again.stderr[-3000:]
    counts = summary(again.stdout)
    assert counts["skipped"] == 22 and counts["failed"] == 0
    assert counts["finished"] + counts["diverged"] == 2
    after = {d.name: records.read_run(d) for d in record_dirs(sweep_dir)}
    assert mtimes == {d: (d / records.RUN_FILE).stat().st_mtime_ns
                      for d in record_dirs(sweep_dir) if d.name not in lost}  # fmt: skip
    for name in lost:
        assert after[name]["timings"]["group_size"] == 2  # the two, stacked without the third
        for key in ("metrics", "summary", "curve", "status", "cell_key"):
            assert json.dumps(after[name][key]) == json.dumps(before[name][key]), (name, key)
    check_one_run_per_cell(workdir, sweep_dir, uri, "smoke", 24)


@pytest.fixture
def small_disk(tmp_path):
    """A 6 MB file system of its own (tmpfs), for a store that fills up."""
    where = tmp_path / "small-disk"
    where.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(where)],
                             capture_output=True, text=True)  # fmt: skip
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.strip()}")
    yield where
    subprocess.run(["umount", "-l", str(where)], check=True)


@pytest.mark.slow
def test_a_store_that_fills_up_loses_no_record_and_the_sweep_ends_its_parent(workdir, small_disk):
    uri = f"sqlite:///{small_disk / 'mlflow.db'}"
    grid = ("-m", "+sweep=smoke", f"tracking.uri={uri}", "seed=0,1,2,3,4")
    proc = train(workdir, *grid)
    sweep_dir = workdir / "multirun" / "smoke"
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert proc.stderr.strip() == ""  # no traceback, no MLflow error log: the summary says it
    counts = summary(proc.stdout)
    assert counts["done"] == counts["total"] == 5 * SMOKE_CELLS and counts["failed"] == 0
    [line] = re.findall(r"^\[sweep\] (\d+) cells are recorded but not mirrored to MLflow: "
                        r".*database or disk is full.*$", proc.stdout, re.M)  # fmt: skip
    missing = int(line)
    assert 0 < missing < 5 * SMOKE_CELLS
    assert len(record_dirs(sweep_dir)) == 5 * SMOKE_CELLS  # every cell recorded
    assert len(list(sweep_dir.glob("*/mlflow.json"))) == 5 * SMOKE_CELLS - missing
    [parent], _ = sweep_runs(uri, "smoke")
    assert parent.info.status == "FAILED"  # ended, not left RUNNING
    # With room again, the mirror command logs what MLflow lacks, under the same parent.
    subprocess.run(["mount", "-o", "remount,size=200m", str(small_disk)], check=True)
    mirrored = subprocess.run([sys.executable, "-m", "study.tracking", "mirror", str(sweep_dir)],
                              cwd=workdir, env=subprocess_env(), capture_output=True,
                              text=True)  # fmt: skip
    assert mirrored.returncode == 0, mirrored.stderr
    assert f"{missing} logged" in mirrored.stdout
    check_one_run_per_cell(workdir, sweep_dir, uri, "smoke", cells=5 * SMOKE_CELLS)
