"""The timing scripts of ``make bench`` still run against the code they time.

Each script is run as ``make bench`` runs it, at a size that takes seconds, and must end
with its table. Nothing here reads a timing: a script that no longer imports or calls the
engine (``loop.batch_indices`` once moved, and two of them broke unseen) fails here.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from study.engine.stack import Stack

ROOT = Path(__file__).resolve().parent.parent

# script -> (its arguments, lines of its last table it always prints)
SCRIPTS = {
    "bench_step": (
        "--steps 6 --repeats 1 --warmup 1 --depth 3 --width 16 --samples 400",
        ["instrumentation overhead:"],
    ),
    "bench_group": (
        "--nets 3 --steps 4 --repeats 1 --depth 3 --width 16 --samples 400",
        ["\nvmap ", "ceiling*"],  # the vmap variant's row, not its name in a repeat's line
    ),
    "bench_runlog": ("--cells 2 --depth 3 --repeats 1", ["ms per cell"]),
    "bench_sweep": ("--part fixed --jobs 4 --group 2", ["fixed cost per cell:"]),
}


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_benchmark_script_runs_to_its_table(script, tmp_path):
    args, table = SCRIPTS[script]
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / f"{script}.py"), *args.split()],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for line in table:
        assert line in done.stdout, done.stdout[-3000:]


def bench_group():
    """benchmarks/bench_group.py as a module (the benchmarks are scripts, not a package)."""
    path = ROOT / "benchmarks" / "bench_group.py"
    spec = importlib.util.spec_from_file_location("bench_group", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_vmap_variant_trains_what_the_stacked_engine_trains():
    """Timed side by side, the two must do the same work: the same nets from the same
    inits, on the same batches, with the same SGD steps. After 10 steps every parameter
    agrees up to float32 rounding (the engine's per-net rate tensor and PyTorch's scalar
    rate round the update differently), and has moved far more than that."""
    bench = bench_group()
    splits = bench.in_memory_splits(400)
    common = ["model.depth=3", "model.width=16", "optim=sgd", "optim.lr=0.05",
              "train.steps=10", "train.batch_size=32", "tracking.enabled=false"]  # fmt: skip
    inits = ("xavier_normal", "kaiming_normal")
    cfgs = [bench.compose_config(*common, f"seed={s}", f"model.init={inits[s % 2]}")
            for s in range(3)]  # fmt: skip
    x, y = torch.as_tensor(splits.x_train), torch.as_tensor(splits.y_train)
    models = bench.built(splits, cfgs)
    stack, vm = Stack.of(models, cfgs[0].model), bench.VmapNets(models)
    start = {name: p.clone() for name, p in vm.params.items()}

    bench.train_stacked(stack, cfgs, x, y)
    bench.train_vmapped(vm, cfgs, x, y)

    assert vm.params.keys() == stack.params.keys()
    for name, p in vm.params.items():
        torch.testing.assert_close(p, stack.parameter(name).detach(), rtol=1e-5, atol=1e-6)
        assert (p - start[name]).abs().max() > 1e-2, name
