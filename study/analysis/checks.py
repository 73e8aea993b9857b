"""What ``collect`` checks in a sweep's cell list and in each cell's record before it writes
a table.

A record that is damaged, incomplete or another cell's would otherwise become a silent NaN,
a row with another cell's numbers, or a traceback. Each check here answers None (nothing
wrong) or what is wrong, in a few words that name the file: ``collect`` prefixes the cell's
folder and says how to redo it, one line per bad cell.

The fields checked are those ``collect`` reads, with the types ``study.runs.cell`` writes.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from study import records
from study.config import (
    JACOBIAN_STATS,
    LAYER_STATS,
    Activation,
    Curriculum,
    Dataset,
    Init,
    Norm,
    Optimizer,
    Scaling,
    Schedule,
    Skip,
)
from study.records import LAYERS_FILE, RUN_FILE, SUMMARY_COLUMNS, SWEEP_FILE, Status

# run.json's final metrics (study.engine.loop.FINAL_METRICS and the last training loss).
METRICS = ("test_accuracy", "test_loss", "val_accuracy", "val_loss", "train_loss",
           "train_split_accuracy", "train_split_loss")  # fmt: skip
# run.json's training curve: a step per evaluation and these values at each (the whole
# training split's only with train.eval_train).
CURVE_STATS = ("train_loss", "val_loss", "val_accuracy", "train_split_loss",
               "train_split_accuracy")  # fmt: skip
LAYER_TABLE = ("step", "layer", *LAYER_STATS)


# A field's kind: (test of a value as json.loads returns it, what the test wants, in words).
Kind = tuple[Callable[[Any], bool], str]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # JSON true is not 1


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


TEXT: Kind = (lambda v: isinstance(v, str), "a string")
FLAG: Kind = (lambda v: isinstance(v, bool), "true or false")
INTEGER: Kind = (_is_int, "an integer")
COUNT: Kind = (lambda v: _is_int(v) and v >= 0, "an integer >= 0")
NUMBER: Kind = (_is_number, "a number")
OBJECT: Kind = (lambda v: isinstance(v, dict), "an object")


def _or_null(kind: Kind) -> Kind:
    test, what = kind
    return (lambda v: v is None or test(v)), f"{what} or null"


def _one_of(values) -> Kind:
    # A value outside a categorical column's categories would become NaN without a word.
    allowed = frozenset(str(v) for v in values)
    return (lambda v: isinstance(v, str) and v in allowed), f"one of {', '.join(map(str, values))}"


# Fields every record has, whatever its status.
FIELDS: dict[str, Kind] = {
    "run_name": TEXT,
    "status": _one_of(Status),
    "cell_key": TEXT,
    "code_version": TEXT,
    "git_commit": _or_null(TEXT),
    "error": _or_null(TEXT),
    "data.sha256": TEXT,
    "config.seed": INTEGER,
    "config.data.name": _one_of(Dataset),
    "config.data.input_scale": NUMBER,
    "config.data.train_examples": _or_null(INTEGER),
    "config.data.label_noise": NUMBER,
    "config.model.depth": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "config.model.width": INTEGER,
    "config.model.activation": _one_of(Activation),
    "config.model.init": _one_of(Init),
    "config.model.norm": _one_of(Norm),
    "config.model.skip": _one_of(Skip),
    "config.model.dropout": NUMBER,
    "config.model.residual.scale": NUMBER,
    "config.model.residual.scaling": _one_of(Scaling),
    "config.model.highway.gate_bias": NUMBER,
    "config.model.dense.growth": INTEGER,
    "config.optim.name": _one_of(Optimizer),
    "config.optim.lr": NUMBER,
    "config.optim.momentum": NUMBER,
    "config.optim.weight_decay": NUMBER,
    "config.optim.clip_norm": _or_null(NUMBER),
    "config.train.steps": COUNT,
    "config.train.batch_size": INTEGER,
    "config.train.curriculum": _one_of(Curriculum),
    "config.probe.enabled": FLAG,
    "config.probe.batch_size": INTEGER,
    "config.probe.schedule": _one_of(Schedule),
    "metrics": OBJECT,
    "summary": OBJECT,
    "curve": OBJECT,
    "timings": OBJECT,
}
# Fields of a run that measured something (finished or diverged); a failed run records its
# error instead, with empty metrics, summary and curve. null: NaN (JSON has no NaN).
RESULT_FIELDS: dict[str, Kind] = {
    **{f"metrics.{name}": _or_null(NUMBER) for name in METRICS},
    "summary.steps_done": COUNT,
    "summary.diverged_at_step": _or_null(INTEGER),
    "summary.steps_to_target": _or_null(INTEGER),
    "summary.plateau_at_step": _or_null(INTEGER),
    "curve.step": (lambda v: isinstance(v, list), "a list"),
}


def _summary_kind(column: str) -> Kind:
    if "_first_last_censored_" in column:
        return _or_null(FLAG)
    return _or_null(INTEGER if "_n_zero_" in column else NUMBER)


# Fields checked where present: a profile summary exists only where the run was probed,
# the training split's metrics only with train.eval_train.
OPTIONAL_FIELDS: dict[str, Kind] = {
    **{f"metrics.{name}": _or_null(NUMBER) for name in METRICS},
    **{f"summary.{column}": _summary_kind(column) for column in SUMMARY_COLUMNS},
    # the Jacobian's spectrum, where probe.jacobian measured it
    **{
        f"summary.{name}": _or_null(FLAG if name == "jacobian_singular" else NUMBER)
        for name in JACOBIAN_STATS
    },
    **{f"timings.{name}": _or_null(NUMBER) for name in ("wall_s", "train_s", "probe_s")},
}

_MISSING = object()


def _get(record: dict[str, Any], path: str) -> Any:
    node: Any = record
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node


def _fields_problem(record: dict[str, Any], fields: dict[str, Kind], required: bool) -> str | None:
    for path, (test, what) in fields.items():
        value = _get(record, path)
        if value is _MISSING:
            if required:
                return f"{RUN_FILE} has no {path}"
        elif not test(value):
            return f"{RUN_FILE} has {path} = {_short(value)}, expected {what}"
    return None


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


NO_RECORD = f"has no {RUN_FILE}"


def read_record(folder: Path) -> tuple[dict[str, Any] | None, str | None]:
    """(the folder's run.json, None), or (None, what is wrong with it: :data:`NO_RECORD`
    if there is none)."""
    try:
        record = json.loads((folder / RUN_FILE).read_bytes())
    except FileNotFoundError:
        return None, NO_RECORD
    except (OSError, ValueError) as exc:  # ValueError: bad JSON or not UTF-8
        return None, f"{RUN_FILE} cannot be read, truncated or damaged ({_first_line(exc)})"
    if not isinstance(record, dict):
        return None, f"{RUN_FILE} holds {type(record).__name__}, not a record"
    return record, None


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:120] if lines else type(exc).__name__


def record_problem(record: dict[str, Any], cell: dict[str, Any]) -> str | None:
    """What is wrong with the fields of a cell's record (None: nothing), the cell as the
    sweep's list has it. The recomputed cell key is checked apart (:func:`key_problem`)."""
    problem = _fields_problem(record, FIELDS, required=True)
    if problem is None and record["status"] in records.RESULT_STATUSES:
        problem = _fields_problem(record, RESULT_FIELDS, required=True)
    if problem is None:
        problem = _fields_problem(record, OPTIONAL_FIELDS, required=False)
    if problem is None:
        problem = _curve_problem(record["curve"])
    if problem is None and (record["run_name"], record["cell_key"]) != (
        cell.get("run_name"), cell.get("cell_key"),
    ):  # fmt: skip
        problem = (
            f"{RUN_FILE} is of {record['run_name']} (cell key {record['cell_key']}), the "
            f"sweep ran {cell.get('run_name')} (cell key {cell.get('cell_key')}) here"
        )
    return problem


