"""``hydra/launcher=pool``: the study's default launcher for multiruns on one machine.

A pool of long-lived worker processes (one per core by default, ``_pool.Pool``), forked
with the sweep's imports (torch, MLflow) where that is safe, else spawned and importing
them once, then running job after job. Job configs come from
per-template copies (``compose.py``) instead of a full Hydra composition per job. Jobs
that differ only in ``group_over`` keys go to a worker together, as one call of
``group_task``. A worker that dies (segfault, OOM kill) fails only the cells it was
running; a fresh one replaces it. The parent prints a progress line as jobs complete:
cells done / total, failures, elapsed, ETA.
"""

import importlib
import logging
import os
import pickle
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cloudpickle
from hydra.core.config_store import ConfigStore
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, configure_log, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

from study.config import STACKABLE, ConfigError

# _WORKER too: benchmarks/bench_sweep.py drives a worker in-process through this module.
from study.runs.pool import START_METHODS, Pool

from ._workers import _WORKER, _init_worker, _run, _run_group, job_config  # noqa: F401
from .compose import JobSpec, Planner, task_view

log = logging.getLogger(__name__)


@dataclass
class GroupingConf:
    """How a launcher groups jobs (the pool's and the SLURM launcher's)."""

    # Jobs that differ only in the ``group_over`` keys run as one group: ``group_task``
    # ("module:function") gets them all at once; the study's trains them as one stacked
    # network. Null runs job by job through the Hydra task function.
    group_task: str | None = "study.runs.jobs:run_group"
    group_over: list[str] = field(default_factory=lambda: [k for k in STACKABLE if k != "run_name"])
    max_group: int = 32
    # ...and at most this many activation elements (depth x width x batch, summed over the
    # group's nets): a bigger stack spills out of the caches and runs slower per net
    # (measured at depth 64, width 128: 126 ms a cell in groups of 21, 25 ms in groups of 7).
    max_group_elements: int = 8_000_000


@dataclass
class PoolLauncherConf(GroupingConf):
    _target_: str = "hydra_plugins.study_sweeps.pool_launcher.PoolLauncher"
    n_jobs: int = -1  # worker processes; -1 = one per CPU core
    # Each worker runs single-threaded torch: parallelism comes from the workers.
    threads_per_worker: int = 1
    progress_every_s: float = 10.0  # seconds between progress lines (and one at the end)
    # How workers start: fork | spawn | forkserver | auto (fork on Linux where it is safe,
    # spawn elsewhere; _pool.start_method).
    start_method: str = "auto"


ConfigStore.instance().store(
    group="hydra/launcher", name="pool", node=PoolLauncherConf, provider="study"
)


def task_reference(task_function: TaskFunction) -> tuple[str, str]:
    """(module, name) importable in a fresh process, also when the app ran as ``-m pkg.mod``."""
    module = task_function.__module__
    if module == "__main__":
        spec = getattr(sys.modules["__main__"], "__spec__", None)
        module = spec.name if spec is not None else module
    return module, task_function.__qualname__


