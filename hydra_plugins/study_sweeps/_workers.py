"""The pool launcher's workers: what runs in one, and the pool that keeps them running.

Worker side: :func:`_init_worker` receives the launcher's payload once (Hydra context,
singleton state, task, pickled templates); :func:`_run` runs one job as Hydra's ``run_job``
would, :func:`_run_group` a group of jobs through the group task in one call.

Parent side: :class:`Pool`, worker processes with one pipe each (forked where that is
safe, see :func:`start_method`). Unlike
``ProcessPoolExecutor``, whose pool breaks for good when one worker dies, a worker that
dies (segfault, OOM kill, ``kill -9``) costs only the task it was running: that task comes
back as :class:`WorkerDied`, a fresh worker takes its place and the other tasks go on.

The leading underscore keeps Hydra's plugin scan from executing this module a second time
(it re-runs every other module of ``hydra_plugins``): a second copy of these functions
would not pickle by reference ("not the same object as ...") nor share ``_WORKER``.
"""

from __future__ import annotations

import gc
import importlib
import multiprocessing
import os
import pickle
import signal
import sys
import threading
import traceback
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
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

# --------------------------------------------------------------------- in a worker

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


def _exit_with_parent() -> None:
    """End this worker if the parent dies without stopping it (``kill -9`` of the sweep):
    the parent's sentinel becomes readable then. Without this, the worker would finish its
    task first and leave cells half-written by no sweep."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        parent.join()
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _serve(conn: Connection, initializer: Callable[..., None], initargs: tuple) -> None:
    """A worker's life: set up once, then run ``(function, args)`` tasks until ``None``."""
    # Ctrl-C reaches the whole process group; the parent answers it by stopping the workers,
    # so a worker must not die of it mid-write on its own.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # A forked worker inherits the parent's SIGTERM handler; being terminated must end it.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _exit_with_parent()
    try:
        initializer(*initargs)
    except BaseException:  # noqa: BLE001 - reported to the parent, which stops the sweep
        conn.send(("init_failed", traceback.format_exc()))
        return
    while True:
        try:
            task = conn.recv()
        except EOFError:  # the parent is gone
            return
        if task is None:
            return
        function, args = task
        try:
            reply = ("ok", function(*args))
        # SystemExit too: a task that calls sys.exit fails its jobs, not its worker.
        except (Exception, SystemExit) as exc:  # noqa: BLE001 - the task's failure is its result
            reply = ("raised", exc)
        try:
            conn.send(reply)
        except Exception as exc:  # noqa: BLE001 - pickling fails before a byte is sent
            conn.send(("raised", RuntimeError(f"its result could not be sent back: {exc!r}")))


# --------------------------------------------------------------------- in the parent


class WorkerDied(RuntimeError):
    """The worker running a task died before it could answer."""


def death(exitcode: int | None) -> str:
    """One line for the cells of a task whose worker died, naming how it died."""
    if exitcode is None:
        how = "stopped answering"
    elif exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = "unknown signal"
        how = f"died (signal {-exitcode}, {name})"
    else:
        how = f"died (exit code {exitcode})"
    return f"worker {how} while running this cell's group"


START_METHODS = ("auto", "fork", "spawn", "forkserver")


def start_method(requested: str) -> str:
    """How workers start. ``auto``: forked on Linux while the parent runs no other thread
    and has not initialised CUDA (a forked worker then starts in milliseconds, with the
    parent's imports, instead of importing torch and MLflow again: seconds per worker);
    spawned otherwise (macOS, where fork is unsafe; a CUDA parent, whose context a child
    cannot use). MLflow's database connections are not shared: ``study.tracking`` drops
    the inherited ones in the child."""
    if requested != "auto":
        return requested
    cuda = sys.modules.get("torch.cuda")
    cuda_started = cuda is not None and cuda.is_initialized()
    lone = threading.active_count() == 1
    return "fork" if sys.platform == "linux" and lone and not cuda_started else "spawn"


@dataclass
class _Worker:
    process: Any  # multiprocessing's ForkProcess or SpawnProcess
    conn: Connection
    task: int | None = None  # index of the task it runs


