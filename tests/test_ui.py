"""The MLflow UI as a researcher meets it: ``make ui`` on a store the quick init sweep and a
small train sweep filled, looked at in a real browser (Playwright driving Debian's
chromium, which ``make`` set-up installs; Playwright's own browser download is never used).

Checks what the README promises: the runs view lists the cells with the axes the sweep
varied as columns (the init sweep's five and seed; the train sweep's learning rate), each
run name whole, a run page shows its params, gradient metrics, tags, description, dataset
and files and fits the window, metrics show six significant digits, the parent run shows
the sweep's summary, Duration is the record's wall time (a grouped cell's share), and the
server is local, light and sends nothing anywhere. Screenshots go to a temporary folder
(their path is printed); ``docs/mlflow-runs.png`` in the README is one of them.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from study import records

from .conftest import ROOT, subprocess_env, swept_project, train

pytestmark = pytest.mark.slow

AXES = ("model.depth", "model.activation", "model.init", "model.norm", "model.skip")
# The train sweep below: the quick train grid at one depth and one seed (8 cells).
TRAIN_SWEEP = ("+sweep=quick/train", "model.depth=4", "seed=0")
TRAIN_VARIED = ("model.activation", "optim.lr", "model.skip")  # its axes of two values
EXPANDER = 'button[data-component-id*="runnamecellrenderer"]'  # a parent row's "+"
ROWS = ".ag-center-cols-container .ag-row"
WAIT_MS = 90_000  # generous: the suite runs on two busy cores
HEADERS = "[...document.querySelectorAll('.ag-header-cell')].map(h => h.getAttribute('col-id'))"
IN_ORDER = f"""(expected) => {{
    const ids = {HEADERS}, first = ids.indexOf('duration') + 1;
    return JSON.stringify(ids.slice(first, first + expected.length)) === JSON.stringify(expected);
}}"""  # the columns after Duration are these, in this order
CLIP = {"x": 0, "y": 0, "width": 1700, "height": 720}  # the README's picture: table and columns
# The run names the Run Name column cuts short ("d4-relu-kaiming_normal-none-residual-..."):
# the link keeps its box inside the cell; its text, laid out whole, runs past it.
NAME_CUT = """() => [...document.querySelectorAll('.ag-pinned-left-cols-container .ag-row a')]
    .filter(a => { const text = document.createRange(); text.selectNodeContents(a);
                   return text.getBoundingClientRect().right > a.getBoundingClientRect().right; })
    .map(a => a.innerText)"""
# What scrolls sideways on a page: the window, or a box whose content is wider than it (the
# run page's own scroll box grew to ~2,850 px around a one-line command, its metrics' values
# off to the right).
WIDER = """() => [document.documentElement, ...document.querySelectorAll('body *')]
    .filter(e => e.scrollWidth > e.clientWidth + 1 && e.clientWidth > 0
                 && (e === document.documentElement
                     || ['auto', 'scroll'].includes(getComputedStyle(e).overflowX)))
    .map(e => `${e.tagName}.${e.className}: ${e.scrollWidth} px in ${e.clientWidth}`)"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ui(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "study.tracking.ui", *args], cwd=workdir, env=subprocess_env(),
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


@pytest.fixture(scope="module")
def store(tmp_path_factory, prepared, mlflow_template) -> Path:
    """A project folder after ``python -m study.train -m +sweep=quick/init`` (64 cells) and
    a train sweep, :data:`TRAIN_SWEEP` (8 cells), in the same store."""
    workdir = swept_project(tmp_path_factory, prepared, "ui", "-m", "+sweep=quick/init",
                            store=mlflow_template)  # fmt: skip
    proc = train(workdir, "-m", *TRAIN_SWEEP)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return workdir


@pytest.fixture(scope="module")
def server(store):
    """``python -m study.tracking.ui`` (what ``make ui`` runs): its process, base URL, printed
    lines and start time; stopped, with its whole process group, at the end."""
    port = free_port()
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "study.tracking.ui", "--port", str(port)],
                            cwd=store,
                            env=subprocess_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)  # fmt: skip
    lines = []
    for line in proc.stdout:
        lines.append(line.rstrip())
        if line.startswith("Per-layer charts"):
            break
    assert any(line.startswith("MLflow UI on") for line in lines), lines
    started = time.monotonic() - t0
    yield {"proc": proc, "base": f"http://127.0.0.1:{port}", "port": port, "lines": lines,
           "started_s": started}  # fmt: skip
    group = [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)
    time.sleep(0.5)
    left = [pid for pid in group if psutil.pid_exists(pid)
            and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]  # fmt: skip
    assert left == [], "the server outlived study.tracking.ui"


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright  # (its greenlet loop: only when used)

    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(chromium).exists():
        pytest.fail("chromium is not installed: `make setup` installs it (as root)")
    with sync_playwright() as p:
        # Playwright ignores PLAYWRIGHT_CHROMIUM_EXECUTABLE_PATH: the path is passed here.
        sandbox = ["--no-sandbox"] if os.geteuid() == 0 else []  # root has no user namespace
        launched = p.chromium.launch(executable_path=chromium, args=sandbox)
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("screenshots")
    print(f"\nscreenshots: {folder}")
    return folder


