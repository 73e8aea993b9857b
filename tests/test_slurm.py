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

from study.runs import jobs

from .conftest import subprocess_env
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


def submit(workdir: Path, env: dict[str, str], *overrides: str) -> subprocess.Popen:
    """``python -m study.train -m ... hydra/launcher=slurm`` as a user types it, running."""
    return subprocess.Popen(
        [sys.executable, "-m", "study.train", "-m", "hydra/launcher=slurm",
         "hydra.launcher.poll_s=0.5", *overrides],
        cwd=workdir, env={**subprocess_env(), **env}, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip


def finish(proc: subprocess.Popen, timeout: float = 600, status: int = 0) -> str:
    """What the sweep printed (its log lines and its summary), once it exited with
    ``status`` (1: some cells failed)."""
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == status, out[-3000:]
    return out


def test_the_smoke_sweep_runs_on_the_cluster_one_record_and_run_per_cell(workdir, cluster):
    out = finish(submit(workdir, cluster, "+sweep=smoke"))
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    check_one_run_per_cell(workdir, workdir / "multirun" / "smoke", uri, "smoke")
    assert f"{SMOKE_CELLS}/{SMOKE_CELLS} cells" in out
    # Each cell (no two of the smoke grid stack) ran in a task of one array job.
    tasks = sorted((workdir / "multirun" / "smoke" / ".submitit").glob("*_*/*_result.pkl"))
    assert len(tasks) == SMOKE_CELLS
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
    proc = run(repo, "dvc", "repro", "sweep@theory")
    assert stages_run(proc.stdout) == ["prepare", "sweep@theory"]
    sweep_dir = repo / "multirun" / "quick" / "theory"
    listed = json.loads((sweep_dir / "sweep.json").read_text())
    assert listed["complete"] and listed["counts"] == {"finished": 12}
    # 12 cells in 6 groups (the two seeds of a shape stack): 6 array tasks, all done.
    assert len(list((sweep_dir / ".submitit").glob("*_*/*_result.pkl"))) == 6
    assert "Data and pipelines are up to date" in run(repo, "dvc", "status", "sweep@theory").stdout
