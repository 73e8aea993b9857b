"""``hydra/launcher=pool``: the study's default launcher for multiruns on one machine.

A pool of long-lived worker processes (one per core by default), each importing torch and
MLflow once and then running job after job. Job configs come from per-template copies
(``compose.py``) instead of a full Hydra composition per job. The parent prints a
progress line as jobs complete: cells done / total, failures, elapsed, ETA.
"""

import importlib
import logging
import multiprocessing
import os
import pickle
import sys
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cloudpickle
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.core.singleton import Singleton
from hydra.core.utils import (
    JobReturn,
    JobRuntime,
    JobStatus,
    _flush_loggers,
    _save_config,
    configure_log,
    env_override,
    setup_globals,
)
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, read_write

from .compose import JobSpec, Planner, set_job_fields, task_view

log = logging.getLogger(__name__)


@dataclass
class PoolLauncherConf:
    _target_: str = "hydra_plugins.study_sweeps.pool_launcher.PoolLauncher"
    n_jobs: int = -1  # worker processes; -1 = one per CPU core
    # Each worker runs single-threaded torch: parallelism comes from the workers.
    threads_per_worker: int = 1
    progress_every_s: float = 10.0  # seconds between progress lines (and one at the end)
    # Jobs that differ only in the ``group_over`` keys run as one group: ``group_task``
    # ("module:function") gets them all at once; the study's trains them as one stacked
    # network. Null runs job by job through the Hydra task function.
    group_task: str | None = "study.train:run_group"
    group_over: list[str] = field(default_factory=lambda: ["seed", "model.init", "optim.lr"])
    max_group: int = 32


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


# --------------------------------------------------------------------- worker side

_WORKER: dict[str, Any] = {}


def _init_worker(state: bytes) -> None:
    hydra_context, singleton_state, task, templates = cloudpickle.loads(state)
    setup_globals()
    Singleton.set_state(singleton_state)
    module, name = task
    function = getattr(importlib.import_module(module), name)
    # The app's task may be wrapped by @hydra.main; run the function Hydra would run.
    _WORKER.update(
        context=hydra_context,
        task=getattr(function, "__wrapped__", function),
        templates=templates,
    )


def _prepare(job: JobSpec) -> tuple[DictConfig, DictConfig, str]:
    """The job's full config and the task's view of it, built from its template (Hydra's
    ``run_job`` deep-copies the job config three times and masks it twice, ~50 ms a job;
    a worker owns its job's config outright, ~3 ms), and its output folder, created."""
    full_bytes, task_bytes = _WORKER["templates"][job.signature]
    config, task_cfg = pickle.loads(full_bytes), pickle.loads(task_bytes)
    for cfg in (config, task_cfg):
        for key, value in job.values:
            OmegaConf.update(cfg, key, value, merge=False)
    set_job_fields(config, job)
    hydra = config.hydra
    output_dir = os.path.abspath(os.path.join(str(hydra.sweep.dir), str(hydra.sweep.subdir)))
    with read_write(hydra.runtime):
        hydra.runtime.output_dir = output_dir
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    if hydra.output_subdir is not None:
        subdir = Path(output_dir) / str(hydra.output_subdir)
        _save_config(task_cfg, "config.yaml", subdir)
        _save_config(hydra.overrides.task, "overrides.yaml", subdir)
    return config, task_cfg, output_dir


def _run(job: JobSpec) -> JobReturn:
    """Hydra's ``run_job`` for one job, minus its per-job config copies."""
    config, task_cfg, output_dir = _prepare(job)
    HydraConfig.instance().cfg = config  # type: ignore[assignment]
    hydra = config.hydra
    ret = JobReturn(overrides=list(job.overrides), cfg=task_cfg, working_dir=os.getcwd())
    old_cwd = os.getcwd()
    if hydra.job.chdir:
        os.chdir(output_dir)
        ret.working_dir = output_dir
    try:
        configure_log(hydra.job_logging, hydra.verbose)
        callbacks = _WORKER["context"].callbacks
        with env_override(hydra.job.env_set):
            callbacks.on_job_start(config=config, task_function=_WORKER["task"])
            try:
                ret.return_value = _WORKER["task"](task_cfg)
                ret.status = JobStatus.COMPLETED
            except Exception as exc:  # noqa: BLE001 - a job's failure is its result
                ret.return_value = exc
                ret.status = JobStatus.FAILED
        ret.task_name = JobRuntime.instance().get("name")
        _flush_loggers()
        callbacks.on_job_end(config=config, job_return=ret)
    finally:
        os.chdir(old_cwd)
    return ret


