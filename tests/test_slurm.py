"""Sweeps on a real SLURM cluster: a throwaway single-node one, started from Debian's
``slurm-wlm`` and ``munge`` (``make`` set-up installs them as root), its state and logs in a
temp dir, its daemons stopped at the end. The sweeps go through ``hydra/launcher=slurm``
exactly as the README's "Several machines" section tells users.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from study.config import Config, ConfigError, DataConfig, TrackingConfig, TrainConfig, as_dict
from study.runs import jobs, sweep

from .conftest import foreground, subprocess_env
from .test_pipeline import checkout_copy, run, stages_run
from .test_sweeps import SMOKE_CELLS, check_one_run_per_cell, record_dirs, sweep_runs

pytestmark = pytest.mark.slow

DAEMONS = ("munged", "slurmctld", "slurmd")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def slurm_conf(root: Path, host: str) -> str:
    """One node (this machine), one partition; no cgroups, no accounting database."""
    cpus = os.cpu_count() or 1
    memory_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
    return f"""\
ClusterName=studytest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
SlurmUser=root
AuthType=auth/munge
AuthInfo=socket={root}/munge.socket
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
KillWait=2
SlurmdParameters=config_overrides
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mb * 9 // 10} State=UNKNOWN
PartitionName=test Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""


def pid_alive(pid_file: Path) -> bool:
    """The daemon's process exists and has not exited (a zombie waiting for a reaper is
    gone for this purpose)."""
    try:
        stat = Path(f"/proc/{int(pid_file.read_text())}/stat").read_text()
    except (FileNotFoundError, ValueError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.fixture(scope="module")
def cluster():
    """``SLURM_CONF`` of a running single-node cluster; every daemon gone afterwards."""
    if os.geteuid() != 0:
        pytest.skip("the SLURM test runs as root only: it starts munged, slurmctld and slurmd")
    missing = [d for d in (*DAEMONS, "sbatch") if shutil.which(d) is None]
    if missing:
        pytest.fail(f"{', '.join(missing)} not installed: `make setup` installs slurm-wlm, munge")
    root = Path(tempfile.mkdtemp(prefix="study-slurm-"))
    for folder in ("state", "spool"):
        (root / folder).mkdir()
    key = root / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o600)
    conf = root / "slurm.conf"
    conf.write_text(slurm_conf(root, socket.gethostname().split(".")[0]))
    env = {**os.environ, "SLURM_CONF": str(conf)}
    try:
        subprocess.run(
            ["munged", f"--key-file={key}", f"--socket={root}/munge.socket",
             f"--pid-file={root}/munged.pid", f"--log-file={root}/munged.log",
             f"--seed-file={root}/munge.seed", "--force"],
            check=True, capture_output=True,
        )  # fmt: skip
        subprocess.run(["slurmctld"], env=env, check=True, capture_output=True)
        subprocess.run(["slurmd"], env=env, check=True, capture_output=True)
        deadline = time.monotonic() + 60
        while "idle" not in sinfo(env):
            assert time.monotonic() < deadline, (root / "slurmd.log").read_text()[-2000:]
            time.sleep(0.5)
        yield env
    finally:
        subprocess.run(["scancel", "--user", "root"], env=env, capture_output=True)
        for name in reversed(DAEMONS):
            pid_file = root / f"{name}.pid"
            if pid_alive(pid_file):
                os.kill(int(pid_file.read_text()), signal.SIGTERM)
        deadline = time.monotonic() + 30
        while any(pid_alive(root / f"{n}.pid") for n in DAEMONS) and time.monotonic() < deadline:
            time.sleep(0.2)
        alive = [n for n in DAEMONS if pid_alive(root / f"{n}.pid")]
        shutil.rmtree(root, ignore_errors=True)
        assert not alive, f"still running after the test: {', '.join(alive)}"


def sinfo(env: dict[str, str]) -> str:
    """The node states, one per line."""
    proc = subprocess.run(["sinfo", "-h", "-o", "%T"], env=env, capture_output=True, text=True)
    return proc.stdout


def sweep_command(*overrides: str) -> list[str]:
    return [sys.executable, "-m", "study.train", "-m", "hydra/launcher=slurm",
            "hydra.launcher.poll_s=0.5", *overrides]  # fmt: skip


def submit(workdir: Path, env: dict[str, str], *overrides: str) -> subprocess.Popen:
    """``python -m study.train -m ... hydra/launcher=slurm`` as a user types it, running,
    in a process group of its own (as a shell runs a command: Ctrl-C reaches the group)."""
    return subprocess.Popen(
        sweep_command(*overrides), cwd=workdir, env={**subprocess_env(), **env}, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
        preexec_fn=foreground,
    )  # fmt: skip


