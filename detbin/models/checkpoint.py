"""Checkpoints: atomic writes, safe loads, and rebuilding a detector from a file alone.

A detbin checkpoint is a dict of plain values and tensors only, so
``torch.load(weights_only=True)`` reads it (no pickled classes, no code):

``{"format": "detbin", "format_version": 1, "detbin_version", "kind": "teacher"|"student",
"detector": DetectorConfig dict, "binarize": BinarizeSpec dict | None, "recipe": name | None,
"recipe_params": dict, "classes": [names], "model": state_dict, "recipe_state": state_dict,
"metrics": dict, "config": resolved run config}`` (+ trainer state in ``last.pt``).

A plain torchvision ``state_dict`` is accepted as a teacher: its architecture and class count
are inferred from its keys and shapes (or given with ``--arch``).

Writes are atomic (a temporary ``.NAME.XXXXXXXX`` beside the file, renamed over it); a write
killed half-way leaves such a temporary file, which :func:`remove_stale_temps` deletes on the
next start. Write failures (a full disk, which torch reports as ``enforce fail ... unexpected
pos``, a read-only folder) become :class:`~detbin.core.errors.OutputError`.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from detbin.models.config import DetectorConfig
from detbin.models.detector import Detector, build_detector
from detbin.models.families import all_archs, families
from detbin.core.errors import CheckpointError, ConfigError, OutputError, close_matches, os_error_message

__all__ = ["FORMAT", "FORMAT_VERSION", "save_atomic", "remove_stale_temps", "non_finite", "read", "require",
           "infer_config", "load_state", "load_detector"]

log = logging.getLogger(__name__)

FORMAT = "detbin"
FORMAT_VERSION = 1
# tempfile.mkstemp's names: the prefix save_atomic gives, then 8 characters of [a-z0-9_]
_TEMP = re.compile(r"\.(?P<name>.+)\.[a-z0-9_]{8}")
_ZIP, _PICKLE_PROTOCOLS = b"PK\x03\x04", (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")


def save_atomic(obj: dict[str, Any], path: Path) -> None:
    """``torch.save`` to a temporary file in the same folder, fsync, then rename over ``path``.

    A crash mid-write leaves the previous file intact, never a truncated one.

    Raises:
        OutputError: the folder cannot be created or written (read-only, full, not a folder).
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    except OSError as exc:
        raise OutputError(os_error_message(exc, "write a checkpoint", str(path))) from None
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise OutputError(os_error_message(exc, "write the checkpoint", str(path))) from None
    except RuntimeError as exc:  # torch's zip writer reports a failed write (ENOSPC) as "unexpected pos"
        Path(tmp).unlink(missing_ok=True)
        if "unexpected pos" not in str(exc) and "enforce fail" not in str(exc):
            raise
        raise OutputError(f"{path}: cannot write the checkpoint (the write stopped short: {str(exc).strip()}); the "
                          "disk is probably full; free space or choose a folder on another disk") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def remove_stale_temps(folder: Path) -> list[Path]:
    """Delete the temporary files of atomic writes that were killed half-way (``.last.pt.x1y2z3w4``).

    Only names :func:`save_atomic` makes for a checkpoint beside them (``.NAME.XXXXXXXX`` with
    ``NAME`` ending in ``.pt``) are removed; a run writes each checkpoint from one process, so
    at the start of a run no such file is in use.
    """
    removed = []
    for path in sorted(Path(folder).glob(".*.pt.*")) if Path(folder).is_dir() else []:
        match = _TEMP.fullmatch(path.name)
        if match and match["name"].endswith(".pt") and path.is_file():
            path.unlink()
            removed.append(path)
    if removed:
        log.warning("removed %d temporary file(s) of an interrupted checkpoint write: %s", len(removed),
                    ", ".join(str(p) for p in removed))
    return removed


def non_finite(state: dict[str, Tensor]) -> list[str]:
    """Names of the floating-point tensors of ``state`` that hold a NaN or an infinity."""
    return [k for k, v in state.items()
            if isinstance(v, Tensor) and v.is_floating_point() and not bool(torch.isfinite(v).all())]


def _kind_of_bytes(path: Path) -> str | None:
    """Why ``path`` cannot be a torch checkpoint from its first bytes, or None when it may be one."""
    with path.open("rb") as handle:
        head = handle.read(4)
    if not head:
        return "is empty (0 bytes); the write that made it did not finish"
    if head.startswith(_ZIP) or head[:2] in _PICKLE_PROTOCOLS:
        return None
    return (f"is not a PyTorch checkpoint (it starts with bytes {head!r}, neither a zip archive nor a pickle); "
            "pass a file written by torch.save")


