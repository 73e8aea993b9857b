"""The DVC pipeline, end to end on the quick profile, in a temporary copy of the repository.

The copy is a fresh git repository holding this checkout's files (committed or not), so the
tests see what a user who clones and runs `dvc exp run -S profile=quick` sees. The tests of
this module share that copy and run in order: each leaves the pipeline up to date.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from study import records
from study.analysis import collect
from study.analysis.verdicts import VERDICTS
from study.profiles import SWEEPS

from .conftest import ROOT, subprocess_env

pytestmark = pytest.mark.slow

QUICK = {
    "init": 64,
    "train": 32,
    "optim": 8,
    "scale": 24,
    "theory": 12,
    "regularize": 16,
    "curriculum": 16,
    "phase": 6,
    "width": 8,
    "jacobian": 4,
}  # conf/sweep/quick/*.yaml
# dvc.yaml's stages in the order DVC runs them: one sweep stage per sweep of the profile.
STAGES = ("prepare", *(f"sweep@{name}" for name in SWEEPS), "collect", "analyze", "figures",
          "report", "publish")  # fmt: skip


def run(repo: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = subprocess_env()
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"  # `python` of the stages
    proc = subprocess.run(args, cwd=repo, env=env, capture_output=True, text=True, timeout=900)
    if check:
        assert proc.returncode == 0, (
            f"{' '.join(args)}:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}"
        )
    return proc


def stages_run(output: str) -> list[str]:
    return re.findall(r"Running stage '([\w@]+)'", output)


def checkout_copy(dest: Path) -> Path:
    """This checkout's files (tracked, and untracked unless ignored) in a new git repository."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout.split("\0")  # fmt: skip
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file() and name != "dvc.lock":
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    for args in (["init", "-q"], ["config", "user.name", "test"],
                 ["config", "user.email", "test@example.org"], ["add", "-A"],
                 ["commit", "-qm", "checkout"]):  # fmt: skip
        subprocess.run(["git", *args], cwd=dest, check=True, capture_output=True)
    return dest


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    """The copy, after the documented quick-profile command has run the whole pipeline."""
    repo = checkout_copy(tmp_path_factory.mktemp("repo"))
    proc = run(repo, "dvc", "exp", "run", "-S", "profile=quick")
    assert stages_run(proc.stdout) == list(STAGES)
    return repo


def test_quick_profile_runs_end_to_end_then_everything_is_up_to_date(repo):
    assert "up to date" in run(repo, "dvc", "status").stdout
    again = run(repo, "dvc", "repro")
    assert stages_run(again.stdout) == []
    for name, cells in QUICK.items():
        info = json.loads((repo / "multirun" / "quick" / name / "sweep.json").read_text())
        assert info["complete"] and len(info["cells"]) == cells


def test_tables_have_the_documented_columns_and_dtypes(repo):
    runs = pd.read_parquet(repo / "results" / "tables" / "runs.parquet")
    layers = pd.read_parquet(repo / "results" / "tables" / "layers.parquet")
    curves = pd.read_parquet(repo / "results" / "tables" / "curves.parquet")
    declared_tables = ((runs, collect.RUN_COLUMNS), (layers, collect.LAYER_COLUMNS),
                       (curves, collect.CURVE_COLUMNS))  # fmt: skip
    for frame, declared in declared_tables:
        assert list(frame.columns) == list(declared)
        assert {c: str(frame[c].dtype) for c in frame} == {c: str(t) for c, t in declared.items()}
    # A trained run's curve is its run.json's: one row per evaluation, the last at its end.
    trained = runs[(runs["steps"] > 0) & (runs["status"] == "finished")].iloc[0]
    curve = curves[
        (curves["sweep"] == trained["sweep"]) & (curves["run_name"] == trained["run_name"])
    ]
    record = json.loads((repo / trained["run_dir"] / "run.json").read_text())
    assert curve["step"].tolist() == record["curve"]["step"]
    assert curve["val_accuracy"].tolist() == pytest.approx(record["curve"]["val_accuracy"])
    assert curve["step"].max() == trained["steps"]

    assert runs["sweep"].value_counts().to_dict() == QUICK
    assert not runs.duplicated(["sweep", "cell_id", "seed"]).any()
    assert set(runs["status"]) <= {"finished", "diverged"}
    # Every layer row carries its run's axes; every run has its depth's layers at step 0.
    run = ["sweep", "run_name"]  # names repeat across sweeps (same cell, other budget)
    merged = layers.merge(runs, on=run, suffixes=("", "_run"))
    assert len(merged) == len(layers)
    for axis in ("depth", "activation", "init", "norm", "skip", "seed", "lr"):
        assert (merged[axis].astype(str) == merged[f"{axis}_run"].astype(str)).all()
    at_init = layers[layers["step"] == 0].groupby(run, observed=True)["layer"].max()
    assert (at_init.sort_index() == runs.set_index(run)["depth"].sort_index()).all()