def finish(proc: subprocess.Popen, timeout: float = 600, status: int = 0) -> str:
    """What the sweep printed (its log lines and its summary), once it exited with
    ``status`` (1: some cells failed)."""
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == status, out[-3000:]
    return out


def test_the_smoke_sweep_runs_on_the_cluster_one_record_and_run_per_cell(workdir, cluster):
    # A quarter of the smoke grid (one activation, no skip): each array task starts Python
    # and torch anew, and 4 cells prove what 16 would.
    cells = SMOKE_CELLS // 4
    out = finish(submit(workdir, cluster, "+sweep=smoke", "model.activation=relu",
                        "model.skip=none"))  # fmt: skip
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    check_one_run_per_cell(workdir, workdir / "multirun" / "smoke", uri, "smoke", cells=cells)
    assert f"{cells}/{cells} cells" in out
    # Each cell (no two of the smoke grid stack) ran in a task of one array job.
    tasks = sorted((workdir / "multirun" / "smoke" / ".submitit").glob("*_*/*_result.pkl"))
    assert len(tasks) == cells
    assert len({t.name.split("_")[0] for t in tasks}) == 1  # one array job


# Six trained cells in two groups of three (seed is a stacking axis): two array tasks.
GROUPED = ("+sweep=smoke", "model.depth=8", "model.skip=none", "train.steps=20", "seed=0,1,2")


def test_a_cancelled_array_completes_on_resubmission_without_duplicates(
    workdir, cluster, monkeypatch
):
    """Tasks one at a time; once the first group is recorded the array is cancelled, its
    second task running or pending. Resubmitting queues only the unrecorded group."""
    sweep_dir = workdir / "multirun" / "smoke"
    proc = submit(workdir, cluster, *GROUPED, "hydra.launcher.array_parallelism=1")
    deadline = time.monotonic() + 300
    while len(record_dirs(sweep_dir)) < 3:
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        assert time.monotonic() < deadline, "no group was recorded"
        time.sleep(0.2)
    subprocess.run(["scancel", "--user", "root"], env=cluster, check=True)
    out = finish(proc, status=1)
    assert "3 finished, 0 diverged, 3 failed, 0 skipped" in out, out
    assert "CANCELLED" in out  # the failures say why
    assert len(record_dirs(sweep_dir)) == 3

    out = finish(submit(workdir, cluster, *GROUPED))
    assert "3 finished, 0 diverged, 0 failed, 3 skipped" in out, out
    assert "3 jobs in 1 array tasks" in out
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    check_one_run_per_cell(workdir, sweep_dir, uri, "smoke", cells=6)
    [parent], _ = sweep_runs(uri, "smoke")
    assert parent.data.metrics["cells_skipped"] == 3

    # The launcher skips what study.runs.cell.run_group would: a result under this cell's key.
    monkeypatch.chdir(workdir)  # where the config's data folder is
    cell = record_dirs(sweep_dir)[0]
    config = json.loads((cell / "run.json").read_text())["config"]
    assert jobs.recorded(config, cell)["status"] == "finished"
    changed = {**config, "train": {**config["train"], "steps": 21}}
    assert jobs.recorded(changed, cell) is None


def queue(env: dict[str, str], array: str | None = None) -> list[tuple[str, str]]:
    """(array job id, state) of each task squeue lists as not ended (of ``array``, or all)."""
    which = ["-j", array] if array else []
    proc = subprocess.run(["squeue", "--array", "--noheader", "-o", "%F|%T", *which],
                          env=env, capture_output=True, text=True)  # fmt: skip
    return [tuple(line.split("|")) for line in proc.stdout.split()]  # type: ignore[misc]


def queue_states(env: dict[str, str], array: str) -> str:
    """The array's task counts by state, as the sweep's refusal words them."""
    proc = subprocess.run(["squeue", "--array", "--noheader", "-j", array, "-o", "%T"],
                          env=env, capture_output=True, text=True)  # fmt: skip
    states = proc.stdout.lower().split()
    return ", ".join(f"{states.count(s)} {s}" for s in dict.fromkeys(states))


def cell_dirs(sweep_dir: Path) -> list[Path]:
    """The cells' folders a task has made (recorded or not)."""
    return sorted(p for p in sweep_dir.glob("*") if p.is_dir() and not p.name.startswith("."))


def running_array(
    proc: subprocess.Popen, env: dict[str, str], sweep_dir: Path, training: bool = False
) -> str:
    """The job id of the sweep's array (submitit's folders in the sweep's folder name it),
    once one of its tasks runs; ``training``: once a task has begun its group (its cells'
    folders exist), past submitit's set-up, which makes the task ignore scancel's SIGTERM."""
    deadline = time.monotonic() + 300
    while True:
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        assert time.monotonic() < deadline, "no task of the sweep's array started"
        ours = {folder.name.split("_")[0] for folder in (sweep_dir / ".submitit").glob("*_*")}
        running = [a for a, state in queue(env) if state == "RUNNING" and a in ours]
        if running and (cell_dirs(sweep_dir) or not training):
            return running[0]
        time.sleep(0.2)


