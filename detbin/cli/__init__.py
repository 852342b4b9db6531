"""The ``detbin`` command line: thin typer adapters over the library (one module per verb).

:mod:`detbin.cli.common` holds the app, the consoles, the shared options and the error
handler; importing this package registers every command on ``app``.
"""

from __future__ import annotations

from detbin.cli import data, demo, detectors, evaluate, export, predict, profile, recipes, training  # noqa: F401  (register the commands)
from detbin.cli.common import app

__all__ = ["app", "main"]


def main() -> None:
    """Console-script entry point."""
    app()