@pytest.fixture
def page(browser, server):
    """A fresh browser context (no local storage from an earlier test), recording every
    request it makes."""
    context = browser.new_context(viewport={"width": 2000, "height": 1100})
    tab = context.new_page()
    tab.set_default_timeout(WAIT_MS)
    tab.requests = []
    tab.on("request", lambda request: tab.requests.append(request.url))
    yield tab
    outside = [u for u in tab.requests if not u.startswith((server["base"], "data:", "blob:"))]
    assert outside == [], "the UI reached beyond the local server"
    context.close()


def cells(store: Path, sweep: str = "init") -> dict[str, dict]:
    """Each cell's record, with where MLflow mirrors it (its mlflow.json) as "mlflow"."""
    folder = store / "multirun/quick" / sweep
    sweep = json.loads((folder / "sweep.json").read_text())
    return {c["run_name"]: records.read_run(folder / c["dir"])
            | {"mlflow": records.read_mirror(folder / c["dir"])}
            for c in sweep["cells"]}  # fmt: skip


def shown_image(page) -> None:
    """The artifact viewer's picture (MLflow loads it as a blob), drawn: it has pixels."""
    image = page.locator("img[src^='blob:']").first
    image.wait_for()
    page.wait_for_function("i => i.complete && i.naturalWidth > 100", arg=image.element_handle())


def seconds(text: str) -> float:
    """A duration as MLflow's runs table prints it: 850ms, 1.2s, 3.5min, 2.0h."""
    value, unit = re.fullmatch(r"([\d.]+)\s*(ms|s|min|h)", text.strip()).groups()
    return float(value) * {"ms": 1e-3, "s": 1.0, "min": 60.0, "h": 3600.0}[unit]


def digits(text: str) -> int:
    """The significant digits of a number as the UI prints it: 0.0598473 has 6."""
    mantissa = re.split("e", text.strip().lower())[0]
    return len(mantissa.lstrip("-").replace(".", "").lstrip("0"))


def shown_cells(page, recorded: dict[str, dict], column: str) -> dict[str, str]:
    """Run name -> the text of its row's cell in ``column`` (col-id), for the recorded cells
    among the table's rows."""
    out = {}
    for row in page.locator(ROWS).all():
        index = row.get_attribute("row-index")
        name = page.locator(f".ag-pinned-left-cols-container .ag-row[row-index='{index}'] a")
        run_name = name.first.inner_text().strip() if name.count() else ""
        if run_name in recorded:
            out[run_name] = row.locator(f"[col-id='{column}']").inner_text()
    return out


def assert_durations_are_wall_times(page, recorded: dict[str, dict]) -> None:
    """Each cell's Duration is its record's wall time (its share of its group's), to the
    precision the table shows; every recorded cell is a row."""
    durations = shown_cells(page, recorded, "duration")
    for run_name, shown in durations.items():
        wall = recorded[run_name]["timings"]["wall_s"]
        precision = 1e-3 if shown.endswith("ms") else 0.05  # "7ms", "1.2s"
        assert abs(seconds(shown) - wall) <= precision + 1e-3, (run_name, shown, wall)
    assert len(durations) == len(recorded)


