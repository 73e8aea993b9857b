"""A pool worker's job config (template + values, ``compose.py``) is Hydra's own composition.

For every sweep preset, a deterministic sample of jobs (the first and last, the first and
last of each ``hydra.sweeper.grids`` entry, and one drawn at random with a fixed seed) is
built the way a worker builds it, from a template composed for the first job of the sweep
with the same signature (as the launcher does), and compared with what Hydra's basic
launcher runs: ``load_sweep_config(master, overrides)`` with the job's id and number.
The template shortcut relies on Hydra internals (hence the pin ``hydra-core<1.4``); this
is what tells a Hydra upgrade that breaks it.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

import pytest
from hydra._internal.callbacks import Callbacks
from hydra._internal.hydra import Hydra
from hydra._internal.utils import create_config_search_path
from hydra.core.global_hydra import GlobalHydra
from hydra.core.plugins import Plugins
from hydra.core.utils import setup_globals
from hydra.types import HydraContext, RunMode
from omegaconf import DictConfig, OmegaConf, open_dict

from hydra_plugins.study_sweeps.compose import Planner, task_view
from hydra_plugins.study_sweeps.pool_launcher import job_config, worker_templates

CONF = Path(__file__).resolve().parent.parent / "conf"
SWEEPS = CONF / "sweep"
PRESETS = sorted(p.relative_to(SWEEPS).with_suffix("").as_posix() for p in SWEEPS.rglob("*.yaml"))


def test_every_preset_is_covered():
    profiles = ("quick", "standard", "full")
    sweeps = ("init", "train", "optim", "scale", "theory")
    assert PRESETS == sorted(["smoke", *(f"{p}/{s}" for p in profiles for s in sweeps)])


@pytest.fixture(scope="module")
def hydra():
    # As `python -m study.train` sets Hydra up (the task is named after the module file).
    GlobalHydra.instance().clear()
    app = Hydra.create_main_hydra2(
        task_name="train", config_search_path=create_config_search_path(str(CONF))
    )
    setup_globals()
    yield app
    GlobalHydra.instance().clear()


def sample(batches: Sequence[Sequence[Sequence[str]]], seed: str) -> list[int]:
    """Indices into the flattened job list: first and last, each grid's ends, one random."""
    ends, start = [], 0
    for batch in batches:  # one batch per grid (no max_batch_size in the presets)
        ends += [start, start + len(batch) - 1]
        start += len(batch)
    return sorted({*ends, random.Random(seed).randrange(start)})


class Signatures:
    """``Planner.plan``'s signature of a job, without the rest of its work (full/init has
    53,760 jobs), each distinct override line parsed once."""

    def __init__(self, planner: Planner):
        self.planner, self.keys = planner, {}

    def key(self, line: str) -> tuple[bool, str]:
        if line not in self.keys:
            [override] = self.planner.parser.parse_overrides([line])
            self.keys[line] = (self.planner.is_value(override), override.key_or_group)
        return self.keys[line]

    def __call__(self, overrides: Sequence[str]) -> tuple[str, ...]:
        structural, value_keys = [], []
        for line in overrides:
            is_value, key = self.key(line)
            (value_keys if is_value else structural).append(key if is_value else line)
        return (*structural, "|", *value_keys)


def yaml(cfg: DictConfig, key: str | None = None, resolve: bool = False) -> str:
    node = OmegaConf.select(cfg, key) if key else cfg
    return OmegaConf.to_yaml(node, resolve=resolve)


@pytest.mark.parametrize("preset", PRESETS)
def test_template_built_job_config_equals_hydra_composition(hydra, preset):
    loader = hydra.config_loader
    master = loader.load_configuration("config", [f"+sweep={preset}"], run_mode=RunMode.MULTIRUN)
    context = HydraContext(config_loader=loader, callbacks=Callbacks(master))
    sweeper = Plugins.instance().instantiate_sweeper(
        config=master, hydra_context=context, task_function=lambda cfg: None
    )
    batches = sweeper.jobs(list(master.hydra.overrides.task))  # what the sweep would launch
    jobs = [job for batch in batches for job in batch]
    planner = Planner(context, master)
    signature = Signatures(Planner(context, master))  # its own planner composes nothing
    for idx in sample(batches, preset):
        overrides = jobs[idx]
        # The launcher composes a template for the first job of each signature and derives
        # every later job from it: compose it from that job here too, not from this one.
        target = signature(overrides)
        first = next(i for i, o in enumerate(jobs) if signature(o) == target)
        planner.plan(first, jobs[first])
        job = planner.plan(idx, overrides)
        ours, ours_task = job_config(worker_templates(planner), job)

        theirs = loader.load_sweep_config(master, list(overrides))
        with open_dict(theirs):  # what Hydra's BasicLauncher sets before run_job
            theirs.hydra.job.id = f"{theirs.hydra.job.name}_{idx}"
            theirs.hydra.job.num = idx
        theirs_task = task_view(theirs)  # run_job: a copy without the hydra node

        where = f"{preset} job {idx}: {' '.join(overrides)}"
        assert yaml(ours_task) == yaml(theirs_task), where
        assert yaml(ours_task, resolve=True) == yaml(theirs_task, resolve=True), where
        assert OmegaConf.to_object(ours_task) == OmegaConf.to_object(theirs_task), where
        assert yaml(task_view(ours)) == yaml(theirs_task), where  # the full config's too
        for key in ("hydra.job", "hydra.overrides", "hydra.runtime.choices"):
            assert yaml(ours, key) == yaml(theirs, key), f"{where}: {key}"
        for key in ("hydra.sweep.dir", "hydra.sweep.subdir"):  # the job's output folder
            assert OmegaConf.select(ours, key) == OmegaConf.select(theirs, key), f"{where}: {key}"
