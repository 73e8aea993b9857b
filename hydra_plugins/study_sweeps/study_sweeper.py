"""``hydra/sweeper=study``: Hydra's basic grid sweeper, made fit for thousands of cells.

Same grid syntax and ``hydra.sweeper.params`` as the basic sweeper. The differences:

- validation checks each distinct override once (a template per structural choice, each
  value set on it and validated) instead of composing every job before launching;
- the whole grid is validated before any job starts, so bad input (or data not prepared
  yet) writes nothing;
- the sweep is bookkept by ``study.sweep``: the MLflow schema, experiment and parent run
  exist before the workers start, and the end prints a summary naming every failure;
- a failed job does not raise: it is recorded and counted, and the sweep goes on.
"""

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from study import sweep as bookkeeping
from study.config import Config, validate
from study.data import require_prepared

from .compose import Planner, task_view
from .pool_launcher import outcome


@dataclass
class StudySweeperConf:
    _target_: str = "hydra_plugins.study_sweeps.study_sweeper.StudySweeper"
    max_batch_size: int | None = None  # jobs handed to the launcher at once; null = all
    params: dict[str, str] | None = None  # the grid: key -> "v1,v2,..." as on the command line


ConfigStore.instance().store(
    group="hydra/sweeper", name="study", node=StudySweeperConf, provider="study"
)


def check(cfg: Config) -> None:
    """What a job would reject up front: an invalid config, or data that is not prepared."""
    validate(cfg)
    require_prepared(cfg.data)


class StudySweeper(BasicSweeper):
    def __init__(self, max_batch_size: int | None = None, params: dict[str, str] | None = None):
        super().__init__(max_batch_size=max_batch_size, params=params)

    def validate_batch_is_legal(self, batch: Sequence[Sequence[str]]) -> None:
        """Every distinct value, set on its template, passes the schema and ``validate``."""
        assert self.hydra_context is not None and self.config is not None
        planner = Planner(self.hydra_context, self.config)
        views: dict[tuple[str, ...], DictConfig] = {}  # the task's view of each template
        checked: set[tuple[tuple[str, ...], str, str]] = set()
        for overrides in batch:
            job = planner.plan(0, overrides)
            if job.signature not in views:
                views[job.signature] = task_view(planner.templates[job.signature])
                check(OmegaConf.to_object(views[job.signature]))  # type: ignore[arg-type]
            for key, value in job.values:
                mark = (job.signature, key, repr(value))
                if mark in checked:
                    continue
                checked.add(mark)
                cfg = copy.deepcopy(views[job.signature])
                OmegaConf.update(cfg, key, value, merge=False)
                check(OmegaConf.to_object(cfg))  # type: ignore[arg-type]

    def sweep(self, arguments: list[str]) -> Any:
        assert self.config is not None and self.launcher is not None
        assert self.hydra_context is not None
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        overrides = parser.parse_overrides([*self._parse_config(), *arguments])
        self.overrides = self.split_arguments(overrides, self.max_batch_size)
        for batch in self.overrides:  # all of it, before any work
            self.validate_batch_is_legal(batch)

        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        session = bookkeeping.Session.start(
            self.config, sweep_dir, total=sum(len(b) for b in self.overrides)
        )
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
            session.finish()
        return returns