def _curve_problem(curve: dict[str, Any]) -> str | None:
    steps = curve.get("step", [])
    if not isinstance(steps, list) or not all(_is_int(s) for s in steps):
        return f"{RUN_FILE} has curve.step = {_short(steps)}, expected a list of integers"
    for stat in CURVE_STATS:
        values = curve.get(stat)
        if values is None:
            continue
        if not isinstance(values, list) or len(values) != len(steps):
            return f"{RUN_FILE} has curve.{stat} = {_short(values)}, expected {len(steps)} values"
        if not all(v is None or _is_number(v) for v in values):
            return f"{RUN_FILE} has curve.{stat} = {_short(values)}, expected numbers or null"
    return None


def key_problem(record: dict[str, Any]) -> str | None:
    """Whether the record's own config and data checksum give its cell key, with this
    checkout's code version (a record of other code is :func:`stale`, said per sweep)."""
    key = records.cell_key(record["config"], record["data"]["sha256"])
    if key != record["cell_key"]:
        return (
            f"{RUN_FILE}'s config and data checksum give cell key {key}, not its own "
            f"{record['cell_key']}: the record was changed after it was written"
        )
    return None


def stale(record: dict[str, Any]) -> bool:
    """Written by other code than this checkout's (its key cannot be recomputed here)."""
    return record["code_version"] != records.code_version()


# The engine's probe schedule (study.engine.probes.probe_steps), restated so that collect
# does not import torch for it; tests/test_collect.py checks that both agree.
_MULTIPLES = {Schedule.log125: (1, 2, 5), Schedule.log10: (1,), Schedule.none: ()}


def probe_steps(schedule: str, steps: int) -> list[int]:
    multiples = _MULTIPLES[Schedule(schedule)]
    if not multiples:
        return []
    due, decade = {0, steps}, 1
    while decade <= steps:
        due.update(m * decade for m in multiples if m * decade <= steps)
        decade *= 10
    return sorted(due)