def test_metrics_show_prints_the_collect_counts(repo):
    shown = json.loads(run(repo, "dvc", "metrics", "show", "--json").stdout)
    [workspace] = shown.values()
    counts = workspace["data"]["results/metrics/collect.json"]["data"]
    total = counts["all"]
    assert total["runs"] == sum(QUICK.values()) == total["finished"] + total["diverged"]
    assert total["failed"] == 0
    assert {k: v["runs"] for k, v in counts.items() if k != "all"} == QUICK


def test_tables_agree_with_mlflow(repo):
    runs = pd.read_parquet(repo / "results" / "tables" / "runs.parquet")
    client = MlflowClient(tracking_uri=f"sqlite:///{repo / 'mlflow.db'}")
    trained = runs[runs["steps"] > 0]
    for row in trained.itertuples():
        logged = client.get_run(row.mlflow_run_id)
        assert logged.info.run_name == row.run_name
        assert logged.data.tags["study.status"] == row.status
        if row.status == "finished":
            # (MLflow holds it to six significant digits, the table to full precision.)
            assert logged.data.metrics["test_accuracy"] == float(f"{row.test_accuracy:.6g}")
        else:  # a diverged run has no test accuracy, in the table (NaN) or in MLflow
            assert np.isnan(row.test_accuracy) and "test_accuracy" not in logged.data.metrics
        assert logged.data.tags["study.cell_key"] == row.cell_key


def test_collect_gathers_only_the_cells_of_the_current_grid(repo):
    runs_file = repo / "results" / "tables" / "runs.parquet"
    before = runs_file.read_bytes()
    sweep_dir = repo / "multirun" / "quick" / "train"
    # A record left by another grid, in the same folder: not part of the sweep, not collected.
    [first, *_] = sorted(p for p in sweep_dir.iterdir() if p.is_dir())
    shutil.copytree(first, sweep_dir / "d99-stale-cell")
    proc = run(repo, "python", "-m", "study.analysis.collect", "--profile", "quick")
    assert runs_file.read_bytes() == before
    assert f"train {QUICK['train']} (" in proc.stdout
    shutil.rmtree(sweep_dir / "d99-stale-cell")

    # A cell of the grid whose record is gone: one line naming it, and nothing written.
    (first / "run.json").rename(first / "run.json.away")
    missing = run(repo, "python", "-m", "study.analysis.collect", "--profile", "quick", check=False)
    (first / "run.json.away").rename(first / "run.json")
    assert missing.returncode == 1
    [line] = missing.stderr.strip().splitlines()
    assert first.name in line and "dvc repro" in line
    assert runs_file.read_bytes() == before


def test_a_failed_collect_keeps_the_previous_tables_and_a_successful_one_replaces_them(repo):
    out = repo / "results"
    names = ["tables/runs.parquet", "tables/layers.parquet", "tables/curves.parquet",
             "metrics/collect.json"]  # fmt: skip
    before = {name: (out / name).read_bytes() for name in names}
    sweep_dir = repo / "multirun" / "quick" / "train"
    cells = json.loads((sweep_dir / "sweep.json").read_text())["cells"]
    depth = {c["dir"]: records.read_run(sweep_dir / c["dir"])["config"]["model"]["depth"]
             for c in cells}  # fmt: skip
    shallow = sweep_dir / next(d for d, n in depth.items() if n == 4) / "layers.parquet"
    deep = sweep_dir / next(d for d, n in depth.items() if n == 8) / "layers.parquet"
    kept = shallow.read_bytes()
    shallow.write_bytes(deep.read_bytes())  # another cell's layer table
    # DVC removes a stage's outputs before it runs it, unless they are persisted.
    failed = run(repo, "dvc", "repro", "--force", "--single-item", "collect", check=False)
    assert failed.returncode != 0
    assert f"{shallow.parent.name}: layers.parquet has layers 1-8 for a depth-4 cell" in (
        failed.stderr
    )
    assert {name: (out / name).read_bytes() for name in names} == before

    shallow.write_bytes(kept)
    (out / names[0]).write_bytes(b"not the tables")
    assert stages_run(run(repo, "dvc", "repro").stdout) == ["collect"]  # an out changed
    assert {name: (out / name).read_bytes() for name in names} == before
    assert "up to date" in run(repo, "dvc", "status").stdout


