"""How the MLflow UI copes with a sweep of the standard init size, in a real browser.

1. **Fill** a fresh SQLite store with one sweep experiment: a parent run and ``--cells``
   children under it (default 13,440, the standard ``init`` grid: 8 activations x 7 inits x
   3 norms x 4 skips x depths 4, 16, 64, 128 x 5 seeds), through the study's real logging
   path (``study.tracking.experiment`` for the experiment and parent,
   ``study.tracking.cell_runs.log_cells`` in groups of 21, one transaction each), from records
   shaped as the init sweep's are
   (one probe at initialization, the per-layer statistics a probe-only cell has: no
   update ratio, dead units only for the ReLU family, saturation only for sigmoid and
   tanh, gradients falling off toward the input).
2. **Serve** it with ``python -m study.tracking.ui`` (what ``make ui`` runs) and time its start.
3. **Browse** it with Playwright driving Debian's chromium: the runs view until its rows
   show, the parent's children after clicking its expander, the saved view "cells", a
   child's run page and the parent's run page. Each timing is from navigation (or the
   click) until the element a reader waits for is on screen. The saved view's columns are
   listed, and the child's page is measured in a 1280 px window: the widest content of
   any box that scrolls sideways (the window's own included), which fits when it is at
   most 1280 px.

Timings are printed, never asserted. Everything happens in a temporary folder.

    .venv/bin/python benchmarks/bench_ui.py [--cells 13440] [--port 5077] [--keep DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # for tests.test_runlog

from study import records  # noqa: E402
from study.config import LAYER_STATS, TrackingConfig  # noqa: E402
from study.tracking import cell_runs, experiment, mirror  # noqa: E402
from tests.test_runlog import synthetic_cell  # noqa: E402

ACTIVATIONS = ("sigmoid", "tanh", "relu", "leaky_relu", "prelu", "elu", "gelu", "selu")
INITS = ("default", "xavier_uniform", "xavier_normal", "kaiming_uniform", "kaiming_normal",
         "orthogonal", "lecun_normal")  # fmt: skip
GRID = {
    "model.depth": ("4", "16", "64", "128"), "model.activation": ACTIVATIONS,
    "model.init": INITS, "model.norm": ("none", "batch", "layer"),
    "model.skip": ("none", "residual", "highway", "dense"), "seed": tuple("01234"),
}  # fmt: skip
CHROMIUM = "/usr/bin/chromium"
# The "+" before a parent run's name in the runs table (MLflow 3.17's run name cell).
EXPANDER = 'button[data-component-id*="runnamecellrenderer"]'
# The widest content of the window or of any box that scrolls sideways, in px.
WIDEST = """Math.max(...[document.documentElement, ...document.querySelectorAll('body *')]
    .filter(e => e === document.documentElement
                 || ['auto', 'scroll'].includes(getComputedStyle(e).overflowX))
    .map(e => e.scrollWidth))"""


def cell(out_dir: Path, index: int, values: dict[str, str]) -> tuple:
    """A probe-only cell of the init sweep: the test suite's synthetic record, set to this
    cell's axes, with the statistics a probe at initialization measures."""
    depth = int(values["model.depth"])
    record, layers, out_dir = synthetic_cell(out_dir, index, depth=depth, steps=(0,))
    model = record["config"]["model"]
    for key in ("activation", "init", "norm", "skip"):
        model[key] = values[f"model.{key}"]
    record["config"]["seed"] = int(values["seed"])
    name = "d{}-{}-{}-{}-{}-s{}".format(depth, *(model[k] for k in ("activation", "init",
                                        "norm", "skip")), values["seed"])  # fmt: skip
    record["run_name"] = record["config"]["run_name"] = name
    record["started_at"] = datetime.now(UTC).isoformat()  # after the parent, as in a sweep
    decay = np.random.default_rng(index).uniform(0.7, 1.1)
    layers["signal_grad_norm"] = 1e-2 * decay ** (depth - layers["layer"])
    layers["weight_grad_norm"] = 3e-2 * decay ** (depth - layers["layer"])
    layers["update_ratio"][:] = np.nan
    if model["activation"] not in ("relu", "leaky_relu", "prelu", "elu"):
        layers["dead_fraction"][:] = np.nan
    if model["activation"] not in ("sigmoid", "tanh"):
        layers["saturated_fraction"][:] = np.nan
    records.write_parquet(out_dir / records.LAYERS_FILE, layers)
    return record, layers, out_dir


def fill(work: Path, n: int) -> tuple[str, str, float]:
    """(experiment id, parent run id, seconds per cell logged)."""
    uri = f"sqlite:///{work / 'mlflow.db'}"
    tracker = mirror.Tracker(uri, "standard-init")
    about = experiment.About(
        command="python -m study.train -m +sweep=standard/init", preset="standard/init",
        grid={k: list(v) for k, v in GRID.items()},
    )  # fmt: skip
    parent = experiment.open_parent(tracker, None, about, "init", work / "multirun", n)
    experiment.prepare_experiment(tracker, about, "init", parent)
    cfg = TrackingConfig(uri=uri, experiment="standard-init", layer_metrics=list(LAYER_STATS))
    combos = itertools.islice(itertools.cycle(itertools.product(*GRID.values())), n)
    group, logging_s = [], 0.0
    for index, combo in enumerate(combos):
        group.append(cell(work / "cells" / f"c{index}", index, dict(zip(GRID, combo, strict=True))))
        if len(group) == 21 or index == n - 1:
            t0 = time.perf_counter()
            cell_runs.log_cells(cfg, group, parent)
            logging_s += time.perf_counter() - t0
            group = []
        if (index + 1) % 2000 == 0:
            print(f"  {index + 1}/{n} cells logged", flush=True)
    tracker.client.set_terminated(parent, "FINISHED")
    return tracker.experiment_id, parent, logging_s / n


