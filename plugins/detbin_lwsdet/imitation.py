"""L_Lim: FGFI fine-grained feature imitation on the FPN levels (methods.md §3.3, Wang et al. CVPR 2019).

Per level l, the public FGFI helpers give the mask (GT boxes assigned to levels by
``floor(log2(sqrt(wh) / canonical))``, a location kept when one of its anchors has IoU above
``psi * max IoU`` with a box of that level) and the loss
``sum(M (f_adapt(S_l) - T_l)^2) / max(1, 2 C |M|)``; L_Lim is the mean over levels. The teacher
is the same-topology real teacher of the layer losses ([D] §3.7).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from detbin import fgfi_mask, map_levels, masked_imitation

__all__ = ["fgfi_level_masks", "imitation_loss"]


@torch.no_grad()
def fgfi_level_masks(model: nn.Module, image_list: Any, maps: list[Tensor], boxes: list[Tensor], psi: float,
                     canonical: float) -> list[Tensor]:
    """``BoolTensor[B, H_l, W_l]`` per FPN level from the student's RPN anchors and the GT boxes.

    Args:
        model: the student's torchvision Faster R-CNN (its ``rpn.anchor_generator``).
        image_list: the transformed batch (``ImageList``); boxes are in its pixels (xyxy).
        maps: the FPN outputs ``[B, C, H_l, W_l]``, finest first.
        boxes: per image ``[N, 4]`` xyxy after the transform.
        psi: FGFI's threshold factor on each box's largest anchor IoU (0.5).
        canonical: the level-assignment scale (56 at VOC sizes).
    """
    generator = model.rpn.anchor_generator
    anchors = generator(image_list, maps)  # per image [sum_l H_l W_l A, 4], level-major
    per_location = generator.num_anchors_per_location()
    sizes = [m.shape[-2] * m.shape[-1] * a for m, a in zip(maps, per_location)]
    levels = [map_levels(b, len(maps), canonical) for b in boxes]
    masks = []
    for level, (fmap, a) in enumerate(zip(maps, per_location)):
        h, w = fmap.shape[-2:]
        masks.append(torch.stack([
            fgfi_mask(image_anchors.split(sizes)[level].view(h, w, a, 4), b[lv == level], psi)
            for image_anchors, b, lv in zip(anchors, boxes, levels)
        ]))
    return masks


def imitation_loss(adapt: nn.ModuleList, student_maps: list[Tensor], teacher_maps: list[Tensor],
                   masks: list[Tensor]) -> Tensor:
    """``mean_l masked_imitation(adapt_l(S_l), T_l, M_l)``, a scalar with gradient to S and the adapters."""
    terms = [masked_imitation(conv(s), t.detach(), m) for conv, s, t, m in zip(adapt, student_maps, teacher_maps,
                                                                              masks)]
    return torch.stack(terms).mean()