def test_an_unrelated_change_reruns_nothing(repo):
    with (repo / "README.md").open("a") as f:
        f.write("\nA note that no stage reads.\n")
    assert "up to date" in run(repo, "dvc", "status").stdout
    assert stages_run(run(repo, "dvc", "repro").stdout) == []


def test_changing_a_module_reruns_the_stages_that_import_it(repo):
    with (repo / "study" / "analysis" / "collect.py").open("a") as f:
        f.write("\n# an edit\n")
    assert stages_run(run(repo, "dvc", "repro").stdout) == ["collect"]


def test_analyze_writes_every_result_and_is_deterministic(repo):
    out = repo / "results" / "analysis"
    names = ("decay_rates", "factor_effects", "trainable_depth", "claims")
    first = {n: (out / f"{n}.parquet").read_bytes() for n in names}
    again = run(repo, "python", "-m", "study.analysis.analyze", "--out", "results/analysis-again")
    assert "claims:" in again.stdout
    for n in names:
        assert (repo / "results" / "analysis-again" / f"{n}.parquet").read_bytes() == first[n]
    verdicts = json.loads((out / "claims.json").read_text())
    assert set(verdicts) == {f"C{i}" for i in range(1, 20)}
    assert {v["verdict"] for v in verdicts.values()} <= set(VERDICTS)
    claims = pd.read_parquet(out / "claims.parquet")
    assert set(claims["claim"]) == set(verdicts)
    target = claims[claims["carries_verdict"]]
    assert set(target["role"]) == {"target"} and set(target["verdict"]) <= set(VERDICTS)
    assert (claims.loc[~claims["carries_verdict"], "verdict"] == "").all()
    assert claims["stratum"].notna().all()
    untested = target[target["verdict"] == "not tested"]
    assert untested["note"].str.startswith("not tested: ").all()
    rates = pd.read_parquet(out / "decay_rates.parquet")
    relu_he = rates.query("sweep == 'init' and activation == 'relu' and init == 'kaiming_normal'"
                          " and norm == 'none' and skip == 'none'")  # fmt: skip
    assert len(relu_he) and (relu_he["theory_rate"].abs() < 1e-9).all()


SECTIONS = ("Abstract", "Introduction", "Methods", "Results", "Theory against measurement",
            "Claims against evidence", "Limitations", "Reproducibility", "References")  # fmt: skip


def pdf_text(pdf: Path) -> str:
    return subprocess.run(["pdftotext", "-layout", str(pdf), "-"], capture_output=True,
                          text=True, check=True).stdout  # fmt: skip


def test_the_pipeline_ends_in_a_paper_with_every_section_claim_and_figure(repo):
    pdf = repo / "paper" / "main.pdf"
    text = pdf_text(pdf)
    for heading in SECTIONS:
        assert re.search(rf"^\s*(\d+\s+)?{heading}\s*$", text, re.M), heading
    verdict = r"(supported|refuted|mixed|inconclusive|not tested)"
    # A row of the claims table for every claim, with its verdict (+ a dagger when fragile).
    for claim in range(1, 20):
        assert re.search(rf"^\s*C{claim}\s.*\b{verdict}†?\s*$", text, re.M), f"C{claim}"
    assert "??" not in text  # an unresolved reference or citation
    assert not re.search(r"\\[A-Za-z]+", text)  # a macro printed instead of expanded
    # Every figure of the two manifests (the articles', beyond the articles') has its caption.
    drawn = repo / "paper" / "generated" / "figures"
    manifest = {**json.loads((drawn / "figures.json").read_text()),
                **json.loads((drawn / "beyond.json").read_text())}  # fmt: skip
    captions = re.findall(r"Figure (\d+):", text)
    assert len(set(captions)) == len(manifest) >= 12
    pages = subprocess.run(["pdfinfo", str(pdf)], capture_output=True, text=True, check=True)
    assert int(re.search(r"Pages:\s+(\d+)", pages.stdout).group(1)) >= 10
    assert "quick" in text and "Source: stage figures" in text


