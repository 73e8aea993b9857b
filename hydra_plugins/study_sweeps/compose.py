"""Fast per-job configs for large sweeps.

Hydra composes every job of a multirun from scratch (defaults list, YAML, merges): about
0.2 s a job here, longer than a probe-only run itself. The jobs of a grid differ only in
plain values (``model.depth=4``), so we compose one *template* per distinct set of
structural overrides (config-group choices, ``+``/``~`` edits) and derive each job from its
template by setting the values, which is what composition would have produced.
"""

import copy
import os
import re
from collections.abc import Callable, Sequence
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


# What Hydra records about a job under ``hydra.job`` (besides its overrides), from the
# job's name and the job; GroupConfigs recomputes an interpolation of these itself.
JOB_FIELDS: dict[str, Callable[[str, JobSpec], Any]] = {
    "hydra.job.num": lambda name, job: job.idx,
    "hydra.job.id": lambda name, job: f"{name}_{job.idx}",
    "hydra.job.override_dirname": lambda name, job: job.override_dirname,
}


def job_fields(job_name: str, job: JobSpec) -> dict[str, Any]:
    return {key: field(job_name, job) for key, field in JOB_FIELDS.items()}


def set_job_fields(cfg: DictConfig, job: JobSpec) -> None:
    """What Hydra records about a job in its config: overrides, dirname, id, number."""
    with read_write(cfg.hydra), open_dict(cfg.hydra):
        cfg.hydra.overrides.task = list(job.overrides)
        for key, value in job_fields(str(cfg.hydra.job.name), job).items():
            OmegaConf.update(cfg, key, value, merge=False)


def task_view(cfg: DictConfig) -> DictConfig:
    """The config as the task function sees it: everything but the ``hydra`` node."""
    task = copy.deepcopy(cfg)
    with read_write(task), open_dict(task):
        del task["hydra"]
    return task


# ``${a.b.c}``: a node interpolation, the only kind GroupConfigs resolves itself.
NODE_REFERENCE = re.compile(r"\$\{([A-Za-z_][\w-]*(?:\.[A-Za-z_][\w-]*)*)\}")


def _leaves(tree: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(tree, dict):
        return [leaf for k, v in tree.items() for leaf in _leaves(v, f"{prefix}{k}.")]
    return [(prefix[:-1], tree)]


def _plain(value: Any) -> Any:
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def _set(tree: dict[str, Any], key: str, value: Any) -> None:
    *parents, last = key.split(".")
    for part in parents:
        tree = tree[part]
    tree[last] = value


class _NotSimple(Exception):
    """An interpolation GroupConfigs leaves to OmegaConf."""


class GroupConfigs:
    """The resolved task configs and output folders of jobs that share a template, from one
    copy of it.

    ``job_config`` gives each job a fresh copy of its template (pickled and unpickled,
    ~3 ms a job, as much as a probe-only cell computes). The jobs of a group share their
    template and their value keys, so here one copy takes each job's values in turn and
    every job reads back what Hydra would have given it: the values through OmegaConf (so
    the schema's types apply), the interpolated strings (``run_name``, the output subdir)
    recomputed from them. Only plain ``${a.b}`` references into the task config or the job
    fields are recomputed here; any other interpolation makes every job take the exact
    path (a full resolution). ``tests/test_compose.py`` checks both against Hydra's own
    composition for every preset.
    """

    def __init__(self, template: DictConfig):
        self.cfg = template  # a copy of its own: it is changed job after job
        raw = OmegaConf.to_container(template, resolve=False)
        self.subdir = raw["hydra"]["sweep"]["subdir"]
        del raw["hydra"]
        self.references = {k: v for k, v in _leaves(raw) if isinstance(v, str) and "${" in v}
        texts = [*self.references.values(), str(self.subdir)]
        keys = {k for text in texts for k in NODE_REFERENCE.findall(text)}
        self.fast = all(
            "\\" not in text and "${" not in NODE_REFERENCE.sub("", text) for text in texts
        ) and all(not k.startswith("hydra.") or k in JOB_FIELDS for k in keys)
        self.sweep_dir: str | None = None
        self.resolved: dict[str, Any] | None = None  # the last job's, when fast
        self.values: dict[str, Any] = {}  # what the copy holds now, key -> override value

    def job(self, job: JobSpec) -> tuple[dict[str, Any], str]:
        """(the job's task config, resolved, as plain containers; its output folder)."""
        changed = [(k, v) for k, v in job.values if repr(self.values.get(k, ...)) != repr(v)]
        for key, value in changed:
            OmegaConf.update(self.cfg, key, value, merge=False)
            self.values[key] = value
        if self.resolved is None or not self.fast:
            return self._exact(job)
        try:
            task = copy.deepcopy(self.resolved)
            for key, _ in changed:
                _set(task, key, _plain(OmegaConf.select(self.cfg, key)))
            memo: dict[str, Any] = {}
            for key in self.references:
                _set(task, key, self._evaluate(key, task, job, memo))
            subdir = self._substitute(str(self.subdir), task, job, memo)
        except _NotSimple:
            self.fast = False
            return self._exact(job)
        self.resolved = task
        return copy.deepcopy(task), os.path.abspath(os.path.join(self.sweep_dir, subdir))

    def _exact(self, job: JobSpec) -> tuple[dict[str, Any], str]:
        self._drop_overridden(job)
        set_job_fields(self.cfg, job)
        task = {k: _plain(self.cfg[k]) for k in self.cfg if k != "hydra"}
        sweep = self.cfg.hydra.sweep
        self.sweep_dir = str(sweep.dir)
        # Recomputed strings must keep their type: only str results are taken as they come.
        if self.fast and all(isinstance(v, str) for k, v in _leaves(task) if k in self.references):
            self.resolved = copy.deepcopy(task)
        else:
            self.fast = False
        return task, os.path.abspath(os.path.join(self.sweep_dir, str(sweep.subdir)))

    def _drop_overridden(self, job: JobSpec) -> None:
        """A job value that replaces an interpolated node (or a node above one) makes it a
        plain value for every job of the group (they share their value keys)."""
        keys = [k for k, _ in job.values]
        self.references = {
            ref: text
            for ref, text in self.references.items()
            if not any(ref == k or ref.startswith(f"{k}.") for k in keys)
        }
        if any(isinstance(v, str) and "${" in v for _, v in job.values):
            self.fast = False  # the job's own value is an interpolation

    def _evaluate(self, key: str, task: dict, job: JobSpec, memo: dict[str, Any]) -> Any:
        if key not in memo:
            memo[key] = self._substitute(self.references[key], task, job, memo)
        return memo[key]

    def _substitute(self, text: str, task: dict, job: JobSpec, memo: dict[str, Any]) -> str:
        def value(match: re.Match) -> str:
            key = match.group(1)
            if key in self.references:
                return str(self._evaluate(key, task, job, memo))
            if key.startswith("hydra."):
                return str(job_fields(str(self.cfg.hydra.job.name), job)[key])
            node: Any = task
            for part in key.split("."):
                node = node[part]
            if isinstance(node, dict | list):
                raise _NotSimple(key)  # OmegaConf prints containers its own way
            return str(node)

        return NODE_REFERENCE.sub(value, text)
