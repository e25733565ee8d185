"""The import rules of the design card, checked on the source (every import statement, at module level or
inside a function), so they hold by construction:

- the library (src/modelyard) imports neither the orchestration and serving layers nor their frameworks
  (Prefect, FastAPI/Starlette, Ray Serve);
- only modelyard.registry talks to MLflow; only modelyard.training.distributed imports ray.train;
- config imports no model, data or torch code (the fetch stage must not depend on models);
- tasks/ and pipelines/ are the only Prefect users; serving/ the only Serve and FastAPI user;
- no module imports, directly or through others, a module that imports it back.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from helpers.imports import REPO, SRC, closure, imported_names_of, module_name

LIBRARY = sorted((SRC / "modelyard").rglob("*.py"))
LAYERS = {name: sorted((REPO / name).rglob("*.py")) for name in ("tasks", "pipelines", "serving")}


def top_imports(path: Path) -> set[str]:
    """Every module name `path` imports (dotted, as written)."""
    return imported_names_of(path) if path.is_relative_to(SRC) else _names(path)


def _names(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return found


def offenders(files: list[Path], forbidden: tuple[str, ...], allowed: tuple[str, ...] = ()) -> list[str]:
    """`file: module` for each import in `files` of a module under one of `forbidden`, outside `allowed` files."""
    out = []
    for path in files:
        rel = str(path.relative_to(REPO)) if path.is_relative_to(REPO) else path.name
        if any(rel.startswith(a) for a in allowed):
            continue
        out += [f"{rel}: {m}" for m in sorted(top_imports(path))
                if any(m == f or m.startswith(f + ".") for f in forbidden)]
    return out


def test_the_library_imports_no_orchestration_or_serving_layer():
    assert not offenders(LIBRARY, ("prefect", "fastapi", "starlette", "ray.serve", "tasks", "pipelines", "serving"))


def test_only_the_registry_talks_to_mlflow():
    assert not offenders(LIBRARY, ("mlflow",), allowed=("src/modelyard/registry/",))


def test_only_the_distributed_module_imports_ray_train():
    assert not offenders(LIBRARY, ("ray.train",), allowed=("src/modelyard/training/distributed.py",))


def test_only_the_search_imports_ray_tune():
    assert not offenders(LIBRARY, ("ray.tune", "optuna"), allowed=("src/modelyard/tuning/",))


def test_config_imports_no_model_data_or_torch_code():
    files = closure({"modelyard.config"})
    names = {module_name(f) for f in files}
    assert not {n for n in names if n.startswith(("modelyard.models", "modelyard.data", "modelyard.modalities"))}
    assert not offenders(sorted(files), ("torch", "numpy"))


def test_prefect_is_used_by_tasks_and_pipelines_only_and_serve_by_serving_only():
    assert not offenders(LAYERS["serving"], ("prefect", "tasks", "pipelines"))
    assert not offenders(LAYERS["tasks"] + LAYERS["pipelines"], ("fastapi", "starlette", "ray.serve"),
                         allowed=("tasks/stages.py",))  # the deploy task calls serving.deploy, which owns Serve


def test_no_import_cycle_between_library_modules():
    graph = {module_name(p): {module_name(f) for f in closure_edges(p)} for p in LIBRARY}
    cycles = [m for m in graph if m in _reachable(graph, m)]
    assert not cycles, f"modules that import themselves back: {sorted(cycles)}"


def closure_edges(path: Path) -> set[Path]:
    """The library modules `path` names in an import statement (not its parent packages)."""
    from helpers.imports import module_file, project_imports

    return {module_file(m) for m in project_imports(path)} - {path}


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), list(graph.get(start, ()))
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo += graph.get(m, ())
    return seen


@pytest.mark.parametrize("forbidden", ["prefect", "fastapi"])
def test_the_check_fails_when_a_library_module_imports_a_framework(tmp_path, forbidden):
    """The contract can fail: a library module that imports the framework is named."""
    module = tmp_path / "offender.py"
    module.write_text(f"import json\n\n\ndef run():\n    import {forbidden}.flows  # inside a function, too\n")
    assert offenders([module], (forbidden,)) == [f"offender.py: {forbidden}.flows"]
    assert offenders([module], ("mlflow",)) == []
