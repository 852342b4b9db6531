"""Masked feature imitation: FGFI's anchor-IoU mask, DeFeat's ground-truth mask, their loss, adaptation convs.

Public helpers for recipes (``fgfi``, ``defeat``, ``lws-det``'s L_Lim all use them).

Both follow the code IDa-Det forked (``ggjy/DeFeat.pytorch``: ``anchor_head.get_roi_mask``,
``get_gt_mask``, ``_map_roi_levels`` and ``apis/train.py batch_processor_kd``):

* ground-truth boxes are assigned to one FPN level by size,
  ``level = floor(log2(sqrt((w + 1)(h + 1)) / 56))`` clamped to the levels;
* FGFI (Wang et al., CVPR 2019, Sec. 3.1): for each box on its level, the IoU of every anchor
  with it; a location joins the mask when one of its anchors exceeds ``phi * max IoU``;
* DeFeat (Guo et al., CVPR 2021, Sec. 3.2): the box itself, ``[int(y1/s):int(y2/s),
  int(x1/s):int(x2/s)]`` on a level of stride ``s`` (one cell when degenerate);
* the pixel-wise loss on level l is ``sum(M * (A_l(S_l) - T_l)^2) / max(1, 2 C |M|)`` (the
  ``1 / (2 N_p)`` of FGFI's Eq. 2 with ``N_p`` counting channels too), averaged over levels.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.ops import box_iou

__all__ = ["map_levels", "fgfi_mask", "gt_mask", "masked_imitation", "adaptation_conv", "adaptation_convs"]


def map_levels(boxes: Tensor, num_levels: int, canonical: float = 56.0) -> Tensor:
    """FPN level index of each box ``[N, 4]`` (xyxy): ``floor(log2(sqrt((w+1)(h+1)) / canonical))``."""
    scale = torch.sqrt((boxes[:, 2] - boxes[:, 0] + 1) * (boxes[:, 3] - boxes[:, 1] + 1))
    return torch.floor(torch.log2(scale / canonical + 1e-6)).clamp(0, num_levels - 1).long()


def fgfi_mask(anchors: Tensor, boxes: Tensor, phi: float = 0.5) -> Tensor:
    """FGFI imitation mask of one level.

    Args:
        anchors: ``[H, W, A, 4]`` the level's anchors (xyxy, network-input pixels).
        boxes: ``[N, 4]`` the ground truth assigned to this level.
        phi: threshold factor on each box's largest anchor IoU.

    Returns:
        ``BoolTensor[H, W]``: locations where some anchor has IoU > ``phi * max IoU`` with some box.
    """
    h, w, a, _ = anchors.shape
    if len(boxes) == 0:
        return torch.zeros(h, w, dtype=torch.bool, device=anchors.device)
    iou = box_iou(anchors.reshape(-1, 4), boxes).view(h, w, a, -1)
    threshold = iou.flatten(0, 2).max(dim=0).values * phi
    return (iou > threshold).any(dim=3).any(dim=2)


def gt_mask(boxes: Tensor, stride: float, height: int, width: int) -> Tensor:
    """DeFeat's ground-truth mask of one level: each box's cells (``int`` truncation as the code)."""
    mask = torch.zeros(height, width, dtype=torch.bool, device=boxes.device)
    for x1, y1, x2, y2 in (boxes / stride).tolist():
        lx, ly = int(x1), int(y1)
        rx, ry = min(int(x2), width), min(int(y2), height)
        if lx == rx or ly == ry:
            mask[min(ly, height - 1), min(lx, width - 1)] = True
        else:
            mask[ly:ry, lx:rx] = True
    return mask


def masked_imitation(student: Tensor, teacher: Tensor, mask: Tensor) -> Tensor:
    """``sum(M (S - T)^2) / max(1, 2 C |M|)`` for ``S, T: [B, C, H, W]`` and ``M: [B, H, W]``."""
    weight = mask.to(student.dtype).unsqueeze(1)
    squared = (student - teacher).pow(2)
    return (squared * weight).sum() / max(1.0, 2.0 * student.shape[1] * float(weight.sum()))


def adaptation_conv(in_channels: int, out_channels: int) -> nn.Conv2d:
    """One 3x3 adaptation conv from student to teacher width (real bias), weights ``normal().fmod(2) * 1e-4``
    as IDa-Det's and DeFeat's code initialise them (near zero: the student's map reaches the loss unchanged
    at first only through the bias)."""
    conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
    with torch.no_grad():
        conv.weight.copy_(torch.randn_like(conv.weight).fmod(2) * 1e-4)
    return conv


def adaptation_convs(in_channels: int, out_channels: int, levels: int) -> nn.ModuleList:
    """One 3x3 conv per level from student to teacher width (real bias), weights ``normal().fmod(2) * 1e-4``.

    All convs are created before any is re-initialised (the order of random draws the ``fgfi``
    and ``defeat`` benchmarks were run with); :func:`adaptation_conv` makes them one at a time.
    """
    convs = nn.ModuleList(nn.Conv2d(in_channels, out_channels, 3, padding=1) for _ in range(levels))
    with torch.no_grad():
        for conv in convs:
            conv.weight.copy_(torch.randn_like(conv.weight).fmod(2) * 1e-4)
    return convs
