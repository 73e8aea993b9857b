"""The MLflow UI as a researcher meets it: ``make ui`` on a store the quick init sweep
filled, looked at in a real browser (Playwright driving Debian's chromium, which ``make``
set-up installs; Playwright's own browser download is never used).

Checks what the README promises: the runs view lists the cells with the five axes as
columns, a run page shows its params, gradient metrics, tags, description, dataset and
files, the parent run shows the sweep's summary, Duration is the record's wall time, and
the server is local, light and sends nothing anywhere. Screenshots go to a temporary
folder (their path is printed); ``docs/mlflow-runs.png`` in the README is one of them.
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

from .conftest import ROOT, subprocess_env, swept_project

pytestmark = pytest.mark.slow

AXES = ("model.depth", "model.activation", "model.init", "model.norm", "model.skip")
EXPANDER = 'button[data-component-id*="runnamecellrenderer"]'  # a parent row's "+"
ROWS = ".ag-center-cols-container .ag-row"
WAIT_MS = 90_000  # generous: the suite runs on two busy cores
HEADERS = "[...document.querySelectorAll('.ag-header-cell')].map(h => h.getAttribute('col-id'))"
IN_ORDER = f"""(expected) => {{
    const ids = {HEADERS}, first = ids.indexOf('duration') + 1;
    return JSON.stringify(ids.slice(first, first + expected.length)) === JSON.stringify(expected);
}}"""  # the columns after Duration are these, in this order
CLIP = {"x": 0, "y": 0, "width": 1700, "height": 720}  # the README's picture: table and columns


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
def store(tmp_path_factory, prepared) -> Path:
    """A project folder after ``python -m study.train -m +sweep=quick/init`` (64 cells)."""
    return swept_project(tmp_path_factory, prepared, "ui", "-m", "+sweep=quick/init")


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


def cells(store: Path) -> dict[str, dict]:
    """Each cell's record, with where MLflow mirrors it (its mlflow.json) as "mlflow"."""
    folder = store / "multirun/quick/init"
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


def test_the_ui_starts_local_and_light_and_refuses_bad_input(server, store):
    print(f"study.tracking.ui answered in {server['started_s']:.1f} s")
    assert server["started_s"] < 10  # ~5 s here, on two cores busy with other tests
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
    checked = 0
    for row in page.locator(ROWS).all():
        index = row.get_attribute("row-index")
        name = page.locator(f".ag-pinned-left-cols-container .ag-row[row-index='{index}'] a")
        run_name = name.first.inner_text().strip() if name.count() else ""
        if run_name in recorded:
            shown = row.locator("[col-id='duration']").inner_text()
            wall = recorded[run_name]["timings"]["wall_s"]
            precision = 1e-3 if shown.endswith("ms") else 0.05  # "7ms", "1.2s"
            assert abs(seconds(shown) - wall) <= precision + 1e-3, (run_name, shown, wall)
            checked += 1
    assert checked == len(recorded) == 64


def test_a_run_page_shows_its_params_metrics_tags_description_and_files(page, server, store,
                                                                        shots):  # fmt: skip
    recorded = cells(store)
    name = "d16-tanh-xavier_normal-batch-residual-s1"
    record = recorded[name]
    info = record["mlflow"]
    run_url = f"{server['base']}/#/experiments/{info['experiment_id']}/runs/{info['run_id']}"
    page.goto(run_url)
    page.get_by_role("heading", name=name).wait_for()
    page.get_by_text("Parameters (").first.wait_for()
    text = page.inner_text("body")
    for expected in ("model.depth", "model.activation", "xavier_normal", "signal_log10_rate_init",
                     "init_by_layer/log10_signal_grad_norm", "study.status",
                     "python -m study.train model.depth=16 model.width=64 model.activation=tanh",
                     "mnist1d", record["cell_key"]):  # fmt: skip
        assert expected in text, expected
    assert "tracking.experiment" not in text and "run_name" not in text  # knobs only
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
