"""What a sweep pays per run besides the run itself, and how it scales from one worker to two.

Two measurements, printed as tables; timings are printed, never asserted.

1. **Fixed cost per cell** (``--part fixed``). A probe-only cell (depth 2, relu, no skip,
   ``train.steps=0``) computes for a few milliseconds, so what a sweep of such cells costs is
   mostly the fixed cost per cell: the Hydra job (config from its template, output folder,
   logging set-up, callbacks), the task's glue (typed config, validation, resume check), the
   MLflow run and the on-disk records. One process sets Hydra up as a real multirun does
   (master config with ``+sweep=smoke``, ``HydraContext``, ``Planner``), fills the pool
   launcher's worker state through ``pool_launcher._init_worker`` with the same payload the
   launcher sends its workers, and times the worker's path two ways on ``--jobs`` cells
   (seeds and inits varying) after a few untimed warm-ups (the first pays lazy imports):
   job by job, ``pool_launcher._run(job)``, and in groups of ``--group`` cells as the
   launcher sends them, ``pool_launcher._run_group``. Side by side, alternating, it times
   the **compute alone** for the same cells: their initial states, the stack and
   ``loop.run``, which is what ``execute_group`` computes. The fixed cost is worker path -
   compute, per cell (target at most 5 ms in groups, median); it is broken down by timing
   ``study.tracking.cell_runs.log_cells`` (MLflow) and ``records.write_json`` + ``write_parquet``
   (records) inside the jobs; the rest is "Hydra + task glue".

2. **Sweep throughput, 2 workers vs 1** (``--part throughput``). The real CLI,
   ``python -m study.train -m +sweep=smoke ...``, as a subprocess on a probe-only grid of
   4 depths x 4 activations x 4 skips x ``--seeds`` seeds, once with
   ``hydra.launcher.n_jobs=1`` and once with ``n_jobs=2``, each into a fresh sweep folder
   and MLflow experiment (one SQLite file). Reported: the subprocess's wall time, and the
   time the sweeper itself reports in its last line (``[sweep] ...: N/N cells in X s``:
   from just before the workers start to the end, so without Python start-up and
   composition but with the workers' ~5 s of importing torch and MLflow, which the grid is
   big enough to amortize). Target: two workers at least 1.8x as fast as one.

Everything runs in a temporary working directory (the project's ``data/prepared`` is
linked there if it exists, else MNIST-1D is prepared there), so the project's ``mlflow.db``
and ``multirun/`` are never touched.

    .venv/bin/python benchmarks/bench_sweep.py [--jobs 200] [--part fixed|throughput|all]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import logging
import multiprocessing
import os
import pickle
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import cloudpickle
import torch
from hydra._internal.callbacks import Callbacks
from hydra._internal.hydra import Hydra
from hydra._internal.utils import create_config_search_path
from hydra.core.hydra_config import HydraConfig
from hydra.core.singleton import Singleton
from hydra.core.utils import JobStatus, setup_globals
from hydra.types import HydraContext, RunMode
from omegaconf import OmegaConf

import study.tracking.cell_runs
import study.train
from hydra_plugins.study_sweeps import pool_launcher
from hydra_plugins.study_sweeps.compose import JobSpec, Planner, task_view
from study import records
from study.config import Config, DataConfig, Dataset
from study.data import prepare
from study.engine import loop
from study.runs.sweep import Session

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "conf"
CPU = torch.device("cpu")
CELL = ["model.depth=2", "model.activation=relu", "model.skip=none", "train.steps=0"]
WARMUP = 10


def setup_workdir(keep: bool) -> Path:
    """A fresh working directory with ``data/prepared`` where the default config looks."""
    work = Path(tempfile.mkdtemp(prefix="bench_sweep_"))
    prepared = work / "data" / "prepared"
    prepared.parent.mkdir(parents=True)
    if (ROOT / "data" / "prepared" / "mnist1d.npz").is_file():
        prepared.symlink_to(ROOT / "data" / "prepared")
    else:
        prepare(DataConfig(name=Dataset.mnist1d, dir=str(prepared)))
    print(f"working directory: {work}{'' if keep else ' (removed at the end; --keep keeps it)'}")
    return work


def ms(seconds: list[float], q: str = "median") -> float:
    if q == "p90":
        return 1e3 * statistics.quantiles(seconds, n=10)[-1]
    return 1e3 * statistics.median(seconds)


# ------------------------------------------------------------------ part 1: fixed cost


def timed(fn: Callable, spent: dict[str, float], bucket: str) -> Callable:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            spent[bucket] += time.perf_counter() - t0

    return wrapper


def compute_alone(cfgs: list[Config]) -> float:
    """Seconds of what ``execute_group`` computes for the cells: their initial states, the
    stack, ``loop.run``."""
    splits = study.data.load_cached(cfgs[0].data)  # cached per process, as in a job
    t0 = time.perf_counter()
    cells = [study.runs.cell.Cell(cfg, {}, "", Path(".")) for cfg in cfgs]
    stack = study.runs.cell.build_stack(cells, splits, CPU)
    outcomes = loop.run(stack, splits, cfgs, CPU)
    seconds = time.perf_counter() - t0
    if any(o.status != "finished" for o in outcomes):
        raise RuntimeError("compute alone: a cell did not finish")
    return seconds


def run_jobs(jobs: list[JobSpec], session: Session) -> float:
    """Seconds of the worker's path for these jobs: ``_run(job)`` for one, ``_run_group``."""
    t0 = time.perf_counter()
    if len(jobs) == 1:
        rets = [pool_launcher._run(jobs[0])]
    else:
        rets = pool_launcher._run_group(jobs, "study.runs.jobs:run_group")
    seconds = time.perf_counter() - t0
    for job, ret in zip(jobs, rets, strict=True):
        cell = pool_launcher.outcome(ret)
        session.add(cell)
        if ret.status is not JobStatus.COMPLETED or cell["status"] != "finished":
            raise RuntimeError(
                f"job {job.idx} ({job.overrides}): {cell['status']}: {cell['error']}"
            )
    return seconds


