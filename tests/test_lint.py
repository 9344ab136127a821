"""ruff and mypy, with the settings in pyproject.toml, as part of the README's test command (and so of CI).

A test that lints is only as good as its proof that a defect fails it: each check is also run on a
copy of a module with a planted error, which must be reported.
"""
from __future__ import annotations

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


def test_mypy_finds_nothing():
    done = tool("mypy")
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
