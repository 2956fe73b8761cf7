"""The codebase keeps its shape: typed, linted, layered, acyclic.

These run the project's own checkers, so CI fails when an import points up a
layer (pyproject.toml, [tool.importlinter]), a cycle appears, a type error or
a lint error creeps in.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(*cmd: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def test_imports_point_down_and_have_no_cycles() -> None:
    lint = shutil.which("lint-imports")
    assert lint is not None, "import-linter is in the [test] extra"
    done = _run(lint, "--no-cache")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout


def test_ruff_is_clean() -> None:
    done = _run(sys.executable, "-m", "ruff", "check", "src", "tests", "benchmarks", "examples")
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.slow
def test_mypy_strict_is_clean() -> None:
    done = _run(sys.executable, "-m", "mypy", timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_top_of_the_package_holds_public_modules_only() -> None:
    """Private helpers live in the package they serve (config/, sessions/, aio/, cli/)."""
    top = ROOT / "src" / "shoal"
    private = sorted(p.name for p in top.glob("_*.py") if p.name != "__init__.py")
    assert private == []
    assert not (top / "demo_app.py").exists()  # the demo's app belongs to the CLI
    for package in ("config", "sessions", "aio", "cli", "core", "store", "runtime", "http"):
        assert (top / package / "__init__.py").is_file(), package