def _run_group(jobs: Sequence[JobSpec], group_task: str) -> list[JobReturn]:
    """A group of jobs through the group task in one call; one JobReturn per job.

    Each job still gets its config, output folder and Hydra callbacks; the task sees them
    all at once. If it raises, every job of the group fails with that exception.
    """
    module, name = group_task.split(":")
    task = getattr(importlib.import_module(module), name)
    prepared = [_prepare(job) for job in jobs]
    first = prepared[0][0]
    HydraConfig.instance().cfg = first  # type: ignore[assignment]
    configure_log(first.hydra.job_logging, first.hydra.verbose)
    callbacks = _WORKER["context"].callbacks
    rets = []
    for job, (config, task_cfg, _) in zip(jobs, prepared, strict=True):
        callbacks.on_job_start(config=config, task_function=_WORKER["task"])
        rets.append(JobReturn(overrides=list(job.overrides), cfg=task_cfg, working_dir=os.getcwd()))
    with env_override(first.hydra.job.env_set):
        try:
            values = task([(t, Path(d)) for _, t, d in prepared], Path(str(first.hydra.sweep.dir)))
            for ret, value in zip(rets, values, strict=True):
                ret.return_value, ret.status = value, JobStatus.COMPLETED
        except Exception as exc:  # noqa: BLE001 - a group's failure is its jobs' result
            for ret in rets:
                ret.return_value, ret.status = exc, JobStatus.FAILED
    _flush_loggers()
    for ret, (config, _, _) in zip(rets, prepared, strict=True):
        ret.task_name = JobRuntime.instance().get("name")
        callbacks.on_job_end(config=config, job_return=ret)
    return rets


def groups(
    jobs: Sequence[JobSpec], over: Sequence[str], max_group: int, cost: Any
) -> list[list[int]]:
    """Indices of jobs that differ only in the ``over`` keys, in chunks of at most
    ``max_group`` (near-equal sizes), costliest group first so the last ones to finish are
    short (``cost(job)`` estimates one job's work)."""
    by_shape: dict[tuple, list[int]] = {}
    for i, job in enumerate(jobs):
        shape = (job.signature, tuple((k, repr(v)) for k, v in job.values if k not in over))
        by_shape.setdefault(shape, []).append(i)
    chunks = []
    for members in by_shape.values():
        parts = -(-len(members) // max_group)
        size = -(-len(members) // parts)
        chunks += [members[k : k + size] for k in range(0, len(members), size)]
    return sorted(chunks, key=lambda c: -sum(cost(jobs[i]) for i in c))


# --------------------------------------------------------------------- parent side


def outcome(ret: JobReturn) -> dict[str, Any]:
    """A job's cell: what the task reported (``study.sweep.job_result``), or, if the task
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
    ):
        self.group_task, self.group_over = group_task, tuple(group_over)
        self.max_group = max(1, max_group)
        self.n_jobs = n_jobs
        self.threads_per_worker = threads_per_worker
        self.progress_every_s = progress_every_s
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.task_function: TaskFunction | None = None

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

    def launch(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> Sequence[JobReturn]:
        assert self.config and self.hydra_context and self.task_function
        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)

        planner = Planner(self.hydra_context, self.config)
        jobs = [planner.plan(initial_job_idx + i, o) for i, o in enumerate(job_overrides)]
        workers = min(self.n_jobs if self.n_jobs > 0 else os.cpu_count() or 1, len(jobs))
        # With groups, fewer tasks than jobs; a worker per task at most.
        log.info(
            "pool launcher: %d jobs on %d workers, sweep dir %s",
            len(jobs), workers, self.config.hydra.sweep.dir,
        )  # fmt: skip
        # Set before the workers start, so that their BLAS/OpenMP pools are sized once.
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ.setdefault(var, str(self.threads_per_worker))

        results: list[JobReturn | None] = [None] * len(jobs)
        progress = Progress(len(jobs), self.progress_every_s)
        with ProcessPoolExecutor(
            max_workers=workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker,
            # cloudpickle: Hydra's singleton state holds OmegaConf resolvers defined inline.
            initargs=(
                cloudpickle.dumps(
                    (
                        self.hydra_context,
                        Singleton.get_state(),
                        task_reference(self.task_function),
                        {
                            signature: (pickle.dumps(cfg), pickle.dumps(task_view(cfg)))
                            for signature, cfg in planner.templates.items()
                        },
                    )
                ),
            ),
        ) as pool:
            if self.group_task:
                chunks = groups(jobs, self.group_over, self.max_group, planner.cost)
                futures = {
                    pool.submit(_run_group, [jobs[i] for i in chunk], self.group_task): chunk
                    for chunk in chunks
                }
            else:
                futures = {pool.submit(_run, job): [i] for i, job in enumerate(jobs)}
            for future in as_completed(futures):
                done = future.result()
                rets = done if self.group_task else [done]
                for i, ret in zip(futures[future], rets, strict=True):
                    results[i] = ret
                    progress.update(outcome(ret)["status"])
        return results  # type: ignore[return-value]
