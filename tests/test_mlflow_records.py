"""MLflow mirrors the records: after a real sweep, each run's params, summary metrics,
times, tags, dataset and files are its ``run.json``'s; its description's command
reproduces the cell; the parent run summarizes the sweep; a rerun keeps one run per cell
under one parent, whatever changed in between (the grid, or what MLflow shows)."""

from __future__ import annotations

import json
import math
import re
import shlex
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient

from study import records
from study.tracking import cell_runs
from study.tracking import experiment as tracking_experiment

from .conftest import subprocess_env, swept_project, train
from .test_sweeps import SMOKE_CELLS, record_dirs

pytestmark = pytest.mark.slow


def ms(stamp: str) -> int:
    return int(datetime.fromisoformat(stamp).timestamp() * 1000)


@pytest.fixture(scope="module")
def swept(tmp_path_factory, prepared, mlflow_template) -> Path:
    """A project folder after ``python -m study.train -m +sweep=smoke`` (16 cells: probe
    only and trained, plain and residual)."""
    return swept_project(tmp_path_factory, prepared, "records", "-m", "+sweep=smoke",
                         store=mlflow_template)  # fmt: skip


def client(workdir: Path) -> MlflowClient:
    return MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")


def cell_records(workdir: Path) -> list[dict]:
    """Each cell's record, with its folder and where MLflow mirrors it (mlflow.json)."""
    return [records.read_run(d) | {"dir": d, "mlflow": records.read_mirror(d)}
            for d in record_dirs(workdir / "multirun/smoke")]  # fmt: skip


def test_each_run_is_its_record(swept):
    mlflow = client(swept)
    sweep = json.loads((swept / "multirun/smoke/sweep.json").read_text())
    recorded = cell_records(swept)
    assert len(recorded) == SMOKE_CELLS
    for record in recorded:
        run = mlflow.get_run(record["mlflow"]["run_id"])
        # Params: the resolved config, less the run's name and where it is logged.
        flat = records.flatten(record["config"])
        knobs = {k: str(v) for k, v in flat.items()
                 if k != "run_name" and not k.startswith("tracking.")}  # fmt: skip
        assert run.data.params == knobs
        # Summary metrics: every finite scalar of metrics, summary and timings, and no other,
        # to six significant digits (counts exact).
        scalars = {**record["metrics"], **record["summary"], **record["timings"]}
        expected = {k: float(v if isinstance(v, int) else f"{v:.6g}") for k, v in scalars.items()
                    if isinstance(v, int | float) and not isinstance(v, bool)
                    and math.isfinite(v)}  # fmt: skip
        summary = {k: v for k, v in run.data.metrics.items() if "/" not in k}
        assert summary == expected, record["run_name"]
        # Times: the record's start, and its wall time as the duration (to the ms).
        assert run.info.start_time == ms(record["started_at"])
        duration = run.info.end_time - run.info.start_time
        assert abs(duration - 1000 * record["timings"]["wall_s"]) <= 1
        assert run.info.end_time <= ms(record["finished_at"])
        tags = run.data.tags
        assert tags["study.status"] == record["status"]
        assert tags["study.cell_key"] == record["cell_key"]
        assert tags["mlflow.source.git.commit"] == record["git_commit"]
        assert tags["mlflow.source.name"] == "python -m study.train" and tags["mlflow.user"]
        assert tags["mlflow.parentRunId"] == sweep["parent_run_id"]
        assert run.info.run_name == record["run_name"] and run.info.user_id == tags["mlflow.user"]
        [data] = run.inputs.dataset_inputs
        assert (data.dataset.name, data.dataset.digest) == (
            record["data"]["name"], record["data"]["sha256"][:36],
        )  # fmt: skip
        assert json.loads(data.dataset.profile)["sha256"] == record["data"]["sha256"]
        files = {a.path for a in mlflow.list_artifacts(run.info.run_id)}
        assert files == {"layers.parquet", "config.json", "profile.svg"}
        # The per-layer profile: step = layer, log10 of the norm, as layers.parquet has it
        # (to six significant digits).
        layers = pd.read_parquet(record["dir"] / "layers.parquet")
        at_init = layers[layers["step"] == 0].set_index("layer")["signal_grad_norm"]
        key = "init_by_layer/log10_signal_grad_norm"
        history = mlflow.get_metric_history(run.info.run_id, key)
        expected = {k: float(f"{v:.6g}") for k, v in np.log10(at_init).items()}
        assert {m.step: m.value for m in history} == expected
        if record["config"]["train"]["steps"] > 0 and record["status"] == "finished":
            assert "final_by_layer/log10_update_ratio" in run.data.metrics
            assert "curve/val_accuracy" in run.data.metrics


