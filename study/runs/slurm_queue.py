"""submitit's SLURM executor, made to see the end of every task on any cluster.

submitit learns that a task ended from ``sacct``, or from the task's result file. A task
cancelled (``scancel``), killed at its time limit or lost with its node writes no result
file, and on a cluster without accounting storage (no ``slurmdbd``: small clusters, and
the tests' throwaway one) ``sacct`` answers "Slurm accounting storage is disabled", so
submitit would wait for such a task for ever. :class:`QueueWatcher` asks ``squeue`` there
instead: it lists finished jobs (``--states=all``) for ``MinJobAge`` seconds (300 by
default), and a task it no longer lists at all has ended too.

The sweep's process owns its array: :func:`cancel` is what it does when it stops early
(Ctrl-C, SIGTERM: :func:`sigterm_exits`, :func:`signals_deferred`), and :func:`queued` is
how a later invocation of the sweep learns whether an array it left behind still runs.

Imported only when a SLURM sweep launches (``hydra_plugins/study_sweeps/slurm_launcher.py``), so
Hydra's plugin scan does not pay for submitit.
"""

from __future__ import annotations

import contextlib
import getpass
import signal
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from submitit.slurm.slurm import SlurmInfoWatcher, SlurmJob

# What QueueWatcher reports for a task squeue has forgotten; any state submitit does not
# count as incomplete ends the wait (submitit.core.core.InfoWatcher.is_done).
GONE = "ENDED"
SQUEUE_FIELDS = "JobID|State|NodeList"


class QueueWatcher(SlurmInfoWatcher):
    def __init__(self, delay_s: int = 60) -> None:
        super().__init__(delay_s=delay_s)
        self._accounting: bool | None = None  # asked once, at the first update

    def accounting(self) -> bool:
        if self._accounting is None:
            probe = subprocess.run(
                ["sacct", "--noheader", "-X", "-j", "1"], capture_output=True, check=False
            )
            self._accounting = probe.returncode == 0
        return self._accounting

    def _make_command(self) -> list[str] | None:
        command = super()._make_command()
        if command is None or self.accounting():
            return command
        # All of this user's jobs: ``squeue -j`` fails outright once one id is forgotten.
        user = getpass.getuser()
        return ["squeue", "--states=all", "--array", "--noheader", "-u", user, "-o", "%i|%T|%N"]

    def read_info(self, string: bytes | str) -> dict[str, dict[str, str]]:
        if self.accounting():
            return super().read_info(string)
        text = string.decode() if isinstance(string, bytes) else string
        listed = super().read_info(f"{SQUEUE_FIELDS}\n{text}")
        for job_id in self._registered - self._finished:
            if job_id not in listed:
                listed[job_id] = {"JobID": job_id, "State": GONE, "NodeList": ""}
        return listed


class WatchedJob(SlurmJob):
    watcher = QueueWatcher(delay_s=60)


def watched(tasks: Sequence[SlurmJob], folder: Path) -> list[WatchedJob]:
    """An executor's jobs, watched by :class:`QueueWatcher` (submitit builds an array's
    jobs as ``SlurmJob`` whatever executor submits them); ``folder`` is the executor's."""
    return [WatchedJob(folder=folder, job_id=t.job_id, tasks=t._tasks) for t in tasks]


def queued(array: str) -> list[tuple[str, str]]:
    """The array's tasks that squeue lists as not ended (pending, running, completing...):
    (task, state) each, none once every task has ended. RuntimeError, in one line, when
    squeue cannot answer."""
    command = ["squeue", "--array", "--noheader", "-j", array, "-o", "%i|%T"]
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        raise RuntimeError(f"squeue: {exc}") from None
    if proc.returncode != 0:
        if "Invalid job id" in proc.stderr:  # ended long enough ago that it is forgotten
            return []
        raise RuntimeError(" ".join(proc.stderr.split()) or f"squeue exited {proc.returncode}")
    return [tuple(line.split("|", 1)) for line in proc.stdout.split()]  # type: ignore[misc]


def cancel(array: str, wait_s: float = 120.0) -> bool:
    """``scancel`` the array, then wait until squeue lists none of its tasks (at most
    ``wait_s``): True once they have all ended. submitit's tasks ignore the SIGTERM that
    scancel sends (submitit keeps it for checkpoints), so they train on until SLURM's
    ``KillWait`` passes and SIGKILL comes, and could record cells after the sweep stopped."""
    try:
        subprocess.run(["scancel", array], capture_output=True, timeout=60, check=False)
    except (OSError, subprocess.SubprocessError):
        return False
    deadline = time.monotonic() + wait_s
    while True:
        try:
            if not queued(array):
                return True
        except RuntimeError:
            return False
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)


def _exit(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()  # signal.signal needs it


@contextlib.contextmanager
def sigterm_exits() -> Iterator[None]:
    """SIGTERM raises SystemExit while the block runs: its default would end the process
    at once, leaving the array to run with no one to cancel it or read its results."""
    previous = signal.signal(signal.SIGTERM, _exit) if _main_thread() else False
    try:
        yield
    finally:
        if previous is not False:  # None: it was set outside Python
            signal.signal(signal.SIGTERM, previous or signal.SIG_DFL)


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Ctrl-C and SIGTERM, caught while the block runs (sbatch submitting the array),
    take effect as it ends: arriving before the array's id is known, they would leave an
    array that nothing cancels."""
    if not _main_thread():
        yield
        return
    caught: list[int] = []
    stops = (signal.SIGINT, signal.SIGTERM)
    previous = {s: signal.signal(s, lambda signum, _: caught.append(signum)) for s in stops}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)
        if caught:
            signal.raise_signal(caught[0])
