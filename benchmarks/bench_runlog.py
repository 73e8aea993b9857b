"""What MLflow bookkeeping costs per cell: ``study.tracking.cell_runs.log_cells`` on a group of
cells, through the client (create_run + log_batch + artifact copies + set_terminated, run by run,
each call its own transaction: the tracking-server path) and through the bulk path (the
group's rows in one transaction of MLflow's own table models: SQLite and PostgreSQL).

Each repeat logs a fresh group of ``--cells`` synthetic cells (``tests/test_runlog.py``'s
``synthetic_cell``: depth ``--depth``, ``--points`` probe points, the presets' per-layer
statistics (all eight; ``--layer-metrics 3``: the three the presets used to log) and their
profile picture (``--no-picture``: none)) with each path, alternating, into one SQLite store in a
temporary folder, and then logs the same cells again as a rerun (each run superseding the
first one, which goes to the trash). Printed: milliseconds per cell, median and best of the
repeats, side by side. Timings are printed, never asserted.

    .venv/bin/python benchmarks/bench_runlog.py [--cells 20] [--depth 16] [--points 2] [--repeats 5]
        [--layer-metrics 3] [--no-picture]
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # for tests.test_runlog

from study import records  # noqa: E402
from study.config import LAYER_STATS, TrackingConfig  # noqa: E402
from study.tracking import cell_runs  # noqa: E402
from tests.test_runlog import LAYER_METRICS, synthetic_cell  # noqa: E402

PATHS = ("client", "bulk")


def group(root: Path, cells: int, depth: int, points: int) -> list:
    steps = tuple(range(0, 20 * points, 20))
    return [synthetic_cell(root / f"c{i}", i, depth=depth, steps=steps) for i in range(cells)]


def timed_log(cfg: TrackingConfig, cells: list) -> float:
    """Seconds per cell; each record then written with its run, as train.py does."""
    t0 = time.perf_counter()
    logged = cell_runs.log_cells(cfg, cells, None)
    spent = (time.perf_counter() - t0) / len(cells)
    for (record, _, out_dir), info in zip(cells, logged, strict=True):
        records.write_json(out_dir / records.RUN_FILE, {**record, "mlflow": info})
    return spent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cells", type=int, default=20)
    parser.add_argument("--depth", type=int, default=16)
    parser.add_argument("--points", type=int, default=2, help="probe points per cell")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--layer-metrics", type=int, choices=(3, 8), default=8)
    parser.add_argument("--no-picture", action="store_true", help="no profile.svg")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-runlog-") as folder:
        os.chdir(folder)  # the SQLite store's artifacts go to ./mlruns
        try:
            run(Path(folder), args)
        finally:
            os.chdir(ROOT)


def run(work: Path, args: argparse.Namespace) -> None:
    uri = f"sqlite:///{work / 'mlflow.db'}"
    stats = LAYER_METRICS if args.layer_metrics == 3 else list(LAYER_STATS)
    configs = {  # tracking.bulk=false: through the client, as to a tracking server
        path: TrackingConfig(uri=uri, experiment=path, profile_plot=not args.no_picture,
                             layer_metrics=stats, bulk=path == "bulk")
        for path in PATHS
    }  # fmt: skip
    [(record, layers, out_dir)] = group(work / "probe", 1, args.depth, args.points)
    spec = cell_runs.run_spec(configs["bulk"], record, layers, out_dir, None, [])
    print(
        f"{args.cells} cells a group, depth {args.depth}, {args.points} probe point(s); a run: "
        f"{len(spec.metrics)} metric values, {len(spec.params)} params, {len(spec.tags) + 1} "
        f"tags, {len(spec.artifacts) + len(spec.documents)} artifacts; SQLite, "
        f"{args.repeats} repeats + 1 warm-up"
    )

    times: dict[tuple[str, str], list[float]] = {}
    gc.freeze()  # as a sweep worker does after its imports (_workers._init_worker)
    for repeat in range(args.repeats + 1):
        for path in PATHS:
            cells = group(work / f"{path}{repeat}", args.cells, args.depth, args.points)
            for phase in ("fresh", "rerun"):
                spent = timed_log(configs[path], cells)
                if repeat:  # the first repeat warms up (imports, tables, experiments)
                    times.setdefault((phase, path), []).append(spent)

    print(f"\n{'ms per cell':<34}{'client (old)':>14}{'bulk (new)':>12}{'ratio':>8}")
    for phase, label in (("fresh", "new runs, median"), ("rerun", "rerun, trashing the old")):
        for stat, fn in (("median", statistics.median), ("best", min)):
            old, new = (1000 * fn(times[phase, path]) for path in PATHS)
            name = label if stat == "median" else f"{label.split(',')[0]}, best"
            print(f"{name:<34}{old:>14.2f}{new:>12.2f}{old / new:>7.1f}x")


if __name__ == "__main__":
    main()
