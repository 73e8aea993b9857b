"""submitit's SLURM executor, made to see the end of every task on any cluster.

submitit learns that a task ended from ``sacct``, or from the task's result file. A task
cancelled (``scancel``), killed at its time limit or lost with its node writes no result
file, and on a cluster without accounting storage (no ``slurmdbd``: small clusters, and
the tests' throwaway one) ``sacct`` answers "Slurm accounting storage is disabled", so
submitit would wait for such a task for ever. :class:`QueueWatcher` asks ``squeue`` there
instead: it lists finished jobs (``--states=all``) for ``MinJobAge`` seconds (300 by
default), and a task it no longer lists at all has ended too.

Imported only when a SLURM sweep launches (``hydra_plugins/study_sweeps/slurm_launcher.py``), so
Hydra's plugin scan does not pay for submitit.
"""

from __future__ import annotations

import getpass
import subprocess
from collections.abc import Sequence
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
