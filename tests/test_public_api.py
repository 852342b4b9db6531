"""Plugins use only detbin's public API; everything exported resolves."""

from __future__ import annotations

import ast
from pathlib import Path

import detbin

PLUGINS = Path(__file__).resolve().parent.parent / "plugins"


def test_plugins_import_only_names_of_the_public_api():
    offenders = []
    files = sorted(PLUGINS.rglob("*.py"))
    assert files, "the plugins folder must hold the built-in recipes"
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("detbin."):
                offenders.append(f"{path.name}: from {node.module} import ...")
            if isinstance(node, ast.ImportFrom) and node.module == "detbin":
                offenders += [f"{path.name}: {a.name} is not in detbin.__all__" for a in node.names
                              if a.name not in detbin.__all__]
            if isinstance(node, ast.Import):
                offenders += [f"{path.name}: import {a.name}" for a in node.names if a.name.startswith("detbin")]
    assert offenders == []


def test_the_public_api_names_objects_not_modules():
    import types

    modules = [name for name in detbin.__all__ if isinstance(getattr(detbin, name), types.ModuleType)]
    assert modules == []


def test_every_exported_name_resolves():
    for name in detbin.__all__:
        assert getattr(detbin, name) is not None


def test_import_detbin_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, detbin; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"
