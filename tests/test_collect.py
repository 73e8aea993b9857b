"""Stage ``collect`` on real records: a clean set gives the tables it always gave, and every
bad record (damaged, incomplete, another cell's, of other code) is named in one line, with
nothing written."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from study import records
from study.analysis import checks, collect
from study.config import JACOBIAN_STATS, DataConfig, Dataset, Schedule, as_dict
from study.data import Splits, load
from study.engine import probes
from study.profiles import SWEEPS
from study.runs import jobs
from study.runs import sweep as sweeps
from study.runs.cell import Cell, execute_group

from .conftest import ROOT, compose_config, subprocess_env

# collect.py as it was before it checked every record: a clean set must collect to the
# same bytes with and without the checks.
BEFORE_CHECKS = "9a2ed4db7fba1310cac36dc60da96dc17a35ca00"

# sweep -> groups of cells run as one stack, each cell (run name, overrides). Small nets,
# a few steps: every shape of record the engine writes (probe-only, trained, diverged at a
# learning rate of 1e4, failed) in two depths.
SMALL = ("model.width=8", "train.eval_every=4")
PLAN = {
    "init": [[("d4-s0", ("model.depth=4", "train.steps=0"))],
             [("d8-s0", ("model.depth=8", "train.steps=0"))]],
    "train": [[("d4-s0", ("model.depth=4", "train.steps=12", "seed=0")),
               ("d4-s1", ("model.depth=4", "train.steps=12", "seed=1")),
               ("d4-lr1e4-s0", ("model.depth=4", "train.steps=12", "optim.lr=1e4"))],
              [("d8-s0", ("model.depth=8", "train.steps=12"))]],
    "optim": [[("adamw-s0", ("model.depth=4", "train.steps=6", "optim=adamw"))]],
    "scale": [[("scale0.1-s0", ("model.depth=4", "train.steps=0", "data.input_scale=0.1"))]],
    "theory": [[("tanh-s0", ("model.depth=4", "train.steps=0", "model.activation=tanh"))]],
    "regularize": [[("drop-s0", ("model.depth=4", "train.steps=6", "model.dropout=0.2",
                                 "probe.schedule=log10"))]],
    "curriculum": [[("linear-s0", ("model.depth=4", "train.steps=6",
                                   "train.curriculum=linear", "train.eval_train=true"))]],
    "phase": [[("w2-s0", ("model.depth=4", "train.steps=6", "model.init=gaussian",
                          "model.sigma_w2=2.0", "model.sigma_b2=0.05", "train.early_stop=true",
                          "probe.schedule=log10"))]],
    "width": [[("w32-s0", ("model.depth=4", "train.steps=0", "model.width=32"))]],
    "jacobian": [[("j-s0", ("model.depth=4", "train.steps=0", "model.init=scaled_orthogonal",
                            "model.sigma_w2=2.0", "model.sigma_b2=0.0", "probe.jacobian=true"))]],
}  # fmt: skip
FAILED = ("regularize", "crash-s0", ("model.depth=4", "train.steps=6"))


def _cell(sweep_dir: Path, splits: Splits, prepared: Path, name: str,
          overrides: tuple[str, ...]) -> Cell:  # fmt: skip
    cfg = compose_config("data=mnist1d", f"data.dir={prepared}", f"run_name={name}",
                         "tracking.enabled=false", *SMALL, *overrides)  # fmt: skip
    resolved = as_dict(cfg)
    return Cell(cfg, resolved, records.cell_key(resolved, splits.sha256), sweep_dir / name)


@pytest.fixture(scope="module")
def clean(tmp_path_factory, prepared) -> Path:
    """A project folder whose multirun/quick/ holds every sweep of the profile, recorded by
    the engine and listed by the sweep's own bookkeeping, as ``dvc repro`` leaves them."""
    project = tmp_path_factory.mktemp("project")
    splits = load(DataConfig(name=Dataset.mnist1d, dir=str(prepared), num_samples=1000))
    statuses = set()
    for name in SWEEPS:
        sweep_dir = project / "multirun" / "quick" / name
        sweep_dir.mkdir(parents=True)
        done = []
        for group in PLAN[name]:
            done += execute_group([_cell(sweep_dir, splits, prepared, *c) for c in group], splits)
        if name == FAILED[0]:
            # Class 99 of 10: the loss raises inside training, the cell is recorded failed.
            broken = Splits(**{**splits.__dict__, "y_train": np.full_like(splits.y_train, 99)})
            done += execute_group([_cell(sweep_dir, splits, prepared, *FAILED[1:])], broken)
        session = sweeps.Session(sweep_dir, len(done), None, sweeps.lock(sweep_dir))
        for d in done:
            r = d.record
            session.add(jobs.job_result(r["run_name"], r["status"], r["cell_key"], d.out_dir,
                                        r["error"]))  # fmt: skip
            statuses.add(r["status"])
        session.finish()
    assert statuses == {"finished", "diverged", "failed"}
    return project


