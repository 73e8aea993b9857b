"""The project's own import graph, read from its source (nothing is imported).

Two lists are derived from it instead of being typed: the files a cell's numbers come
from (``records.code_version`` hashes them: editing any of them makes every cell new),
and the files each pipeline stage runs (``tests/test_layout.py`` checks that the stage's
deps in ``dvc.yaml`` cover them, so that editing one reruns the stage).

A module's imports are every ``import``/``from ... import`` statement in it, at any depth
(a function's local import counts too), of the project's own packages (``study`` and
``hydra_plugins``); importing ``a.b.c`` also runs ``a/__init__.py`` and ``a/b/__init__.py``.
"""

from __future__ import annotations

import ast
import functools
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