# As GROUPED, with groups that train for about 20 s here: a stop lands mid-group.
SLOW_GROUPED = ("+sweep=smoke", "model.depth=8", "model.skip=none", "train.steps=1000",
                "seed=0,1,2")  # fmt: skip


@pytest.mark.parametrize("how", ["SIGTERM", "Ctrl-C"])
def test_a_stopped_sweep_cancels_its_array_and_waits_for_its_tasks(workdir, cluster, how):
    """``kill PID`` (SIGTERM) or Ctrl-C (SIGINT to the sweep's process group) while the
    array runs: the sweep cancels the array and waits until its tasks have ended, so no
    cell is recorded after it exits, and the folder is free for a rerun."""
    sweep_dir = workdir / "multirun" / "smoke"
    proc = submit(workdir, cluster, *SLOW_GROUPED, "hydra.launcher.array_parallelism=1")
    array = running_array(proc, cluster, sweep_dir, training=True)  # task 1 waits
    if how == "SIGTERM":
        proc.send_signal(signal.SIGTERM)
    else:
        os.killpg(proc.pid, signal.SIGINT)
    out = finish(proc, status=143 if how == "SIGTERM" else 130)
    assert f"[sweep] SLURM job array {array} cancelled; its tasks have ended" in out, out
    assert queue(cluster, array) == []
    assert len(record_dirs(sweep_dir)) <= 3  # the second group never started
    # Nothing trains the cells any more, so nothing records them later: no process holds
    # a cell's lock (a task that outlived the sweep would, until its group is recorded).
    cells = cell_dirs(sweep_dir)
    assert cells
    for cell in cells:
        held = sweep.hold(cell / jobs.CELL_LOCK)
        assert isinstance(held, int), f"{cell.name} is being trained by {held}"
        os.close(held)
    os.close(sweep.lock(sweep_dir))  # not refused: the array has ended


def test_a_killed_sweeps_array_blocks_its_resubmission_until_it_ends(workdir, cluster):
    """``kill -9`` of the sweep leaves its array running: resubmitting at once is refused
    in one line naming the array, with nothing queued; once the array has ended (its tasks
    record their cells), the resubmission completes the sweep, one run per cell."""
    sweep_dir = workdir / "multirun" / "smoke"
    # Long enough cells that the array is still running when the sweep is resubmitted, on a
    # busy machine too (at 20 steps it could end first, and the resubmission skip them all).
    slow = (*GROUPED[:-2], "train.steps=1500", GROUPED[-1])
    proc = submit(workdir, cluster, *slow, "hydra.launcher.array_parallelism=1")
    array = running_array(proc, cluster, sweep_dir)
    proc.kill()
    proc.wait()
    listed = subprocess.run(["squeue", "--states=all", "--noheader", "-o", "%F"],
                            env=cluster, capture_output=True, text=True).stdout  # fmt: skip
    arrays = set(listed.split())
    submitted = sorted((sweep_dir / ".submitit").iterdir())

    again = subprocess.run(sweep_command(*slow), cwd=workdir, capture_output=True,
                           text=True, env={**subprocess_env(), **cluster})  # fmt: skip
    assert again.returncode == 2, again.stderr[-3000:]
    [line] = again.stderr.strip().splitlines()
    assert (f"hydra.sweep.dir: {sweep_dir.relative_to(workdir)}: SLURM job array {array} "
            "of an earlier run of this sweep is still in the queue (") in line  # fmt: skip
    assert line.endswith(f"scancel {array}")
    listed = subprocess.run(["squeue", "--states=all", "--noheader", "-o", "%F"],
                            env=cluster, capture_output=True, text=True).stdout  # fmt: skip
    assert set(listed.split()) == arrays  # nothing queued
    assert sorted((sweep_dir / ".submitit").iterdir()) == submitted

    deadline = time.monotonic() + 300
    while queue(cluster, array):
        assert time.monotonic() < deadline, "the killed sweep's array did not end"
        time.sleep(0.5)
    out = finish(submit(workdir, cluster, *slow))
    assert "0 finished, 0 diverged, 0 failed, 6 skipped" in out, out
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    check_one_run_per_cell(workdir, sweep_dir, uri, "smoke", cells=6)