INITS = ("default", "xavier_uniform", "xavier_normal", "kaiming_uniform", "kaiming_normal",
         "orthogonal", "lecun_normal")  # fmt: skip


def fixed_cost(n_jobs: int, group: int) -> None:
    torch.set_num_threads(1)  # what each job sets (train.threads=1) and a pool worker runs
    hydra = Hydra.create_main_hydra2(
        task_name="train", config_search_path=create_config_search_path(str(CONF))
    )
    setup_globals()
    master = hydra.config_loader.load_configuration(
        "config",
        [
            "+sweep=smoke",
            "hydra.sweep.dir=multirun/bench",
            "tracking.experiment=bench",
            "hydra.output_subdir=null",
        ],
        run_mode=RunMode.MULTIRUN,
    )
    context = HydraContext(config_loader=hydra.config_loader, callbacks=Callbacks(master))
    HydraConfig.instance().set_config(master)
    planner = Planner(context, master)
    # Groups as the launcher makes them: jobs that differ in seed and init only. Warm-up
    # jobs get seeds of their own: a timed cell must not find a record and skip.
    modes = {"job by job": 1, f"groups of {group}": group}
    seeds = iter(range(10**6))
    plan: dict[str, list[list[JobSpec]]] = {}
    for mode, size in modes.items():
        chunks = []
        for _ in range(WARMUP + n_jobs // size):
            chunk = []
            for _ in range(size):
                seed = next(seeds)
                overrides = ["+sweep=smoke", *CELL, f"model.init={INITS[seed % 7]}", f"seed={seed}"]
                chunk.append(planner.plan(seed, overrides))
            chunks.append(chunk)
        plan[mode] = chunks
    # The launcher's own payload for its workers, through the worker's own initializer.
    templates = {
        signature: (pickle.dumps(cfg), pickle.dumps(task_view(cfg)))
        for signature, cfg in planner.templates.items()
    }
    task = pool_launcher.task_reference(study.train.main)
    pool_launcher._init_worker(cloudpickle.dumps((context, Singleton.get_state(), task, templates)))
    assert pool_launcher._WORKER["task"] is study.train.main.__wrapped__

    def typed(job: JobSpec) -> Config:
        cfg = pickle.loads(templates[job.signature][1])
        for key, value in job.values:
            OmegaConf.update(cfg, key, value, merge=False)
        return OmegaConf.to_object(cfg)  # type: ignore[return-value]

    sweep_dir = Path(str(master.hydra.sweep.dir))
    sweep_dir.mkdir(parents=True, exist_ok=True)
    spent: dict[str, float] = defaultdict(float)
    originals = (study.tracking.cell_runs.log_cells, records.write_json, records.write_parquet)
    rows: dict[str, dict[str, list[float]]] = {}
    # Jobs log to the console (Hydra's job logging); keep that out of the table.
    with open("jobs.log", "w") as log, contextlib.redirect_stdout(log):
        session = Session.start(master, sweep_dir, total=sum(
            len(c) for chunks in plan.values() for c in chunks))  # fmt: skip
        study.tracking.cell_runs.log_cells = timed(originals[0], spent, "mlflow")
        records.write_json = timed(originals[1], spent, "records")
        records.write_parquet = timed(originals[2], spent, "records")
        try:
            for mode, chunks in plan.items():
                per_cell = rows[mode] = defaultdict(list)
                for k, chunk in enumerate(chunks):
                    cfgs = [typed(job) for job in chunk]
                    spent.clear()
                    seconds = run_jobs(chunk, session)
                    compute = compute_alone(cfgs)
                    if k >= WARMUP:
                        n = len(chunk)
                        per_cell["job"].append(seconds / n)
                        per_cell["compute"].append(compute / n)
                        per_cell["fixed"].append((seconds - compute) / n)
                        per_cell["mlflow"].append(spent["mlflow"] / n)
                        per_cell["records"].append(spent["records"] / n)
                        per_cell["glue"].append(
                            (seconds - compute - spent["mlflow"] - spent["records"]) / n
                        )
        finally:
            study.tracking.cell_runs.log_cells, records.write_json, records.write_parquet = (
                originals
            )
            session.finish()
            root = logging.getLogger()
            for handler in list(root.handlers):  # they write to jobs.log, about to close
                root.removeHandler(handler)
                handler.close()

    print()
    print(
        f"Fixed cost per cell: {' '.join(CELL)}, +sweep=smoke, seeds and inits varying; "
        f"{n_jobs} cells each way after {WARMUP} warm-up jobs or groups, in one process, "
        f"worker path and compute alternating, torch {torch.get_num_threads()} thread"
    )
    labels = {
        "job": "worker path: _run(job) / _run_group",
        "compute": "compute alone: init + stack + loop.run",
        "fixed": "fixed cost = worker path - compute",
        "mlflow": "  MLflow: cell_runs.log_cells",
        "records": "  records: write_json + write_parquet",
        "glue": "  Hydra + task glue: the rest",
    }
    header = "".join(f"{mode + ' (median ms)':>26}" for mode in rows)
    print(f"{'per cell':<42}{header}")
    for key, label in labels.items():
        print(f"{label:<42}" + "".join(f"{ms(rows[m][key]):>26.2f}" for m in rows))
    (one, *_), (grouped, *_) = ([ms(rows[m]["fixed"])] for m in rows)
    print(f"fixed cost per cell: {one:.1f} ms job by job, {grouped:.1f} ms in groups of {group} "
          f"({one / grouped:.1f}x less; target <= 5 ms in groups)")  # fmt: skip


# ------------------------------------------------------------------ part 2: throughput

SWEEP_LINE = re.compile(r"^\[sweep\] .*?: (\d+)/(\d+) cells in ([0-9.]+)s: (.*)$", re.M)


def grid(seeds: int) -> list[str]:
    return [
        "model.depth=2,4,8,16",
        "model.activation=sigmoid,tanh,relu,gelu",
        "model.skip=none,residual,highway,dense",
        "train.steps=0",
        "seed=" + ",".join(str(s) for s in range(seeds)),
    ]


def steady_rate(sweep_dir: Path) -> float:
    """Cells per second between the first and the last record: the rate once every worker
    is up, without the start-up (imports take ~8 s alone and ~15 s when two run at once)."""
    ends = sorted(
        datetime.fromisoformat(json.loads(p.read_text())["finished_at"])
        for p in sweep_dir.glob("*/run.json")
    )
    return (len(ends) - 1) / (ends[-1] - ends[0]).total_seconds()


def sweep(workers: int, seeds: int) -> tuple[int, float, float, float]:
    """(cells, wall s, in-sweep s, steady cells/s) of one CLI multirun with ``workers``."""
    name = f"throughput-{workers}w"
    args = [
        sys.executable, "-m", "study.train", "-m", "+sweep=smoke", *grid(seeds),
        f"hydra.launcher.n_jobs={workers}", f"hydra.sweep.dir=multirun/{name}",
        f"tracking.experiment={name}",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    t0 = time.perf_counter()
    proc = subprocess.run(args, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    Path(f"{name}.log").write_text(proc.stdout + proc.stderr)
    found = SWEEP_LINE.findall(proc.stdout)
    if proc.returncode != 0 or not found:
        raise RuntimeError(f"{name}: exit {proc.returncode}\n{(proc.stdout + proc.stderr)[-3000:]}")
    done, total, inside, counts = found[-1]
    if done != total or not counts.startswith(f"{total} finished"):
        raise RuntimeError(f"{name}: {done}/{total} cells: {counts}")
    return int(total), wall, float(inside), steady_rate(Path(f"multirun/{name}"))


def _spin(n: int) -> float:
    t0 = time.perf_counter()
    x = 0
    for i in range(n):
        x += i * i
    return time.perf_counter() - t0


def _spin_together(barrier, n: int, queue) -> None:
    barrier.wait()  # both start spinning at once, after their (slow) imports
    queue.put(_spin(n))


def machine_ceiling(n: int = 30_000_000) -> float:
    """Speed-up of two processes over one on a pure-Python busy loop: what the machine
    itself allows two workers (cores shared with hyper-threads or neighbours give < 2)."""
    ctx = multiprocessing.get_context("spawn")
    one = _spin(n)
    barrier, queue = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_spin_together, args=(barrier, n, queue)) for _ in range(2)]
    for p in procs:
        p.start()
    both = max(queue.get() for _ in procs)
    for p in procs:
        p.join()
    return 2 * one / both


def throughput(seeds: int) -> None:
    print()
    print(f"machine ceiling: 2 busy processes run {machine_ceiling():.2f}x as fast as 1")
    cells = 64 * seeds
    print(
        f"Sweep throughput: python -m study.train -m +sweep=smoke {' '.join(grid(seeds))} "
        f"({cells} probe-only cells), hydra.launcher.n_jobs=1 then 2"
    )
    results = {}
    for workers in (1, 2):
        results[workers] = sweep(workers, seeds)
        n, wall, inside, _ = results[workers]
        print(f"  {workers} worker(s): {n} cells, wall {wall:.1f}s, in sweep {inside:.1f}s")
    print(
        f"{'workers':<10}{'wall s':>9}{'cells/s':>9}{'in-sweep s':>12}{'cells/s':>9}"
        f"{'steady cells/s':>16}"
    )
    for workers, (n, wall, inside, steady) in results.items():
        print(
            f"{workers:<10}{wall:>9.1f}{n / wall:>9.2f}{inside:>12.1f}{n / inside:>9.2f}"
            f"{steady:>16.2f}"
        )
    (_, wall1, in1, steady1), (_, wall2, in2, steady2) = results[1], results[2]
    print(
        f"2 workers vs 1: {wall1 / wall2:.2f}x wall, {in1 / in2:.2f}x in sweep, "
        f"{steady2 / steady1:.2f}x steady (target >= 1.8x); "
        f"this machine has os.cpu_count() = {os.cpu_count()} cores"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=210, help="timed cells in part 1, each way")
    parser.add_argument("--group", type=int, default=21, help="cells per group in part 1")
    parser.add_argument("--part", choices=("fixed", "throughput", "all"), default="all")
    parser.add_argument(
        "--seeds", type=int, default=30, help="seeds in part 2's grid (64 cells per seed)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args(argv)

    print(
        f"torch {torch.__version__}, python {sys.version.split()[0]}, "
        f"os.cpu_count() = {os.cpu_count()}"
    )
    old_cwd = os.getcwd()
    work = setup_workdir(args.keep)
    os.chdir(work)
    try:
        if args.part in ("fixed", "all"):
            fixed_cost(args.jobs, args.group)
        if args.part in ("throughput", "all"):
            throughput(args.seeds)
    finally:
        os.chdir(old_cwd)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