def groups(
    jobs: Sequence[JobSpec], over: Sequence[str], max_group: Any, cost: Any
) -> list[list[int]]:
    """Indices of jobs that differ only in the ``over`` keys (same template, same values for
    every other key), in chunks of at most ``max_group(job)`` of near-equal sizes.

    Costliest chunk first, so that the last ones to finish are short and no worker idles
    while another runs a long group at the end. A chunk's cost is the sum of ``cost(job)``
    (the planner's: depth x max(steps, 1), a job's work up to a constant)."""
    by_shape: dict[tuple, list[int]] = {}
    for i, job in enumerate(jobs):
        shape = (job.signature, tuple((k, repr(v)) for k, v in job.values if k not in over))
        by_shape.setdefault(shape, []).append(i)
    chunks = []
    for members in by_shape.values():
        parts = -(-len(members) // max_group(jobs[members[0]]))
        size = -(-len(members) // parts)
        chunks += [members[k : k + size] for k in range(0, len(members), size)]
    return sorted(chunks, key=lambda c: -sum(cost(jobs[i]) for i in c))


def outcome(ret: JobReturn) -> dict[str, Any]:
    """A job's cell: what the task reported (``study.runs.sweep.job_result``), or, if the task
    raised before it could record anything, ``failed`` with the exception's first line."""
    value = ret._return_value
    if isinstance(value, dict) and "status" in value:
        return value
    name = str(ret.cfg.run_name) if ret.cfg is not None else " ".join(ret.overrides or [])
    cell = {"run_name": name, "cell_key": None, "dir": None, "error": None}
    if ret.status is JobStatus.FAILED:
        return {
            **cell,
            "status": "failed",
            "error": f"{type(value).__name__}: {value}".splitlines()[0],
        }
    return {**cell, "status": "finished"}


def worker_templates(planner: Planner) -> dict[tuple[str, ...], tuple[bytes, bytes]]:
    """Each template pickled, whole and as the task's view: what a worker copies per job."""
    return {
        signature: (pickle.dumps(cfg), pickle.dumps(task_view(cfg)))
        for signature, cfg in planner.templates.items()
    }


@dataclass
class Plan:
    """A launch's jobs, their templates, and the tasks they run in (indices into ``jobs``)."""

    jobs: list[JobSpec]
    templates: dict[tuple[str, ...], tuple[bytes, bytes]]
    chunks: list[list[int]]


def plan(
    hydra_context: HydraContext,
    config: DictConfig,
    job_overrides: Sequence[Sequence[str]],
    initial_job_idx: int,
    grouping: GroupingConf,
) -> Plan:
    """Jobs planned on templates, in groups when ``grouping.group_task`` is set (else one
    job a task)."""
    planner = Planner(hydra_context, config)
    jobs = [planner.plan(initial_job_idx + i, o) for i, o in enumerate(job_overrides)]
    if grouping.group_task:

        def limit(job: JobSpec) -> int:
            fits = int(grouping.max_group_elements // planner.activations(job))
            return max(1, min(grouping.max_group, fits))

        chunks = groups(jobs, grouping.group_over, limit, planner.cost)
    else:
        chunks = [[i] for i in range(len(jobs))]
    return Plan(jobs, worker_templates(planner), chunks)


def worker_payload(
    hydra_context: HydraContext, task_function: TaskFunction, templates: dict
) -> bytes:
    """What every worker (or cluster task) starts from: ``_workers._init_worker``'s state."""
    # cloudpickle: Hydra's singleton state holds OmegaConf resolvers defined inline.
    return cloudpickle.dumps(
        (hydra_context, Singleton.get_state(), task_reference(task_function), templates)
    )


def failed(templates: dict, job: JobSpec, error: BaseException) -> JobReturn:
    """A job that never returned (its worker died, or its task raised outside the job): its
    config is rebuilt here so the summary names the cell (``outcome`` reads ``run_name``)."""
    _, task_cfg = job_config(templates, job)
    ret = JobReturn(overrides=list(job.overrides), cfg=task_cfg, working_dir=os.getcwd())
    ret.return_value, ret.status = error, JobStatus.FAILED
    return ret


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


class Progress:
    def __init__(self, total: int, every_s: float):
        self.total, self.every_s = total, every_s
        self.counts: Counter[str] = Counter()
        self.start = self.last = time.monotonic()

    def update(self, status: str) -> None:
        self.counts[status] += 1
        now = time.monotonic()
        done = sum(self.counts.values())
        if now - self.last >= self.every_s or done == self.total:
            self.last = now
            print(self.line(now), flush=True)

    def line(self, now: float) -> str:
        c, elapsed = self.counts, now - self.start
        done = sum(c.values())
        worked = done - c["skipped"]
        remaining = self.total - done
        eta = _duration(elapsed / worked * remaining) if worked and remaining else "-"
        if not remaining:
            eta = "done"
        return (
            f"[sweep] {done}/{self.total} cells | {c['finished']} finished, "
            f"{c['diverged']} diverged, {c['failed']} failed, {c['skipped']} skipped | "
            f"elapsed {_duration(elapsed)} | ETA {eta}"
        )


class PoolLauncher(Launcher):
    def __init__(
        self,
        n_jobs: int = -1,
        threads_per_worker: int = 1,
        progress_every_s: float = 10.0,
        group_task: str | None = None,
        group_over: Sequence[str] = (),
        max_group: int = 32,
        max_group_elements: int = 8_000_000,
        start_method: str = "auto",
    ):
        self.start_method = start_method
        self.grouping = GroupingConf(
            group_task, list(group_over), max(1, max_group), max_group_elements
        )
        self.n_jobs = n_jobs
        self.threads_per_worker = threads_per_worker
        self.progress_every_s = progress_every_s
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.task_function: TaskFunction | None = None

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        if self.start_method not in START_METHODS:
            choices = ", ".join(START_METHODS)
            raise ConfigError(
                "hydra.launcher.start_method", f"{self.start_method!r}: expected one of {choices}"
            )
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

    def launch(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> Sequence[JobReturn]:
        assert self.config and self.hydra_context and self.task_function
        if not job_overrides:
            return []
        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)

        p = plan(self.hydra_context, self.config, job_overrides, initial_job_idx, self.grouping)
        jobs, templates, chunks = p.jobs, p.templates, p.chunks
        group_task = self.grouping.group_task
        if group_task:
            tasks = [(_run_group, ([jobs[i] for i in c], group_task)) for c in chunks]
        else:
            tasks = [(_run, (job,)) for job in jobs]
        # With groups, fewer tasks than jobs; a worker per task at most.
        workers = min(self.n_jobs if self.n_jobs > 0 else os.cpu_count() or 1, len(tasks))
        log.info(
            "pool launcher: %d jobs in %d tasks on %d workers, sweep dir %s",
            len(jobs), len(tasks), workers, self.config.hydra.sweep.dir,
        )  # fmt: skip
        # Set before the workers start, so that their BLAS/OpenMP pools are sized once.
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ.setdefault(var, str(self.threads_per_worker))
        payload = worker_payload(self.hydra_context, self.task_function, templates)
        if group_task:  # imported before the workers fork, so that they start with it (torch)
            importlib.import_module(group_task.split(":")[0])

        results: list[JobReturn | None] = [None] * len(jobs)
        progress = Progress(len(jobs), self.progress_every_s)
        with Pool(workers, _init_worker, (payload,), self.start_method) as pool:
            for index, kind, value in pool.run(tasks):
                chunk = chunks[index]
                if kind == "ok":
                    rets = value if group_task else [value]
                else:  # the task raised outside a job, or its worker died: its jobs failed
                    rets = [failed(templates, jobs[i], value) for i in chunk]
                for i, ret in zip(chunk, rets, strict=True):
                    results[i] = ret
                    progress.update(outcome(ret)["status"])
        return results  # type: ignore[return-value]