class Pool:
    """``size`` workers, each set up by ``initializer(*initargs)``, one pipe each; started
    by ``method`` (``fork``, ``spawn``, ``forkserver`` or ``auto``: :func:`start_method`).

    Use as a context manager; leaving it by an exception (Ctrl-C, or SIGTERM, which raises
    ``SystemExit`` meanwhile) terminates the workers, so none outlives the sweep.
    """

    def __init__(
        self, size: int, initializer: Callable[..., None], initargs: tuple, method: str = "auto"
    ):
        self.size, self.initializer, self.initargs = max(1, size), initializer, initargs
        self.context = multiprocessing.get_context(start_method(method))
        self.workers: list[_Worker] = []
        self._old_sigterm: Any = False  # False: SIGTERM's handler was left alone

    def _start(self) -> _Worker:
        parent_end, child_end = self.context.Pipe(duplex=True)
        process = self.context.Process(
            target=_serve, args=(child_end, self.initializer, self.initargs), name="pool-worker"
        )
        process.start()
        child_end.close()  # the worker holds its own copy: EOF here means it is gone
        worker = _Worker(process, parent_end)
        self.workers.append(worker)
        return worker

    def __enter__(self) -> Pool:
        if threading.current_thread() is threading.main_thread():
            self._old_sigterm = signal.signal(signal.SIGTERM, _terminated)
        for _ in range(self.size):
            self._start()
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        try:
            if exc_type is None:
                for worker in self.workers:
                    try:
                        worker.conn.send(None)
                    except OSError:
                        pass  # already gone
                for worker in self.workers:
                    worker.process.join(timeout=10)
            for worker in self.workers:
                if worker.process.is_alive():
                    worker.process.terminate()
            for worker in self.workers:
                worker.process.join(timeout=5)
                if worker.process.is_alive():
                    worker.process.kill()
                    worker.process.join()
                worker.conn.close()
        finally:
            if self._old_sigterm is not False:  # None: it was set outside Python
                signal.signal(signal.SIGTERM, self._old_sigterm or signal.SIG_DFL)

    def run(self, tasks: Sequence[tuple[Callable, tuple]]) -> Iterator[tuple[int, str, Any]]:
        """Run ``function(*args)`` for each task, in the given order, one per worker at a time;
        yield ``(task index, kind, value)`` as each ends: ``ok`` (value: the result),
        ``raised`` (the exception it raised) or ``died`` (a :class:`WorkerDied`)."""
        pending = deque(enumerate(tasks))

        def assign() -> None:
            for worker in self.workers:
                if not pending:
                    return
                if worker.task is None:
                    worker.task, task = pending.popleft()
                    try:
                        worker.conn.send(task)
                    except OSError:
                        pass  # it died: its sentinel says so below, and the task fails

        assign()
        while busy := [w for w in self.workers if w.task is not None]:
            ready = set(wait([w.conn for w in busy] + [w.process.sentinel for w in busy]))
            for worker in busy:
                if worker.conn not in ready and worker.process.sentinel not in ready:
                    continue
                index, worker.task = worker.task, None
                message = self._receive(worker)
                if message is None:
                    yield index, "died", WorkerDied(self._bury(worker))
                elif message[0] == "init_failed":
                    raise RuntimeError(f"a pool worker failed to start:\n{message[1]}")
                else:
                    yield index, *message
            # A worker that answered and then died must not be handed a task. (A busy one
            # that died is seen through its sentinel, next round, and fails its task.)
            for worker in [w for w in self.workers if w.task is None and not w.process.is_alive()]:
                self._bury(worker)
            while pending and len(self.workers) < self.size:
                self._start()
            assign()

    @staticmethod
    def _receive(worker: _Worker) -> tuple[str, Any] | None:
        """The worker's answer, or None if it died (a kill mid-send leaves half a message)."""
        try:
            return worker.conn.recv() if worker.conn.poll() else None
        except (EOFError, OSError, pickle.UnpicklingError):
            return None

    def _bury(self, worker: _Worker) -> str:
        """Reap a dead (or unreachable) worker and drop it; how it died, in one line."""
        worker.process.join(timeout=5)
        exitcode = worker.process.exitcode
        if exitcode is None:  # its pipe broke, yet it runs on: it cannot be talked to
            worker.process.kill()
            worker.process.join()
        worker.conn.close()
        self.workers.remove(worker)
        return death(exitcode)


def _terminated(signum: int, _frame: Any) -> None:
    # SIGTERM's default ends the parent at once, leaving its workers to run on; as an
    # exception it unwinds through the pool, which stops them, and the sweep's bookkeeping.
    raise SystemExit(128 + signum)
