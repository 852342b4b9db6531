"""``python -m detbin`` (and ``torchrun -m detbin``) runs the CLI."""

from detbin.cli import main

main()
