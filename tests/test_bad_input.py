"""Bad input as a user types it: one line naming the key and what is valid, exit status 2,
and nothing written (no run folder, no MLflow store), before any work; Ctrl-C: one line."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from study.config import MAX_SEED, ConfigError, validate
from study.engine import memory
from study.runs import train
from study.tracking import uri

from .conftest import compose_config, foreground, subprocess_env

HUGE = "model.depth=20000 model.width=2048"  # within the bounds, beyond any machine's memory
# (arguments, key the line names, what else it says); a sweep's start with -m.
CASES = [
    ("optim.lr=inf", "optim.lr", "finite"),
    ("data.input_scale=inf", "data.input_scale", "finite"),
    ("model.highway.gate_bias=nan", "model.highway.gate_bias", "finite"),
    ("model.depth=1000000", "model.depth", "100,000"),
    ("model.depth=99999999999999999999", "model.depth", ""),  # past int64
    (HUGE, "model", "need about"),
    (f"seed={MAX_SEED + 1}", "seed", str(MAX_SEED)),
    ("model.width=100000000", "model.width", "1,000,000"),
    ("tracking.uri=foo://bar", "tracking.uri", "unknown scheme 'foo'"),
    ("tracking.uri=sqlite:///missing/dir/mlflow.db", "tracking.uri", "does not exist"),
    ("model.activation=swish", "model.activation", "sigmoid, tanh, relu"),
    ("data.dir=missing/prepared", "data.name", "python -m study.data"),
    ("hydra.run.dir=blocker/run", "blocker", "Not a directory"),
    ("-m +sweep=standard/trian", "+sweep", "standard/train"),
    ("-m +sweep=smoke optim.lr=0.1,inf", "optim.lr", "finite"),
    ("-m +sweep=smoke model.depth=2,20000 model.width=2048", "model", "need about"),
    ("-m +sweep=smoke tracking.uri=foo://bar", "tracking.uri", "unknown scheme"),
    ("-m +sweep=smoke hydra.sweep.dir=blocker/sweep", "hydra.sweep.dir", "blocker/sweep"),
    ("-m +sweep=smoke model.activation=relu,swish", "model.activation", "swish"),
    ("-m +sweep=smoke data.dir=data/prepared,not/prepared", "data.name", "python -m study.data"),
    (
        "-m +sweep=smoke hydra.launcher.start_method=threads",
        "hydra.launcher.start_method",
        "fork, spawn",
    ),
]


@pytest.fixture(scope="module")
def answers(tmp_path_factory, prepared) -> dict[str, tuple[Path, subprocess.CompletedProcess]]:
    """Every case of CASES, each in a project folder of its own, all run at once."""
    running = {}
    for args, _, _ in CASES:
        work = tmp_path_factory.mktemp("bad")
        (work / "data").mkdir()
        (work / "data" / "prepared").symlink_to(prepared)
        (work / "blocker").write_text("a file where a folder would go\n")
        running[args] = (work, subprocess.Popen(
            [sys.executable, "-m", "study.train", *args.split()], cwd=work,
            env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        ))  # fmt: skip
    out = {}
    for args, (work, proc) in running.items():
        stdout, stderr = proc.communicate(timeout=300)
        out[args] = (work, subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr))
    return out


@pytest.mark.parametrize(("args", "key", "hint"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_nothing_written(answers, args, key, hint):
    work, proc = answers[args]
    assert proc.returncode == 2, proc.stderr + proc.stdout
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("study.train: error: ")
    assert key in lines[0] and hint in lines[0], lines[0]
    assert "Traceback" not in proc.stderr + proc.stdout
    written = [p for p in work.rglob("*") if p.name not in ("data", "prepared", "blocker")]
    assert [p for p in written if not p.is_relative_to(work / "data")] == []


# ------------------------------------------------------------- the checks, in process


@pytest.mark.parametrize(
    ("override", "key", "hint"),
    [
        ("model.depth=-1", "model.depth", "-1"),
        ("model.width=0", "model.width", "0"),
        ("optim.lr=0", "optim.lr", "> 0"),
        ("optim.lr=-inf", "optim.lr", "finite"),
        ("data.input_scale=0", "data.input_scale", "> 0"),
        ("model.dropout=1", "model.dropout", "[0, 1)"),
        ("model.dropout=-0.1", "model.dropout", "[0, 1)"),
        ("seed=-1", "seed", "-1"),
        ("train.patience=-1", "train.patience", ">= 0"),
        ("optim.betas=[0.9,nan]", "optim.betas.1", "finite"),
    ],
)
def test_a_value_out_of_range_names_its_key(override, key, hint):
    with pytest.raises(ConfigError) as err:
        validate(compose_config(override))
    assert err.value.key == key and hint in str(err.value)


def test_early_stopping_needs_a_plateau_criterion():
    with pytest.raises(ConfigError, match="train.early_stop: needs a plateau"):
        validate(compose_config("train.early_stop=true", "train.patience=0"))


def test_the_memory_estimate_refuses_what_the_machine_cannot_hold(mnist1d, monkeypatch):
    cfg = compose_config("model.depth=64", "model.width=256")
    need = memory.estimate(cfg, mnist1d.num_features, mnist1d.num_classes, mnist1d.largest_split)
    monkeypatch.setattr(memory, "available", lambda: need + 1)
    memory.check(cfg, mnist1d)  # fits
    monkeypatch.setattr(memory, "available", lambda: need - 1)
    with pytest.raises(ConfigError, match="need about .* available .memory_check=false"):
        memory.check(cfg, mnist1d)
    cfg.memory_check = False
    memory.check(cfg, mnist1d)  # the user's call


def test_dense_nets_need_more_memory_than_plain_ones_of_their_depth(mnist1d):
    args = (mnist1d.num_features, mnist1d.num_classes, mnist1d.largest_split)
    plain = memory.estimate(compose_config("model.depth=64"), *args)
    dense = memory.estimate(compose_config("model.depth=64", "model.skip=dense"), *args)
    assert dense > plain


@pytest.mark.parametrize(
    ("value", "hint"),
    [("foo://bar", "unknown scheme"), ("sqlite:///nowhere/m.db", "does not exist")],
)
def test_tracking_uris_mlflow_would_guess_at_are_refused(value, hint):
    with pytest.raises(ConfigError, match=hint):
        uri.check(value)


def test_credentials_leave_the_uri_for_the_clients_environment():
    environ: dict[str, str] = {}
    clean = uri.move_credentials("https://alice:s%40cret@mlflow.example:5000/x", environ)
    assert clean == "https://mlflow.example:5000/x"
    assert environ == {"MLFLOW_TRACKING_USERNAME": "alice", "MLFLOW_TRACKING_PASSWORD": "s@cret"}
    with pytest.raises(ConfigError, match="would be written to every record"):
        uri.move_credentials("mysql://bob:pw@db/mlflow", {})


# ---------------------------------------------------------------------------- Ctrl-C


@pytest.mark.slow
@pytest.mark.parametrize("sweep", [False, True], ids=["run", "sweep"])
def test_ctrl_c_ends_a_run_or_a_sweep_with_one_line(workdir, sweep):
    args = ["model.depth=8", "train.steps=100000", "train.eval_every=1000"]
    if sweep:
        args = ["-m", "+sweep=smoke", *args, "seed=0,1,2,3"]
    # A session of its own: Ctrl-C reaches a terminal's whole process group (workers too).
    proc = subprocess.Popen([sys.executable, "-m", "study.train", *args], cwd=workdir,
                            env=subprocess_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=foreground)  # fmt: skip
    deadline = time.monotonic() + 120
    folder = workdir / ("multirun" if sweep else "outputs")
    while not (folder.exists() and any(folder.rglob("*-s0*"))):  # the run is under way
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.2)
    time.sleep(3)  # training
    os.killpg(proc.pid, signal.SIGINT)
    try:
        stdout, stderr = proc.communicate(timeout=120)
    finally:  # a run that ignored Ctrl-C must not train on after the test
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr + stdout
    assert [line for line in stderr.splitlines() if line.strip()] == [
        "study.train: interrupted; what was recorded before stays, nothing is half-written"
    ]


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # unprotected
def test_an_interrupt_lost_in_a_garbage_collection_callback_is_raised_again():
    class CollectedDuringCtrlC:
        def __del__(self):
            raise KeyboardInterrupt  # where the signal lands if it comes mid-collection

    def work(seconds: float) -> str:
        CollectedDuringCtrlC()  # collected at once; Python alone would print and go on
        # The interrupted code: short sleeps, so that a pending interrupt is raised within
        # 10 ms of its coming (a long sleep would be noticed only as it ends).
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            time.sleep(0.01)
        return "ran to its end"

    # Ctrl-C raises here as in a foreground command (a background job's pytest ignores it).
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        assert work(0.3) == "ran to its end"  # unprotected, the interrupt is lost
        # Protected, it comes again 0.05 s later; 10 s leaves a loaded machine time to start
        # the timer's thread (not a wait: the interrupt ends the work as soon as it comes).
        with pytest.raises(KeyboardInterrupt), train.interrupts_never_lost():
            work(10.0)
    finally:
        signal.signal(signal.SIGINT, previous)
