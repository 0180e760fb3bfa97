"""The search's place in the layers: its configuration is torch-free, and no other stage imports it."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import kdsearch

PACKAGE = Path(kdsearch.__file__).parent


@pytest.mark.parametrize("module", ["kdsearch.search.config", "kdsearch.search"])
def test_reading_a_search_config_imports_neither_torch_nor_optuna(module):
    code = f"import sys, {module}; print('torch' in sys.modules, 'optuna' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def _imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at the top or inside a function."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


@pytest.mark.parametrize("stage", ["distill", "report"])
def test_the_stage_never_imports_the_search(stage):
    offenders = {str(path.relative_to(PACKAGE)): sorted(n for n in _imported_modules(path)
                                                         if n == "kdsearch.search" or n.startswith("kdsearch.search."))
                 for path in sorted((PACKAGE / stage).rglob("*.py"))}
    assert {k: v for k, v in offenders.items() if v} == {}
