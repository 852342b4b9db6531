"""IDa-Det's proposal pairs, information discrepancy, top-gamma selection, masks and entropy loss.

Section numbers refer to methods.md §2 (paper: Xu et al., ECCV 2022, arXiv:2210.03477; book
Eqs. 6.81-6.88; repository ``mmdet/apis/train.py: ida_mask`` and ``two_stage_kd.py``).
Boxes are xyxy in network-input pixels (after the detector's resize, before padding).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor
from torchvision.models.detection.rpn import concat_box_prediction_layers
from torchvision.ops import nms

__all__ = [
    "rpn_proposals", "proposal_pairs", "Span", "spans", "discrepancy", "select_top", "level_mask",
    "entropy_loss",
]


@torch.no_grad()
def rpn_proposals(rpn, objectness: list[Tensor], deltas: list[Tensor], anchors: list[Tensor],
                  image_sizes: list[tuple[int, int]]) -> tuple[list[Tensor], list[Tensor]]:
    """The RPN's *training* proposal list with objectness probabilities (§2.3 step 1).

    Decodes the head outputs recorded during a forward pass and runs torchvision's own
    ``filter_proposals`` with the training top-n (per level pre-NMS, NMS 0.7, post-NMS), as the
    repository's ``forward_train`` does for the teacher too (which runs in eval mode).
    """
    counts = [o[0].numel() for o in objectness]
    scores, box_deltas = concat_box_prediction_layers([o.detach() for o in objectness], [d.detach() for d in deltas])
    proposals = rpn.box_coder.decode(box_deltas, anchors).view(len(anchors), -1, 4)
    was_training = rpn.training
    rpn.train(True)  # only selects the training top-n; the RPN has no mode-dependent layers
    try:
        return rpn.filter_proposals(proposals, scores, image_sizes, counts)
    finally:
        rpn.train(was_training)


def _confident(boxes: Tensor, scores: Tensor, score_threshold: float, nms_threshold: float) -> Tensor:
    keep = scores > score_threshold
    boxes, scores = boxes[keep], scores[keep]
    return boxes[nms(boxes, scores, nms_threshold)]


def proposal_pairs(teacher: tuple[list[Tensor], list[Tensor]], student: tuple[list[Tensor], list[Tensor]],
                   score_threshold: float = 0.85, nms_threshold: float = 0.1) -> list[Tensor]:
    """Per image ``[N_T + N_S, 4]``: teacher then student proposals with score > 0.85, each set
    de-duplicated by NMS at IoU 0.1 (§2.3 steps 2-4; duplicates across the sets are kept, §2.12.5)."""
    return [torch.cat([_confident(tb, ts, score_threshold, nms_threshold),
                       _confident(sb, ss, score_threshold, nms_threshold)])
            for tb, ts, sb, ss in zip(*teacher, *student)]


@dataclass(frozen=True)
class Span:
    """Grid rows ``r1:r2`` and columns ``c1:c2`` of one box on one level."""

    r1: int
    r2: int
    c1: int
    c2: int


def spans(boxes: Tensor, level_hw: tuple[int, int], image_hw: tuple[int, int], padded_hw: tuple[int, int],
          mode: str) -> list[Span]:
    """Map boxes to a level's grid (§2.6).

    ``repo`` (the released code, [Q]): rows ``round(x * H_l / W_img)``, columns
    ``round(y * W_l / H_img)`` (x and y swapped, unpadded image size). ``box`` (the paper's
    intent): rows ``floor(y1 / s_y) .. ceil(y2 / s_y)`` and columns likewise from x, with the
    stride ``s`` of the padded input, at least one cell.
    """
    (h_l, w_l), (h_img, w_img), (h_pad, w_pad) = level_hw, image_hw, padded_hw
    out = []
    for x1, y1, x2, y2 in boxes.tolist():
        if mode == "repo":
            out.append(Span(round(x1 * h_l / w_img), round(x2 * h_l / w_img),
                            round(y1 * w_l / h_img), round(y2 * w_l / h_img)))
            continue
        sy, sx = h_pad / h_l, w_pad / w_l
        r1, c1 = min(int(y1 // sy), h_l - 1), min(int(x1 // sx), w_l - 1)
        out.append(Span(r1, max(r1 + 1, min(math.ceil(y2 / sy), h_l)), c1, max(c1 + 1, min(math.ceil(x2 / sx), w_l))))
    return out


def _peakiness(patch: Tensor, temperature: float) -> Tensor:
    """Per channel ``mean(P)^2 / var(P)`` of the spatial softmax ``P`` (unbiased variance)."""
    p = torch.softmax(patch.flatten(1) / temperature, dim=1)
    return p.mean(dim=1).pow(2) / p.var(dim=1, unbiased=True).clamp_min(1e-30)


def discrepancy(teacher_patch: Tensor, student_patch: Tensor, temperature: float = 1.0) -> float:
    """Information discrepancy of one proposal pair on one level (§2.4, repository form).

    ``eps = (sum_c |d_t[c] - d_s[c]|) / h * w`` (the code's operator precedence), ``d[c] =
    mean(P[c])^2 / var(P[c])`` on the per-channel spatial softmax; 0 when ``h`` or ``w`` <= 1.

    Args:
        teacher_patch, student_patch: ``[C, h, w]`` crops at the same location.
    """
    _, h, w = teacher_patch.shape
    if h <= 1 or w <= 1:
        return 0.0
    gap = (_peakiness(teacher_patch, temperature) - _peakiness(student_patch, temperature)).abs().sum()
    return float(gap / h * w)


def select_top(scores: list[float], gamma: float, ties: str = "last") -> list[int]:
    """Indices of the ``round(gamma * N)`` largest discrepancies (§2.5; N = 5, gamma 0.6 -> 3).

    ``ties="last"`` (``mask_mode: repo``) keeps the *highest* indices on a tie at the cut, as the
    released code's sort does: the pairs are ``[teacher boxes; student boxes]`` (§2.3), so a tie
    prefers the student's proposals. Ties are common on coarse levels, where every box one cell
    wide or high scores 0 (§2.4). ``ties="first"`` (``mask_mode: box``, which has no released code)
    keeps the lowest, the teacher's boxes: detbin's order since the first version, kept so the
    box-mode numbers of the README stay what they were measured as.
    """
    k = round(gamma * len(scores))
    last = {"last": True, "first": False}[ties]
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], -i if last else i))
    return sorted(order[:k])


def level_mask(selected: list[Span], height: int, width: int, mode: str, device: torch.device) -> Tensor:
    """``[H, W]`` distillation mask of one image on one level (§2.6).

    ``box``: 1 inside every selected box. ``repo`` ([Q], the released code): ``M[r1:r2, :]``
    and ``M[c1:c2, :]``, i.e. two full-width horizontal bands per box.
    """
    mask = torch.zeros(height, width, dtype=torch.bool, device=device)
    for s in selected:
        if mode == "repo":
            mask[s.r1:s.r2, :] = True
            mask[s.c1:s.c2, :] = True
        else:
            mask[s.r1:s.r2, s.c1:s.c2] = True
    return mask


def entropy_loss(teacher: Tensor, adapted: Tensor, mask: Tensor, sigma: Tensor, log_weight: float = 1e-3) -> Tensor:
    """The repository's entropy distillation loss of one level (§2.7; paper Eq. 6.88).

    ``L = [sum M D^2 + sigma^-2 sum M D^2 + 1e-3 log(sigma^2) (B C H W)] / max(1, sum M)`` with
    ``D = T - A(S)``, the mask broadcast over channels ([Q]: the log term covers every element
    and is divided by the masked count). ``sigma^2`` is clamped at 1e-6 ([D]).

    Args:
        teacher, adapted: ``[B, C, H, W]``; mask: ``[B, H, W]`` bool; sigma: scalar parameter.
    """
    squared = (teacher - adapted).pow(2)
    masked = (squared * mask.unsqueeze(1).to(squared.dtype)).sum()
    count = max(1.0, float(mask.sum()) * squared.shape[1])
    variance = sigma.pow(2).clamp_min(1e-6)
    return (masked + masked / variance + log_weight * torch.log(variance) * squared.numel()) / count
