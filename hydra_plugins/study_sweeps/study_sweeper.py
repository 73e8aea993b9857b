"""``hydra/sweeper=study``: Hydra's basic grid sweeper, made fit for thousands of cells.

Same grid syntax and ``hydra.sweeper.params`` as the basic sweeper. The differences:

- validation checks each distinct override once (a template per structural choice, each
  value set on it and validated) instead of composing every job before launching;
- the whole grid is validated before any job starts, so bad input (or data not prepared
  yet) writes nothing;
- the sweep is bookkept by ``study.runs.sweep``: the MLflow schema, experiment and parent run
  exist before the workers start, and the end prints a summary naming every failure;
- a failed job does not raise: it is recorded and counted, and the sweep goes on;
- ``hydra.sweeper.grids`` (optional) makes the sweep a union of grids: each entry's keys
  are set over ``params`` (the axes all grids share) and spans a grid of its own, so one
  sweep can hold cells that would be waste in a single product (batch-norm cells at
  several probe batch sizes beside residual cells at several residual scales).
"""

import copy
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from study.config import Config, ConfigError, validate
from study.data import load_cached, require_prepared
from study.engine import memory
from study.tracking import uri

from .compose import Planner, task_view
from .pool_launcher import outcome


@dataclass
class StudySweeperConf:
    _target_: str = "hydra_plugins.study_sweeps.study_sweeper.StudySweeper"
    max_batch_size: int | None = None  # jobs handed to the launcher at once; null = all
    params: dict[str, str] | None = None  # the grid: key -> "v1,v2,..." as on the command line
    grids: list[dict[str, Any]] | None = None  # a union of grids, each over ``params``


ConfigStore.instance().store(
    group="hydra/sweeper", name="study", node=StudySweeperConf, provider="study"
)


def check(cfg: Config) -> None:
    """What a job would reject up front: an invalid config, data that is not prepared, a
    tracking store MLflow cannot use."""
    validate(cfg)
    require_prepared(cfg.data)
    if cfg.tracking.enabled:
        uri.check(cfg.tracking.uri)


# The keys a net's memory grows with (study.engine.memory): a template is checked at the
# largest value of each that its jobs take, which bounds every job of it.
MEMORY_KEYS = ("model.depth", "model.width", "model.dense.growth", "train.batch_size",
               "probe.batch_size", "probe.batches")  # fmt: skip


class StudySweeper(BasicSweeper):
    def __init__(
        self,
        max_batch_size: int | None = None,
        params: dict[str, str] | None = None,
        grids: list[dict[str, Any]] | None = None,
    ):
        super().__init__(max_batch_size=max_batch_size, params=params)
        self.grids = [dict(g) for g in grids] if grids else [{}]

    def jobs(self, arguments: list[str]) -> list[list[list[str]]]:
        """The batches of every grid (command-line values replace a preset's for a key)."""
        assert self.hydra_context is not None
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        shared = self._parse_config()
        batches, seen = [], set()
        for grid in self.grids:
            own = [f"{key}={value}" for key, value in grid.items()]
            overrides = parser.parse_overrides([*shared, *own, *arguments])
            for batch in self.split_arguments(overrides, self.max_batch_size):
                for job in batch:
                    cell = tuple(sorted(job))
                    if cell in seen:
                        where = "hydra.sweeper.grids"
                        raise ConfigError(where, f"{' '.join(cell)} is in more than one grid")
                    seen.add(cell)
                batches.append(batch)
        return batches

    def validate_batch_is_legal(self, batch: Sequence[Sequence[str]]) -> None:
        """Every distinct value, set on its template, passes the schema and ``validate``."""
        assert self.hydra_context is not None and self.config is not None
        planner = Planner(self.hydra_context, self.config)
        views: dict[tuple[str, ...], DictConfig] = {}  # the task's view of each template
        checked: set[tuple[tuple[str, ...], str, str]] = set()
        largest: dict[tuple[str, ...], dict[str, Any]] = {}  # MEMORY_KEYS' largest values
        for overrides in batch:
            job = planner.plan(0, overrides)
            if job.signature not in views:
                views[job.signature] = task_view(planner.templates[job.signature])
                check(OmegaConf.to_object(views[job.signature]))  # type: ignore[arg-type]
                largest[job.signature] = {}
            for key, value in job.values:
                if key in MEMORY_KEYS and isinstance(value, int):
                    top = largest[job.signature]
                    top[key] = max(value, top.get(key, value))
                mark = (job.signature, key, repr(value))
                if mark in checked:
                    continue
                checked.add(mark)
                cfg = copy.deepcopy(views[job.signature])
                OmegaConf.update(cfg, key, value, merge=False)
                check(OmegaConf.to_object(cfg))  # type: ignore[arg-type]
        for signature, top in largest.items():
            cfg = copy.deepcopy(views[signature])
            for key, value in top.items():
                OmegaConf.update(cfg, key, value, merge=False)
            typed: Config = OmegaConf.to_object(cfg)  # type: ignore[assignment]
            memory.check(typed, load_cached(typed.data))

    def about(self) -> Any:
        """How the sweep was asked for: what its MLflow parent run and experiment show
        (``study.tracking.experiment.About``)."""
        from study.tracking import experiment

        assert self.config is not None
        hydra = self.config.hydra
        axes = set(self.params or {}) | {k for grid in self.grids for k in grid}
        return experiment.About(
            command=experiment.sweep_command(list(hydra.overrides.task),
                                               list(hydra.overrides.hydra)),
            preset=hydra.runtime.choices.get("sweep"),
            grid=experiment.grid_of([job for b in self.overrides for job in b], sorted(axes)),
        )  # fmt: skip

    def sweep(self, arguments: list[str]) -> Any:
        # MLflow (and through it SQLAlchemy) only once a sweep starts: Hydra imports every
        # plugin module for every run, and a single run or bad input need none of it.
        from study.runs import sweep as bookkeeping

        assert self.config is not None and self.launcher is not None
        self.overrides = self.jobs(arguments)
        for batch in self.overrides:  # all of it, before any work
            self.validate_batch_is_legal(batch)

        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        try:
            sweep_dir.mkdir(parents=True, exist_ok=True)
            if not os.access(sweep_dir, os.W_OK):
                raise PermissionError(13, "Permission denied", str(sweep_dir))
        except OSError as exc:
            raise ConfigError("hydra.sweep.dir", f"{sweep_dir}: {exc.strerror}") from None
        session = bookkeeping.Session.start(  # first: it refuses a sweep already running
            self.config, sweep_dir, total=sum(len(b) for b in self.overrides), about=self.about()
        )
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        returns = []
        initial_job_idx = 0
        try:
            while not self.is_done():
                batch = self.get_job_batch()
                results = self.launcher.launch(batch, initial_job_idx=initial_job_idx)
                for ret in results:
                    session.add(outcome(ret))
                initial_job_idx += len(batch)
                returns.append(results)
        finally:
            status = session.finish()
        if status:  # failed cells, cells not run or not mirrored: the summary said which
            sys.exit(status)
        return returns