def test_the_description_holds_the_command_that_reproduces_the_cell(swept):
    [record, *_] = [r for r in cell_records(swept) if r["config"]["train"]["steps"] > 0]
    note = client(swept).get_run(record["mlflow"]["run_id"]).data.tags["mlflow.note.content"]
    [command] = re.findall(r"```\n(.*?)\n```", note, re.DOTALL)
    # One override a line, continued (the run page does not wrap a code block).
    lines = command.splitlines()
    assert lines[0] == "python -m study.train \\" and lines[1].startswith("  model.depth=")
    assert all(line.endswith(" \\") for line in lines[:-1]) and len(lines) > 3
    assert f"  run_name={record['run_name']}" in lines  # the smoke preset names cells its way
    argv = shlex.split(command.replace("\\\n", ""))  # as a shell joins continued lines
    assert argv[:3] == ["python", "-m", "study.train"] and "\n" not in argv
    # Pasted into a shell as it is, with this environment's python first on the path.
    env = subprocess_env()
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    proc = subprocess.run(["bash", "-c", command], cwd=swept, env=env, capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    [again] = [records.read_run(d) for d in (swept / "outputs").glob("*/*")]
    assert again["cell_key"] == record["cell_key"]
    assert again["run_name"] == record["run_name"]
    assert again["metrics"] == record["metrics"] and again["summary"] == record["summary"]


def test_the_parent_run_summarizes_the_sweep(swept):
    mlflow = client(swept)
    sweep = json.loads((swept / "multirun/smoke/sweep.json").read_text())
    parent = mlflow.get_run(sweep["parent_run_id"])
    assert parent.data.params["grid.model.depth"] == "2,8"
    assert parent.data.params["grid.train.steps"] == "0,20"
    assert parent.data.params["cells"] == str(SMOKE_CELLS)
    assert "python -m study.train -m +sweep=smoke" in parent.data.tags["mlflow.note.content"]
    files = {a.path for a in mlflow.list_artifacts(parent.info.run_id)}
    figures = {a.path for a in mlflow.list_artifacts(parent.info.run_id, "figures")}
    assert "sweep.json" in files
    assert figures == {"figures/decay_rate.png", "figures/accuracy_vs_depth.png"}
    experiment = mlflow.get_experiment(sweep["experiment_id"])
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert "A few cells of each kind" in experiment.tags["mlflow.note.content"]  # its preset
    # The saved view: the grid's axes of more than one value (the seed is fixed here), then
    # the status and outcomes; the run name column sized for the longest run name.
    state = json.loads(json.loads(experiment.tags["mlflow.sharedViewState.cells"])["state"])
    axes = ("model.depth", "model.activation", "model.skip", "train.steps")
    assert state["selectedColumns"] == [
        *(f"params.`{a}`" for a in axes), "tags.`study.status`",
        "metrics.`signal_log10_rate_init`", "metrics.`test_accuracy`", "attributes.`Dataset`",
    ]  # fmt: skip
    longest = max(len(r["run_name"]) for r in cell_records(swept))
    name_px = tracking_experiment.INDENT_PX + tracking_experiment.text_px(longest)
    assert state["columnWidths"]["attributes.`Run Name`"] == name_px


def test_a_changed_grid_gets_a_new_parent_and_keeps_the_cells_under_it(swept):
    kept = {d: (d / "run.json").stat().st_mtime_ns for d in record_dirs(swept / "multirun/smoke")}
    old = json.loads((swept / "multirun/smoke/sweep.json").read_text())["parent_run_id"]
    proc = train(swept, "-m", "+sweep=smoke", "seed=0,1")  # 16 new cells beside the 16 kept
    assert proc.returncode == 0, proc.stderr[-3000:]
    sweep = json.loads((swept / "multirun/smoke/sweep.json").read_text())
    new = sweep["parent_run_id"]
    assert new != old
    mlflow = client(swept)
    assert mlflow.get_run(old).info.run_name == "sweep smoke (earlier grid)"
    assert mlflow.get_run(new).data.params["grid.seed"] == "0,1"
    runs = mlflow.search_runs([sweep["experiment_id"]], "tags.`study.status` != ''",
                              run_view_type=ViewType.ACTIVE_ONLY, max_results=1000)  # fmt: skip
    assert len(runs) == 2 * SMOKE_CELLS
    assert {r.data.tags["mlflow.parentRunId"] for r in runs} == {new}
    assert {d: (d / "run.json").stat().st_mtime_ns for d in kept} == kept  # records untouched


def test_a_cell_logged_by_an_older_mirror_is_logged_again_from_its_record(swept):
    [record, *_] = cell_records(swept)
    out_dir, mirrored = record.pop("dir"), record.pop("mlflow")
    old_run = mirrored["run_id"]
    records.write_json(
        out_dir / "mlflow.json", {**mirrored, "mirror": cell_runs.MIRROR_VERSION - 1}
    )
    before = (out_dir / "run.json").stat().st_mtime_ns
    proc = train(swept, "-m", "+sweep=smoke", "seed=0,1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "0 finished, 0 diverged, 0 failed, 32 skipped" in proc.stdout
    again = records.read_mirror(out_dir)
    assert again["mirror"] == cell_runs.MIRROR_VERSION
    assert again["run_id"] != old_run
    assert (out_dir / "run.json").stat().st_mtime_ns == before  # the record is never rewritten
    mlflow = client(swept)
    assert mlflow.get_run(old_run).info.lifecycle_stage == "deleted"
    sweep = json.loads((swept / "multirun/smoke/sweep.json").read_text())
    new_run = mlflow.get_run(again["run_id"])
    assert new_run.data.tags["mlflow.parentRunId"] == sweep["parent_run_id"]
    parent = mlflow.get_run(sweep["parent_run_id"])
    assert parent.data.metrics["cells_relogged"] == 1
