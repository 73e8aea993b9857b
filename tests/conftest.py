"""Shared fixtures: small prepared datasets and the real Hydra configs, composed and shrunk."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from study.config import Config, DataConfig, Dataset
from study.data import load, prepare
from study.engine.probes import Probe
from study.engine.stack import Stack

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "conf"


# The longest modules first (measured on 2 cores: the tracking server and the claims' known
# answers ~4 min each, the pipeline and each half of the sweeps 2-3 min, a ~100 s reference
# table in test_jacobian): with a file per worker (`make test`), a long module handed out
# last would run on alone at the end while the other worker idles. xdist keeps this order
# with --no-loadscope-reorder (by default it hands out the files with the most tests first,
# which are quick ones here). The sort is stable: each module's tests keep their order,
# which the pipeline's tests rely on.
LONGEST_FIRST = (
    "test_tracking_server", "test_claims", "test_pipeline", "test_sweeps_workers",
    "test_mlflow_records", "test_sweeps", "test_bad_input", "test_jacobian", "test_ui",
    "test_benchmarks", "test_bulk_sweep", "test_train", "test_slurm", "test_publish",
    "test_stack", "test_memory",
)  # fmt: skip


def pytest_configure(config: pytest.Config) -> None:
    """One torch thread in each xdist worker, as a sweep runs its cells (one single-threaded
    worker per core, train.threads=1): two workers of two threads each on two cores spin
    against each other (measured: the numeric pass took several times its CPU time)."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        torch.set_num_threads(1)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.stem, len(rank)))


@pytest.fixture(scope="session")
def prepared(tmp_path_factory) -> Path:
    """mnist1d (1000 samples) and digits, built by the real prepare code into a temp dir."""
    out = tmp_path_factory.mktemp("prepared")
    prepare(DataConfig(name=Dataset.mnist1d, dir=str(out), num_samples=1000))
    prepare(DataConfig(name=Dataset.digits, dir=str(out), val_fraction=0.2))
    return out


@pytest.fixture(scope="session")
def mnist1d(prepared):
    return load(DataConfig(name=Dataset.mnist1d, dir=str(prepared)))


def compose_config(*overrides: str) -> Config:
    """The project's own conf/, composed with overrides, as the typed Config."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        dcfg = compose(config_name="config", overrides=list(overrides))
    return OmegaConf.to_object(dcfg)


def probe_net(model, cfg, batches) -> dict:
    """Probe one net (a stack of one): statistics per block, for (x (B, in), y (B,)) batches."""
    stack = Stack.of([model], cfg)
    stats = Probe(stack, cfg.activation, [(x[None], y[None]) for x, y in batches]).measure()
    return {name: values[0] for name, values in stats.items()}


def foreground() -> None:
    """``preexec_fn`` of a command a test stops with Ctrl-C: as a terminal's foreground job.
    A shell starts a background job (``make test &``, a script's ``&``) with SIGINT ignored,
    and a child inherits that, so Ctrl-C would never reach the command under test."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("HYDRA_FULL_ERROR", None)
    env["PYTHONUNBUFFERED"] = "1"
    return env


@pytest.fixture
def workdir(tmp_path, prepared) -> Path:
    """A project-like working directory: prepared data where the default config looks."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "prepared").symlink_to(prepared)
    return tmp_path


@pytest.fixture(scope="session")
def mlflow_template(tmp_path_factory) -> Path:
    """An empty MLflow SQLite store, its tables made once per test process: creating them
    (MLflow's ~50 migrations) costs seconds each time a fresh project's first run does it."""
    from mlflow.tracking import MlflowClient

    where = tmp_path_factory.mktemp("mlflow-template")
    MlflowClient(f"sqlite:///{where / 'mlflow.db'}").search_experiments()
    return where / "mlflow.db"


def empty_store(template: Path, where: Path) -> Path:
    """A copy of the empty MLflow store ``template`` at ``where`` (SQLite's backup, not a file
    copy: the store may keep its last writes in a WAL file)."""
    with closing(sqlite3.connect(template)) as src, closing(sqlite3.connect(where)) as dst:
        src.backup(dst)
    return where


@pytest.fixture
def stored(workdir, mlflow_template) -> Path:
    """``workdir`` with an empty MLflow store already made where the default config looks:
    for tests of sweeps and runs, not of creating a store (those use ``workdir``)."""
    empty_store(mlflow_template, workdir / "mlflow.db")
    return workdir


def train(workdir: Path, *overrides: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """``python -m study.train ...`` in ``workdir``, as a user would type it."""
    return subprocess.run(
        [sys.executable, "-m", "study.train", *overrides],
        cwd=workdir, env=subprocess_env(), capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def swept_project(
    tmp_path_factory, prepared, name: str, *args: str, store: Path | None = None
) -> Path:
    """A project folder with the prepared data, after ``python -m study.train`` ``args``;
    its MLflow store a copy of ``store`` (an empty one: ``mlflow_template``) if given."""
    workdir = tmp_path_factory.mktemp(name)
    (workdir / "data").mkdir()
    (workdir / "data" / "prepared").symlink_to(prepared)
    if store is not None:
        empty_store(store, workdir / "mlflow.db")
    proc = train(workdir, *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return workdir


def pytest_report_header() -> list[str]:
    """Which kernels the numeric tests ran on: a failure on one CPU is read with this."""
    from study.engine import kernels

    return [
        f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
        f"MKL strict mode {kernels.strict_blas()}"
    ]
