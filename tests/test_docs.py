"""The README and docs/ name real things: every `make` target, `python -m` entry point,
config key and repository path they mention exists, so a renamed knob, module or target
fails here instead of leaving the docs wrong. Nothing here checks prose."""

from __future__ import annotations

import dataclasses
import importlib.util
import re

import pytest

from study.config import Config

from .conftest import ROOT

DOCS = [ROOT / "README.md", ROOT / "benchmarks" / "README.md",
        *sorted((ROOT / "docs").glob("*.md"))]  # fmt: skip
TEXT = {p.relative_to(ROOT).as_posix(): p.read_text() for p in DOCS}
GROUPS = {"data", "model", "optim", "train", "probe", "tracking"}


def config_keys(cls=Config, prefix: str = "") -> set[str]:
    keys = set()
    for f in dataclasses.fields(cls):
        key = prefix + f.name
        keys.add(key)
        if dataclasses.is_dataclass(f.type) or isinstance(f.default_factory, type):
            sub = f.default_factory if isinstance(f.default_factory, type) else f.type
            if dataclasses.is_dataclass(sub):
                keys |= config_keys(sub, key + ".")
    return keys


KEYS = config_keys()


def test_the_docs_exist_and_the_readme_is_short():
    assert {"docs/methods.md", "docs/theory.md", "docs/mlflow.md"} <= set(TEXT)
    assert len(TEXT["README.md"].splitlines()) <= 250


@pytest.mark.parametrize("name", sorted(TEXT))
def test_every_make_target_named_exists(name):
    targets = set(re.findall(r"^([a-z][\w-]*):", (ROOT / "Makefile").read_text(), re.M))
    named = set(re.findall(r"`make ([a-z][\w-]*)", TEXT[name]))
    named |= set(re.findall(r"^make ([a-z][\w-]*)", TEXT[name], re.M))
    assert named - targets == set()


@pytest.mark.parametrize("name", sorted(TEXT))
def test_every_python_m_entry_named_exists(name):
    modules = set(re.findall(r"python -m (study(?:\.\w+)*)", TEXT[name]))
    missing = []
    for module in modules:
        spec = importlib.util.find_spec(module)
        if spec is None or (spec.submodule_search_locations and
                            importlib.util.find_spec(module + ".__main__") is None):  # fmt: skip
            missing.append(module)
    assert missing == []


@pytest.mark.parametrize("name", sorted(TEXT))
def test_every_config_key_named_exists(name):
    group = "(?:data|model|optim|train|probe|tracking)"
    named = set(re.findall(rf"`({group}\.[a-z0-9_.]+)[`=]", TEXT[name]))
    named = {k.rstrip(".") for k in named if not k.endswith("_")}
    missing = {k for k in named if k not in KEYS and not k.rstrip("*").endswith("_")}
    assert missing == set()


def test_the_readme_config_table_names_the_main_knobs():
    table = {m for m in re.findall(r"^\| `([a-z_.]+)`", TEXT["README.md"], re.M)}
    for knob in ("model.residual.scaling", "model.sigma_w2", "probe.jacobian",
                 "data.train_examples", "data.label_noise", "train.early_stop"):  # fmt: skip
        assert knob in table or any(knob in row for row in TEXT["README.md"].splitlines()
                                    if row.startswith("|")), knob  # fmt: skip
    assert {k for k in table if "." in k} <= KEYS


@pytest.mark.parametrize("name", sorted(TEXT))
def test_every_repository_path_named_exists(name):
    top = "(?:study|tests|benchmarks|conf|deploy|hydra_plugins|docs)"
    paths = set(re.findall(rf"`({top}/[\w./-]+\.(?:py|yaml|ini|md|png))`", TEXT[name]))
    paths |= {p for p in re.findall(r"\]\(([\w./-]+\.(?:md|png))\)", TEXT[name])}
    base = (ROOT / name).parent
    missing = [p for p in paths if not ((ROOT / p).exists() or (base / p).exists())]
    assert missing == []
