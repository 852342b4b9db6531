"""Checkpoints: atomic writes, safe loads, and rebuilding a detector from a file alone.

A detbin checkpoint is a dict of plain values and tensors only, so
``torch.load(weights_only=True)`` reads it (no pickled classes, no code):

``{"format": "detbin", "format_version": 1, "detbin_version", "kind": "teacher"|"student",
"detector": DetectorConfig dict, "binarize": BinarizeSpec dict | None, "recipe": name | None,
"recipe_params": dict, "classes": [names], "model": state_dict, "recipe_state": state_dict,
"metrics": dict, "config": resolved run config}`` (+ trainer state in ``last.pt``).

A plain torchvision ``state_dict`` is accepted as a teacher: its architecture and class count
are inferred from its keys and shapes (or given with ``--arch``).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from detbin.models.config import DetectorConfig
from detbin.models.detector import Detector, build_detector
from detbin.models.families import all_archs, families
from detbin.core.errors import CheckpointError, close_matches

__all__ = ["FORMAT", "FORMAT_VERSION", "save_atomic", "read", "infer_config", "load_state", "load_detector"]

FORMAT = "detbin"
FORMAT_VERSION = 1


def save_atomic(obj: dict[str, Any], path: Path) -> None:
    """``torch.save`` to a temporary file in the same folder, fsync, then rename over ``path``.

    A crash mid-write leaves the previous file intact, never a truncated one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read(path: Path) -> dict[str, Any]:
    """``torch.load(path, weights_only=True)`` on CPU, with one-line errors.

    Raises:
        CheckpointError: missing, unreadable, not a dict, or holding pickled objects.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt or unsafe files
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "weights_only" in str(exc) or "Unsupported global" in str(exc):
            raise CheckpointError(f"{path}: holds pickled Python objects, which detbin does not load "
                                  "(weights_only=True); re-save only the model's state_dict") from None
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({text}); is the file complete?") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: holds a {type(data).__name__}, not a checkpoint or state dict")
    return data


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


def load_state(detector: Detector, state: dict[str, Tensor], source: str) -> None:
    """Load ``state`` strictly; only BatchNorm's ``num_batches_tracked`` may be missing.

    torchvision's checkpoints come from FrozenBatchNorm2d models, which have no counter.
    """
    result = detector.model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
    if missing or result.unexpected_keys:
        detail = f"missing {missing[:3]}" if missing else f"unexpected {result.unexpected_keys[:3]}"
        raise CheckpointError(f"{source}: weights do not fit {detector.config.arch} ({detail}); "
                              "was it saved from another architecture or class count?")


def load_detector(path: Path, arch: str | None = None, **runtime: Any) -> tuple[Detector, dict[str, Any]]:
    """A real-valued detector from a detbin checkpoint or a torchvision ``state_dict``.

    Binary students are rebuilt by :func:`detbin.build.load_model`, which also applies the
    recipe's binarization layout.

    Returns:
        The detector (eval mode) and the checkpoint's metadata (empty for a plain state dict).
    """
    data = read(path)
    if data.get("format") == FORMAT:
        config = DetectorConfig.from_dict(data["detector"])
        meta = {k: v for k, v in data.items() if k != "model"}
        state = data["model"]
    else:
        state = data.get("model", data) if isinstance(data.get("model"), dict) else data
        if not all(isinstance(v, Tensor) for v in state.values()):
            raise CheckpointError(f"{path}: neither a detbin checkpoint nor a state dict of tensors")
        config = infer_config(state, arch, **runtime)
        meta = {}
    detector = build_detector(config)
    load_state(detector, state, str(path))
    detector.model.eval()
    return detector, meta