def serve(work: Path, port: int) -> tuple[subprocess.Popen, float]:
    t0 = time.monotonic()
    server = subprocess.Popen(
        [sys.executable, "-m", "study.tracking.ui", "--port", str(port)], cwd=work,
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True,
    )  # fmt: skip
    for line in server.stdout:
        if line.startswith("MLflow UI on"):
            return server, time.monotonic() - t0
    raise SystemExit("study.tracking.ui did not start")


def browse(base: str, experiment_id: str, runs: dict[str, str]) -> dict[str, float]:
    """Seconds until each view shows what a reader waits for; ``runs``: name -> run id of a
    child and of the parent."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import sync_playwright

    view = f"{base}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"
    rows = ".ag-center-cols-container .ag-row"
    count = f"document.querySelectorAll('{rows}').length"
    out: dict[str, float] = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        page.set_default_timeout(300_000)
        t0 = time.monotonic()
        page.goto(view)
        page.locator(rows).first.wait_for()
        out["runs view: first rows shown"] = time.monotonic() - t0
        t0 = time.monotonic()
        page.locator(EXPANDER).first.click()  # the parent's "+"
        page.wait_for_function(f"{count} > 5")
        out["parent expanded: its children shown"] = time.monotonic() - t0
        shown = page.evaluate(f"{count}")
        more = page.get_by_role("button", name="Load more")
        if more.count():  # MLflow fetches runs 100 at a time
            t0 = time.monotonic()
            with page.expect_response(lambda r: "runs/search" in r.url):
                more.first.click()
            page.wait_for_function(f"{count} > {shown}")
            out["'Load more': the next 100 runs shown"] = time.monotonic() - t0
        out["rows in the table after expanding"] = float(shown)
        t0 = time.monotonic()
        page.goto("about:blank")
        page.goto(f"{view}&viewStateShareKey={experiment.VIEW_ID}")
        page.get_by_text("You're viewing a shared view").wait_for()
        page.locator(rows).first.wait_for()
        out["saved view 'cells': first rows shown"] = time.monotonic() - t0
        headers = page.evaluate("[...document.querySelectorAll('.ag-header-cell')]"
                                ".map(h => h.getAttribute('col-id'))")  # fmt: skip
        print("saved view 'cells': columns " + ", ".join(h for h in headers if "`" in h))
        for label, (name, run_id) in zip(("a child", "the parent"), runs.items(), strict=True):
            t0 = time.monotonic()
            page.goto("about:blank")
            page.goto(f"{base}/#/experiments/{experiment_id}/runs/{run_id}")
            page.get_by_role("heading", name=name).wait_for()
            page.get_by_text("Parameters (").first.wait_for()
            out[f"{label}'s run page: parameters shown"] = time.monotonic() - t0
        page.set_viewport_size({"width": 1280, "height": 800})
        page.goto("about:blank")
        page.goto(f"{base}/#/experiments/{experiment_id}/runs/{next(iter(runs.values()))}")
        page.get_by_text("Reproduce this cell").wait_for()
        with contextlib.suppress(PlaywrightTimeout):  # its first frames can be wider
            page.wait_for_function(f"{WIDEST} <= 1280", timeout=10_000)
        out["child's page at 1280 px: widest content"] = page.evaluate(WIDEST)
        browser.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cells", type=int, default=13_440)
    parser.add_argument("--port", type=int, default=5077)
    parser.add_argument("--keep", type=Path, help="fill this folder and keep it")
    args = parser.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="bench-ui-"))
    work.mkdir(parents=True, exist_ok=True)
    os.chdir(work)  # the store's artifacts go to ./mlruns
    try:
        t0 = time.monotonic()
        experiment_id, parent, per_cell = fill(work, args.cells)
        size = (work / "mlflow.db").stat().st_size + sum(
            p.stat().st_size for p in work.glob("mlflow.db-*")
        )
        print(f"filled {args.cells} cells in {time.monotonic() - t0:.0f} s (MLflow logging "
              f"{1000 * per_cell:.1f} ms a cell); mlflow.db {size / 2**20:.0f} MiB")  # fmt: skip
        client = mirror.tracker(f"sqlite:///{work / 'mlflow.db'}", "standard-init").client
        [child] = client.search_runs([experiment_id], "tags.`study.status` = 'finished'",
                                     max_results=1)  # fmt: skip
        runs = {child.info.run_name: child.info.run_id, "sweep init": parent}
        server, started = serve(work, args.port)
        try:
            print(f"study.tracking.ui answered in {started:.1f} s")
            base = f"http://127.0.0.1:{args.port}"
            for name, value in browse(base, experiment_id, runs).items():
                unit = "" if name.startswith("rows") else " px" if "widest" in name else " s"
                print(f"{name:<42} {value:8.1f}{unit}")
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=30)
    finally:
        os.chdir(ROOT)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
