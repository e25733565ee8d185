"""`dvc repro` re-runs a stage when code it executes changes: each stage's deps cover that code.

The code a stage executes is found from the source, not listed by hand: the stage's function in
`modelyard.stages`, then every `modelyard` module it imports (at module level or inside functions),
transitively. Each of those files must sit under one of the stage's `deps` in dvc.yaml.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
SRC = REPO / "src"
STAGES = ("fetch", "validate", "augment", "train", "evaluate", "register")


def module_file(name: str) -> Path | None:
    base = SRC / Path(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_modules(tree: ast.AST, package: str) -> set[str]:
    """`modelyard...` modules named by the import statements anywhere inside `tree`."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}  # `from pkg import module`
    return {m for m in found if m.split(".")[0] == "modelyard" and module_file(m)}


def code_of_stage(stage: str) -> set[Path]:
    stages_py = SRC / "modelyard" / "stages.py"
    tree = ast.parse(stages_py.read_text())
    functions = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    # The stage's function, the private helpers it calls, and the module-level imports of stages.py.
    todo_fns, seen_fns = [stage], set()
    roots = {n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))}
    while todo_fns:
        fn = functions[todo_fns.pop()]
        seen_fns.add(fn.name)
        roots.add(fn)
        for call in ast.walk(fn):
            if isinstance(call, ast.Name) and call.id in functions and call.id not in seen_fns:
                todo_fns.append(call.id)
    modules = set().union(*(imported_modules(r, "modelyard") for r in roots))
    files, todo = {stages_py}, list(modules)
    while todo:
        name = todo.pop()
        path = module_file(name)
        if path in files:
            continue
        files.add(path)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        todo += imported_modules(ast.parse(path.read_text()), package)
        parts = name.split(".")  # importing a.b.c runs a/__init__ and a/b/__init__ too
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]
    return files


@pytest.mark.parametrize("stage", STAGES)
def test_every_stage_depends_on_all_the_code_it_executes(stage):
    dvc = yaml.safe_load((REPO / "dvc.yaml").read_text())
    deps = [REPO / d for d in dvc["stages"][stage]["deps"]]
    uncovered = sorted(
        str(f.relative_to(REPO)) for f in code_of_stage(stage)
        if not any(f == d or d in f.parents for d in deps)
    )
    assert not uncovered, f"dvc.yaml stage '{stage}' runs code it does not depend on: {uncovered}"


def test_the_closure_sees_imports_inside_functions():
    # stages.train imports the Ray Train module inside the function; the closure must find it.
    assert SRC / "modelyard" / "training" / "distributed.py" in code_of_stage("train")
    assert SRC / "modelyard" / "data" / "augment.py" in code_of_stage("train")  # the policy runs in training
