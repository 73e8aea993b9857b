"""A run to log, as MLflow's client would take it: the one description both ways of logging
share (``mirror.Tracker``'s client calls, ``bulk.SqlRows``' rows), checked as ``log_batch``
checks it.

MLflow has no public validation: the checks are its private ``_validate_*`` functions, the
ones ``log_batch`` calls (the pin in pyproject.toml and tests/test_bulk.py, which logs bad
keys and long values both ways, guard them).
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlflow.entities import DatasetInput, Metric, Param, RunTag
from mlflow.utils.mlflow_tags import MLFLOW_RUN_NAME
from mlflow.utils.validation import (
    MAX_ENTITY_KEY_LENGTH,
    _validate_length_limit,
    _validate_metric_name,
    _validate_param,
    _validate_tag,
)


def now_ms() -> int:
    return int(time.time() * 1000)


def metric(key: str, value: float, step: int = 0, timestamp: int | None = None) -> Metric:
    return Metric(key, float(value), timestamp or now_ms(), int(step))


def finite_metrics(
    key: str, values: Iterable[float], steps: Iterable[int], timestamp: int
) -> list[Metric]:
    """A series as MLflow metrics, leaving out NaN (not applicable / not measured)."""
    return [
        Metric(key, float(v), timestamp, int(s))
        for v, s in zip(values, steps, strict=True)
        if math.isfinite(v)
    ]


@dataclass
class RunSpec:
    """A finished run to log: what create_run, log_batch, log_inputs and set_terminated
    would take."""

    run_name: str
    params: dict[str, Any]
    tags: dict[str, str]
    metrics: list[Metric]
    artifacts: list[Path]  # files, copied (or linked) into the run's artifacts
    status: str  # FINISHED or FAILED
    supersedes: list[str] = field(default_factory=list)  # runs to trash first
    documents: dict[str, str] = field(default_factory=dict)  # file name -> text, written there
    # When the run started and ended (ms since the epoch); None: when it is logged.
    start_time: int | None = None
    end_time: int | None = None
    datasets: list[DatasetInput] = field(default_factory=list)  # MLflow's run inputs

    def validated(self) -> tuple[list[Metric], list[Param], list[RunTag]]:
        """As log_batch validates them: bad keys raise, overlong values are truncated. (The
        client path hands the tags to create_run, which takes them unchecked; the study's tag
        keys are its own constants, valid either way.)

        Each distinct key, and each distinct param, is checked once per process (a sweep
        logs the same few hundred keys, and mostly the same params, for thousands of runs);
        a metric's value, step and timestamp are numbers by construction (:func:`metric`),
        which is the rest of what log_batch checks."""
        params = [_checked_param(k, str(v)) for k, v in self.params.items()]
        tags = [_validate_tag(k, v, path="tags") for k, v in self.tags.items()]
        if MLFLOW_RUN_NAME not in self.tags:  # create_run adds it
            tags.append(_validate_tag(MLFLOW_RUN_NAME, self.run_name, path="tags"))
        for m in self.metrics:
            _checked_metric_key(m.key)
        return self.metrics, params, tags


@functools.cache
def _checked_metric_key(key: str) -> None:
    """As log_batch's ``_validate_metric`` checks a key (its name check leaves out the length;
    SQLite would store an overlong key that the client refuses)."""
    _validate_metric_name(key)
    _validate_length_limit("Metric name", MAX_ENTITY_KEY_LENGTH, key)


@functools.lru_cache(maxsize=1 << 16)
def _checked_param(key: str, value: str) -> Param:
    return _validate_param(key, value, path="params")  # truncates an overlong value
