"""Fast per-job configs for large sweeps.

Hydra composes every job of a multirun from scratch (defaults list, YAML, merges): about
0.2 s a job here, longer than a probe-only run itself. The jobs of a grid differ only in
plain values (``model.depth=4``), so we compose one *template* per distinct set of
structural overrides (config-group choices, ``+``/``~`` edits) and derive each job from its
template by setting the values, which is what composition would have produced.
"""

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hydra._internal.config_loader_impl import get_overrides_dirname
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, OverrideType
from hydra.types import HydraContext
from omegaconf import DictConfig, OmegaConf, open_dict, read_write


@dataclass(frozen=True)
class JobSpec:
    """One job: its index, the template it derives from, and what it sets on it."""

    idx: int
    signature: tuple[str, ...]  # structural overrides and the keys of value overrides
    overrides: tuple[str, ...]  # the job's full override list, as Hydra would record it
    values: tuple[tuple[str, Any], ...]  # (dotted key, parsed value)
    override_dirname: str


class Planner:
    """Splits job override lists into templates plus values; composes each template once."""

    def __init__(self, hydra_context: HydraContext, master_config: DictConfig):
        self.loader = hydra_context.config_loader
        self.master = master_config
        self.parser = OverridesParser.create(config_loader=self.loader)
        self._parsed: dict[str, Override] = {}
        self._is_group: dict[str, bool] = {}
        self.templates: dict[tuple[str, ...], DictConfig] = {}

    def _parse(self, line: str) -> Override:
        if line not in self._parsed:
            [self._parsed[line]] = self.parser.parse_overrides([line])
        return self._parsed[line]

    def _group(self, key: str) -> bool:
        if key not in self._is_group:
            self._is_group[key] = bool(self.loader.get_group_options(key))
        return self._is_group[key]

    def is_value(self, override: Override) -> bool:
        return (
            override.type is OverrideType.CHANGE
            and override.package is None
            and not override.is_sweep_override()
            and not self._group(override.key_or_group)
        )

    def plan(self, idx: int, overrides: Sequence[str]) -> JobSpec:
        structural, value_keys, values = [], [], []
        for line in overrides:
            override = self._parse(line)
            if self.is_value(override):
                value_keys.append(override.key_or_group)
                values.append((override.key_or_group, override.value()))
            else:
                structural.append(line)
        signature = (*structural, "|", *value_keys)
        if signature not in self.templates:
            self.templates[signature] = self.loader.load_sweep_config(self.master, list(overrides))
        dirname = self.templates[signature].hydra.job.config.override_dirname
        override_dirname = get_overrides_dirname(
            overrides=[self._parse(line) for line in overrides],
            kv_sep=dirname.kv_sep,
            item_sep=dirname.item_sep,
            exclude_keys=dirname.exclude_keys,
        )
        return JobSpec(idx, signature, tuple(overrides), tuple(values), override_dirname)

    def number(self, job: JobSpec, key: str) -> float:
        """A numeric setting of the job: its own value, else its template's (1 if neither)."""
        values = dict(job.values)
        if key in values:
            return float(values[key])
        node = OmegaConf.select(self.templates[job.signature], key, default=1)
        return float(node) if isinstance(node, int | float) else 1.0

    def cost(self, job: JobSpec) -> float:
        """A job's expected work, for ordering: depth x (steps, or 1 for a probe only)."""
        return self.number(job, "model.depth") * max(self.number(job, "train.steps"), 1.0)

    def activations(self, job: JobSpec) -> float:
        """Elements of one net's activations in a pass: depth x width x the larger batch."""
        batch = max(self.number(job, "train.batch_size"), self.number(job, "probe.batch_size"))
        return self.number(job, "model.depth") * self.number(job, "model.width") * batch


def set_job_fields(cfg: DictConfig, job: JobSpec) -> None:
    """What Hydra records about a job in its config: overrides, dirname, id, number."""
    with read_write(cfg.hydra), open_dict(cfg.hydra):
        cfg.hydra.overrides.task = list(job.overrides)
        cfg.hydra.job.override_dirname = job.override_dirname
        cfg.hydra.job.id = f"{cfg.hydra.job.name}_{job.idx}"
        cfg.hydra.job.num = job.idx


def task_view(cfg: DictConfig) -> DictConfig:
    """The config as the task function sees it: everything but the ``hydra`` node."""
    task = copy.deepcopy(cfg)
    with read_write(task), open_dict(task):
        del task["hydra"]
    return task
