"""MLflow: the browsable mirror of the records.

One client per process, talking to the tracking URI of ``tracking.uri`` (a SQLite file by
default, a tracking server for multi-machine sweeps). Everything a run logs goes out in
``log_batch`` calls of at most 1000 entities: one call per metric would cost milliseconds
each on SQLite, and a sweep logs hundreds of thousands.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

# MLflow's limits per log_batch call.
MAX_ENTITIES = 1000
MAX_PARAMS_TAGS = 100

# Keep alembic's schema-migration chatter out of the run's console.
for _name in ("alembic", "mlflow.store.db.utils", "mlflow.tracking"):
    logging.getLogger(_name).setLevel(logging.WARNING)


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"model": {"depth": 8}} -> {"model.depth": 8}: MLflow params are flat."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def metric(key: str, value: float, step: int = 0, timestamp: int | None = None) -> Metric:
    return Metric(key, float(value), timestamp or int(time.time() * 1000), int(step))


def finite_metrics(
    key: str, values: Iterable[float], steps: Iterable[int], timestamp: int
) -> list[Metric]:
    """A series as MLflow metrics, leaving out NaN (not applicable / not measured)."""
    return [
        Metric(key, float(v), timestamp, int(s))
        for v, s in zip(values, steps, strict=True)
        if math.isfinite(v)
    ]


class Tracker:
    """Logs finished runs to one MLflow experiment."""

    def __init__(self, uri: str, experiment: str):
        self.uri = uri
        self.client = MlflowClient(tracking_uri=uri)
        found = self.client.get_experiment_by_name(experiment)
        self.experiment_id = (
            found.experiment_id if found else self.client.create_experiment(experiment)
        )

    def log_run(
        self,
        run_name: str,
        params: dict[str, Any],
        tags: dict[str, str],
        metrics: Sequence[Metric],
        artifacts: Sequence[Path],
        status: str,
    ) -> str:
        """Create a run, log everything in batches, and close it with ``status``; its id."""
        run = self.client.create_run(self.experiment_id, run_name=run_name, tags=tags)
        run_id = run.info.run_id
        try:
            param_list = [Param(k, str(v)) for k, v in params.items()]
            for start in range(0, len(param_list), MAX_PARAMS_TAGS):
                self.client.log_batch(run_id, params=param_list[start : start + MAX_PARAMS_TAGS])
            for start in range(0, len(metrics), MAX_ENTITIES):
                self.client.log_batch(run_id, metrics=metrics[start : start + MAX_ENTITIES])
            for path in artifacts:
                self.client.log_artifact(run_id, str(path))
        except BaseException:
            self.client.set_terminated(run_id, status="FAILED")
            raise
        self.client.set_terminated(run_id, status=status)
        return run_id
