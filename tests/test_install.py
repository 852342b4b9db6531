"""A non-editable install lists the built-in recipes and ships the recipe files."""

from __future__ import annotations

import json
import subprocess
import sysconfig
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_pip_install_non_editable_lists_recipes_and_ships_yaml(tmp_path):
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    site = Path(subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    # dependencies (torch ...) come from this environment, detbin itself from the fresh wheel
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    installed = subprocess.run([python, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--quiet",
                                str(ROOT)], capture_output=True, text=True, cwd=tmp_path)
    assert installed.returncode == 0, f"pip install failed:\n{installed.stdout}\n{installed.stderr}"
    detbin = env_dir / "bin" / "detbin"
    listed = json.loads(subprocess.run([detbin, "recipes", "--json"], capture_output=True, text=True, check=True,
                                       cwd=tmp_path).stdout)
    for name in ("xnor", "bireal", "reactnet"):
        assert listed[name]["package"] == "detbin" and listed[name]["version"]
    shown = subprocess.run([detbin, "recipes", "show", "reactnet"], capture_output=True, text=True, check=True,
                           cwd=tmp_path).stdout
    assert "tiny_synthetic.yaml" in shown and "recipe: reactnet" in shown
    where = subprocess.run([python, "-c", "import detbin.config as c; print(c.recipes_dir())"], capture_output=True,
                           text=True, check=True, cwd=tmp_path).stdout.strip()
    assert where.startswith(str(site)), "recipes come from the installed wheel, not the source tree"
