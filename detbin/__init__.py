"""detbin: turn real-valued object detectors into 1-bit students.

Everything a recipe plugin may use is exported here (plugins import only ``detbin``).
Attributes load lazily, so ``import detbin`` (and ``detbin --help``) does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Recipe": "detbin.training.recipe", "Step": "detbin.training.recipe",
    "Params": "detbin.config",
    "BinarizeSpec": "detbin.models.layout", "apply_layout": "detbin.models.layout",
    "BinaryConv2d": "detbin.binary.layers", "RPReLU": "detbin.binary.layers", "is_binary": "detbin.binary.layers",
    "TorchvisionDetector": "detbin.models.detector", "DetectorConfig": "detbin.models.config",
    "build_detector": "detbin.models.detector", "tiny_config": "detbin.models.config",
    "Hook": "detbin.training.hook", "Trainer": "detbin.training.trainer",
    "record": "detbin.models.taps",
    "DetbinError": "detbin.core.errors", "ConfigError": "detbin.core.errors",
    "Cost": "detbin.cost.profile", "profile": "detbin.cost.profile",
    "VocMAP": "detbin.evaluation.metrics", "CocoMAP": "detbin.evaluation.coco", "run_evaluation": "detbin.evaluation.inference",
    "SyntheticDetection": "detbin.data.synthetic",
}
_MODULES = {"quantizers": "detbin.binary.quantizers", "surgery": "detbin.binary.surgery", "layers": "detbin.binary.layers",
            "layout": "detbin.models.layout", "binary_blocks": "detbin.binary.blocks"}

__all__ = sorted([*_EXPORTS, *_MODULES, "__version__"])


def __getattr__(name: str) -> Any:
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("detbin")
        except PackageNotFoundError:
            return "0.0.0+unknown"
    if name in _MODULES:
        return importlib.import_module(_MODULES[name])
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'detbin' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
