"""The files of a data set: reading its text (split lists, class lists, JSON) and the paths it names.

Annotation and result files are UTF-8 (JSON requires it; VOC's lists are ASCII). A file in
another encoding, or one that cannot be read, is a :class:`~detbin.core.errors.DataError` that
names the file and the first bad byte, never a ``UnicodeDecodeError`` traceback.

A path read from an annotation file (a COCO ``file_name``, a VOC stem) is data, not a choice the
user made: :func:`inside_root` keeps it inside the data root (no absolute path, no ``..``) unless
the user allows otherwise (``--allow-outside-root``, ``data.<split>.allow_outside_root: true``).
"""

from __future__ import annotations

import json
import ntpath
from pathlib import Path, PurePosixPath
from typing import Any

from detbin.core.errors import DataError, os_error_message

__all__ = ["read_text", "read_json", "inside_root", "ALLOW_OUTSIDE_HINT"]

ALLOW_OUTSIDE_HINT = ("pass --allow-outside-root (detbin eval) or set data.<split>.allow_outside_root: true if the "
                      "file is yours and meant to point there")


def read_text(path: Path, what: str) -> str:
    """The UTF-8 text of ``path``; ``what`` names the file's role in messages ("COCO annotation file").

    Raises:
        DataError: not UTF-8 (the offset of the first bad byte is given), or unreadable.
    """
    path = Path(path)
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text (byte {exc.start}: {exc.object[exc.start:exc.start + 1]!r}); "
                        f"a {what} must be UTF-8, re-save it in that encoding") from None
    except OSError as exc:
        raise DataError(os_error_message(exc, f"read the {what}", str(path))) from None


def read_json(path: Path, what: str) -> Any:
    """The parsed JSON of ``path`` (strict: ``NaN`` is refused too, as other tools refuse it).

    Raises:
        DataError: not UTF-8, unreadable, or invalid JSON (the line is given; truncation is the usual cause).
    """
    text = read_text(path, what)

    def constant(name: str) -> Any:
        raise ValueError(name)

    try:
        return json.loads(text, parse_constant=constant)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}); the file may be truncated") from None
    except ValueError as exc:
        raise DataError(f"{path}: holds {exc}, which is not JSON (strict parsers refuse it); write null or a "
                        "number") from None


def inside_root(name: str, where: str, allow_outside: bool = False) -> str:
    """``name`` if it is a relative path that stays below the folder it is joined to.

    The check is on the text alone (no symlink is followed: a data root may link to another
    disk); an absolute path, a Windows drive and any ``..`` component are refused.

    Args:
        where: the file and entry the name comes from, for the message.
        allow_outside: the user allowed paths outside the data root: return ``name`` unchecked.

    Raises:
        DataError: names the path, ``where`` and the switch that allows it.
    """
    if allow_outside:
        return name
    posix = PurePosixPath(name.replace("\\", "/"))
    if not name or "\0" in name or posix.is_absolute() or ntpath.splitdrive(name)[0] or ".." in posix.parts:
        raise DataError(f"{where}: path {name!r} leads outside the data root, which detbin does not read by default; "
                        + ALLOW_OUTSIDE_HINT)
    return name
