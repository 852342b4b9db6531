"""The high-level feature map f that feeds the complexity estimator (methods.md §5.4 [D]).

SSD300: fc7 (``1024 x 19 x 19``, real-valued, the last backbone layer); Faster R-CNN C4: the
``RCNN_base`` (layer3) output, ``256 x H/16 x W/16``. Both are read with a tap on the module
that produces them, so the same name works on every detector built from the same family.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from detbin import record
from detbin_bidet.ces import CESError

__all__ = ["extract", "feature_map", "probe"]


def feature_map(output: Any, name: str = "f") -> Tensor:
    """The ``[B, C, h, w]`` tensor of a tapped module output (a tensor, or a one-entry dict/list).

    A multi-level output (an FPN) is refused: which level is "the high-level map" is a decision.
    """
    if isinstance(output, Mapping) or isinstance(output, Sequence) and not isinstance(output, Tensor):
        values = list(output.values()) if isinstance(output, Mapping) else list(output)
        if len(values) != 1:
            raise CESError(f"{name!r} outputs {len(values)} maps; set params.feature to a module with one output "
                           "(SSD300: fc7; Faster R-CNN C4: the stride-16 backbone)")
        output = values[0]
    if not isinstance(output, Tensor) or output.dim() != 4:
        raise CESError(f"{name!r} does not output a [B, C, h, w] map; set params.feature to one that does")
    return output


@torch.no_grad()
def extract(model: nn.Module, images: Sequence[Tensor], feature: str
            ) -> tuple[Tensor, Tensor, list[float], list[float]]:
    """``(f, backbone input, image_mean, image_std)`` of a torchvision detector, in eval mode, without grad.

    The GAN phase's frozen detector (§5.5 (a)): eval mode, so BatchNorm statistics do not move and
    the detector is bit-identical after the phase. Modes are restored.

    Args:
        model: the torchvision detector (``transform`` and ``backbone`` attributes).
        images: ``[3, H, W]`` in 0..1 (the trainer's augmented batch).
        feature: the tapped module's name.
    """
    was_training = model.training
    model.eval()
    try:
        with record(model, [feature]) as taps:
            image_list, _ = model.transform(list(images))
            model.backbone(image_list.tensors)
    finally:
        model.train(was_training)
    if not taps[feature]:
        raise CESError(f"{feature!r} did not run in the backbone; set params.feature to a backbone module")
    transform = model.transform
    return (feature_map(taps[feature][0], feature), image_list.tensors,
            list(transform.image_mean), list(transform.image_std))


def probe(model: nn.Module, feature: str, input_hw: tuple[int, int]) -> tuple[int, int]:
    """``(channels, stride)`` of ``feature`` for a backbone input of ``input_hw``; stride rounded to a power of 2.

    SSD300 at 300 x 300: fc7 is 19 x 19, stride ``2^round(log2(300/19)) = 16``.
    """
    device = next(model.parameters()).device
    f, batch, _, _ = extract(model, [torch.zeros(3, *input_hw, device=device)], feature)
    ratio = batch.shape[-1] / f.shape[-1]
    return f.shape[1], 2 ** round(math.log2(ratio))
