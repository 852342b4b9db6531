"""SSD300 default boxes of ssd.pytorch (BiDet's SSD; methods.md §1.9, ``ssd/data/config.py``).

ssd.pytorch gives source ``k`` a min size ``s_k`` and a max size ``s_{k+1}`` in pixels of the
300-px input; the boxes per location are ``s_k``, ``sqrt(s_k s_{k+1})`` (square) and
``s_k sqrt(a) x s_k / sqrt(a)`` plus its transpose for every ratio ``a``; centres at
``(j + 0.5) * step``. torchvision's ``DefaultBoxGenerator`` computes exactly this from the
relative scales ``min_sizes / 300`` followed by the last max size, in the same order (location
major, box minor), with the same clipping of the relative sizes to [0, 1].

VOC:  min 30, 60, 111, 162, 213, 264; max ... 315 -> scales (0.1, 0.2, 0.37, 0.54, 0.71, 0.88, 1.05).
COCO: min 21, 45, 99, 153, 207, 261;  max ... 315 -> scales (0.07, 0.15, 0.33, 0.51, 0.69, 0.87, 1.05)
(torchvision's own ``ssd300_vgg16`` uses the COCO scales; the BiDet VOC rows use VOC's).

One difference: ssd.pytorch's ``clip`` clamps the whole ``(cx, cy, w, h)`` to [0, 1], torchvision
only ``(w, h)``. The steps do not divide 300, so the last row and column of the 10x10 source
(step 32) have centres at 9.5 / 9.375 = 1.0133 of the image: ssd.pytorch moves those 114 priors
to 1.0 (4 px), torchvision does not. :class:`SSDPytorchBoxes` clamps as ssd.pytorch.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.models.detection.anchor_utils import DefaultBoxGenerator

from detbin.core.errors import ConfigError

__all__ = ["PRIORS", "ASPECT_RATIOS", "STEPS", "BOXES_PER_LOCATION", "MIN_SIZES", "MAX_SIZE", "SSDPytorchBoxes",
           "scales", "default_boxes"]

PRIORS = ("voc", "coco")
ASPECT_RATIOS: list[list[int]] = [[2], [2, 3], [2, 3], [2, 3], [2], [2]]
STEPS: list[int] = [8, 16, 32, 64, 100, 300]
BOXES_PER_LOCATION: list[int] = [2 + 2 * len(r) for r in ASPECT_RATIOS]  # 4, 6, 6, 6, 4, 4
MIN_SIZES: dict[str, tuple[int, ...]] = {"voc": (30, 60, 111, 162, 213, 264), "coco": (21, 45, 99, 153, 207, 261)}
MAX_SIZE = 315  # the last source's max size, both data sets
_INPUT = 300


def scales(priors: str = "voc") -> list[float]:
    """The 7 relative scales of ``priors`` (``voc`` or ``coco``): min sizes / 300, then 315 / 300.

    Raises:
        ConfigError: unknown prior set.
    """
    if priors not in PRIORS:
        raise ConfigError(f"detector.options.priors: unknown SSD prior set {priors!r}; valid: {', '.join(PRIORS)}")
    return [s / _INPUT for s in (*MIN_SIZES[priors], MAX_SIZE)]


class SSDPytorchBoxes(DefaultBoxGenerator):
    """``DefaultBoxGenerator`` whose ``clip`` also clamps the centres, as ssd.pytorch's ``PriorBox``."""

    def _grid_default_boxes(self, grid_sizes: list[list[int]], image_size: list[int],
                            dtype: torch.dtype = torch.float32) -> Tensor:
        boxes = super()._grid_default_boxes(grid_sizes, image_size, dtype)
        return boxes.clamp(0.0, 1.0) if self.clip else boxes


def default_boxes(priors: str = "voc") -> SSDPytorchBoxes:
    """ssd.pytorch's priors (8,732 boxes at 300 px) as a torchvision anchor generator."""
    return SSDPytorchBoxes(ASPECT_RATIOS, scales=scales(priors), steps=STEPS, clip=True)
