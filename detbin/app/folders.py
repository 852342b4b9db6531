"""Output folders of runs: found writable before long work, history kept, stale temporaries removed.

* :func:`check_writable` creates a folder and writes, syncs and deletes a probe file in it, so an
  unwritable ``--project`` (EACCES, a read-only file system, a regular file in the way, a full
  disk) fails at the start of ``binarize``/``train``/``eval``, not after training or inference.
* :func:`rotate_history`: a new run in an existing folder (``--exist-ok``) moves the previous
  ``metrics.jsonl``/``results.csv`` aside (``metrics.1.jsonl`` ...) instead of appending to them.
* :func:`prepare_run_folder` does both for a training run, removes the temporary files of a
  checkpoint write that was killed half-way and checks the disk has room for the weights.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

from detbin.core.errors import OutputError, os_error_message
from detbin.models import checkpoint
from detbin.models.detector import Detector

__all__ = ["HISTORY", "check_writable", "rotate_history", "prepare_run_folder"]

log = logging.getLogger(__name__)

HISTORY = ("metrics.jsonl", "results.csv")


def check_writable(folder: Path, what: str) -> None:
    """Create ``folder`` (and its parents) and write, sync and delete a probe file in it.

    Run before long work, so an unwritable ``--project`` (EACCES, a read-only file system, a
    regular file in the way, a full disk) is reported at the start, not after training.

    Raises:
        OutputError: names the folder, ``what`` it is for, the OS's reason and the fix.
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".detbin-probe.", dir=folder)
        try:
            os.write(fd, b"detbin")
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as exc:
        raise OutputError(os_error_message(exc, f"write {what}", str(folder))) from None


def rotate_history(directory: Path) -> list[Path]:
    """Move a previous run's ``metrics.jsonl``/``results.csv`` aside (``metrics.1.jsonl`` ...), so a new
    run in the same folder (``--exist-ok``) starts fresh files and the old ones survive; logged."""
    moved = []
    for name in HISTORY:
        path = Path(directory) / name
        if not path.is_file():
            continue
        n = 1
        while (target := path.with_name(f"{path.stem}.{n}{path.suffix}")).exists():
            n += 1
        path.rename(target)
        moved.append(target)
        log.warning("%s: a new run in an existing folder (--exist-ok) starts a fresh %s; the previous one is now %s",
                    directory, name, target.name)
    return moved


def _check_space(directory: Path, student: Detector) -> None:
    """The disk must hold at least the student's weights (``last.pt`` is more: + optimizer state)."""
    need = sum(t.numel() * t.element_size() for t in student.model.state_dict().values())
    free = shutil.disk_usage(directory).free
    if free < need:
        raise OutputError(f"{directory}: {free / 1e6:.2f} MB free, but weights/last.pt needs more than {need / 1e6:.2f} "
                          "MB (the student's weights alone); free space or choose --project on another disk")


def prepare_run_folder(directory: Path, student: Detector, fresh: bool) -> None:
    """Rank 0, before training: a writable folder with room, fresh history files (``fresh``: a new
    run, not a resumed one), no temporaries of a killed write."""
    if fresh and directory.is_dir():
        rotate_history(directory)
    check_writable(directory / "weights", "the run folder")
    checkpoint.remove_stale_temps(directory / "weights")
    _check_space(directory, student)
