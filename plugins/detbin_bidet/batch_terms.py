"""The BiDet terms of one batch, from the detectors' recorded outputs (methods.md §4.4).

SSD (``train_bidet_ssd.py`` + ``DetectPrior``): softmax scores of every prior with grad,
boxes decoded from the location the loss saw (``bbox_regression``; the mean when
``sample_sigma`` is 0) with the SSD box coder (weights 10, 10, 5, 5 = variances 0.1 / 0.2),
unclipped; per image and GT class ``p > 0.03``, top 200, NMS 0.45.

Faster R-CNN head (``faster_rcnn.py``): softmax scores of the *sampled training RoIs* with
grad, boxes decoded from the sampled deltas (detached) against those RoIs with the RoI box
coder (weights 10, 10, 5, 5 = stds 0.1 / 0.2) and clipped to the image; per image and GT class
``p > 0.01``, no top-k, NMS 0.3 (``cfg.TEST.NMS``); ``log(u + 1e-6)``.

The boxes' frame (transformed-image pixels) does not matter: NMS is scale-invariant.

:func:`ssd_task_per_image` splits torchvision's SSD loss into per-image contributions that sum to
it exactly (AutoBiDet's literal ``beta(x) L_det(x)`` mode needs them, methods.md §5.3).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import boxes as box_ops

from detbin_bidet.ib import PriorMode, PriorTerms, class_prior_image

__all__ = ["frcnn_head_prior", "ssd_prior", "ssd_task_per_image"]


def _labels(targets: Sequence[dict[str, Any]]) -> list[Tensor]:
    return [t["labels"] for t in targets]


def ssd_prior(head_outputs: dict[str, Tensor], anchors: Sequence[Tensor], targets: Sequence[dict[str, Any]],
              box_coder: Any, mode: PriorMode = "csop", score_thresh: float = 0.03, nms_thresh: float = 0.45,
              top_k: int | None = 200, classes: Literal["gt", "all"] = "gt") -> PriorTerms:
    """The SSD class prior of a batch.

    Args:
        head_outputs: the SSD head's ``{"cls_logits": [B, A, C], "bbox_regression": [B, A, 4]}``.
        anchors: ``[A, 4]`` xyxy per image (the SSD's ``anchor_generator`` output).
        targets: ground truth; only ``labels`` are read.
        box_coder: the SSD's ``BoxCoder`` (``model.box_coder``).
    """
    probs = F.softmax(head_outputs["cls_logits"], dim=-1)
    deltas = head_outputs["bbox_regression"].detach()
    values, counts = [], []
    for p, d, a, labels in zip(probs, deltas, anchors, _labels(targets)):
        boxes = box_coder.decode_single(d, a)
        value, count = class_prior_image(p, boxes, labels, mode, score_thresh, nms_thresh, top_k, 0.0, classes)
        values.append(value)
        counts.append(count)
    return PriorTerms(torch.stack(values), torch.tensor(counts))


def frcnn_head_prior(class_logits: Tensor, box_regression: Tensor, proposals: Sequence[Tensor],
                     image_sizes: Sequence[tuple[int, int]], targets: Sequence[dict[str, Any]], box_coder: Any,
                     mode: PriorMode = "csop", score_thresh: float = 0.01, nms_thresh: float = 0.3,
                     log_eps: float = 1e-6, classes: Literal["gt", "all"] = "gt") -> PriorTerms:
    """The Faster R-CNN head prior of a batch, on the sampled training RoIs.

    Args:
        class_logits: ``[R, C]`` and box_regression ``[R, 4C]``: the box predictor's outputs.
        proposals: ``[R_b, 4]`` sampled RoIs per image (``roi_heads.sampled_proposals`` tap).
        image_sizes: ``(H, W)`` of each transformed image, for clipping.
        box_coder: ``model.roi_heads.box_coder``.
    """
    counts_per_image = [p.shape[0] for p in proposals]
    probs = F.softmax(class_logits, dim=-1).split(counts_per_image)
    boxes = box_coder.decode(box_regression.detach(), list(proposals)).split(counts_per_image)  # [R_b, C, 4]
    values, counts = [], []
    for p, b, size, labels in zip(probs, boxes, image_sizes, _labels(targets)):
        b = box_ops.clip_boxes_to_image(b, size)
        value, count = class_prior_image(p, b, labels, mode, score_thresh, nms_thresh, None, log_eps, classes)
        values.append(value)
        counts.append(count)
    return PriorTerms(torch.stack(values), torch.tensor(counts))


def ssd_task_per_image(model: Any, head_outputs: dict[str, Tensor], anchors: Sequence[Tensor],
                       targets: Sequence[dict[str, Tensor]]) -> Tensor:
    """``[B]`` per-image shares of torchvision's SSD loss (``SSD.compute_loss``), with grad; they sum to it.

    Image ``b`` contributes ``(smooth_l1 of its positives + CE of its positives and its 3:1 hard
    negatives) / N``, ``N`` the batch's positives (at least 1), exactly torchvision's terms.

    Args:
        model: the torchvision ``SSD`` (matcher, box coder, ``neg_to_pos_ratio``).
        head_outputs: the head's ``bbox_regression [B, A, 4]`` and ``cls_logits [B, A, C]``.
        anchors: ``[A, 4]`` per image; targets: the *transformed* targets (the ``transform`` tap).
    """
    bbox_losses, cls_targets, foreground = [], [], 0
    for target, deltas, anchor in zip(targets, head_outputs["bbox_regression"], anchors):
        if target["boxes"].numel() == 0:
            matched = torch.full((anchor.shape[0],), -1, dtype=torch.int64, device=anchor.device)
        else:
            matched = model.proposal_matcher(box_ops.box_iou(target["boxes"], anchor))
        fg = torch.where(matched >= 0)[0]
        foreground += fg.numel()
        encoded = model.box_coder.encode_single(target["boxes"][matched[fg]], anchor[fg])
        bbox_losses.append(F.smooth_l1_loss(deltas[fg], encoded, reduction="sum"))
        classes = torch.zeros(anchor.shape[0], dtype=torch.int64, device=anchor.device)
        classes[fg] = target["labels"][matched[fg]]
        cls_targets.append(classes)
    logits = head_outputs["cls_logits"]
    labels = torch.stack(cls_targets)
    cls_loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.view(-1), reduction="none")
    cls_loss = cls_loss.view(labels.shape)
    positive = labels > 0
    negative_count = model.neg_to_pos_ratio * positive.sum(1, keepdim=True)
    negative_loss = cls_loss.clone().detach()
    negative_loss[positive] = -float("inf")
    background = negative_loss.sort(1, descending=True)[1].sort(1)[1] < negative_count  # torchvision's hard negatives
    per_image = torch.stack(bbox_losses) + (cls_loss * positive).sum(1) + (cls_loss * background).sum(1)
    return per_image / max(1, foreground)
