"""A sweep as the MLflow UI shows it: its experiment, its parent run, the cells under it.

- The experiment: a description (the preset's own header, from ``conf/sweep/``), marked as
  a model-training experiment (so the UI opens on its runs table, not a GenAI overview),
  and a saved view, "cells", whose columns are what the sweep varies (each axis of its grid
  with more than one value, the seed last), the status and the main outcomes, its run
  name column as wide as the sweep's longest run name.
- The parent run: the grid and profile as params, the command as its description and
  source, and when the sweep ends its counts, ``sweep.json`` and summary figures.
- The cells: a skipped cell whose MLflow run is not what this sweep would log (an older
  mirror version, another experiment or store) is logged again from its record; one that
  belongs to an earlier parent run is moved under this one.

``study.runs.sweep.Session`` calls these; nothing here changes a record's numbers.
"""

from __future__ import annotations

import json
import shlex
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
from mlflow.entities import Param, RunTag
from mlflow.exceptions import MlflowException

from study import records
from study.config import CONF_DIR
from study.tracking import cell_runs, mirror

CONF_SWEEP = CONF_DIR / "sweep"
VIEW_ID = "cells"  # the saved view's id: ?viewStateShareKey=cells
VIEW_TAG = f"mlflow.sharedViewState.{VIEW_ID}"
OUTCOMES = ("signal_log10_rate_init", "test_accuracy")  # (a probe-only sweep has no accuracy)
# The run name column: a child row's name follows its parent's indent and a colour dot
# (~80 px); a name that does not compose gets the width the init sweep's names need.
INDENT_PX, NAME_PX = 80, 340
# A skipped cell is logged again from its record in chunks of this many (one transaction).
CHUNK = 64


@dataclass
class About:
    """What the sweeper knows of the sweep before it starts: how it was asked for."""

    command: str = "python -m study.train -m"
    preset: str | None = None  # conf/sweep/<preset>.yaml, e.g. "quick/init"
    grid: dict[str, list[str]] = field(default_factory=dict)  # axis -> its values, in order


def sweep_command(task: Sequence[str], hydra: Sequence[str]) -> str:
    """The multirun as typed: Hydra's own overrides (less the mode ``-m`` sets), then the
    task's."""
    typed = [o for o in hydra if o != "hydra.mode=MULTIRUN"]
    return " ".join(["python -m study.train -m", *(shlex.quote(o) for o in [*typed, *task])])


def grid_of(jobs: Sequence[Sequence[str]], axes: Sequence[str]) -> dict[str, list[str]]:
    """Each key the jobs set to more than one value, or that ``axes`` names: its values."""
    values: dict[str, list[str]] = {}
    for job in jobs:
        for override in job:
            key, _, value = override.partition("=")
            key = key.lstrip("+~")
            if value and value not in values.setdefault(key, []):
                values[key].append(value)
    return {k: v for k, v in values.items() if len(v) > 1 or k in axes}


def preset_header(preset: str | None) -> str:
    """The leading comment of a preset file, as prose (the ``@package`` line left out)."""
    path = CONF_SWEEP / f"{preset}.yaml"
    if preset is None or not path.exists():
        return ""
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        if "@package" not in line:
            lines.append(line[1:].strip())
    return " ".join(lines)


def experiment_description(about: About, name: str) -> str:
    own = preset_header(about.preset)
    sweep = (about.preset or "").split("/")[-1]
    design = preset_header(f"standard/{sweep}") if about.preset != f"standard/{sweep}" else ""
    parts = [f"Sweep {about.preset or name}: {own}", design,
             f"Each run under the parent run `sweep {name}` is one cell of the grid; its "
             "description holds the command that reproduces it. Per-layer charts "
             "(`init_by_layer/*`, `final_by_layer/*`): step = layer, 1 = input side. "
             f"The saved view `{VIEW_ID}` (Views) shows the swept axes as columns."]  # fmt: skip
    return "\n\n".join(p for p in parts if p)


def varied(grid: dict[str, list[str]]) -> dict[str, list[str]]:
    """The axes a sweep's cells differ in, as their runs' params name them: each axis of
    the grid with more than one value, in the grid's order, the seed (the replicate) last.
    A config group (``optim=sgd,adamw``) is the ``name`` its options set."""
    axes = sorted((k for k, v in grid.items() if len(v) > 1), key=lambda k: k == "seed")
    return {f"{k}.name" if (CONF_DIR / k).is_dir() else k: grid[k] for k in axes}


