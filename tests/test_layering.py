"""The package's layering is enforced: import-linter's contracts in pyproject.toml hold, and would fail if broken."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LINT = Path(sys.executable).with_name("lint-imports")


def lint(package_parent: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(package_parent)}
    return subprocess.run([str(LINT), str(ROOT / "pyproject.toml"), "--no-cache"], capture_output=True, text=True,
                          cwd=package_parent, env=env)


def test_layers_and_no_circles_hold():
    result = lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 kept, 0 broken" in result.stdout


def test_an_upward_import_and_a_circle_are_caught(tmp_path):
    shutil.copytree(ROOT / "detbin", tmp_path / "detbin", ignore=shutil.ignore_patterns("__pycache__"))
    errors = tmp_path / "detbin" / "core" / "errors.py"
    errors.write_text(errors.read_text() + "\nfrom detbin.cli import common  # noqa: E402 (an upward import)\n")
    common = tmp_path / "detbin" / "cli" / "common.py"
    common.write_text(common.read_text() + "\nfrom detbin.cli import training  # noqa: E402 (a circle)\n")
    result = lint(tmp_path)
    assert result.returncode != 0
    assert "0 kept, 2 broken" in result.stdout
    assert "detbin.core.errors -> detbin.cli.common" in result.stdout
