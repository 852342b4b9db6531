"""``detbin data synthetic``: write the embedded synthetic benchmark."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from detbin.cli.common import data_app, handles_errors, out

__all__ = ["data_synthetic"]


@data_app.command("synthetic")
@handles_errors
def data_synthetic(
    out_dir: Annotated[Path, typer.Option("--out", help="Folder to write (VOC layout + COCO JSON).")],
    train: Annotated[int, typer.Option(help="Images in trainval (90% train, 10% val).")] = 2000,
    test: Annotated[int, typer.Option(help="Images in test.")] = 500,
    seed: Annotated[int, typer.Option(help="Data set seed.")] = 0,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing, different folder.")] = False,
) -> None:
    """Write the embedded synthetic detection benchmark (deterministic for a seed)."""
    from detbin.data.synthetic import CLASSES, write_dataset

    path = write_dataset(out_dir, train, test, seed, overwrite)
    out.print(f"synthetic set in {path}: {train} trainval + {test} test images, classes {', '.join(CLASSES)}", markup=False)
