"""``hydra/launcher=slurm``: a sweep as a SLURM job array, one group of cells per task.

The pool launcher's plan (templates, groups of nets that train as one stack), sent to a
cluster through submitit: each array task is a fresh process that sets up as a pool worker
does and runs one group, so a sweep pays scheduling and Python's start-up once per group,
not per cell. Before anything is submitted, cells whose folder already holds their result
are taken as skipped, so a resubmitted sweep queues only what is left. A task that ends
without a result (``scancel``, its time limit, a lost node) fails the cells it had not
recorded; the records it did write count, and a rerun redoes the rest.

The sweep's process waits for the array and prints the pool's progress lines, so
``dvc repro`` with ``launcher: slurm`` runs the sweep stages on the cluster and the rest
where it runs.
"""

import logging
import os
import pickle
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn, JobStatus, configure_log, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from hydra_plugins.hydra_submitit_launcher.config import SlurmQueueConf
from omegaconf import DictConfig, OmegaConf

from ._workers import run_task
from .compose import GroupConfigs
from .pool_launcher import GroupingConf, Plan, Progress, failed, outcome, plan, worker_payload

log = logging.getLogger(__name__)


@dataclass
class SlurmLauncherConf(GroupingConf, SlurmQueueConf):
    """submitit's SLURM options (``hydra_submitit_launcher``'s, same names and meaning) and
    the pool's grouping."""

    _target_: str = "hydra_plugins.study_sweeps.slurm_launcher.SlurmLauncher"
    poll_s: float = 5.0  # seconds between looks at the tasks' result files
    progress_every_s: float = 30.0


ConfigStore.instance().store(
    group="hydra/launcher", name="study_slurm", node=SlurmLauncherConf, provider="study"
)

_OWN = {f.name for f in fields(GroupingConf)} | {"poll_s", "progress_every_s"}
_EXECUTOR = {"submitit_folder", "max_num_timeout"}


def error_line(task: Any, exc: BaseException) -> str:
    """Why a task gave no results, in one line (submitit's errors run to many: a traceback,
    the task's log)."""
    if type(exc).__name__ == "UncompletedJobError":  # it ended without writing results
        return f"SLURM task {task.job_id} ended without results ({task.state})"
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    # FailedJobError: "... failed during processing with trace:", the trace, its error last.
    return f"SLURM task {task.job_id}: {lines[-1] if lines else type(exc).__name__}"


