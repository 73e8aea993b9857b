"""The command line: ``python -m study.train`` (one cell) and ``-m`` (a sweep).

    python -m study.train model.depth=32 model.activation=tanh
    python -m study.train -m model.depth=2,8,32 seed=0,1,2

One run is one cell (``study.runs.cell``): its record in the job's output folder first,
then its MLflow run. Exit status: 0 when the cell is recorded and mirrored (a diverged net
is a result); 1 when it failed (recorded with its error) or could not be mirrored
(recorded; ``python -m study.tracking mirror`` logs it later); 2 for bad input, with
nothing written; 130 when interrupted. Every error is one line.
"""

from __future__ import annotations

import _thread
import contextlib
import logging
import os
import re
import shutil
import sys
import threading
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

from hydra.core.hydra_config import HydraConfig
from hydra.errors import ConfigCompositionException, MissingConfigException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from study import data as datasets
from study import records
from study.config import CONF_DIR, Config, ConfigError, as_dict, validate
from study.engine import kernels, memory
from study.tracking import uri

# torch and MLflow are imported once the input is known to be good (study.runs.cell,
# study.runs.jobs, study.tracking.mirror): bad input is refused in a second, not in five.

log = logging.getLogger("study.train")
PROG = "study.train"


def _discard_job_dir(out_dir: Path) -> None:
    """Bad input leaves nothing behind: remove the folder Hydra made for this job, and the
    folders above it that it made (now empty) up to the working folder."""
    shutil.rmtree(out_dir, ignore_errors=True)
    here = Path.cwd().resolve()
    for parent in out_dir.resolve().parents:
        if parent == here or not parent.is_relative_to(here) or any(parent.iterdir()):
            break
        parent.rmdir()


def checked(dcfg: DictConfig) -> tuple[Config, datasets.Splits]:
    """The typed config and its data, after every check that needs no work: the schema's
    ranges, the device, the prepared data, the memory a net needs, the tracking store."""
    cfg: Config = OmegaConf.to_object(dcfg)  # type: ignore[assignment]
    validate(cfg)
    kernels.check_device(cfg.train.device)
    splits = datasets.load_cached(cfg.data)
    memory.check(cfg, splits)
    if cfg.tracking.enabled:
        uri.check(cfg.tracking.uri)
    return cfg, splits


def task(dcfg: DictConfig) -> dict[str, Any]:
    """The Hydra task of ``python -m study.train`` (``study/train.py``): one job."""
    hc = HydraConfig.get()
    out_dir = Path(hc.runtime.output_dir)
    single = hc.mode == RunMode.RUN
    try:
        cfg, splits = checked(dcfg)
        if single and cfg.tracking.enabled:
            from study.tracking import mirror

            # The server's answer before any training (a sweep asks once, when it starts).
            mirror.tracker(cfg.tracking.uri, cfg.tracking.experiment)
    except ConfigError as exc:
        if single:
            _discard_job_dir(out_dir)
        fail(2, f"error: {exc}")
    from study.runs import jobs
    from study.runs.cell import execute

    resolved = as_dict(cfg)  # resolved once already by to_object; re-resolving costs ms
    key = records.cell_key(resolved, splits.sha256)
    if not single and records.is_done(records.read_run(out_dir), key):
        return jobs.job_result(cfg.run_name, "skipped", key, out_dir)
    records.clear_partial(out_dir)  # an earlier attempt killed mid-write
    done = execute(cfg, resolved, splits, out_dir, key)
    parent = None if single else records.read_sweep(Path(hc.sweep.dir)).get("parent_run_id")
    not_mirrored = jobs.mirror(cfg.tracking, [done], parent)
    status, error = done.record["status"], done.record["error"]
    if single:
        log.info("%s: %s (record in %s)", cfg.run_name, status, out_dir)
        if status == "failed":
            fail(1, f"{cfg.run_name} failed: {error} (recorded in {out_dir})")
        if not_mirrored:
            fail(1, f"{cfg.run_name} is recorded in {out_dir} but not mirrored to MLflow: "
                    f"{not_mirrored}; mirror it later: python -m study.tracking mirror "
                    f"{out_dir}")  # fmt: skip
    return jobs.job_result(cfg.run_name, status, key, out_dir, error, not_mirrored)


def fail(code: int, message: str) -> NoReturn:
    """One line on stderr and an exit status; SystemExit passes through Hydra untouched."""
    print(f"{PROG}: {message}", file=sys.stderr)
    sys.exit(code)