def test_the_sweep_lock_asks_squeue_about_the_array_it_names(tmp_path, cluster, monkeypatch):
    """An array the lock file names blocks the folder while squeue lists it, and only then;
    when squeue cannot answer, the folder stays blocked, saying how to free it."""
    for key, value in cluster.items():
        monkeypatch.setenv(key, value)
    (tmp_path / sweep.LOCK_FILE).write_text("pid 1 on elsewhere\nSLURM job array 999999\n")
    os.close(sweep.lock(tmp_path))  # an id squeue does not know: long gone
    assert "SLURM job array" not in (tmp_path / sweep.LOCK_FILE).read_text()

    sbatch = ["sbatch", "--parsable", "--array=0-2%1", "--output=/dev/null", "--wrap", "sleep 60"]
    array = subprocess.run(sbatch, capture_output=True, text=True, check=True).stdout.strip()
    sweep.name_array(tmp_path, array)
    with pytest.raises(ConfigError) as refused:
        sweep.lock(tmp_path)
    assert str(refused.value) == (
        f"hydra.sweep.dir: {tmp_path}: SLURM job array {array} of an earlier run of this "
        f"sweep is still in the queue ({queue_states(cluster, array)}); wait for it to end, "
        f"or cancel it: scancel {array}"
    )
    # A configuration squeue cannot use (no controller): it fails at once. (A missing file
    # fails too, but only after squeue's ~60 s search for a configless controller.)
    unusable = tmp_path / "unusable.conf"
    unusable.write_text("ClusterName=studytest\n")
    monkeypatch.setenv("SLURM_CONF", str(unusable))
    with pytest.raises(ConfigError) as unsure:
        sweep.lock(tmp_path)
    assert str(unsure.value).startswith(
        f"hydra.sweep.dir: {tmp_path}: cannot tell whether SLURM job array {array} of an "
        "earlier run of this sweep still runs ("
    )
    assert str(unsure.value).endswith(f"; once it has ended, delete {tmp_path / sweep.LOCK_FILE}")
    monkeypatch.setenv("SLURM_CONF", cluster["SLURM_CONF"])
    subprocess.run(["scancel", array], check=True)
    deadline = time.monotonic() + 60
    while queue(cluster, array):
        assert time.monotonic() < deadline, "the array did not end"
        time.sleep(0.2)
    os.close(sweep.lock(tmp_path))


def test_a_cell_whose_lock_is_held_is_not_trained_again(prepared, tmp_path):
    """Two processes on one cell (two sweeps, or the array of a killed one beside its
    resubmission): the one that finds the cell's lock held leaves the cell alone and says
    who holds it; once it is released, the cell trains."""
    cfg = Config(data=DataConfig(dir=str(prepared)), train=TrainConfig(steps=0),
                 tracking=TrackingConfig(enabled=False), run_name="probe-only")  # fmt: skip
    out_dir = tmp_path / "cell"
    out_dir.mkdir()
    held = sweep.hold(out_dir / jobs.CELL_LOCK)  # flock: a second open file contends with it
    assert isinstance(held, int)
    sweep.name_holder(held)
    [result] = jobs.run_group([(as_dict(cfg), out_dir)], tmp_path)
    assert result["status"] == "failed"
    host = os.uname().nodename
    assert result["error"] == f"being trained by another process (pid {os.getpid()} on {host})"
    assert not (out_dir / "run.json").exists()
    os.close(held)
    [result] = jobs.run_group([(as_dict(cfg), out_dir)], tmp_path)
    assert result["status"] == "finished"
    assert (out_dir / "run.json").exists()


def test_dvc_repro_with_launcher_slurm_runs_the_sweep_stage_on_the_cluster(
    tmp_path, cluster, monkeypatch
):
    """params.yaml's ``launcher: slurm``: the sweep stage's cells run as array tasks, the
    stage before it (prepare) here, and DVC records the stage as done."""
    for key, value in cluster.items():
        monkeypatch.setenv(key, value)
    repo = checkout_copy(tmp_path / "repo")
    params = repo / "params.yaml"
    text = re.sub(r"(?m)^profile: .*$", "profile: quick", params.read_text())
    params.write_text(re.sub(r"(?m)^launcher: .*$", "launcher: slurm", text))
    # The quick profile's smallest sweep: each array task starts Python and torch anew.
    proc = run(repo, "dvc", "repro", "sweep@jacobian")
    assert stages_run(proc.stdout) == ["prepare", "sweep@jacobian"]
    sweep_dir = repo / "multirun" / "quick" / "jacobian"
    listed = json.loads((sweep_dir / "sweep.json").read_text())
    assert listed["complete"] and listed["counts"] == {"finished": 4}
    # 4 cells in 2 groups (the two inits of a depth stack): 2 array tasks, both done.
    assert len(list((sweep_dir / ".submitit").glob("*_*/*_result.pkl"))) == 2
    status = run(repo, "dvc", "status", "sweep@jacobian").stdout
    assert "Data and pipelines are up to date" in status
