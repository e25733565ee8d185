"""Which modelyard modules a piece of code imports, read from the source (AST), not by importing it.

Used by the import-contract tests and by the check that each DVC stage depends on all the code it runs. A
registry package (one whose `__init__` loads its members with `modelyard.plugins.load_member`) counts as
importing every module in it: discovery imports whichever member a name picks.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SRC = REPO / "src"


def module_file(name: str, root: Path = SRC) -> Path | None:
    base = root / Path(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def module_name(path: Path, root: Path = SRC) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_names(tree: ast.AST, package: str) -> set[str]:
    """Every module name an import statement anywhere inside `tree` names (`from a import b` names a and a.b)."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}
    return found


def is_registry(path: Path) -> bool:
    return path.name == "__init__.py" and "load_member" in imported_names_of(path) | _names_used(path)


def imported_names_of(path: Path) -> set[str]:
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    return imported_names(ast.parse(path.read_text()), package)


def _names_used(path: Path) -> set[str]:
    return {n.id for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Name)}


def project_imports(path: Path) -> set[str]:
    """The modelyard modules `path` imports (that exist as files)."""
    return {m for m in imported_names_of(path) if m.split(".")[0] == "modelyard" and module_file(m)}


def closure(roots: set[str]) -> set[Path]:
    """Files of the modules named in `roots` and of everything they import, transitively (parent packages and
    every member of a registry package included)."""
    files: set[Path] = set()
    todo = list(roots)
    while todo:
        name = todo.pop()
        path = module_file(name)
        if path is None or path in files:
            continue
        files.add(path)
        todo += project_imports(path)
        parts = name.split(".")  # importing a.b.c runs a/__init__ and a/b/__init__ too
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]
        if is_registry(path):
            todo += [module_name(p) for p in path.parent.iterdir()
                     if (p.suffix == ".py" or (p / "__init__.py").is_file()) and not p.name.startswith("__")]
    return files
