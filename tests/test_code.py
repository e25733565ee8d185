"""The shape of the library's code, checked so it stays that way: no function longer than a screen, and no
shared module that branches on which modality it handles (what differs by input kind is the modality's)."""

from __future__ import annotations

import ast
import re
import subprocess
from pathlib import Path

from helpers.imports import REPO, SRC
from modelyard.modalities import modality_names

LAYERS = [SRC / "modelyard", REPO / "serving", REPO / "tasks", REPO / "pipelines"]
SOURCES = sorted(p for layer in LAYERS for p in layer.rglob("*.py"))
MODALITY_PACKAGE = SRC / "modelyard" / "modalities"
MAX_LINES = 60


def test_no_function_is_longer_than_a_screen():
    long = [f"{p.relative_to(REPO)}:{n.lineno} {n.name} ({n.end_lineno - n.lineno + 1} lines)"
            for p in SOURCES for n in ast.walk(ast.parse(p.read_text()))
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno - n.lineno + 1 > MAX_LINES]
    assert not long, long


def branches_on_a_modality(path: Path) -> list[str]:
    """Comparisons with a modality's name and isinstance checks against a modality's types."""
    names, found = set(modality_names()), []
    where = path.relative_to(REPO) if path.is_relative_to(REPO) else path.name
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Compare):
            literals = [c.value for c in [node.left, *node.comparators] if isinstance(c, ast.Constant)]
            found += [f"{where}:{node.lineno} compares with {v!r}" for v in literals if v in names]
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "isinstance" and len(node.args) == 2:
            kinds = ast.unparse(node.args[1])
            if re.search(r"(Split|Preprocessor|Policy|Schema|Codec)\b", kinds):
                found.append(f"{where}:{node.lineno} isinstance(..., {kinds})")
    return found


def test_no_shared_module_branches_on_a_modality():
    shared = [p for p in SOURCES if MODALITY_PACKAGE not in p.parents]
    assert not [hit for p in shared for hit in branches_on_a_modality(p)]


def test_the_review_s_own_search_finds_nothing_outside_the_modalities():
    grep = subprocess.run(["git", "grep", "-nE", r'isinstance\(.*Text|== "text"|"ids" in', "--", "src", "serving",
                           "tasks", "pipelines"], cwd=REPO, capture_output=True, text=True)
    assert [line for line in grep.stdout.splitlines() if not line.startswith("src/modelyard/modalities/")] == []


def test_the_check_finds_a_branch_where_there_is_one(tmp_path):
    module = tmp_path / "shared.py"
    module.write_text('def load(kind, split):\n    if kind == "text":\n        return 1\n'
                      '    return isinstance(split, ImageSplit)\n')
    assert branches_on_a_modality(module) == ["shared.py:2 compares with 'text'", "shared.py:4 isinstance(..., ImageSplit)"]