class SlurmLauncher(Launcher):
    def __init__(self, **params: Any) -> None:
        plain = {
            k: OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v
            for k, v in params.items()
        }
        self.grouping = GroupingConf(**{f.name: plain[f.name] for f in fields(GroupingConf)})
        self.grouping.max_group = max(1, self.grouping.max_group)
        self.poll_s, self.progress_every_s = plain["poll_s"], plain["progress_every_s"]
        self.folder, self.max_num_timeout = plain["submitit_folder"], plain["max_num_timeout"]
        self.sbatch = {k: v for k, v in plain.items() if k not in _OWN | _EXECUTOR}
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.task_function: TaskFunction | None = None

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

    def launch(self, job_overrides: Any, initial_job_idx: int) -> list[JobReturn]:
        assert self.config and self.hydra_context and self.task_function
        if not job_overrides:
            return []
        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        uri = str(OmegaConf.select(self.config, "tracking.uri", default=""))
        if uri.startswith("sqlite"):
            log.warning(
                "slurm launcher with tracking %s: fine when every task runs on this machine; "
                "across nodes use tracking=server (README, 'Several machines')",
                uri,
            )

        p = plan(self.hydra_context, self.config, job_overrides, initial_job_idx, self.grouping)
        results: list[JobReturn | None] = [None] * len(p.jobs)
        progress = Progress(len(p.jobs), self.progress_every_s)
        from study.runs import jobs  # torch and MLflow: only once a SLURM sweep launches

        specs = job_specs(p)
        for i, spec in enumerate(specs):  # already answered: nothing to queue
            if (cell := jobs.recorded(*spec)) is not None:
                results[i] = answered(p, i, {**cell, "status": "skipped"})
                progress.update("skipped")
        chunks = [c for c in ([i for i in c if results[i] is None] for c in p.chunks) if c]
        if chunks:
            import submitit  # only when a SLURM sweep runs: plugin discovery stays fast

            executor = submitit.SlurmExecutor(self.folder, max_num_timeout=self.max_num_timeout)
            # The generic names (timeout_min, mem_gb, ...) as sbatch's own (time, mem, ...).
            executor.update_parameters(**executor._convert_parameters(self.sbatch))
            # A task's torch and BLAS threads: what it was given (its environment is ours).
            threads = str(self.sbatch.get("cpus_per_task") or 1)
            for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
                os.environ.setdefault(var, threads)
            payload = worker_payload(self.hydra_context, self.task_function, p.templates)
            self._run_array(executor, payload, p, specs, chunks, results, progress)
        return results  # type: ignore[return-value]

    def _run_array(self, executor, payload, p: Plan, specs, chunks, results, progress) -> None:
        """Submit the chunks as one job array, then wait for it. The array does not outlive
        this process's work: stopped (Ctrl-C, SIGTERM) or failing, it cancels the array;
        killed outright, it leaves the array named in the sweep's lock file (the next run
        of the sweep is refused while squeue lists it)."""
        from study.runs import slurm_queue, sweep

        sweep_dir = Path(str(self.config.hydra.sweep.dir))  # type: ignore[union-attr]
        array = None
        with slurm_queue.sigterm_exits():
            try:
                with slurm_queue.signals_deferred():
                    submitted = executor.map_array(
                        run_task,
                        [payload] * len(chunks),
                        [[p.jobs[i] for i in c] for c in chunks],
                        [self.grouping.group_task] * len(chunks),
                    )
                    array = submitted[0].job_id.split("_")[0]
                    sweep.name_array(sweep_dir, array)
                tasks = slurm_queue.watched(submitted, executor.folder)
                log.info(
                    "slurm launcher: %d jobs in %d array tasks (job %s), sweep dir %s",
                    sum(map(len, chunks)), len(tasks), array, sweep_dir,
                )  # fmt: skip
                self._wait(p, specs, chunks, tasks, results, progress)
            except BaseException:
                if array is not None:
                    stop(array, sweep_dir)
                raise
        sweep.name_array(sweep_dir, None)  # ended: nothing for a later run to wait for

    def _wait(self, p: Plan, specs, chunks, tasks, results, progress) -> None:
        import submitit

        from study.runs import jobs

        which = {id(task): chunk for task, chunk in zip(tasks, chunks, strict=True)}
        for task in submitit.helpers.as_completed(tasks, poll_frequency=self.poll_s):
            chunk = which[id(task)]
            try:
                rets = task.result()
            except Exception as exc:  # noqa: BLE001 - the task ended without its results
                line = error_line(task, exc)
                rets = []
                for i in chunk:
                    cell = jobs.recorded(*specs[i])  # it may have recorded some
                    lost = failed(p.templates, p.jobs[i], RuntimeError(line))
                    rets.append(answered(p, i, cell) if cell is not None else lost)
            for i, ret in zip(chunk, rets, strict=True):
                results[i] = ret
                progress.update(outcome(ret)["status"])


def stop(array: str, sweep_dir: Path) -> None:
    """Cancel the sweep's array and wait for its tasks to end, saying so."""
    from study.runs import slurm_queue, sweep

    print(f"[sweep] stopping: cancelling SLURM job array {array}", flush=True)
    if slurm_queue.cancel(array):
        sweep.name_array(sweep_dir, None)
        print(f"[sweep] SLURM job array {array} cancelled; its tasks have ended", flush=True)
    else:
        print(f"[sweep] SLURM job array {array} was cancelled but squeue still lists it; "
              "this sweep cannot run again until it no longer does", flush=True)  # fmt: skip


def job_specs(p: Plan) -> list[tuple[dict[str, Any], str]]:
    """Each job's (resolved task config, output folder), as its group task will see them."""
    configs: dict[tuple[str, ...], GroupConfigs] = {}
    specs = []
    for job in p.jobs:
        if job.signature not in configs:
            configs[job.signature] = GroupConfigs(pickle.loads(p.templates[job.signature][0]))
        specs.append(configs[job.signature].job(job))
    return specs


def answered(p: Plan, i: int, cell: dict[str, Any]) -> JobReturn:
    """A job whose result is its record on disk, not a task's reply."""
    ret = JobReturn(overrides=list(p.jobs[i].overrides), working_dir=os.getcwd())
    ret.return_value, ret.status = cell, JobStatus.COMPLETED
    return ret
