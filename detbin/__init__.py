"""detbin: turn real-valued object detectors into 1-bit students.

Everything a recipe plugin may use is exported here (plugins import only ``detbin``).
Attributes load lazily, so ``import detbin`` (and ``detbin --help``) does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Recipe": "detbin.recipe", "Step": "detbin.recipe",
    "Params": "detbin.config",
    "BinarizeSpec": "detbin.layout", "apply_layout": "detbin.layout",
    "BinaryConv2d": "detbin.layers", "RPReLU": "detbin.layers", "is_binary": "detbin.layers",
    "TorchvisionDetector": "detbin.detector", "DetectorConfig": "detbin.detector",
    "build_detector": "detbin.detector", "tiny_config": "detbin.detector",
    "Hook": "detbin.train", "Trainer": "detbin.train",
    "record": "detbin.taps",
    "DetbinError": "detbin.errors", "ConfigError": "detbin.errors",
    "Cost": "detbin.profile", "profile": "detbin.profile",
    "VocMAP": "detbin.evaluate", "CocoMAP": "detbin.evaluate", "run_evaluation": "detbin.evaluate",
    "SyntheticDetection": "detbin.synthetic",
}
_MODULES = {"quantizers", "surgery", "layers", "layout", "binary_blocks"}

__all__ = sorted([*_EXPORTS, *_MODULES, "__version__"])


def __getattr__(name: str) -> Any:
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("detbin")
        except PackageNotFoundError:
            return "0.0.0+unknown"
    if name in _MODULES:
        return importlib.import_module(f"detbin.{name}")
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'detbin' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
