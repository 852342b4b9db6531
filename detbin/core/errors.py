"""Errors that the CLI turns into one actionable line and exit code 1.

Every message names the thing that is wrong (file, field, name) and how to fix it,
and lists valid choices where there are any (timm's unknown-model error is the model).
"""

from __future__ import annotations

import difflib
import errno
from collections.abc import Iterable


class DetbinError(Exception):
    """Base class of every error detbin expects a user to see."""


class ConfigError(DetbinError):
    """A recipe file or a command-line value is invalid."""


class RecipeNotFound(DetbinError):
    """No recipe is registered under the requested name."""


class RecipeLoadError(DetbinError):
    """A recipe plugin is registered but could not be imported or validated."""


class DetectorLoadError(DetbinError):
    """A detector-family plugin is registered but could not be imported or validated."""


class CheckpointError(DetbinError):
    """A checkpoint or state dict is missing, corrupt or of an unknown architecture."""


class DataError(DetbinError):
    """A data set folder or annotation file is missing or malformed."""


class OutputError(DetbinError, OSError):
    """An output folder or file cannot be written (permissions, read-only or full file system).

    Also an ``OSError``, so code that handles failed writes as OS errors keeps doing so.
    """


class TrainingInterrupted(DetbinError):
    """Ctrl-C during training: ``last.pt`` was saved and the run stopped cleanly (exit code 130)."""


def close_matches(name: str, choices: Iterable[str], n: int = 3) -> str:
    """Return ``" (did you mean: a, b?)"`` for the choices closest to ``name``, or ``""``."""
    matches = difflib.get_close_matches(name, list(choices), n=n, cutoff=0.5)
    return f" (did you mean: {', '.join(matches)}?)" if matches else ""


def reject_unknown_keys(section: str, values: Iterable[str], known: Iterable[str]) -> None:
    """Raise ``ConfigError`` naming the keys of ``section`` that are not in ``known``."""
    known = set(known)
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"{section}: unknown key(s) {unknown}; valid: {sorted(known)}")


# What to do about the OS errors an output folder can raise (the strerror says what happened).
_OS_FIXES = {
    errno.EACCES: "choose a folder you may write to, or fix its permissions",
    errno.EPERM: "choose a folder you may write to, or fix its permissions",
    errno.EROFS: "the file system is read-only; choose a folder on a writable one",
    errno.ENOSPC: "the disk is full; free space or choose a folder on another disk",
    errno.EDQUOT: "the disk quota is used up; free space or choose a folder on another disk",
    errno.EFBIG: "the file exceeds the size limit of this system or process; choose another disk or raise the limit",
    errno.ENOTDIR: "a part of the path is a file, not a folder; choose another path",
    errno.EEXIST: "a file of that name is in the way; choose another path",
    errno.EISDIR: "a folder of that name is in the way; choose another path",
}


def os_error_message(exc: OSError, what: str = "", fallback: str | None = None) -> str:
    """One line for an ``OSError``: the path (``exc.filename``, else ``fallback``), what failed, the fix.

    Example: ``runs/binarize: cannot create the run folder (Read-only file system); the file system
    is read-only; choose a folder on a writable one``.
    """
    where = exc.filename if exc.filename is not None else fallback
    action = f"cannot {what} " if what else ""
    reason = exc.strerror or str(exc) or type(exc).__name__
    fix = _OS_FIXES.get(exc.errno or -1, "check the path and its permissions")
    return f"{where}: {action}({reason}); {fix}" if where is not None else f"{action}({reason}); {fix}"
