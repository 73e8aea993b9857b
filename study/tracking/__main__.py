"""``python -m study.tracking mirror PATH...``: log to MLflow the recorded cells it lacks.

Records are written before MLflow is touched, so a cell whose MLflow run could not be
logged (a server down, a wrong password, a full disk) is recorded but not mirrored; its
run says so, and so does its sweep's summary. This logs them from their records:

- a sweep's folder (``sweep.json``): every cell it lists that ``mlflow.json`` does not
  show mirrored as the sweep would log it, under the sweep's parent run;
- a run's folder (``run.json``), or a folder holding such folders (``outputs/``): each
  run alone.

Where to: the store and experiment the records name (``--uri`` for another store, its
credentials from the environment or moved there out of the URI, as for a run;
``--experiment`` for another experiment, say one of your own where the records' is
read-only to you). Exit status 0 when every cell is mirrored, 1 when some are not (one
line says why), 2 for bad input.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import NoReturn

from mlflow.entities import RunStatus

from study import records
from study.config import ConfigError, TrackingConfig, as_dict, from_dict
from study.tracking import cell_runs, experiment, mirror, uri

PROG = "study.tracking"


def fail(code: int, message: str) -> NoReturn:
    print(f"{PROG}: {message}", file=sys.stderr)
    sys.exit(code)


def tracking_of(record: dict, store: str | None, name: str | None) -> TrackingConfig:
    # A record written before a knob existed (tracking.bulk) takes the knob's default.
    defaults = as_dict(TrackingConfig())
    cfg = from_dict(TrackingConfig, {**defaults, **record["config"]["tracking"], "enabled": True})
    if store is not None:
        cfg.uri = store
    if name is not None:
        cfg.experiment = name
    return cfg


def mirror_sweep(folder: Path, store: str | None, name: str | None) -> experiment.Mirrored:
    info = records.read_sweep(folder)
    cells = [
        (record, folder / cell["dir"])
        for cell in info.get("cells") or []
        if cell.get("dir") and (record := records.read_run(folder / cell["dir"])) is not None
    ]
    if not cells:
        raise ConfigError(str(folder), "the sweep lists no recorded cells (has it ended?)")
    cfg = tracking_of(cells[0][0], store, name)
    tracker = mirror.tracker(cfg.uri, cfg.experiment, cfg.bulk)
    # The sweep's parent run, if it is in this store and experiment (a parent elsewhere
    # would link the cells across experiments).
    logged_to = (info.get("tracking_uri"), info.get("experiment_id"))
    parent = (
        info.get("parent_run_id") if logged_to == (tracker.uri, tracker.experiment_id) else None
    )
    if parent is None:
        parent = experiment.open_parent(
            tracker, None, experiment.About(), folder.name, folder, len(info.get("cells"))
        )
        info = {**info, "parent_run_id": parent, "tracking_uri": tracker.uri,
                "experiment_id": tracker.experiment_id}  # fmt: skip
        records.write_json(folder / records.SWEEP_FILE, info)
    done = experiment.mirror_sweep(tracker, cfg, parent, cells)
    if done.error is None and info.get("complete"):
        tracker.client.set_terminated(parent, status=RunStatus.to_string(RunStatus.FINISHED))
    return done


def mirror_runs(folders: list[Path], store: str | None, name: str | None) -> experiment.Mirrored:
    out = experiment.Mirrored()
    for folder in folders:
        record = records.read_run(folder)
        if record is None:
            out.missing += 1
            out.error = out.error or f"{folder / records.RUN_FILE} is unreadable"
            continue
        cfg = tracking_of(record, store, name)
        tracker = mirror.tracker(cfg.uri, cfg.experiment, cfg.bulk)
        if cell_runs.mirrored(record, records.read_mirror(folder), tracker):
            continue
        error = cell_runs.mirror_cells(cfg, [(record, experiment.read_layers(folder), folder)],
                                       None)  # fmt: skip
        if error is not None:
            out.missing += 1
            out.error = out.error or error
        else:
            out.logged += 1
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog=f"python -m {PROG}", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    cmd = sub.add_parser("mirror", help="log the recorded cells MLflow lacks")
    cmd.add_argument("paths", nargs="+", type=Path, help="sweep or run folders")
    cmd.add_argument("--uri", help="another tracking store than the records name")
    cmd.add_argument("--experiment", help="another MLflow experiment than the records name")
    args = parser.parse_args(argv)
    store = None
    try:
        if args.uri:
            store = uri.move_credentials(args.uri)
            uri.check(store)
        missing = 0
        for path in args.paths:
            if (path / records.SWEEP_FILE).is_file():
                done = mirror_sweep(path, store, args.experiment)
            else:
                runs = sorted(
                    p.parent
                    for p in [path / records.RUN_FILE, *path.rglob(records.RUN_FILE)]
                    if p.is_file()
                )
                if not runs:
                    raise ConfigError(str(path), f"no {records.SWEEP_FILE} or "
                                                 f"{records.RUN_FILE} here")  # fmt: skip
                done = mirror_runs(sorted(set(runs)), store, args.experiment)
            print(f"{PROG}: {path}: {done.logged} logged, {done.moved} moved under the "
                  f"sweep's parent run, {done.missing} not mirrored")  # fmt: skip
            if done.error:
                print(f"{PROG}: {path}: not mirrored: {done.error}", file=sys.stderr)
            missing += done.missing
    except ConfigError as exc:
        fail(2, f"error: {exc}")
    except KeyboardInterrupt:
        fail(130, "interrupted; what was logged stays logged")
    if missing:
        sys.exit(1)


if __name__ == "__main__":
    main()
