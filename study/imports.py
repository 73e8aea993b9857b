"""The project's own import graph, read from its source (nothing is imported).

Two lists are derived from it instead of being typed: the files a cell's numbers come
from (``records.code_version`` hashes them: editing any of them makes every cell new),
and the files each pipeline stage runs, its code deps in ``dvc.yaml`` (``python -m
study.imports`` writes them; ``tests/test_layout.py`` fails while they are stale).

A module's imports are every ``import``/``from ... import`` statement in it, at any depth
(a function's local import counts too), of the project's own packages (``study`` and
``hydra_plugins``); importing ``a.b.c`` also runs ``a/__init__.py`` and ``a/b/__init__.py``.
"""

from __future__ import annotations

import ast
import functools
import re
import sys
from collections.abc import Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent  # the project folder
PACKAGES = ("study", "hydra_plugins")


def module_file(name: str, root: Path = ROOT) -> Path | None:
    """The file that defines module ``name`` (a package: its ``__init__.py``), or None."""
    base = root.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _own(name: str) -> bool:
    return name.split(".")[0] in PACKAGES


def _with_parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def _resolve(node: ast.ImportFrom, module: str, is_package: bool) -> str | None:
    """The absolute module a ``from`` statement reads from (relative ones resolved)."""
    if not node.level:
        return node.module
    parts = module.split(".")
    base = parts if is_package else parts[:-1]
    base = base[: len(base) - node.level + 1]
    return ".".join([*base, *([node.module] if node.module else [])])


@functools.cache
def imports_of(name: str, root: Path = ROOT) -> frozenset[str]:
    """The project modules that importing module ``name`` runs directly."""
    path = module_file(name, root)
    if path is None:
        return frozenset()
    found: set[str] = set(_with_parents(name)[:-1])
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            source = _resolve(node, name, path.name == "__init__.py")
            if source is None:
                continue
            names = [source]
            # ``from pkg import mod``: mod may be a module of its own.
            names += [f"{source}.{alias.name}" for alias in node.names]
        else:
            continue
        for imported in names:
            if _own(imported) and module_file(imported, root) is not None:
                found.update(m for m in _with_parents(imported) if module_file(m, root))
    found.discard(name)
    return frozenset(found)


def closure(entries: Iterable[str], root: Path = ROOT) -> list[Path]:
    """Every project file that importing the ``entries`` modules runs, sorted."""
    seen: set[str] = set()
    todo = [m for entry in entries for m in _with_parents(entry)]
    while todo:
        name = todo.pop()
        if name in seen or module_file(name, root) is None:
            continue
        seen.add(name)
        todo.extend(imports_of(name, root))
    return sorted(module_file(name, root) for name in seen)  # type: ignore[type-var]


# ------------------------------------------------------ dvc.yaml: each stage's code deps

DVC_FILE = ROOT / "dvc.yaml"
# Hydra imports every module of its plugin folder when a sweep starts.
PLUGIN_FOLDER = ROOT / "hydra_plugins" / "study_sweeps"


def plugins() -> list[str]:
    return sorted(f"hydra_plugins.study_sweeps.{p.stem}" for p in PLUGIN_FOLDER.glob("*.py")
                  if p.stem != "__init__")  # fmt: skip


def entries(cmd: str) -> list[str]:
    """The modules a stage's command runs: its ``python -m`` entry, and Hydra's plugins for
    ``study.train``."""
    [entry] = re.findall(r"python -m ([\w.]+)", cmd)
    return [entry, *plugins()] if entry == "study.train" else [entry]


def stage_deps(cmd: str) -> list[str]:
    """The code deps a stage with this command should list: every file its entry imports,
    a whole folder where it imports every module in it (outside the core's folder)."""
    run = set(closure(entries(cmd)))
    out = set()
    for file in run:
        folder = file.parent
        whole = folder != ROOT / "study" and set(folder.glob("*.py")) <= run
        out.add((folder if whole else file).relative_to(ROOT).as_posix())
    return sorted(out)


def is_code(dep: str) -> bool:
    return dep.split("#")[0].strip().split("/")[0] in PACKAGES


def updated_dvc(text: str) -> str:
    """dvc.yaml's text with each stage's code deps replaced by :func:`stage_deps` (the other
    deps, their order and every comment kept)."""
    lines, out, cmd = text.split("\n"), [], None
    i = 0
    while i < len(lines):
        line = lines[i]
        if re.match(r"^  (\w+):\s*$", line):  # a new stage: no command seen yet
            cmd = None
        if m := re.match(r"^\s+cmd: (.*)$", line):
            cmd = m.group(1)
        if (m := re.match(r"^(\s+)deps:\s*$", line)) and cmd:
            indent = m.group(1) + "  "
            out.append(line)
            i += 1
            rest = []
            while i < len(lines) and lines[i].startswith(indent + "- "):
                if not is_code(lines[i].strip()[2:]):
                    rest.append(lines[i])
                i += 1
            out += [f"{indent}- {dep}" for dep in stage_deps(cmd)] + rest
            continue
        out.append(line)
        i += 1
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    """``python -m study.imports [--check]``: write each dvc.yaml stage's code deps (what
    its entry imports); --check only says whether they are up to date (exit 1 if not)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m study.imports", description=main.__doc__)
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if stale")
    args = parser.parse_args(argv)
    text = DVC_FILE.read_text()
    new = updated_dvc(text)
    if new == text:
        print("dvc.yaml: every stage's code deps are what its entry imports")
        return
    if args.check:
        print("dvc.yaml: code deps out of date; run python -m study.imports", file=sys.stderr)
        raise SystemExit(1)
    DVC_FILE.write_text(new)
    print("dvc.yaml: code deps rewritten from the imports")


if __name__ == "__main__":
    main()
