"""ruff and mypy, with the settings in pyproject.toml, as part of the README's test command (and so of CI).

A test that lints is only as good as its proof that a defect fails it: each check is also run on a
copy of a module with a planted error, which must be reported.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def tool(name: str, *args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / name), *args], cwd=cwd, capture_output=True, text=True, timeout=600)


def test_ruff_finds_nothing():
    done = tool("ruff", "check", ".")
    assert done.returncode == 0, done.stdout + done.stderr


def mypy_cache() -> Path:
    """mypy's incremental cache, kept outside the checkout (as the wheel cache is) and shared by every checkout:
    a fresh clone on a machine that ran the suite before re-checks only what changed (torch's types take most of
    a cold run: about 35 s here, 1.3 s warm). mypy takes a cached module whose path or mtime differs only if its
    contents hash the same, so another checkout's entries are checked, not trusted."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "pytorch-cuda" / "mypy"


def test_mypy_finds_nothing():
    done = tool("mypy", "--cache-dir", str(mypy_cache()))
    assert done.returncode == 0, done.stdout + done.stderr


def test_both_catch_a_planted_error(tmp_path):
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    (tmp_path / "pytorch_cuda").mkdir()
    (tmp_path / "pytorch_cuda" / "__init__.py").write_text("")
    (tmp_path / "pytorch_cuda" / "broken.py").write_text(
        "import os\n\n\ndef size(path: str) -> int:\n    return 'not a number'\n")
    ruff = tool("ruff", "check", ".", cwd=tmp_path)
    assert ruff.returncode == 1 and "F401" in ruff.stdout, ruff.stdout  # os imported, unused
    mypy = tool("mypy", "pytorch_cuda", cwd=tmp_path)
    assert mypy.returncode == 1 and "Incompatible return value type" in mypy.stdout, mypy.stdout


def _imports_of_the_package(package: Path) -> dict[str, set[str]]:
    """module -> the package's modules it imports anywhere: at the top, under TYPE_CHECKING, inside functions."""
    import ast

    modules = {path.stem for path in package.glob("*.py")}
    graph = {}
    for path in package.glob("*.py"):
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                found |= {node.module.split(".")[0]} if node.module else {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith(package.name + "."):
                found.add(node.module.split(".")[1])
        graph[path.stem] = (found & modules) - {path.stem}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import circle of `graph` ([] when none), by depth-first search."""
    state: dict[str, str] = {}
    path: list[str] = []

    def visit(module: str) -> list[str]:
        state[module] = "open"
        path.append(module)
        for imported in sorted(graph[module]):
            if state.get(imported) == "open":
                return [*path[path.index(imported):], imported]
            if imported not in state and (found := visit(imported)):
                return found
        state[module] = "done"
        path.pop()
        return []

    return next((found for module in sorted(graph) if module not in state and (found := visit(module))), [])


def test_the_builder_has_no_import_circle():
    """Not even through a type-only or a lazy import (the review's pipeline -> progress -> tables -> pipeline)."""
    graph = _imports_of_the_package(REPO / "pytorch_cuda")
    assert "pipeline" in graph and _cycle(graph) == [], _cycle(graph)
    assert _cycle({**graph, "tables": graph["tables"] | {"pipeline"}})  # a circle planted back is found
