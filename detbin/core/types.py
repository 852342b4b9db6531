"""The shared vocabulary: targets, detections and batches, as torchvision defines them.

Boxes are ``xyxy`` in absolute, continuous pixel coordinates of the original image: a box that
covers pixel columns ``i..j`` (0-based, inclusive) has ``x1 = i`` and ``x2 = j + 1``. The VOC
devkit's 1-based inclusive pixel indices are ``(x1 + 1, y1 + 1, x2, y2)`` of that box; the
evaluator converts at its boundary, nowhere else.
"""

from __future__ import annotations

from typing import TypedDict

from torch import Tensor


class Target(TypedDict, total=False):
    """Ground truth of one image.

    Keys:
        boxes: ``FloatTensor[N, 4]``, xyxy, absolute pixels.
        labels: ``Int64Tensor[N]``, 1..K; 0 is background, as in torchvision.
        difficult: ``BoolTensor[N]``, VOC's "difficult" flag (ignored by VOC metrics).
        image_id: ``int``.
    """

    boxes: Tensor
    labels: Tensor
    difficult: Tensor
    image_id: int


class Detections(TypedDict):
    """Predictions for one image: ``boxes [M, 4]`` xyxy, ``scores [M]``, ``labels [M]``."""

    boxes: Tensor
    scores: Tensor
    labels: Tensor


Batch = tuple[list[Tensor], list[Target]]
"""``(images, targets)``: images are ``FloatTensor[3, H, W]`` in 0..1, sizes may differ."""