@pytest.fixture
def project(clean, tmp_path, monkeypatch) -> Path:
    """A copy of the clean records to damage, as the working directory, collected once."""
    copy = tmp_path / "project"
    shutil.copytree(clean, copy)
    monkeypatch.chdir(copy)
    assert run_collect(copy) == (0, [])
    return copy


PREFIX = "study.analysis.collect: error: "


def run_collect(project: Path) -> tuple[int, list[str]]:
    """(exit status, stderr lines without their prefix) of ``python -m study.analysis.collect
    --profile quick``, run in this process in ``project`` (the working directory)."""
    assert Path.cwd() == project
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            collect.main(["--profile", "quick"])
            status = 0
        except SystemExit as exit:
            status = exit.code
    lines = err.getvalue().splitlines()
    assert all(line.startswith(PREFIX) for line in lines), lines
    return status, [line.removeprefix(PREFIX) for line in lines]


def outputs(project: Path, folder: str = "results") -> dict[str, bytes]:
    out = project / folder
    paths = [*(out / "tables").glob("*.parquet"), out / "metrics" / "collect.json"]
    assert len(paths) == 4
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in paths}


def cell_dir(project: Path, sweep: str, name: str) -> Path:
    return project / "multirun" / "quick" / sweep / name


def edit_record(folder: Path, change) -> None:
    record = json.loads((folder / "run.json").read_text())
    change(record)
    (folder / "run.json").write_text(json.dumps(record))


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


# ------------------------------------------------------------------------- a clean set


