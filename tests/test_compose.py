"""A pool worker's job config (template + values, ``compose.py``) is Hydra's own composition.

For every sweep preset, a deterministic sample of jobs (the first and last, the first and
last of each ``hydra.sweeper.grids`` entry, and one drawn at random with a fixed seed) is
built the way a worker builds it, from a template composed for the first job of the sweep
with the same signature (as the launcher does), and compared with what Hydra's basic
launcher runs: ``load_sweep_config(master, overrides)`` with the job's id and number.
A group of jobs takes a second shortcut (``GroupConfigs``: one template copy, each job's
values set in turn, the interpolated strings recomputed): its resolved configs and output
folders are checked the same way, and the typed config a group task builds from them
(``study.config.from_dict``) against ``OmegaConf.to_object``. The template shortcut relies
on Hydra internals (hence the pin ``hydra-core<1.4``); this is what tells a Hydra upgrade
that breaks it.
"""

from __future__ import annotations

import pickle
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

from hydra_plugins.study_sweeps.compose import GroupConfigs, Planner, task_view
from hydra_plugins.study_sweeps.pool_launcher import job_config, worker_templates
from study.config import Config, as_dict, from_dict
from study.profiles import SWEEPS as SWEEP_NAMES

CONF = Path(__file__).resolve().parent.parent / "conf"
SWEEPS = CONF / "sweep"
PRESETS = sorted(p.relative_to(SWEEPS).with_suffix("").as_posix() for p in SWEEPS.rglob("*.yaml"))


def test_every_preset_is_covered():
    profiles = ("quick", "standard", "full")
    assert PRESETS == sorted(["smoke", *(f"{p}/{s}" for p in profiles for s in SWEEP_NAMES)])


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


def composed(loader, master: DictConfig, overrides: Sequence[str], idx: int) -> DictConfig:
    """What Hydra's basic launcher runs for job ``idx``."""
    cfg = loader.load_sweep_config(master, list(overrides))
    with open_dict(cfg):  # what Hydra's BasicLauncher sets before run_job
        cfg.hydra.job.id = f"{cfg.hydra.job.name}_{idx}"
        cfg.hydra.job.num = idx
    return cfg


def preset_jobs(hydra, preset: str):
    """(loader, master config, planner, the sweep's jobs, the sampled indices)."""
    loader = hydra.config_loader
    master = loader.load_configuration("config", [f"+sweep={preset}"], run_mode=RunMode.MULTIRUN)
    context = HydraContext(config_loader=loader, callbacks=Callbacks(master))
    sweeper = Plugins.instance().instantiate_sweeper(
        config=master, hydra_context=context, task_function=lambda cfg: None
    )
    batches = sweeper.jobs(list(master.hydra.overrides.task))  # what the sweep would launch
    jobs = [job for batch in batches for job in batch]
    return loader, master, Planner(context, master), jobs, sample(batches, preset)


@pytest.mark.parametrize("preset", PRESETS)
def test_template_built_job_config_equals_hydra_composition(hydra, preset):
    loader, master, planner, jobs, sampled = preset_jobs(hydra, preset)
    signature = Signatures(planner)
    for idx in sampled:
        overrides = jobs[idx]
        # The launcher composes a template for the first job of each signature and derives
        # every later job from it: compose it from that job here too, not from this one.
        target = signature(overrides)
        first = next(i for i, o in enumerate(jobs) if signature(o) == target)
        planner.plan(first, jobs[first])
        job = planner.plan(idx, overrides)
        ours, ours_task = job_config(worker_templates(planner), job)

        theirs = composed(loader, master, overrides, idx)
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


@pytest.mark.parametrize("preset", PRESETS)
def test_a_group_gives_each_job_the_config_and_folder_hydra_composes(hydra, preset):
    """Jobs of one template through one ``GroupConfigs``, as a worker runs a group: its
    first job takes the exact path, every later one the recomputed one (and a job seen
    twice must come out the same both times)."""
    loader, master, planner, jobs, sampled = preset_jobs(hydra, preset)
    signature = Signatures(planner)
    by_signature: dict[tuple[str, ...], list[int]] = {}
    for idx in sampled:
        target = signature(jobs[idx])
        first = next(i for i, o in enumerate(jobs) if signature(o) == target)
        by_signature.setdefault(target, [first]).append(idx)
    for members in by_signature.values():
        specs = [planner.plan(i, jobs[i]) for i in [*members, members[0]]]
        full_bytes, _ = worker_templates(planner)[specs[0].signature]
        group = GroupConfigs(pickle.loads(full_bytes))  # as a worker unpickles it
        for spec in specs:
            ours, folder = group.job(spec)
            theirs = composed(loader, master, jobs[spec.idx], spec.idx)
            theirs_task = task_view(theirs)
            where = f"{preset} job {spec.idx}: {' '.join(jobs[spec.idx])}"
            assert ours == OmegaConf.to_container(theirs_task, resolve=True), where
            sweep = theirs.hydra.sweep
            assert folder == str(Path(str(sweep.dir), str(sweep.subdir)).absolute()), where
            typed = OmegaConf.to_object(theirs_task)
            assert from_dict(Config, ours) == typed, where
            assert as_dict(from_dict(Config, ours)) == as_dict(typed), where
        assert group.fast, f"{preset}: the presets' interpolations are plain references"


@pytest.mark.parametrize(
    ("arguments", "fast"),
    [
        # An ad-hoc multirun: the subdir ${hydra.job.num}-${run_name} reads the job number.
        (["model.depth=2,4", "seed=0,1,2"], True),
        # ${oc.env:...} in tracking.uri is left to OmegaConf: every job takes the exact path.
        (["tracking=server", "model.depth=2,4", "seed=0,1"], False),
    ],
)
def test_a_group_outside_the_presets_matches_hydra_too(hydra, monkeypatch, arguments, fast):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    loader = hydra.config_loader
    master = loader.load_configuration("config", arguments, run_mode=RunMode.MULTIRUN)
    context = HydraContext(config_loader=loader, callbacks=Callbacks(master))
    sweeper = Plugins.instance().instantiate_sweeper(
        config=master, hydra_context=context, task_function=lambda cfg: None
    )
    jobs = [job for batch in sweeper.jobs(arguments) for job in batch]
    planner = Planner(context, master)
    specs = [planner.plan(i, job) for i, job in enumerate(jobs)]
    full_bytes, _ = worker_templates(planner)[specs[0].signature]
    group = GroupConfigs(pickle.loads(full_bytes))
    for spec in specs:
        ours, folder = group.job(spec)
        theirs = composed(loader, master, jobs[spec.idx], spec.idx)
        assert ours == OmegaConf.to_container(task_view(theirs), resolve=True), spec.overrides
        sweep = theirs.hydra.sweep
        assert folder == str(Path(str(sweep.dir), str(sweep.subdir)).absolute())
    assert group.fast is fast
    assert len({group.job(s)[1] for s in specs}) == len(specs)  # a folder per job