def presets() -> list[str]:
    """The sweep presets ``+sweep=`` takes (conf/sweep/**.yaml), as typed."""
    root = CONF_DIR / "sweep"
    return sorted(p.relative_to(root).with_suffix("").as_posix() for p in root.rglob("*.yaml"))


def _one_line(exc: BaseException) -> str:
    """A composition or validation error as a single line that names the key."""
    if isinstance(exc, ConfigError):
        return str(exc)
    missing = re.search(r"Could not find '(sweep/[^']*)'", str(exc))
    if isinstance(exc, MissingConfigException) and missing:
        # Hydra lists only the group's top level (smoke), not the presets in its folders.
        return (f"+sweep: no preset {missing.group(1).removeprefix('sweep/')!r}; "
                f"expected one of: {', '.join(presets())}")  # fmt: skip
    cause = exc.__cause__ if isinstance(exc, ConfigCompositionException) else exc
    if isinstance(cause, OmegaConfBaseException):
        key = getattr(cause, "full_key", None) or ""
        msg = str(getattr(cause, "msg", None) or cause).splitlines()[0]
        return f"{key}: {msg}" if key else msg
    # e.g. a missing group option: keep the message, drop Hydra's search-path listing.
    return " ".join(str(exc).split("Config search path")[0].split())


def clean_credentials(argv: list[str]) -> list[str]:
    """The command line and ``MLFLOW_TRACKING_URI`` with any user name and password taken
    out of tracking URIs and handed to the client through its environment variables
    (``study.tracking.uri``), before Hydra records them anywhere. The environment's URI
    goes first: credentials typed on the command line are the more specific, so theirs
    are the ones left in the variables."""
    env = "MLFLOW_TRACKING_URI"
    if os.environ.get(env):
        os.environ[env] = uri.move_credentials(os.environ[env], key=env)
    out = []
    for arg in argv:
        key, sep, value = arg.partition("=")
        if sep and key.lstrip("+~") == uri.KEY:
            arg = f"{key}={uri.move_credentials(value)}"
        out.append(arg)
    return out


@contextlib.contextmanager
def interrupts_never_lost() -> Iterator[None]:
    """Ctrl-C that arrives while a garbage-collection callback runs (SQLAlchemy's, under
    MLflow) is raised inside that callback, where Python prints "Exception ignored" and
    drops it: the run then trained on to its last step. Here such an interrupt is raised
    again in the code the collector interrupted."""
    before = sys.unraisablehook

    def hook(unraisable: Any) -> None:
        if isinstance(unraisable.exc_value, KeyboardInterrupt):
            # As if the signal came again, from a thread: raised now, it would be raised in
            # this hook and dropped the same way; a moment later the callback is done.
            threading.Timer(0.05, _thread.interrupt_main).start()
        else:
            before(unraisable)

    sys.unraisablehook = hook
    try:
        yield
    finally:
        sys.unraisablehook = before


def cli(main: Callable[[], Any]) -> None:
    """Run ``main`` (the Hydra app) with every error in one line and a true exit status."""
    # Hydra prints errors over several lines plus a hint; we report them ourselves in one.
    os.environ.setdefault("HYDRA_FULL_ERROR", "1")
    try:
        sys.argv[1:] = clean_credentials(sys.argv[1:])
        with interrupts_never_lost():
            main()
    except KeyboardInterrupt:
        fail(130, "interrupted; what was recorded before stays, nothing is half-written")
    except (ConfigError, ConfigCompositionException, OmegaConfBaseException) as exc:
        fail(2, f"error: {_one_line(exc)}")
    except OSError as exc:  # the folders Hydra makes, a full disk
        where = f"{exc.filename}: " if exc.filename else ""
        fail(2 if _raised_by_hydra(exc) else 1, f"error: {where}{exc.strerror or exc}")
    except Exception as exc:
        if not _raised_by_hydra(exc):
            raise  # a bug: keep the traceback
        fail(2, f"error: {_one_line(exc)}")


def _raised_by_hydra(exc: BaseException) -> bool:
    """Hydra raises on bad command lines (unknown flags, bad sweep syntax): input errors.
    So does making the folders it writes before any job runs (os.makedirs, an unwritable
    folder): the last frame outside Python's own library is Hydra's."""
    stdlib = os.path.dirname(os.__file__)
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if not f.filename.startswith(stdlib)]  # fmt: skip
    return bool(frames) and f"{os.sep}hydra{os.sep}" in frames[-1].filename
