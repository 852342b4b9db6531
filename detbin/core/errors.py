"""Errors that the CLI turns into one actionable line and exit code 1.

Every message names the thing that is wrong (file, field, name) and how to fix it,
and lists valid choices where there are any (timm's unknown-model error is the model).
"""

from __future__ import annotations

import difflib
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
