"""The timing scripts of ``make bench`` still run against the code they time.

Each script is run as ``make bench`` runs it, at a size that takes seconds, and must end
with its table. Nothing here reads a timing: a script that no longer imports or calls the
engine (``loop.batch_indices`` once moved, and two of them broke unseen) fails here.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# script -> (its arguments, a line its last table always prints)
SCRIPTS = {
    "bench_step": (
        "--steps 6 --repeats 1 --warmup 1 --depth 3 --width 16 --samples 400",
        "instrumentation overhead:",
    ),
    "bench_group": (
        "--nets 3 --steps 4 --repeats 1 --depth 3 --width 16 --samples 400",
        "ceiling*",
    ),
    "bench_runlog": ("--cells 2 --depth 3 --repeats 1", "ms per cell"),
    "bench_sweep": ("--part fixed --jobs 4 --group 2", "fixed cost per cell:"),
}


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_benchmark_script_runs_to_its_table(script, tmp_path):
    args, last_table = SCRIPTS[script]
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / f"{script}.py"), *args.split()],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert last_table in done.stdout, done.stdout[-3000:]
