"""The architecture holds: packages depend downwards only, types check, modules stay small."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
MAX_MODULE_LINES = 400
MAX_ROOT_MODULES = 8


def run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_the_import_layers_hold() -> None:
    """pyproject.toml's import-linter contracts: core imports nothing of mailgate, and so on."""
    result = run(str(BIN / "lint-imports"))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]


def test_mypy_finds_no_error() -> None:
    """pyproject.toml's [tool.mypy], with the mypy-zope plugin for Twisted's interfaces."""
    result = run(str(BIN / "mypy"))
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-2000:]


def test_modules_stay_readable() -> None:
    long = {str(path.relative_to(ROOT)): lines for path in (ROOT / "mailgate").rglob("*.py")
            if (lines := len(path.read_text().splitlines())) > MAX_MODULE_LINES}
    assert long == {}, f"modules over {MAX_MODULE_LINES} lines: split them by concern"


def test_the_package_root_holds_only_entry_points() -> None:
    """Subsystems live in packages; the root keeps the public names, hookspecs and testing."""
    modules = sorted(path.name for path in (ROOT / "mailgate").glob("*.py"))
    assert len(modules) <= MAX_ROOT_MODULES, modules
