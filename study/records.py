"""The on-disk record of a run: ``run.json`` and ``layers.parquet`` in the job's directory.

Records are the source of truth (MLflow mirrors them). Every file is written under a
temporary name in the same directory and renamed into place, so a killed job leaves
either the previous file or the new one, never half of one. ``run.json`` is written
last: its presence with ``status`` set is what marks a run as recorded.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import json
import math
import os
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

SCHEMA_VERSION = 1
RUN_FILE = "run.json"
LAYERS_FILE = "layers.parquet"
# Where MLflow mirrors a run, beside its record (study.tracking.cell_runs writes it once the
# run is logged): the run's id, experiment and store, and which record it mirrors. A record
# without one (or with one of another record) is not mirrored yet; run.json never changes.
MIRROR_FILE = "mlflow.json"
# A sweep's record, in its folder (study.runs.sweep writes it): its MLflow parent run and,
# once it ends, its cells (folder, cell key, status): the grid as run.
SWEEP_FILE = "sweep.json"

PACKAGE_DIR = Path(__file__).resolve().parent
# The module that computes and records a cell. It and everything it imports are the code a
# cell's numbers come from (study.imports finds them); MLflow, the sweeps' bookkeeping and
# the later stages are not among them: editing those must not make thousands of cells new.
CELL_MODULE = "study.runs.cell"


def run_modules() -> list[Path]:
    """The files a cell's numbers come from: :data:`CELL_MODULE` and what it imports (less
    ``study/imports.py``, which finds them: it decides which files count, not any number)."""
    from study import imports

    return [p for p in imports.closure([CELL_MODULE]) if p != Path(imports.__file__).resolve()]


class Status(enum.StrEnum):
    """How a run ended: the ``status`` of its record."""

    finished = "finished"
    diverged = "diverged"  # a non-finite loss: a result, with its statistics up to then
    failed = "failed"  # the job crashed: recorded with its error, retried on the next run


RESULT_STATUSES = (Status.finished, Status.diverged)  # a run that measured something


def is_done(record: dict[str, Any] | None, cell_key: str) -> bool:
    """A cell needs no rerun if its record has this key and a result (diverging is one)."""
    return bool(
        record and record.get("cell_key") == cell_key and record["status"] in RESULT_STATUSES
    )


# Each run's profile summaries (``study.engine.probes.profile_summary``) of both gradients at two
# points: the column ``{gradient}_{stat}_{when}`` of run.json's summary and runs.parquet.
SUMMARY_STATS = ("log10_first_last", "first_last_censored", "log10_rate", "n_zero")
GRADIENTS = ("signal", "weight")
WHEN = ("init", "final")  # at initialization; at the last probe


def summary_column(gradient: str, stat: str, when: str) -> str:
    return f"{gradient}_{stat}_{when}"


SUMMARY_COLUMNS = tuple(
    summary_column(g, s, w) for w in WHEN for g in GRADIENTS for s in SUMMARY_STATS
)


def profile_points(layers: dict[str, np.ndarray]) -> list[tuple[str, np.ndarray]]:
    """("init", rows) and, when training moved past it, ("final", rows of the last probe)."""
    steps = layers["step"]
    if not len(steps):
        return []
    points = [("init", steps == 0)]
    if steps.max() > 0:
        points.append(("final", steps == steps.max()))
    return [(when, rows) for when, rows in points if rows.any()]


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"model": {"depth": 8}} -> {"model.depth": 8}."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; records are not secret
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def clear_partial(folder: Path) -> None:
    """Remove half-written files a killed run left (``atomic_write``'s temporaries)."""
    for stale in Path(folder).glob(".*.tmp"):
        stale.unlink(missing_ok=True)


def json_safe(value: Any) -> Any:
    """NaN and infinities are not JSON: they become null (the parquet files keep them)."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(path: Path, obj: dict[str, Any]) -> None:
    text = json.dumps(json_safe(obj), indent=2, sort_keys=True, allow_nan=False) + "\n"
    atomic_write(path, lambda tmp: tmp.write_text(text))


def write_parquet(path: Path, columns: dict[str, np.ndarray]) -> None:
    import pyarrow as pa  # here, not at the top: bad input is refused without loading it
    import pyarrow.parquet as pq

    table = pa.table({name: pa.array(values) for name, values in columns.items()})
    # A record's table has a few hundred rows: column statistics and dictionaries (for
    # skipping row groups of big files) cost a fifth of the write and buy nothing here.
    atomic_write(
        path, lambda tmp: pq.write_table(table, tmp, use_dictionary=False, write_statistics=False)
    )


def read_mirror(run_dir: Path) -> dict[str, Any] | None:
    """Where the run in ``run_dir`` is mirrored (``MIRROR_FILE``), or None."""
    try:
        return json.loads((Path(run_dir) / MIRROR_FILE).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def read_sweep(sweep_dir: Path) -> dict[str, Any]:
    """The sweep's ``sweep.json`` (empty if the sweep never started)."""
    path = Path(sweep_dir) / SWEEP_FILE
    return json.loads(path.read_text()) if path.exists() else {}


def write_table(frame: pd.DataFrame, path: Path) -> None:
    """``frame`` (without its index) as parquet at ``path``, atomically; same data, same bytes."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(frame, preserve_index=False)
    atomic_write(Path(path), lambda tmp: pq.write_table(table, tmp))


def read_run(run_dir: Path) -> dict[str, Any] | None:
    """The run's record, or None if it has none (never written, or killed before the end).

    Records are renamed into place whole, so an unreadable one was damaged outside the
    study; treating it as absent reruns the cell.
    """
    path = Path(run_dir) / RUN_FILE
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


@functools.cache
def code_version() -> str:
    """sha256 (12 hex) of :func:`run_modules`: the code a run's numbers were computed with.

    Unlike a git commit it also covers uncommitted edits, and it is the same on any
    checkout of the same code, so a cell's key survives clones and rebases.
    """
    digest = hashlib.sha256()
    for path in run_modules():
        digest.update(path.relative_to(PACKAGE_DIR.parent).as_posix().encode())
        digest.update(b"\0")
        digest.update(path.read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()[:12]


@functools.cache
def git_commit() -> str | None:
    """The checkout's commit, with ``-dirty`` when it has uncommitted changes; None outside git."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=PACKAGE_DIR, capture_output=True, text=True
        )
        if head.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=PACKAGE_DIR,
            capture_output=True,
            text=True,
        )
        return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except OSError:
        return None


# Config keys that say where and how a cell runs, not what it computes.
NOT_THE_CELL = ("tracking", "run_name", "memory_check")


def cell_key(config: dict[str, Any], data_sha256: str) -> str:
    """Stable identity of a run: its resolved config (without where it is logged), the
    checksum of the data it reads and the code version. Any change to one is a new cell."""
    relevant = {k: v for k, v in config.items() if k not in NOT_THE_CELL}
    blob = json.dumps(json_safe(relevant), sort_keys=True) + data_sha256 + code_version()
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