def expected_steps(record: dict[str, Any], rows: int) -> list[int]:
    """The probe steps a record's layer table holds: its schedule's for a finished run,
    those before the step that saw the loss diverge for a diverged one, and for a failed
    one none or (``rows`` > 0) the first ones."""
    config = record["config"]
    probe = config["probe"]
    status = record["status"]
    steps = config["train"]["steps"]
    done = (record.get("summary") or {}).get("steps_done")
    if status == Status.finished and done is not None and done < steps:
        steps = done  # stopped at its plateau (train.early_stop): the last probe is there
    due = probe_steps(probe["schedule"], steps) if probe["enabled"] else []
    if status == Status.diverged:
        return [s for s in due if s < record["summary"]["steps_done"]]
    if status == Status.failed:
        return due[: rows // config["model"]["depth"]]
    return due


def read_layers(folder: Path, record: dict[str, Any]) -> tuple[dict[str, np.ndarray] | None,
                                                                str | None]:  # fmt: skip
    """(the columns of the folder's layers.parquet, None), or (None, what is wrong): its
    columns, and one row per layer 1..depth at each probe step the record implies."""
    try:
        with pq.ParquetFile(folder / LAYERS_FILE) as parquet:
            table = parquet.read(use_threads=False)  # threads cost more than a small file
    except FileNotFoundError:
        return None, f"has no {LAYERS_FILE}"
    except (pa.ArrowException, OSError) as exc:
        return None, f"{LAYERS_FILE} cannot be read, truncated or damaged ({_first_line(exc)})"
    schema = table.schema
    missing = [c for c in LAYER_TABLE if c not in schema.names]
    if missing:
        return None, f"{LAYERS_FILE} has no column {', '.join(missing)}"
    for name in LAYER_TABLE:
        kind = schema.field(name).type
        wanted = pa.types.is_integer if name in ("step", "layer") else pa.types.is_floating
        if not wanted(kind):
            return None, f"{LAYERS_FILE} has column {name} of type {kind}"
    if table.column("step").null_count or table.column("layer").null_count:
        return None, f"{LAYERS_FILE} has rows without a step or layer"
    columns = {name: table.column(name).to_numpy() for name in LAYER_TABLE}
    problem = _shape_problem(columns["step"], columns["layer"], record)
    return (None, problem) if problem else (columns, None)


def _shape_problem(step: np.ndarray, layer: np.ndarray, record: dict[str, Any]) -> str | None:
    depth = record["config"]["model"]["depth"]
    if len(layer) and (layer.min() != 1 or layer.max() != depth):
        return f"{LAYERS_FILE} has layers {layer.min()}-{layer.max()} for a depth-{depth} cell"
    expected = expected_steps(record, len(step))
    probed = np.unique(step).tolist()
    if probed != expected:
        train, probe = record["config"]["train"], record["config"]["probe"]
        when = f"on schedule {probe['schedule']}" if probe["enabled"] else "never"
        return (
            f"{LAYERS_FILE} has probe steps {_steps(probed)}; a {record['status']} run of "
            f"{train['steps']} steps probed {when} has {_steps(expected)}"
        )
    n = len(expected)
    if not (
        np.array_equal(step, np.repeat(np.asarray(expected, dtype=np.int64), depth))
        and np.array_equal(layer, np.tile(np.arange(1, depth + 1), n))
    ):
        return (
            f"{LAYERS_FILE} does not hold layers 1-{depth} once per probe step in order "
            f"({len(step)} rows for {n} steps)"
        )
    return None


def _steps(steps: list[int]) -> str:
    if not steps:
        return "none"
    if len(steps) <= 6:
        return ", ".join(map(str, steps))
    return f"{steps[0]}, {steps[1]}, ..., {steps[-1]} ({len(steps)} steps)"


def read_sweep(sweep_dir: Path) -> tuple[dict[str, Any] | None, str | None]:
    """(the sweep's sweep.json, empty if there is none; None), or (None, what is wrong with
    the file)."""
    try:
        info = json.loads((sweep_dir / SWEEP_FILE).read_bytes())
    except FileNotFoundError:
        return {}, None
    except (OSError, ValueError) as exc:
        return None, f"{SWEEP_FILE} cannot be read, truncated or damaged ({_first_line(exc)})"
    if not isinstance(info, dict):
        return None, f"{SWEEP_FILE} holds {type(info).__name__}, not a sweep's record"
    cells = info.get("cells")
    if cells is not None and not (isinstance(cells, list) and all(map(_is_cell, cells))):
        return None, f"{SWEEP_FILE} has cells that are not each a run_name and a folder"
    return info, None


def _is_cell(cell: Any) -> bool:
    """A cell of sweep.json's list, as collect reads it (a crashed job may have no folder)."""
    return (
        isinstance(cell, dict)
        and isinstance(cell.get("run_name"), str)
        and (cell.get("dir") is None or isinstance(cell["dir"], str))
    )


def sweep_cells(info: dict[str, Any]) -> tuple[list[dict[str, Any]] | None, str | None]:
    """(the cells of the sweep's last complete run, None), or (None, why there are none)."""
    if not info:
        return None, f"no sweep has run here (no {SWEEP_FILE})"
    cells = info.get("cells")
    if not info.get("complete") or cells is None:
        ran = len(cells) if cells is not None else "not all"
        return None, f"the last sweep did not complete ({ran} of {info.get('total')} cells ran)"
    return cells, None