def read(path: Path) -> dict[str, Any]:
    """``torch.load(path, weights_only=True)`` on CPU, with one-line errors.

    Raises:
        CheckpointError: missing, empty, not a PyTorch file at all, unreadable (truncated), not a
            dict, or holding pickled objects other than tensors and plain values.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        problem = _kind_of_bytes(path)
    except OSError as exc:
        raise CheckpointError(os_error_message(exc, "read the checkpoint", str(path))) from None
    if problem is not None:
        raise CheckpointError(f"{path}: {problem}")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt or unsafe files
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        unsafe = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        if unsafe:
            raise CheckpointError(f"{path}: holds pickled Python objects ({unsafe[1]}), which detbin does not load "
                                  "(weights_only=True); re-save only the model's state_dict") from None
        if "Weights only load failed" in str(exc):  # a pickle the safe unpickler cannot read at all
            detail = str(exc).split("WeightsUnpickler error:")[-1].strip().splitlines()[0].strip()
            raise CheckpointError(f"{path}: a pickle that the safe loader (weights_only=True) refuses ({detail[:80]}); "
                                  "re-save only the model's state_dict with torch.save") from None
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({text[:160]}); is the file complete?") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: holds a {type(data).__name__}, not a checkpoint or state dict")
    return data


def require(data: dict[str, Any], path: Path, fields: dict[str, type]) -> None:
    """Check that a detbin checkpoint has ``fields`` of the given types (a crafted or damaged file may not).

    Raises:
        CheckpointError: names the first missing or mistyped field.
    """
    for name, kind in fields.items():
        if not isinstance(data.get(name), kind):
            got = "missing" if name not in data else f"{str(data[name])[:40]!r} (a {type(data[name]).__name__})"
            raise CheckpointError(f"{path}: field {name!r} is {got}, expected a {kind.__name__}; the file is damaged "
                                  "or not written by detbin (re-save it from its run folder)")


def infer_config(state: dict[str, Tensor], arch: str | None = None, **runtime: Any) -> DetectorConfig:
    """Architecture, width and class count of a plain detection ``state_dict``.

    Every registered family is asked in turn (:attr:`DetectorFamily.infer`).

    Args:
        arch: the architecture, when given (still checked against the shapes).
        runtime: non-shape settings (``min_size``, ``anchor_sizes`` ...) to set.

    Raises:
        CheckpointError: the keys match no family's architecture.
    """
    shape = {k: tuple(v.shape) for k, v in state.items() if isinstance(v, Tensor)}
    values = next((v for f in families().values() if f.infer is not None and (v := f.infer(shape))), None)
    if not values:
        archs = all_archs()
        hint = f" {close_matches(arch, archs)}" if arch else ""
        sample = ", ".join(list(shape)[:3])
        raise CheckpointError(f"state dict matches no known detector (keys start: {sample}){hint}; supported: "
                              f"{', '.join(archs)}. Pass --arch if it is one of them with renamed keys")
    if arch is not None and arch != values["arch"]:
        raise CheckpointError(f"--arch {arch} does not fit the state dict, which looks like {values['arch']}")
    return DetectorConfig(**{**values, **runtime})


def load_state(detector: Detector, state: dict[str, Tensor], source: str,
               fix: str = "was it saved from another architecture, width or class count?") -> None:
    """Load ``state`` strictly; only BatchNorm's ``num_batches_tracked`` may be missing.

    torchvision's checkpoints come from FrozenBatchNorm2d models, which have no counter.
    Shapes are compared first: ``load_state_dict`` reports a mismatch as a many-line RuntimeError.

    Args:
        source: the file (and field) the weights come from, for the message.
        fix: what to tell the user, after the first difference.

    Raises:
        CheckpointError: a missing, unexpected or differently shaped tensor (the first one is named).
    """
    own = detector.model.state_dict()
    shapes = [(k, tuple(v.shape), tuple(own[k].shape)) for k, v in state.items()
              if k in own and isinstance(v, Tensor) and tuple(v.shape) != tuple(own[k].shape)]
    if shapes:
        key, theirs, ours = shapes[0]
        raise CheckpointError(f"{source}: weights do not fit {detector.config.arch} ({len(shapes)} tensor(s) of "
                              f"another shape, first {key}: {list(theirs)} in the file, {list(ours)} in the model); {fix}")
    result = detector.model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
    if missing or result.unexpected_keys:
        detail = f"missing {missing[:3]}" if missing else f"unexpected {result.unexpected_keys[:3]}"
        raise CheckpointError(f"{source}: weights do not fit {detector.config.arch} ({detail}); {fix}")


def load_detector(path: Path, arch: str | None = None, **runtime: Any) -> tuple[Detector, dict[str, Any]]:
    """A real-valued detector from a detbin checkpoint or a torchvision ``state_dict``.

    Binary students are rebuilt by :func:`detbin.build.load_model`, which also applies the
    recipe's binarization layout.

    Returns:
        The detector (eval mode) and the checkpoint's metadata (empty for a plain state dict).
    """
    data = read(path)
    if data.get("format") == FORMAT:
        require(data, path, {"detector": dict, "model": dict})
        try:
            config = DetectorConfig.from_dict(data["detector"])
        except ConfigError as exc:  # "detector: unknown key(s) ...": add the file
            raise CheckpointError(f"{path}: {exc}") from None
        meta = {k: v for k, v in data.items() if k != "model"}
        state = data["model"]
        fix = (f"its 'detector' field (arch {config.arch}) does not describe its 'model' weights; the file was "
               "edited or damaged, re-save it from its run folder")
    else:
        state = data.get("model", data) if isinstance(data.get("model"), dict) else data
        if not all(isinstance(v, Tensor) for v in state.values()):
            raise CheckpointError(f"{path}: neither a detbin checkpoint nor a state dict of tensors")
        config = infer_config(state, arch, **runtime)
        meta = {}
        fix = "was it saved from another architecture, width or class count?"
    try:
        detector = build_detector(config)
    except ConfigError as exc:  # an unknown detector.arch in the file
        raise CheckpointError(f"{path}: {exc}") from None
    load_state(detector, state, str(path), fix)
    detector.model.eval()
    return detector, meta