def longest_run_name(about: About) -> str | None:
    """The sweep's run name with every axis at its longest value: its longest run name,
    or a little longer (axes of two different grids side by side); None if it does not
    compose. Composed as a cell's config is: the preset, then the grid's values."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    overrides = [f"+sweep={about.preset}"] if about.preset else []
    overrides += [f"{k}={max(v, key=len)}" for k, v in about.grid.items()]
    try:
        if GlobalHydra.instance().is_initialized():  # in the sweeper: ~0.1 s
            return str(compose(config_name="config", overrides=overrides).run_name)
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return str(compose(config_name="config", overrides=overrides).run_name)
    except (HydraException, OmegaConfBaseException):
        return None  # e.g. a key the command added with "+": the view's default width


def text_px(chars: int) -> int:
    """A column's width for text of ``chars`` characters: the runs table's font takes
    ~6.4 px a character (measured in chromium), the cell's padding ~20 px."""
    return 7 * chars + 24


def saved_view(parent_id: str, axes: dict[str, list[str]], run_name: str | None) -> str:
    """A saved view as the UI stores one (an experiment tag holding a JSON envelope):
    ``axes`` (param -> its values) and the status, then the main outcomes, then the
    dataset, as columns, each wide enough for its header and values; the run name column
    for ``run_name`` beside the child rows' indent and colour dot. (The UI does not
    restore expanded rows from a saved view: the parent's "+" shows its cells.)"""
    params = [*(f"params.`{a}`" for a in axes), "tags.`study.status`"]
    metrics = [f"metrics.`{m}`" for m in OUTCOMES]
    columns = [*params, *metrics, "attributes.`Dataset`"]
    order = ["attributes.`Run Name`", "runDateAndNestInfo", "duration", *columns]
    widths = {
        "attributes.`Run Name`": INDENT_PX + text_px(len(run_name)) if run_name else NAME_PX,
        "attributes.`Dataset`": 150,
        **{f"params.`{a}`": text_px(max(len(a), *map(len, v))) for a, v in axes.items()},
        **{m: 175 for m in metrics},
    }
    state = {"selectedColumns": columns, "columnOrder": order, "columnWidths": widths}
    now = int(time.time() * 1000)
    return json.dumps({"name": "cells", "createdAt": now, "updatedAt": now,
                       "state": json.dumps(state)})  # fmt: skip


def prepare_experiment(tracker: mirror.Tracker, about: About, name: str, parent: str) -> None:
    view = saved_view(parent, varied(about.grid), longest_run_name(about))
    for key, value in {
        "mlflow.note.content": experiment_description(about, name),
        "mlflow.experimentKind": "custom_model_development",
        VIEW_TAG: view,
    }.items():
        tracker.client.set_experiment_tag(tracker.experiment_id, key, value)


def parent_params(about: About, total: int) -> dict[str, str]:
    profile = about.preset.split("/")[0] if about.preset and "/" in about.preset else "-"
    grid = {f"grid.{k}": ",".join(v) for k, v in about.grid.items()}
    return {"sweep": about.preset or "-", "profile": profile, "cells": str(total), **grid}


def parent_tags(about: About, name: str, sweep_dir: Path, total: int) -> dict[str, str]:
    grid = " × ".join(f"{k} ∈ {{{', '.join(v)}}}" for k, v in about.grid.items())
    tags = {
        "study.role": "sweep", "study.sweep_dir": str(sweep_dir),
        # The UI shows a source name's last path component: the command itself (with its
        # "+sweep=quick/init") would read "init"; it is in the description.
        "mlflow.source.type": "LOCAL", "mlflow.source.name": "python -m study.train -m",
        "mlflow.user": cell_runs.user(),
        "mlflow.note.content": (
            f"Sweep `{about.preset or name}`: {total} cells.\n\n```\n{about.command}\n```\n\n"
            f"Grid: {grid or 'one cell'}.\n\nArtifacts when it ends: `sweep.json` (the cells as "
            "run: folder, cell key, status) and summary figures."
        ),
    }  # fmt: skip
    if commit := records.git_commit():
        tags["mlflow.source.git.commit"] = commit
    return tags


