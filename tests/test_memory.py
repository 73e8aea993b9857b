"""The memory estimate (study.engine.memory) against the peak resident memory of real runs:
never below it (a run it lets through fits), and not so far above that it refuses runs a
machine could hold."""

from __future__ import annotations

import subprocess
import sys

import pytest

from .conftest import ROOT, subprocess_env

PEAK = """
import resource, sys, tempfile
from pathlib import Path
sys.path.insert(0, {root!r})
from tests.conftest import compose_config
from study.data import load_cached
from study.engine import memory
from study.runs.cell import Cell, execute_group
cfg = compose_config(*sys.argv[1:])
splits = load_cached(cfg.data)
[done] = execute_group([Cell(cfg, {{}}, "key", Path(tempfile.mkdtemp()))], splits)
assert done.record["status"] == "finished", done.record["status"]
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(memory.estimate(cfg, splits.num_features, splits.num_classes, splits.largest_split), peak)
"""
SHAPES = {
    "wide, AdamW": ("model.depth=4", "model.width=2048", "optim=adamw", "train.steps=2"),
    "deep, batch norm, 4 probe batches": (
        "model.depth=128",
        "model.width=128",
        "model.norm=batch",
        "model.skip=residual",
        "train.steps=3",
        "probe.batches=4",
    ),  # fmt: skip
    "dense": ("model.depth=32", "model.skip=dense", "train.steps=3"),
    "big batch": ("model.depth=8", "model.width=1024", "train.batch_size=512", "train.steps=3"),
}


@pytest.mark.slow
def test_the_estimate_bounds_the_peak_from_above_within_a_factor_of_four(prepared):
    running = {
        name: subprocess.Popen(
            [
                sys.executable,
                "-c",
                PEAK.format(root=str(ROOT)),
                f"data.dir={prepared}",
                "tracking.enabled=false",
                "optim.lr=0.001",
                *args,
            ],
            env=subprocess_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for name, args in SHAPES.items()
    }
    for name, proc in running.items():
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-2000:]
        estimate, peak = map(int, out.split())
        print(f"{name}: estimate {estimate / 1e6:.0f} MB, peak {peak / 1e6:.0f} MB")
        assert peak <= estimate <= 4 * peak, (name, estimate / 1e6, peak / 1e6)
