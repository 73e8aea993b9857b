"""The package's architecture, checked from its source: layers that import only downward,
no circles, and DVC stages whose deps cover every module their entry runs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from study import imports
from study.profiles import SWEEPS

ROOT = imports.ROOT
# The layers, bottom up: a module imports only from its own layer or those below it.
LAYERS = ("study", "study.engine", "study.tracking", "study.runs", "study.analysis",
          "study.report")  # fmt: skip
CORE = {"__init__", "config", "records", "data", "profiles", "imports"}
# The command users type (Hydra finds conf/ from it); its code is study.runs.train.
COMMANDS = {"train"}
PLUGINS = imports.plugins()


def modules() -> list[str]:
    """Every module of the study package, as an import name."""
    names = []
    for path in sorted((ROOT / "study").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def layer(module: str) -> int:
    """The module's layer; the root's commands sit on top of everything."""
    if module.count(".") == 1 and module.split(".")[1] in COMMANDS:
        return len(LAYERS)
    package = ".".join(module.split(".")[:2]) if module.count(".") >= 2 else "study"
    if module in LAYERS:
        package = module
    return LAYERS.index(package)


def test_the_layers_import():
    import study.analysis
    import study.engine
    import study.report
    import study.runs
    import study.tracking  # noqa: F401


def test_the_root_holds_the_core_and_the_command_only():
    root = {p.stem for p in (ROOT / "study").glob("*.py")}
    assert root == CORE | COMMANDS
    packages = {p.name for p in (ROOT / "study").iterdir() if (p / "__init__.py").is_file()}
    assert packages == {name.split(".")[1] for name in LAYERS[1:]}


def test_no_module_imports_a_layer_above_its_own():
    upward = [
        f"{m} -> {i}"
        for m in modules()
        for i in imports.imports_of(m)
        if i.startswith("study") and layer(i) > layer(m)
    ]
    assert upward == []


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Each circle of imports (a strongly connected group of more than one module)."""
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def import_graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports (a package's own __init__ left out: importing
    ``a.b`` runs ``a/__init__.py`` without ``a`` importing ``a.b``)."""
    graph = {}
    for m in [*modules(), *PLUGINS]:
        graph[m] = {i for i in imports.imports_of(m) if not m.startswith(i + ".")}
    return graph


def test_no_modules_import_each_other_in_a_circle():
    assert cycles(import_graph()) == []


def test_the_cycle_finder_finds_a_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


# ---------------------------------------------------------------------- dvc.yaml's deps


def stages() -> dict[str, dict]:
    """dvc.yaml's stages, a foreach stage expanded (``sweep@init``, ...)."""
    out = {}
    for name, stage in yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"].items():
        if "foreach" in stage:
            for item in stage["foreach"]:
                text = yaml.safe_dump(stage["do"]).replace("${item}", str(item))
                out[f"{name}@{item}"] = yaml.safe_load(text)
        else:
            out[name] = stage
    return out


def code_paths(deps: list) -> list[Path]:
    """A stage's deps that are the project's code (files or folders)."""
    paths = [ROOT / str(d).split("#")[0].strip() for d in deps if isinstance(d, str)]
    return [p for p in paths if p.relative_to(ROOT).parts[0] in imports.PACKAGES]


def uncovered(deps: list, cmd: str) -> list[str]:
    """The files the command's entry imports that no dep (a file, or a folder above it)
    covers."""
    paths = code_paths(deps)
    return [
        file.relative_to(ROOT).as_posix()
        for file in imports.closure(imports.entries(cmd))
        if not any(file == p or p in file.parents for p in paths)
    ]


def unused(deps: list, cmd: str) -> list[str]:
    """Code the stage depends on that its entry never imports (a folder counts only if its
    entry imports every module in it): an edit there would rerun the stage for nothing."""
    run = set(imports.closure(imports.entries(cmd)))
    out = []
    for path in code_paths(deps):
        files = sorted(path.rglob("*.py")) if path.is_dir() else [path]
        if not files or not set(files) <= run:
            out.append(path.relative_to(ROOT).as_posix())
    return out


@pytest.mark.parametrize("name", sorted(stages()))
def test_each_stage_depends_on_every_module_its_entry_imports_and_no_other(name):
    stage = stages()[name]
    fix = "stale: run python -m study.imports"
    assert uncovered(stage["deps"], stage["cmd"]) == [], fix
    assert unused(stage["deps"], stage["cmd"]) == [], fix


def test_the_deps_writer_writes_what_the_check_wants():
    text = imports.DVC_FILE.read_text()
    assert imports.updated_dvc(text) == text  # what the writer would write is there
    stale = text.replace("      - study/analysis/comparisons.py\n", "", 1)
    assert stale != text and imports.updated_dvc(stale) == text


def test_dropping_a_module_from_a_stage_fails_the_check():
    # Known answers: the analyze stage without comparisons.py (as dvc.yaml once had it), and
    # with a module it does not run.
    stage = stages()["analyze"]
    deps = [d for d in stage["deps"] if d != "study/analysis/comparisons.py"]
    assert uncovered(deps, stage["cmd"]) == ["study/analysis/comparisons.py"]
    assert unused([*stage["deps"], "study/report"], stage["cmd"]) == ["study/report"]


def test_the_sweep_stages_are_the_profiles_sweeps_in_order():
    stage = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["sweep"]
    assert tuple(stage["foreach"]) == SWEEPS


def test_a_cells_code_version_covers_the_engine_and_no_mlflow_module():
    from study import records

    files = {p.relative_to(ROOT).as_posix() for p in records.run_modules()}
    engine = {p.relative_to(ROOT).as_posix() for p in (ROOT / "study" / "engine").glob("*.py")}
    assert engine - {"study/engine/memory.py"} <= files  # memory only guards: no numbers
    assert "study/runs/cell.py" in files
    assert not [f for f in files if f.startswith(("study/tracking/", "study/analysis/",
                                                  "study/report/"))]  # fmt: skip


def test_the_import_walker_follows_local_and_relative_imports(tmp_path):
    pkg = tmp_path / "study"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from study.sub import b\n")
    (pkg / "sub" / "b.py").write_text("from . import c\n")
    (pkg / "sub" / "c.py").write_text("import os\n")
    found = {p.relative_to(tmp_path).as_posix() for p in imports.closure(["study.a"], tmp_path)}
    assert found == {"study/__init__.py", "study/a.py", "study/sub/__init__.py",
                     "study/sub/b.py", "study/sub/c.py"}  # fmt: skip


def test_layers_are_listed_bottom_up_as_packages():
    for name in LAYERS[1:]:
        assert (ROOT / Path(*name.split("."))).is_dir(), name
