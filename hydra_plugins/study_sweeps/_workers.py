"""What runs in a pool launcher's worker, or in a SLURM launcher's array task.

:func:`_init_worker` receives the launcher's payload once (Hydra context, singleton state,
task, pickled templates); :func:`_run` runs one job as Hydra's ``run_job`` would,
:func:`_run_group` a group of jobs through the group task in one call; :func:`run_task`
is a cluster task's whole life. The processes themselves, and what happens when one
dies, are ``_pool.py``'s.

The leading underscore keeps Hydra's plugin scan from executing this module a second time
(it re-runs every other module of ``hydra_plugins``): a second copy of these functions
would not pickle by reference ("not the same object as ...") nor share ``_WORKER``.
"""

from __future__ import annotations

import gc
import importlib
import os
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cloudpickle
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
from omegaconf import DictConfig, OmegaConf, read_write

from .compose import GroupConfigs, JobSpec, set_job_fields

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
    # Everything imported so far lives as long as the worker: keep it out of the cyclic
    # garbage collector's passes, which otherwise walk torch's, MLflow's and SQLAlchemy's
    # objects again and again (measured: building a net took twice as long).
    gc.freeze()


def job_config(templates: dict[tuple[str, ...], tuple[bytes, bytes]], job: JobSpec):
    """(full config, the task's view) of a job: its template's pickled copies with the job's
    values set, and what Hydra records about the job. Composition would produce the same
    (tests/test_compose.py checks it), ~3 ms instead of ~0.2 s a job."""
    full_bytes, task_bytes = templates[job.signature]
    config, task_cfg = pickle.loads(full_bytes), pickle.loads(task_bytes)
    for cfg in (config, task_cfg):
        for key, value in job.values:
            OmegaConf.update(cfg, key, value, merge=False)
    set_job_fields(config, job)
    return config, task_cfg


def _prepare(job: JobSpec) -> tuple[DictConfig, DictConfig, str]:
    """The job's configs (Hydra's ``run_job`` deep-copies the job config three times and
    masks it twice, ~50 ms a job; a worker owns its job's config outright), and its output
    folder, created, with ``.hydra/`` saved there unless ``hydra.output_subdir`` is null."""
    config, task_cfg = job_config(_WORKER["templates"], job)
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

    The task gets each job as (its resolved config as plain containers, its output
    folder) and all of them at once (no ``chdir``: one process cannot stand in several
    folders). If it raises, every job of the group fails with that exception. Hydra
    callbacks, when the sweep has any, still see each job with its own full config (and
    HydraConfig set to it); without callbacks and with no ``.hydra/`` folder per job the
    configs come from one copy of the group's template (``GroupConfigs``), since a job's
    own config copy would cost as much as a probe-only cell computes.
    """
    module, name = group_task.split(":")
    task = getattr(importlib.import_module(module), name)
    full_bytes, _ = _WORKER["templates"][jobs[0].signature]
    first = pickle.loads(full_bytes)
    callbacks = _WORKER["context"].callbacks
    per_job = bool(callbacks.callbacks) or first.hydra.output_subdir is not None
    if per_job:
        prepared = [_prepare(job) for job in jobs]
        specs = [(OmegaConf.to_container(t, resolve=True), d) for _, t, d in prepared]
        first = prepared[0][0]
    else:
        configs = GroupConfigs(first)
        specs = [configs.job(job) for job in jobs]
        for _, output_dir in specs:
            Path(output_dir).mkdir(parents=True, exist_ok=True)
        with read_write(first.hydra.runtime):  # the group's log goes to its first folder
            first.hydra.runtime.output_dir = specs[0][1]
    hydra = first.hydra
    configure_log(hydra.job_logging, hydra.verbose)
    rets = []
    for i, job in enumerate(jobs):
        if per_job:
            HydraConfig.instance().cfg = prepared[i][0]  # type: ignore[assignment]
            callbacks.on_job_start(config=prepared[i][0], task_function=_WORKER["task"])
        cfg = prepared[i][1] if per_job else None
        rets.append(JobReturn(overrides=list(job.overrides), cfg=cfg, working_dir=os.getcwd()))
    HydraConfig.instance().cfg = first  # type: ignore[assignment]
    with env_override(hydra.job.env_set):
        try:
            values = task([(t, Path(d)) for t, d in specs], Path(str(hydra.sweep.dir)))
            for ret, value in zip(rets, values, strict=True):
                ret.return_value, ret.status = value, JobStatus.COMPLETED
        except Exception as exc:  # noqa: BLE001 - a group's failure is its jobs' result
            for ret, (resolved, _) in zip(rets, specs, strict=True):
                ret.return_value, ret.status = exc, JobStatus.FAILED
                ret.cfg = ret.cfg or OmegaConf.create(resolved)  # names the failed cell
    _flush_loggers()
    task_name = JobRuntime.instance().get("name")
    for i, ret in enumerate(rets):
        ret.task_name = task_name
        if per_job:
            HydraConfig.instance().cfg = prepared[i][0]  # type: ignore[assignment]
            callbacks.on_job_end(config=prepared[i][0], job_return=ret)
    return rets


def run_task(state: bytes, jobs: Sequence[JobSpec], group_task: str | None) -> list[JobReturn]:
    """A cluster task (one SLURM array task): a fresh process sets up as a pool worker does,
    then runs its jobs, as one group through ``group_task`` or one by one."""
    _init_worker(state)
    return _run_group(jobs, group_task) if group_task else [_run(job) for job in jobs]
