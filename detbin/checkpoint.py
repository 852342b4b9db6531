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
import re
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from detbin.detector import ARCHS, DetectorConfig, TorchvisionDetector, build_detector
from detbin.errors import CheckpointError, close_matches

__all__ = ["FORMAT", "save_atomic", "read", "infer_config", "load_state", "load_detector", "detector_payload"]

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


def _count(state: dict[str, Tensor], pattern: str) -> int:
    regex = re.compile(pattern)
    return len({m.group(1) for k in state if (m := regex.match(k))})


def _resnet_depth(state: dict[str, Tensor]) -> int | None:
    if "backbone.body.conv1.weight" not in state:
        return None
    bottleneck = any(k.startswith("backbone.body.layer1.0.conv3.") for k in state)
    blocks = tuple(_count(state, rf"backbone\.body\.layer{i}\.(\d+)\.") for i in range(1, 5))
    table = {(False, (2, 2, 2, 2)): 18, (False, (3, 4, 6, 3)): 34, (True, (3, 4, 6, 3)): 50, (True, (3, 4, 23, 3)): 101}
    return table.get((bottleneck, blocks))


def infer_config(state: dict[str, Tensor], arch: str | None = None, **runtime: Any) -> DetectorConfig:
    """Architecture, width and class count of a torchvision detection ``state_dict``.

    Args:
        arch: skip the family/depth inference (still checked against the shapes).
        runtime: non-shape settings (``min_size``, ``anchor_sizes`` ...) to set.

    Raises:
        CheckpointError: the keys match none of :data:`~detbin.detector.ARCHS`.
    """
    shape = {k: tuple(v.shape) for k, v in state.items() if isinstance(v, Tensor)}
    depth = _resnet_depth(state)
    values: dict[str, Any] = {}
    if "roi_heads.box_predictor.cls_score.weight" in shape and depth:
        values = dict(arch=f"fasterrcnn_resnet{depth}_fpn", num_classes=shape["roi_heads.box_predictor.cls_score.weight"][0])
        if "roi_heads.box_head.fc6.weight" in shape:
            values["representation_size"] = shape["roi_heads.box_head.fc6.weight"][0]
    elif "head.regression_head.bbox_ctrness.weight" in shape and depth:
        values = dict(arch=f"fcos_resnet{depth}_fpn", num_classes=shape["head.classification_head.cls_logits.weight"][0])
    elif "head.classification_head.cls_logits.weight" in shape and depth:
        anchors = shape["head.regression_head.bbox_reg.weight"][0] // 4
        values = dict(arch=f"retinanet_resnet{depth}_fpn",
                      num_classes=shape["head.classification_head.cls_logits.weight"][0] // anchors)
    elif "backbone.features.0.weight" in shape and "head.classification_head.module_list.0.weight" in shape:
        values = dict(arch="ssd300_vgg16", num_classes=shape["head.classification_head.module_list.0.weight"][0] // 4,
                      width_mult=shape["backbone.features.0.weight"][0] / 64)
    elif "head.classification_head.module_list.0.1.weight" in shape:
        values = dict(arch="ssdlite320_mobilenet_v3_large",
                      num_classes=shape["head.classification_head.module_list.0.1.weight"][0] // 6)
    if not values:
        hint = f" {close_matches(arch, ARCHS)}" if arch else ""
        sample = ", ".join(list(shape)[:3])
        raise CheckpointError(f"state dict matches no known detector (keys start: {sample}){hint}; supported: "
                              f"{', '.join(ARCHS)}. Pass --arch if it is one of them with renamed keys")
    if arch is not None and arch != values["arch"]:
        raise CheckpointError(f"--arch {arch} does not fit the state dict, which looks like {values['arch']}")
    if depth:
        values["width_mult"] = shape["backbone.body.conv1.weight"][0] / 64
        values["fpn_channels"] = shape["backbone.fpn.layer_blocks.0.0.weight"][0] if \
            "backbone.fpn.layer_blocks.0.0.weight" in shape else shape["backbone.fpn.layer_blocks.0.weight"][0]
    elif values["arch"].startswith("ssdlite"):
        values["width_mult"] = _ssdlite_width(shape, values)
    return DetectorConfig(**{**values, **runtime})


def _ssdlite_width(shape: dict[str, tuple[int, ...]], values: dict[str, Any]) -> float:
    """MobileNetV3 rounds channels to multiples of 8, so try the usual multipliers."""
    for width in (1.0, 0.75, 0.5, 0.25, 1.25, 1.5, 2.0):
        model = build_detector(DetectorConfig(**{**values, "width_mult": width})).model
        if all(shape.get(k) == tuple(v.shape) for k, v in model.state_dict().items() if v.dim()):
            return width
    raise CheckpointError("SSDlite state dict: no MobileNetV3 width multiplier fits its shapes")


def load_state(detector: TorchvisionDetector, state: dict[str, Tensor], source: str) -> None:
    """Load ``state`` strictly; only BatchNorm's ``num_batches_tracked`` may be missing.

    torchvision's checkpoints come from FrozenBatchNorm2d models, which have no counter.
    """
    result = detector.model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
    if missing or result.unexpected_keys:
        detail = f"missing {missing[:3]}" if missing else f"unexpected {result.unexpected_keys[:3]}"
        raise CheckpointError(f"{source}: weights do not fit {detector.config.arch} ({detail}); "
                              "was it saved from another architecture or class count?")


def detector_payload(detector: TorchvisionDetector) -> dict[str, Any]:
    """The parts of a checkpoint that rebuild ``detector`` (its config and weights)."""
    return {"detector": detector.config.to_dict(), "model": detector.model.state_dict()}


def load_detector(path: Path, arch: str | None = None, **runtime: Any) -> tuple[TorchvisionDetector, dict[str, Any]]:
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