def test_the_study_run_leads_from_mlflow_to_the_report(repo):
    client = MlflowClient(tracking_uri=f"sqlite:///{repo / 'mlflow.db'}")
    info = json.loads((repo / "results" / "publish" / "study_run.json").read_text())
    experiment = client.get_experiment_by_name("quick-study")
    assert experiment.experiment_id == info["experiment_id"]
    [study] = client.search_runs([experiment.experiment_id])  # one study run, no duplicates
    assert study.info.run_id == info["run_id"] and study.info.status == "FINISHED"
    artifacts = {a.path for a in client.list_artifacts(study.info.run_id)}
    assert {"main.pdf", "claims.json", "figures"} <= artifacts
    figures = {a.path for a in client.list_artifacts(study.info.run_id, "figures")}
    assert "figures/claims_forest.png" in figures
    verdicts = json.loads((repo / "results" / "analysis" / "claims.json").read_text())
    assert {k: v for k, v in study.data.tags.items() if k.startswith("study.claim.")} == {
        f"study.claim.{c}": v["verdict"] for c, v in verdicts.items()
    }
    # Its description links every sweep's runs and parent run.
    note = study.data.tags["mlflow.note.content"]
    for name in QUICK:
        sweep = json.loads((repo / "multirun" / "quick" / name / "sweep.json").read_text())
        assert f"#/experiments/{sweep['experiment_id']}/runs/{sweep['parent_run_id']}" in note


def test_a_figure_code_change_reruns_figures_and_report_only(repo):
    style = repo / "study" / "report" / "style.py"
    # A new colour for ReLU: the figures change, so the paper is rebuilt; nothing upstream.
    style.write_text(style.read_text().replace('"#D55E00"', '"#A04000"', 1))
    status = run(repo, "dvc", "status").stdout
    assert "figures:" in status and "analyze:" not in status and "collect:" not in status
    # What a repro would run, without running it (the figures and the paper: ~25 s here).
    assert stages_run(run(repo, "dvc", "repro", "--dry").stdout) == ["figures", "report"]


# Last: it leaves the pipeline out of date (the stages after sweep@train not rerun).
def test_adding_a_seed_trains_only_the_new_cells(repo):
    preset = repo / "conf" / "sweep" / "quick" / "train.yaml"
    preset.write_text(preset.read_text().replace("      seed: 0,1\n", "      seed: 0,1,2\n"))
    sweep_dir = repo / "multirun" / "quick" / "train"
    mtimes = {p: p.stat().st_mtime_ns for p in sweep_dir.glob("*/run.json")}

    assert "conf/sweep/quick/train.yaml" in run(repo, "dvc", "status").stdout
    changed = run(repo, "dvc", "params", "diff").stdout
    assert re.search(
        r"conf/sweep/quick/train\.yaml\s+hydra\.sweeper\.params\.seed\s.*0,1,2", changed
    )
    proc = run(repo, "dvc", "repro", "sweep@train")  # the rest is what the first test ran
    assert stages_run(proc.stdout) == ["sweep@train"]
    [(finished, diverged, failed, skipped)] = re.findall(
        r"(\d+) finished, (\d+) diverged, (\d+) failed, (\d+) skipped", proc.stdout
    )[-1:]
    assert (int(finished) + int(diverged), int(failed), int(skipped)) == (16, 0, 32)
    assert mtimes == {p: p.stat().st_mtime_ns for p in mtimes}  # old cells untouched
    cells = json.loads((sweep_dir / "sweep.json").read_text())["cells"]
    assert len(cells) == 48
    seeds = {records.read_run(sweep_dir / c["dir"])["config"]["seed"] for c in cells}
    assert seeds == {0, 1, 2}
    # The new cell list is what collect reads: the tables (and all after them) are stale.
    status = run(repo, "dvc", "status").stdout
    assert "collect:" in status and "modified:           multirun/quick" in status
