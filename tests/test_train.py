"""One run end to end: the command line, its records, its MLflow run, its failure modes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from study import records
from study.config import ConfigError, DataConfig, Dataset, as_dict, validate
from study.data import Splits, load
from study.engine.probes import STATS
from study.runs import jobs
from study.runs.cell import Cell, check_stackable, execute, execute_group

from .conftest import compose_config, train


def run_dirs(workdir: Path) -> list[Path]:
    return sorted(p.parent for p in (workdir / "outputs").glob("*/*/run.json"))


def mlflow_runs(workdir: Path):
    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")
    experiments = client.search_experiments()
    return client, client.search_runs([e.experiment_id for e in experiments])


def test_probe_only_run_writes_records_and_a_finished_mlflow_run(workdir):
    proc = train(workdir, "model.depth=32", "model.activation=relu",
                 "model.init=kaiming_normal", "train.steps=0")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    [run_dir] = run_dirs(workdir)
    assert run_dir.name.endswith("d32-relu-kaiming_normal-none-none-s0")

    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "finished"
    assert record["config"]["model"]["depth"] == 32
    assert len(record["data"]["sha256"]) == 64
    assert record["cell_key"] == records.cell_key(record["config"], record["data"]["sha256"])

    layers = pd.read_parquet(run_dir / "layers.parquet")
    assert list(layers.columns) == ["step", "layer", *STATS]
    assert len(layers) == 32 and set(layers["step"]) == {0}
    assert list(layers["layer"]) == list(range(1, 33))
    assert layers["signal_grad_norm"].gt(0).all() and layers["dead_fraction"].notna().all()

    client, [run] = mlflow_runs(workdir)
    assert run.info.status == "FINISHED"
    assert run.info.run_id == records.read_mirror(run_dir)["run_id"]
    assert run.info.run_name == "d32-relu-kaiming_normal-none-none-s0"
    params = run.data.params
    assert (params["model.depth"], params["model.activation"], params["model.init"]) == (
        "32", "relu", "kaiming_normal",
    )  # fmt: skip
    history = client.get_metric_history(run.info.run_id, "init_by_layer/log10_signal_grad_norm")
    assert sorted(m.step for m in history) == list(range(1, 33))
    by_layer = {m.step: m.value for m in history}
    # The mirror keeps 6 significant digits (tracking.cell_runs); the record keeps all.
    np.testing.assert_allclose(
        [by_layer[i] for i in range(1, 33)], np.log10(layers["signal_grad_norm"]), rtol=5e-6
    )
    assert "signal_log10_rate_init" in run.data.metrics
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"layers.parquet", "config.json", "profile.svg"} <= artifacts


def test_absurd_learning_rate_diverges_and_is_recorded(workdir):
    proc = train(workdir, "model.depth=4", "optim.lr=1e8", "train.steps=60",
                 "train.eval_every=20")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    [run_dir] = run_dirs(workdir)
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "diverged"
    assert 1 <= record["summary"]["diverged_at_step"] <= record["summary"]["steps_done"] <= 20
    layers = pd.read_parquet(run_dir / "layers.parquet")
    assert 0 in set(layers["step"])  # statistics up to the divergence are kept
    assert layers["step"].max() < record["summary"]["diverged_at_step"]
    _, [run] = mlflow_runs(workdir)
    assert run.data.tags["study.status"] == "diverged"
    assert run.info.status == "FINISHED"


@pytest.mark.slow
@pytest.mark.parametrize("knobs", [(), ("model.dropout=0.3", "train.curriculum=linear")])
def test_same_config_and_seed_give_identical_records(workdir, knobs):
    args = ("model.depth=6", "model.norm=batch", "train.steps=30", "tracking.enabled=false",
            *knobs)  # fmt: skip
    for _ in range(2):
        assert train(workdir, *args).returncode == 0
    first, second = (pd.read_parquet(d / "layers.parquet") for d in run_dirs(workdir))
    assert len(first) == 6 * len(set(first["step"])) and first["step"].max() == 30
    pd.testing.assert_frame_equal(first, second, check_exact=True)
    records = [json.loads((d / "run.json").read_text()) for d in run_dirs(workdir)]
    for part in ("metrics", "curve", "summary", "cell_key"):
        assert records[0][part] == records[1][part], part


def test_a_crash_is_recorded_as_failed_with_its_error(tmp_path, mnist1d):
    cfg = compose_config("model.depth=3", "model.width=8", "train.steps=5",
                         f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}")  # fmt: skip
    # Corrupt labels: class 99 of 10 makes the loss raise inside training.
    broken = Splits(**{**mnist1d.__dict__, "y_train": np.full_like(mnist1d.y_train, 99)})
    done = execute(cfg, as_dict(cfg), broken, tmp_path, "test-key")
    assert done.record["status"] == "failed"
    record = records.read_run(tmp_path)
    assert record["status"] == "failed"
    assert "IndexError" in record["error"] or "out of bounds" in record["error"]
    assert jobs.mirror(cfg.tracking, [done], None) is None
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    [run] = client.search_runs([records.read_mirror(tmp_path)["experiment_id"]])
    assert run.info.status == "FAILED"
    assert run.data.tags["study.status"] == "failed"


def test_unknown_layer_metric_is_rejected_naming_the_choices():
    cfg = compose_config("tracking.layer_metrics=[signal_grad_norm,gradient]")
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    assert err.value.key == "tracking.layer_metrics"
    assert "signal_grad_norm" in str(err.value) and "gradient" in str(err.value)


def test_record_config_is_plain_data_with_enum_names():
    cfg = compose_config("model.activation=tanh", "probe.schedule=log10")
    plain = as_dict(cfg)
    assert plain["model"]["activation"] == "tanh" and type(plain["model"]["activation"]) is str
    assert plain["probe"]["schedule"] == "log10"
    assert plain["run_name"] == "d8-tanh-kaiming_normal-none-none-s0"
    assert plain == json.loads(json.dumps(plain))


def group_cells(tmp_path: Path, prepared: Path, *extra: str) -> list[Cell]:
    cells = []
    for init in ("xavier_normal", "kaiming_normal"):
        for seed in (0, 1):
            for lr in (0.01, 1e4):  # the large rate diverges: its net leaves the stack
                cfg = compose_config("data=digits", f"data.dir={prepared}", "model.depth=5",
                                     "model.width=16", f"model.init={init}", f"seed={seed}",
                                     f"optim.lr={lr}", "train.steps=30", "train.eval_every=10",
                                     f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
                                     *extra)  # fmt: skip
                name = f"{init}-{seed}-{lr}"
                cells.append(Cell(cfg, as_dict(cfg), name, tmp_path / name))
    return cells


# What legitimately differs between two executions of the same cell.
RUN_SPECIFIC = ("timings", "environment", "started_at", "finished_at", "git_commit")


@pytest.mark.numeric
def test_a_cell_alone_and_in_a_group_of_eight_writes_the_same_record(tmp_path, prepared):
    splits = load(DataConfig(name=Dataset.digits, dir=str(prepared)))
    grouped = group_cells(tmp_path / "group", prepared, "model.skip=residual")
    assert jobs.mirror(grouped[0].cfg.tracking, execute_group(grouped, splits), None) is None
    for cell in group_cells(tmp_path / "alone", prepared, "model.skip=residual"):
        execute_group([cell], splits)
        mine = records.read_run(cell.out_dir)
        theirs = records.read_run(tmp_path / "group" / cell.out_dir.name)
        for record in (mine, theirs):
            for key in RUN_SPECIFIC:
                record.pop(key)
            record["config"]["tracking"].pop("uri")
        assert mine == theirs, cell.key
        pd.testing.assert_frame_equal(
            pd.read_parquet(cell.out_dir / records.LAYERS_FILE),
            pd.read_parquet(tmp_path / "group" / cell.out_dir.name / records.LAYERS_FILE),
            check_exact=True,
        )
    statuses = [records.read_run(c.out_dir)["status"] for c in grouped]
    assert statuses.count("diverged") == 4 and statuses.count("finished") == 4
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'group' / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert sorted(r.data.tags["study.status"] for r in runs) == ["diverged"] * 4 + ["finished"] * 4


def test_cells_that_differ_in_shape_are_refused_as_a_group(tmp_path, prepared):
    cells = group_cells(tmp_path, prepared)[:2]
    deeper = compose_config("model.depth=6")
    cells.append(Cell(deeper, as_dict(deeper), "deeper", tmp_path / "deeper"))
    with pytest.raises(ValueError, match="model.depth"):
        check_stackable(cells)


PAGE_FAULTS = """
import resource, sys
import torch
from study.engine import allocator, nets
from study.config import ModelConfig, Skip
from study.engine.probes import Probe
from study.engine.stack import Stack

if sys.argv[1] == "keep":
    assert allocator.keep_freed_memory()
cfg = ModelConfig(depth=64, width=64, skip=Skip.dense)  # activations of growing sizes
stack = Stack.of([nets.build(40, 10, cfg, seed) for seed in range(4)], cfg)
g = torch.Generator().manual_seed(0)
x, y = torch.randn(4, 128, 40, generator=g), torch.randint(0, 10, (4, 128), generator=g)
probe = Probe(stack, cfg.activation, [(x, y)])
probe.measure()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    probe.measure()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_workers_keep_the_memory_they_free():
    # Probing again reuses the memory of the last probe instead of faulting fresh pages in
    # from the kernel (a depth-256 dense probe took 2.5x longer); glibc's default is the
    # known answer that shows the setting matters.
    faults = {
        mode: int(subprocess.run([sys.executable, "-c", PAGE_FAULTS, mode], capture_output=True,
                                 text=True, check=True).stdout)
        for mode in ("keep", "default")
    }  # fmt: skip
    assert faults["default"] > 10_000
    assert faults["keep"] < faults["default"] / 4  # measured: 0-3,644 against 32,633-72,740