def open_parent(
    tracker: mirror.Tracker, previous: str | None, about: About, name: str, sweep_dir: Path,
    total: int,
) -> str:  # fmt: skip
    """The parent run: the previous one reopened if it still exists and its params (the
    grid) are this sweep's, else a new one. MLflow never changes a logged param, so a
    changed grid gets a new parent (the old one is renamed "... (earlier grid)"); the cells
    kept from it move under the new one when the sweep ends (:func:`adopt`)."""
    params = parent_params(about, total)
    tags = parent_tags(about, name, sweep_dir, total)
    parent, run = None, None
    if previous is not None:
        try:
            run = tracker.client.get_run(previous)
        except MlflowException:
            pass  # purged, or another store's
        if run is not None and run.info.lifecycle_stage == "active":
            logged = run.data.params
            same = all(logged.get(k, v) == v for k, v in params.items()) and all(
                k in params for k in logged if k.startswith("grid.")
            )
            if same:
                parent = previous
                tracker.client.update_run(previous, status="RUNNING")
                tracker.client.log_batch(previous, tags=[RunTag(k, v) for k, v in tags.items()])
    if parent is None:
        parent = tracker.client.create_run(
            tracker.experiment_id, run_name=f"sweep {name}", tags=tags
        ).info.run_id
        if run is not None and run.info.lifecycle_stage == "active":
            tracker.client.update_run(previous, name=f"sweep {name} (earlier grid)")
            tracker.client.set_tag(previous, "study.superseded_by", parent)
    # Params that are logged already are left alone (an equal value is a no-op anyway).
    tracker.client.log_batch(parent, params=[Param(k, v) for k, v in params.items()])
    return parent


def read_layers(out_dir: Path) -> dict[str, np.ndarray]:
    table = pq.read_table(Path(out_dir) / records.LAYERS_FILE)
    return {name: table[name].to_numpy(zero_copy_only=False) for name in table.column_names}


@dataclass
class Mirrored:
    """What :func:`mirror_sweep` did with a sweep's recorded cells."""

    logged: int = 0  # logged now: not mirrored before, or by another mirror version or store
    moved: int = 0  # mirrored already, under an earlier parent run: moved under this one
    missing: int = 0  # still not mirrored (``error`` says why)
    error: str | None = None


def mirror_sweep(
    tracker: mirror.Tracker, tracking_cfg: Any, parent: str,
    cells: Sequence[tuple[dict[str, Any], Path]],
) -> Mirrored:  # fmt: skip
    """A sweep's recorded cells (record, folder), all under ``parent``: each logged from its
    record unless ``mlflow.json`` says it is mirrored as this sweep would log it, moved under
    ``parent`` if it is mirrored under another parent. A failure of the store stops the
    logging and is reported, never raised: the records stand either way."""
    out, stale, moved = Mirrored(), [], []
    for record, out_dir in cells:
        info = records.read_mirror(out_dir)
        if not cell_runs.mirrored(record, info, tracker):
            stale.append((record, out_dir))
        elif info.get("parent") != parent:
            moved.append((info, out_dir))
    try:
        if moved:
            tracker.relink([info["run_id"] for info, _ in moved], parent)
            for info, out_dir in moved:
                records.write_json(out_dir / records.MIRROR_FILE, {**info, "parent": parent})
            out.moved = len(moved)
    except Exception as exc:  # noqa: BLE001 - reported with the sweep's summary
        out.error = mirror.error_line(exc)
    for start in range(0, len(stale), CHUNK):
        chunk = [(r, read_layers(d), d) for r, d in stale[start : start + CHUNK]]
        error = cell_runs.mirror_cells(tracking_cfg, chunk, parent)
        if error is not None:
            out.missing, out.error = len(stale) - start, error
            break
        out.logged += len(chunk)
    return out


def publish_summary(
    tracker: mirror.Tracker, parent: str, sweep_file: Path, recorded: Sequence[dict[str, Any]]
) -> None:
    """``sweep.json`` and the summary figures, as the parent run's artifacts."""
    from study.tracking import sweep_figures  # matplotlib: only when a sweep ends

    tracker.client.log_artifact(parent, str(sweep_file))
    with tempfile.TemporaryDirectory(prefix="sweep-figures-") as folder:
        for path in sweep_figures.draw(recorded, Path(folder)):
            tracker.client.log_artifact(parent, str(path), artifact_path="figures")
