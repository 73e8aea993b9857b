"""Every sweep preset of every profile composes, holds only valid values, names each cell
apart, and has the size declared in CELLS -- checked without running a cell, so that a
typo in a `full` preset shows here and not hours into a cluster job."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from study.config import validate
from study.profiles import SWEEPS, Profile

from .conftest import CONF, ROOT

# The grid sizes of the presets (conf/sweep/<profile>/<sweep>.yaml).
CELLS = {
    "standard": {"init": 11_592, "train": 2_904, "optim": 1_728, "scale": 640, "theory": 336,
                 "regularize": 1_080, "curriculum": 2_880, "phase": 88, "width": 48,
                 "jacobian": 144},
    "quick": {"init": 64, "train": 32, "optim": 8, "scale": 24, "theory": 12, "regularize": 16,
              "curriculum": 16, "phase": 6, "width": 8, "jacobian": 4},
    "full": {"init": 80_640, "train": 79_200, "optim": 6_480, "scale": 6_400, "theory": 5_760,
             "regularize": 18_000, "curriculum": 40_320, "phase": 480, "width": 360,
             "jacobian": 210},
}  # fmt: skip
PRESETS = [(profile, sweep) for profile in CELLS for sweep in SWEEPS]


def grid(profile: str, sweep: str):
    """The composed preset (with its Hydra part), the job's typed config, and its grids
    (one, or the union ``hydra.sweeper.grids`` declares): [{key: [typed values]}]."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        overrides = [f"+sweep={profile}/{sweep}"]
        cfg = compose(config_name="config", overrides=overrides, return_hydra_config=True)
        job = compose(config_name="config", overrides=overrides)
    parser = OverridesParser.create()
    grids = []
    for own in cfg.hydra.sweeper.get("grids") or [{}]:
        axes = {}
        for key, values in {**cfg.hydra.sweeper.params, **own}.items():
            [override] = parser.parse_overrides([f"{key}={values}"])
            sweep = override.is_sweep_override()
            axes[key] = list(override.sweep_iterator()) if sweep else [override.value()]
        grids.append(axes)
    return cfg, job, grids


def test_the_profiles_and_sweeps_are_the_preset_files():
    assert {p.name for p in (CONF / "sweep").iterdir() if p.is_dir()} == set(Profile)
    for profile in Profile:
        files = {p.stem for p in (CONF / "sweep" / profile).glob("*.yaml")}
        assert files == set(SWEEPS), profile
    assert set(CELLS) == set(Profile)


@pytest.mark.parametrize(("profile", "sweep"), PRESETS)
def test_preset_grid_is_valid_and_names_every_cell(profile, sweep):
    cfg, job, grids = grid(profile, sweep)
    assert sum(math.prod(len(v) for v in axes.values()) for axes in grids) == CELLS[profile][sweep]
    assert cfg.hydra.sweep.dir == f"multirun/{profile}/{sweep}"
    raw = OmegaConf.to_container(cfg, resolve=False)
    assert raw["hydra"]["sweep"]["subdir"] == "${run_name}"  # a rerun finds its records
    assert cfg.tracking.experiment == f"{profile}-{sweep}"  # one naming scheme, every profile
    # A cell's name (its folder and MLflow run) must change with every swept key.
    template = raw["run_name"]
    for key in {key for axes in grids for key in axes}:
        assert "${" + key + "}" in template or "${" + key + "." in template, key
    # Every value of the grid is valid on its own (the sweeper checks the same at launch).
    for key, values in ((k, v) for axes in grids for k, v in axes.items()):
        if OmegaConf.is_config(OmegaConf.select(job, key)):
            continue  # a config group (optim: sgd,adamw): the pipeline tests compose those
        for value in values:
            one = job.copy()
            OmegaConf.update(one, key, value, merge=False)
            validate(OmegaConf.to_object(one))


def test_every_sweep_is_a_pipeline_stage_that_collect_reads():
    stages = yaml.safe_load(Path(ROOT / "dvc.yaml").read_text())["stages"]
    sweep = stages["sweep"]
    assert tuple(sweep["foreach"]) == SWEEPS
    cmd = "python -m study.train -m +sweep=${profile}/${item} "
    assert sweep["do"]["cmd"].startswith(cmd)
    assert "multirun/${profile}/${item}/sweep.json" in sweep["do"]["outs"][0]
    assert "multirun/${profile}" in [d.split("#")[0].strip() for d in stages["collect"]["deps"]]
