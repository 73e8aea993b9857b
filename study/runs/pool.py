"""A process pool that outlives its workers: the pool launcher's processes.

:class:`Pool` runs ``(function, args)`` tasks on worker processes with one pipe each
(forked where that is safe, see :func:`start_method`). Unlike ``ProcessPoolExecutor``,
whose pool breaks for good when one worker dies, a worker that dies (segfault, OOM kill,
``kill -9``) costs only the task it was running: that task comes back as
:class:`WorkerDied`, a fresh worker takes its place and the other tasks go on. Stopping
the parent (SIGTERM, Ctrl-C, or its death) stops the workers.

No Hydra here: the pool launcher (``hydra_plugins/study_sweeps/pool_launcher.py``) runs it.
"""

from __future__ import annotations

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
from typing import Any

# --------------------------------------------------------------------- in a worker


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
    cannot use). MLflow's database connections are not shared: ``study.tracking.bulk``
    drops the inherited ones in the child (MLflow keys its HTTP sessions by process id)."""
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
        self._assign(pending)
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
            self._replenish(pending)
            self._assign(pending)

    def _assign(self, pending: deque) -> None:
        """Hand the next pending tasks to the idle workers."""
        for worker in self.workers:
            if not pending:
                return
            if worker.task is None:
                worker.task, task = pending.popleft()
                try:
                    worker.conn.send(task)
                except OSError:
                    pass  # it died: its sentinel says so, and the task fails

    def _replenish(self, pending: deque) -> None:
        """Bury idle workers that died and start new ones while tasks are pending. A worker
        that answered and then died must not be handed a task (a busy one that died is seen
        through its sentinel, next round, and fails its task)."""
        for worker in [w for w in self.workers if w.task is None and not w.process.is_alive()]:
            self._bury(worker)
        while pending and len(self.workers) < self.size:
            self._start()

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