def collect_before_checks(tmp_path: Path):
    """collect.py at :data:`BEFORE_CHECKS`, imported from git."""
    shown = subprocess.run(
        ["git", "-C", str(ROOT), "show", f"{BEFORE_CHECKS}:study/analysis/collect.py"],
        capture_output=True, text=True,
    )  # fmt: skip
    if shown.returncode != 0:
        pytest.skip(f"no git history with commit {BEFORE_CHECKS[:12]}: {shown.stderr.strip()}")
    path = tmp_path / "collect_before_checks.py"
    path.write_text(shown.stdout)
    spec = importlib.util.spec_from_file_location("collect_before_checks", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_clean_set_collects_to_the_same_bytes_as_before_the_checks(project, tmp_path):
    before = collect_before_checks(tmp_path)
    with contextlib.redirect_stdout(io.StringIO()):
        before.main(["--profile", "quick", "--out", "before"])
    now, then = outputs(project), outputs(project, "before")
    # runs.parquet has since gained the Jacobian probe's columns and the explicit variances
    # (issue 26), the residual scaling, task and plateau (issue 25): without them it is the
    # same table; every other output is the same bytes.
    runs = "tables/runs.parquet"
    new = pd.read_parquet(io.BytesIO(now.pop(runs)))
    old = pd.read_parquet(io.BytesIO(then.pop(runs)))
    added = {*JACOBIAN_STATS, "sigma_w2", "sigma_b2", "residual_scaling", "train_examples",
             "label_noise", "plateau_at_step"}  # fmt: skip
    assert set(new.columns) - set(old.columns) == added
    pd.testing.assert_frame_equal(plain(new.drop(columns=sorted(added))), plain(old))
    # The other tables likewise: none of the old columns missing, no column added but those,
    # compared as values (the categories of `sweep` have grown by the new sweeps); every
    # other output byte for byte.
    for name in [n for n in now if n.endswith(".parquet")]:
        new, old = (pd.read_parquet(io.BytesIO(d.pop(name))) for d in (now, then))
        assert set(old.columns) <= set(new.columns) <= set(old.columns) | added, name
        pd.testing.assert_frame_equal(plain(new[old.columns]), plain(old))
    assert now == then


def plain(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with its categorical columns as strings: values, not category lists."""
    kinds = frame.select_dtypes("category").columns
    return frame.astype({c: str for c in kinds})


def test_a_run_stopped_at_its_plateau_is_last_probed_there():
    record = {"status": "finished", "summary": {"steps_done": 180},
              "config": {"probe": {"enabled": True, "schedule": "log10"},
                         "train": {"steps": 300}, "model": {"depth": 4}}}  # fmt: skip
    assert checks.expected_steps(record, 20) == [0, 1, 10, 100, 180]
    record["summary"]["steps_done"] = 300
    assert checks.expected_steps(record, 20) == [0, 1, 10, 100, 300]


def test_the_probe_schedule_restated_for_collect_is_the_engines():
    for schedule in Schedule:
        for steps in [*range(0, 1200), 5000, 20_000, 123_456]:
            assert checks.probe_steps(schedule, steps) == probes.probe_steps(schedule, steps)


# ------------------------------------------------------------------------ bad records


def test_a_record_without_metrics_and_another_cells_layer_table_are_named_one_line_each(
    project,
):
    before = outputs(project)
    edit_record(cell_dir(project, "train", "d4-s1"), lambda r: r.pop("metrics"))
    shutil.copy(cell_dir(project, "train", "d8-s0") / "layers.parquet",
                cell_dir(project, "train", "d4-s0") / "layers.parquet")  # fmt: skip
    status, lines = run_collect(project)
    assert status == 1 and len(lines) == 2
    no_metrics, copied = sorted(lines, key=lambda line: "d4-s1" not in line)
    assert "multirun/quick/train/d4-s1: run.json has no metrics;" in no_metrics
    assert ("multirun/quick/train/d4-s0: layers.parquet has layers 1-8 for a depth-4 cell; "
            "delete its run.json and rerun: dvc repro --force --single-item sweep@train"
            ) in copied  # fmt: skip
    assert outputs(project) == before


def _truncated_layers(project: Path) -> None:
    truncate(cell_dir(project, "init", "d8-s0") / "layers.parquet")


def _text_metric(project: Path) -> None:
    edit_record(cell_dir(project, "optim", "adamw-s0"),
                lambda r: r["metrics"].update(test_accuracy="0.93"))  # fmt: skip


def _truncated_sweep(project: Path) -> None:
    truncate(project / "multirun" / "quick" / "scale" / "sweep.json")


def _truncated_record(project: Path) -> None:
    truncate(cell_dir(project, "theory", "tanh-s0") / "run.json")


@pytest.mark.parametrize(
    ("damage", "where", "what"),
    [(_truncated_layers, "init/d8-s0: ", "layers.parquet cannot be read, truncated or damaged"),
     (_text_metric, "optim/adamw-s0: ", 'run.json has metrics.test_accuracy = "0.93", '
                                        "expected a number or null"),
     (_truncated_sweep, "quick/scale: ", "sweep.json cannot be read, truncated or damaged"),
     (_truncated_record, "theory/tanh-s0: ", "run.json cannot be read, truncated or damaged")],
)  # fmt: skip
def test_a_damaged_file_is_one_line_and_nothing_is_written(project, damage, where, what):
    before = outputs(project)
    damage(project)
    status, [line] = run_collect(project)
    assert status == 1
    assert f"{where}{what}" in line and "dvc repro --force --single-item sweep@" in line
    assert outputs(project) == before


def test_the_command_prints_one_line_per_bad_cell_and_no_traceback(project):
    before = outputs(project)
    _truncated_layers(project)
    _text_metric(project)
    proc = subprocess.run(
        [sys.executable, "-m", "study.analysis.collect", "--profile", "quick"],
        cwd=project, env=subprocess_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 2, proc.stderr
    assert all(line.startswith(f"{PREFIX}multirun/quick/") for line in lines), proc.stderr
    assert outputs(project) == before


def test_a_record_that_is_not_its_cells_is_named(project):
    # Another cell's run.json in this cell's folder; an edited config under the old key.
    shutil.copy(cell_dir(project, "train", "d4-s1") / "run.json",
                cell_dir(project, "train", "d4-s0") / "run.json")  # fmt: skip
    edit_record(cell_dir(project, "init", "d4-s0"), lambda r: r["config"]["model"].update(width=9))
    status, lines = run_collect(project)
    assert status == 1
    assert sorted(line.split(": ")[0] for line in lines) == [
        "multirun/quick/init/d4-s0", "multirun/quick/train/d4-s0"
    ]  # fmt: skip
    [other] = [line for line in lines if "/train/" in line]
    assert "run.json is of d4-s1 (cell key" in other and "the sweep ran d4-s0 (cell key" in other
    [edited] = [line for line in lines if "/init/" in line]
    assert "the record was changed after it was written" in edited


def test_a_layer_table_of_other_probe_steps_is_named(project):
    # Same depth, but trained for 12 steps: not the table of a probe-only cell.
    shutil.copy(cell_dir(project, "train", "d8-s0") / "layers.parquet",
                cell_dir(project, "init", "d8-s0") / "layers.parquet")  # fmt: skip
    status, [line] = run_collect(project)
    assert status == 1
    assert ("init/d8-s0: layers.parquet has probe steps 0, 1, 2, 5, 10, 12; a finished run "
            "of 0 steps probed on schedule log125 has 0") in line  # fmt: skip


def test_records_of_other_code_are_one_line_per_sweep(project, monkeypatch):
    monkeypatch.setattr(records, "code_version", lambda: "0123456789ab")
    status, lines = run_collect(project)
    assert status == 1 and len(lines) == len(SWEEPS)
    assert "multirun/quick/train: 4 of 4 records (the first d4-lr1e4-s0) were written by " \
           "other code than this checkout's (code version 0123456789ab)" in lines[1]  # fmt: skip


def test_many_bad_cells_are_named_up_to_a_limit(project, monkeypatch):
    monkeypatch.setattr(collect, "MAX_LINES", 2)
    for name in ("d4-s0", "d4-s1", "d8-s0"):
        edit_record(cell_dir(project, "train", name), lambda r: r["summary"].pop("steps_done"))
    status, lines = run_collect(project)
    assert status == 1 and len(lines) == 3
    assert all("run.json has no summary.steps_done" in line for line in lines[:2])
    assert lines[2] == "and 1 more"
