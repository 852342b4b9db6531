"""detbin: turn real-valued object detectors into 1-bit students.

This module is the public API: everything a recipe plugin may use is a name below (plugins import
only ``from detbin import ...``; a test enforces it), typed and documented where it is defined.
Names load lazily, so ``import detbin`` (and ``detbin --help``) does not import torch.

* the recipe contract: :class:`Recipe`, :class:`Step`, :class:`Phase`, :class:`Plan`,
  :class:`Params`, :class:`Hook`;
* binarization: :class:`BinarizeSpec`, :func:`apply_layout`, :class:`BinaryConv2d`,
  :class:`RPReLU`, :class:`Quantizer`, :func:`sign`, :func:`register_quantizer`, :func:`quantizer`,
  :class:`BlockForm`, :func:`register_form`, :func:`is_binary`, :func:`widen_fpn_laterals`;
* detectors: :class:`Detector` (what recipes call on student and teacher), :class:`DetectorConfig`,
  :func:`tiny_config`, :func:`build_detector`, :class:`DetectorFamily`, :func:`register_family`,
  :func:`set_box_loss`, :func:`record` (taps);
* distillation helpers: :func:`fgfi_mask`, :func:`gt_mask`, :func:`map_levels`,
  :func:`masked_imitation`, :func:`adaptation_conv`, :func:`adaptation_convs`;
* library use: :func:`profile`, :class:`Cost`, :class:`VocMAP`, :class:`CocoMAP`,
  :func:`run_evaluation`, :class:`SyntheticDetection`;
* errors: :class:`DetbinError`, :class:`ConfigError`.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Recipe": "detbin.training.recipe", "Step": "detbin.training.recipe", "Phase": "detbin.training.recipe",
    "Plan": "detbin.training.recipe", "Params": "detbin.config", "Hook": "detbin.training.hook",
    "BinarizeSpec": "detbin.models.layout", "apply_layout": "detbin.models.layout",
    "widen_fpn_laterals": "detbin.models.layout",
    "BinaryConv2d": "detbin.binary.layers", "RPReLU": "detbin.binary.layers", "is_binary": "detbin.binary.layers",
    "Quantizer": "detbin.binary.quantizers", "sign": "detbin.binary.quantizers",
    "register_quantizer": "detbin.binary.quantizers", "quantizer": "detbin.binary.quantizers",
    "BlockForm": "detbin.binary.blocks", "register_form": "detbin.binary.blocks",
    "Detector": "detbin.models.detector", "TorchvisionDetector": "detbin.models.detector",
    "build_detector": "detbin.models.detector", "DetectorConfig": "detbin.models.config",
    "tiny_config": "detbin.models.config", "DetectorFamily": "detbin.models.families",
    "register_family": "detbin.models.families", "set_box_loss": "detbin.models.heads", "record": "detbin.models.taps",
    "fgfi_mask": "detbin.distill.imitation", "gt_mask": "detbin.distill.imitation",
    "map_levels": "detbin.distill.imitation", "masked_imitation": "detbin.distill.imitation",
    "adaptation_conv": "detbin.distill.imitation", "adaptation_convs": "detbin.distill.imitation",
    "Cost": "detbin.cost.profile", "profile": "detbin.cost.profile",
    "VocMAP": "detbin.evaluation.metrics", "CocoMAP": "detbin.evaluation.coco",
    "run_evaluation": "detbin.evaluation.inference", "SyntheticDetection": "detbin.data.synthetic",
    "DetbinError": "detbin.core.errors", "ConfigError": "detbin.core.errors",
    "LocationSampler": "detbin.models.location", "inference_form": "detbin.models.location",
}
_ALIASES = {"quantizer": "get"}  # the public name of a function whose module spells it shorter

__all__ = sorted([*_EXPORTS, "__version__"])


def __getattr__(name: str) -> Any:
    if name == "__version__":
        from detbin.core.entrypoints import version

        return version("detbin")
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), _ALIASES.get(name, name))
    raise AttributeError(f"module 'detbin' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
