"""The command line that reproduces a cell: ``python -m study.train`` and the overrides that
turn the project's default config into the cell's config.

Built from the record's resolved config against the defaults that ``conf/config.yaml``
composes to, so it holds for cells of any sweep, preset or ad-hoc grid: every key whose
value differs from its default is set on the command line (group choices such as
``optim=adamw`` come out as the values they set). ``tracking.*`` is left out: where a run is
logged is not part of the cell (``records.cell_key`` leaves it out too).
"""

from __future__ import annotations

import functools
import re
import shlex
from typing import Any

from study import records
from study.config import CONF_DIR

ENTRY = "python -m study.train"
# Values Hydra's override grammar reads as something other than a string.
_RESERVED = {"true", "false", "null", "nan", "inf", "-inf", "+inf"}
_BARE = re.compile(r"^[A-Za-z_][A-Za-z0-9_./-]*$")
_INTERPOLATION = re.compile(r"\$\{([A-Za-z0-9_.]+)\}")


@functools.cache
def defaults() -> tuple[dict[str, Any], str]:
    """The default config, flattened, and the unresolved ``run_name`` template.

    Inside a Hydra app (a run, a sweep worker) composing costs ~0.1 s; outside one, Hydra is
    initialized on the project's ``conf/`` first (~2 s: its plugin scan), once a process."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    from study.config import as_dict

    if GlobalHydra.instance().is_initialized():
        cfg = compose(config_name="config")
    else:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose(config_name="config")
    template = str(OmegaConf.to_container(cfg, resolve=False)["run_name"])
    return records.flatten(as_dict(OmegaConf.to_object(cfg))), template


def override_value(value: Any) -> str:
    """A value in Hydra's override grammar (``null``, ``true``, ``[0.9,0.999]``, ``'a b'``)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ",".join(override_value(v) for v in value) + "]"
    text = str(value)
    if _BARE.match(text) and text.lower() not in _RESERVED:
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def overrides(config: dict[str, Any]) -> list[str]:
    """``key=value`` for every key of ``config`` (a record's resolved config) that differs
    from its default; ``run_name`` only if it is not what the default template makes."""
    base, template = defaults()
    flat = records.flatten(config)
    out = []
    for key, value in flat.items():
        if key == "run_name" or key.startswith("tracking."):
            continue
        if key not in base:
            out.append(f"+{key}={override_value(value)}")
        elif base[key] != value or type(base[key]) is not type(value):
            out.append(f"{key}={override_value(value)}")
    name = flat.get("run_name")
    default_name = _INTERPOLATION.sub(lambda m: str(flat.get(m.group(1), m.group(0))), template)
    if name is not None and name != default_name:
        out.append(f"run_name={override_value(name)}")
    return out


def command(config: dict[str, Any]) -> str:
    """The shell command that reproduces the cell of ``config``, from the project root."""
    return " ".join([ENTRY, *(shlex.quote(arg) for arg in overrides(config))])