def test_the_ui_starts_local_and_light_and_refuses_bad_input(server, store):
    # Printed, not asserted: on two cores shared with other jobs it took 6 to 18 s.
    print(f"study.tracking.ui answered in {server['started_s']:.1f} s")
    listening = [c.laddr for c in psutil.net_connections("tcp")
                 if c.status == psutil.CONN_LISTEN and c.laddr.port == server["port"]]  # fmt: skip
    assert listening and {a.ip for a in listening} == {"127.0.0.1"}
    processes = psutil.Process(server["proc"].pid).children(recursive=True)
    assert len(processes) == 2, [p.cmdline() for p in processes]  # the CLI, one web worker
    assert not any("huey" in " ".join(p.cmdline()) for p in processes)  # no job runner
    with urllib.request.urlopen(f"{server['base']}/ajax-api/3.0/mlflow/ui-telemetry") as r:
        assert json.load(r)["disable_ui_telemetry"] is True
    url = [line for line in server["lines"] if "quick-init" in line][0].split()[-1]
    assert url.endswith("runs?workflowType=machine_learning&viewStateShareKey=cells")
    assert any("1 = input side" in line for line in server["lines"])

    taken = ui(store, "--port", str(server["port"]))
    assert (taken.returncode, taken.stdout) == (2, "")
    assert taken.stderr.splitlines() == [
        f"study.tracking.ui: error: --port: 127.0.0.1:{server['port']} is in use; "
        "choose another (make ui PORT=5001)"
    ]
    empty = store / "empty"
    empty.mkdir(exist_ok=True)
    missing = ui(empty)
    assert missing.returncode == 2 and missing.stderr.splitlines() == [
        "study.tracking.ui: error: mlflow.db: no MLflow store here; "
        "run a sweep or `make study` first"
    ]
    # make ui PORT=... reaches study.tracking.ui (the set-up stamp taken as done: no reinstall).
    made = subprocess.run(["make", "-s", "-o", ".venv/.installed", "ui", "PORT=x1"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert (
        made.returncode != 0
        and "study.tracking.ui: error: --port: 'x1' is not a number" in made.stderr
    )


def wider_than_their_box(page) -> list[str]:
    """:data:`WIDER`, once the page's layout has settled (its first frames can be wider)."""
    with contextlib.suppress(PlaywrightTimeout):
        page.wait_for_function(f"({WIDER})().length === 0", timeout=10_000)
    return page.evaluate(WIDER)


def test_the_home_page_has_no_telemetry_notice(page, server, shots):
    page.goto(f"{server['base']}/")
    page.get_by_text("Recent Experiments").wait_for()
    page.get_by_text("quick-init").first.wait_for()
    page.wait_for_timeout(1000)  # the notice, if any, renders with the page
    assert page.get_by_text("collects usage data").count() == 0  # telemetry is off: no notice
    page.screenshot(path=str(shots / "mlflow-home.png"))


def test_the_runs_view_lists_the_cells_with_the_axes_as_columns(page, server, store, shots):
    # The URL `make ui` prints, opened in a fresh browser.
    url = [line for line in server["lines"] if "quick-init" in line][0].split()[-1]
    page.goto(url)
    page.get_by_text("You're viewing a shared view").wait_for()
    page.locator(EXPANDER).first.click()  # the parent run "sweep init": its cells below it
    page.wait_for_function(f"document.querySelectorAll('{ROWS}').length > 20")
    columns = [*(f"params.`{a}`" for a in AXES), "params.`seed`", "tags.`study.status`"]
    # The saved view's column order lands a moment after its columns, when MLflow redraws
    # its grid (which it does not always do: then the columns come in MLflow's own order).
    with contextlib.suppress(PlaywrightTimeout):
        page.wait_for_function(IN_ORDER, arg=columns, timeout=10_000)
    shown = page.evaluate(HEADERS)
    assert set(columns) <= set(shown), shown
    assert "attributes.`Dataset`" in shown and "duration" in shown
    page.screenshot(path=str(shots / "mlflow-runs.png"), clip=CLIP)
    # Every cell is a row (all 64 and the parent drawn in a tall window), named as its
    # record, its Duration the record's wall time to the precision the table shows.
    page.set_viewport_size({"width": 2000, "height": 3200})
    page.wait_for_function(f"document.querySelectorAll('{ROWS}').length >= 65")
    recorded = cells(store)
    assert len(recorded) == 64
    assert_durations_are_wall_times(page, recorded)
    assert page.evaluate(NAME_CUT) == []


def test_the_train_view_shows_what_the_sweep_varied(page, server, store, shots):
    url = [line for line in server["lines"] if "quick-train" in line][0].split()[-1]
    page.goto(url)
    page.get_by_text("You're viewing a shared view").wait_for()
    page.locator(EXPANDER).first.click()
    recorded = cells(store, "train")
    page.wait_for_function(f"document.querySelectorAll('{ROWS}').length > {len(recorded)}")
    # The swept axes are columns (the learning rate among them), the fixed ones are not.
    shown = page.evaluate(HEADERS)
    assert {f"params.`{a}`" for a in TRAIN_VARIED} <= set(shown), shown
    fixed = ("model.depth", "model.init", "model.norm", "seed")
    assert not {f"params.`{a}`" for a in fixed} & set(shown), shown
    # Each run name whole, to its "-lr...-s0" end: the column is as wide as the longest.
    assert page.evaluate(NAME_CUT) == []
    # Each accuracy to six significant digits, the record's value rounded.
    accuracy = shown_cells(page, recorded, "metrics.`test_accuracy`")
    assert len(accuracy) == len(recorded)
    for run_name, text in accuracy.items():
        assert digits(text) <= 6, (run_name, text)
        assert float(text) == float(f"{recorded[run_name]['metrics']['test_accuracy']:.6g}")
    # A cell trained in a group (seeds, rates and inits share one stack): its own time.
    assert {r["timings"]["group_size"] for r in recorded.values()} != {1}
    assert_durations_are_wall_times(page, recorded)
    page.screenshot(path=str(shots / "mlflow-train-runs.png"), clip=CLIP)


def test_a_train_cell_page_fits_the_window_and_shows_six_digits(page, server, store, shots):
    record = cells(store, "train")["d4-tanh-kaiming_normal-none-residual-constant-lr0.01-s0"]
    info = record["mlflow"]
    page.set_viewport_size({"width": 1280, "height": 800})  # no wider than a laptop's window
    page.goto(f"{server['base']}/#/experiments/{info['experiment_id']}/runs/{info['run_id']}")
    page.get_by_role("heading", name=record["run_name"]).wait_for()
    page.get_by_text("Parameters (").first.wait_for()
    page.get_by_text("Reproduce this cell").wait_for()
    assert wider_than_their_box(page) == []
    page.get_by_text("Show more").first.click()  # the whole description: the command
    page.get_by_text("Show less").first.wait_for()
    text = page.inner_text("body")
    assert "python -m study.train \\\n  data.name=digits \\\n" in text
    assert "optim.lr=0.01 \\\n" in text
    assert wider_than_their_box(page) == []
    page.screenshot(path=str(shots / "mlflow-train-run.png"))
    # The Metrics table: every value to at most six significant digits.
    table = page.locator("[role=table]").filter(has_text="test_accuracy").first
    values = {}
    for row in table.locator("[role=row]").all_inner_texts()[1:]:  # after its header
        key, value = row.split("\n")
        values[key] = value
    assert len(values) >= 10 and "wall_s" in values, values
    assert all(digits(v) <= 6 for v in values.values()), values
    assert float(values["test_accuracy"]) == float(f"{record['metrics']['test_accuracy']:.6g}")


def test_a_run_page_shows_its_params_metrics_tags_description_and_files(page, server, store,
                                                                        shots):  # fmt: skip
    recorded = cells(store)
    name = "d16-tanh-xavier_normal-batch-residual-constant-s1"
    record = recorded[name]
    info = record["mlflow"]
    run_url = f"{server['base']}/#/experiments/{info['experiment_id']}/runs/{info['run_id']}"
    page.goto(run_url)
    page.get_by_role("heading", name=name).wait_for()
    page.get_by_text("Parameters (").first.wait_for()
    text = page.inner_text("body")
    for expected in ("model.depth", "model.activation", "xavier_normal", "signal_log10_rate_init",
                     "init_by_layer/log10_signal_grad_norm", "study.status",
                     "python -m study.train \\\n  model.depth=16 \\\n  model.width=64 \\\n",
                     "mnist1d", record["cell_key"]):  # fmt: skip
        assert expected in text, expected
    assert "tracking.experiment" not in text  # knobs only, and the cell's name, as the
    # preset names its cells with their residual scaling, which the default name leaves out
    assert f"run_name={name}" in text
    page.screenshot(path=str(shots / "mlflow-run.png"), full_page=True)

    page.get_by_role("tab", name="Model metrics").click()
    page.get_by_text("init_by_layer/log10_signal_grad_norm").first.wait_for()
    page.screenshot(path=str(shots / "mlflow-run-charts.png"))

    page.get_by_role("tab", name="Artifacts").click()
    for artifact in ("layers.parquet", "config.json", "profile.svg"):
        page.get_by_text(artifact, exact=True).first.wait_for()
    page.get_by_text("profile.svg", exact=True).first.click()
    shown_image(page)
    page.screenshot(path=str(shots / "mlflow-run-profile.png"))


def test_the_parent_run_shows_the_sweep_summary(page, server, store, shots):
    sweep = json.loads((store / "multirun/quick/init/sweep.json").read_text())
    page.goto(f"{server['base']}/#/experiments/{sweep['experiment_id']}/runs/"
              f"{sweep['parent_run_id']}")  # fmt: skip
    page.get_by_role("heading", name="sweep init").wait_for()
    page.get_by_text("Parameters (").first.wait_for()
    text = page.inner_text("body")
    for expected in ("grid.model.depth", "4,16", "grid.model.activation", "tanh,relu",
                     "python -m study.train -m +sweep=quick/init", "cells_finished"):  # fmt: skip
        assert expected in text, expected
    page.get_by_role("tab", name="Artifacts").click()
    page.get_by_text("sweep.json", exact=True).first.wait_for()
    page.get_by_text("figures", exact=True).first.click()
    page.get_by_text("decay_rate.png", exact=True).first.click()
    shown_image(page)
    page.screenshot(path=str(shots / "mlflow-parent.png"))
