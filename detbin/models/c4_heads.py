"""Heads of the Faster R-CNN C4 family (:mod:`detbin.models.c4`): RPN heads, box predictor, RPN and RoI heads.

They follow the BiDet release's ``rpn.py`` / ``faster_rcnn.py`` (methods.md §4.2, §4.4) on
torchvision's classes; the subclasses of torchvision's ``RegionProposalNetwork`` and ``RoIHeads``
change only what BiDet needs:

* :class:`C4RPN`: the post-NMS proposal probabilities (BiDet's RPN prior reads them) go through a
  tap module ``proposal_scores``, detached as released or, with ``prior_grad``, with gradient;
* :class:`C4RoIHeads`: the sampled training RoIs go through a tap module ``sampled_proposals``
  (BiDet's head prior and the per-image split of its RoI regulariser need them), and the box loss
  is ``smooth_l1(beta) / R`` with ``beta`` settable (the release: sigma 1 -> beta 1).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.ops import boxes as box_ops

from detbin.models.heads import RPN, BoxRoIHeads, fast_rcnn_losses
from detbin.models.location import LocationSampler, mean_half_of

__all__ = ["RealRPNHead", "BiDetRPNHead", "BoxPredictor", "C4RPN", "C4RoIHeads"]


def _normal(*layers: nn.Module, std: float) -> None:
    for layer in layers:
        nn.init.normal_(layer.weight, 0.0, std)
        if layer.bias is not None:
            nn.init.zeros_(layer.bias)


class RealRPNHead(nn.Module):
    """The real ``_RPN``: ``ReLU(conv3x3(x))`` -> 1x1 objectness (A) and 1x1 deltas (4A)."""

    def __init__(self, in_channels: int, mid_channels: int, anchors: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, mid_channels, 3, padding=1)
        self.cls_logits = nn.Conv2d(mid_channels, anchors, 1)
        self.bbox_pred = nn.Conv2d(mid_channels, anchors * 4, 1)
        _normal(self.conv, self.cls_logits, self.bbox_pred, std=0.01)  # _init_weights of the release

    def forward(self, features: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        hidden = [torch.relu(self.conv(f)) for f in features]
        return [self.cls_logits(h) for h in hidden], [self.bbox_pred(h) for h in hidden]


class BiDetRPNHead(nn.Module):
    """``_RPN_BiDet``: ``BN(BinConv3x3(x))`` (no ReLU) -> objectness (A) and (log var, mean) (8A).

    Returns torchvision's ``(objectness [N, A, H, W], deltas [N, 4A, H, W])`` lists; the deltas are
    the sampled locations (the release feeds the sample to proposals and loss). In the inference
    form (``variance`` False) ``bbox_pred`` has 4A outputs, the means.

    Args:
        conv: the binary 3x3 conv (built by the family, with bias).
    """

    def __init__(self, conv: nn.Conv2d, anchors: int, variance: bool = True, sample_sigma: float = 0.001) -> None:
        super().__init__()
        mid = conv.out_channels
        self.conv, self.bn = conv, nn.BatchNorm2d(mid)
        self.cls_logits = nn.Conv2d(mid, anchors, 1)
        self.bbox_pred = nn.Conv2d(mid, anchors * (8 if variance else 4), 1)
        self.variance = variance
        self.sampler = LocationSampler(sample_sigma)
        _normal(self.conv, self.cls_logits, self.bbox_pred, std=0.01)

    def forward(self, features: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        objectness, deltas = [], []
        for f in features:
            hidden = self.bn(self.conv(f))
            raw = self.bbox_pred(hidden)
            objectness.append(self.cls_logits(hidden))
            if not self.variance:
                deltas.append(raw)
                continue
            n, _, h, w = raw.shape
            per_anchor = raw.view(n, -1, 8, h, w).permute(0, 1, 3, 4, 2)  # [N, A, H, W, 8]
            deltas.append(self.sampler(per_anchor).permute(0, 1, 4, 2, 3).reshape(n, -1, h, w))
        return objectness, deltas

    def to_inference_form(self) -> None:
        """Keep the 4 mean rows per anchor of ``bbox_pred`` (paper §3.1.3)."""
        if self.variance:
            self.bbox_pred, self.variance = mean_half_of(self.bbox_pred), False


class BoxPredictor(nn.Module):
    """Scores ``Linear(d, C)`` and boxes: per class (4C), agnostic (4) or with variance (8 / 8C, sampled).

    Class-agnostic deltas are repeated for every class: ``box_regression [R, 4C]`` as torchvision's
    per-class decoding and loss expect.
    """

    def __init__(self, in_features: int, num_classes: int, class_agnostic: bool, variance: bool,
                 sample_sigma: float = 0.001) -> None:
        super().__init__()
        self.num_classes, self.class_agnostic, self.variance = num_classes, class_agnostic, variance
        outputs = (8 if variance else 4) * (1 if class_agnostic else num_classes)
        self.cls_score = nn.Linear(in_features, num_classes)
        self.bbox_pred = nn.Linear(in_features, outputs)
        self.sampler = LocationSampler(sample_sigma)
        _normal(self.cls_score, std=0.01)
        _normal(self.bbox_pred, std=0.001)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        deltas = self.bbox_pred(x)
        if self.variance:
            deltas = self.sampler(deltas.view(x.shape[0], -1, 8)).reshape(x.shape[0], -1)
        if self.class_agnostic:
            deltas = deltas.repeat(1, self.num_classes)
        return self.cls_score(x), deltas

    def to_inference_form(self) -> None:
        """Keep the 4 mean rows per box of ``bbox_pred`` (paper §3.1.3)."""
        if self.variance:
            self.bbox_pred, self.variance = mean_half_of(self.bbox_pred), False


class C4RPN(RPN):
    """detbin's RPN whose post-NMS proposal probabilities pass through the tap module ``proposal_scores``.

    ``proposal_scores`` (an ``nn.Identity``) sees ``list[Tensor[P_b]]`` of sigmoid objectness after
    NMS, per image. With ``prior_grad`` False (the release: ``rpn_cls_prob.data``) they are detached;
    True keeps their gradient (the paper's RPN prior).
    """

    prior_grad: bool = False

    def filter_proposals(self, proposals: Tensor, objectness: Tensor, image_shapes: list[tuple[int, int]],
                         num_anchors_per_level: list[int]) -> tuple[list[Tensor], list[Tensor]]:
        if self.training and self.prior_grad:
            return self._filter_with_grad(proposals, objectness, image_shapes, num_anchors_per_level)
        boxes, scores = super().filter_proposals(proposals, objectness, image_shapes, num_anchors_per_level)
        return boxes, self.proposal_scores(scores)

    def _filter_with_grad(self, proposals: Tensor, objectness: Tensor, image_shapes: list[tuple[int, int]],
                          num_anchors_per_level: list[int]) -> tuple[list[Tensor], list[Tensor]]:
        """torchvision's ``filter_proposals`` (one level) with the scores still attached to ``objectness``."""
        n = proposals.shape[0]
        logits = objectness.reshape(n, -1)
        top = self._get_top_n_idx(logits.detach(), num_anchors_per_level)
        batch = torch.arange(n, device=logits.device)[:, None]
        final_boxes, final_scores = [], []
        for boxes, probs, shape in zip(proposals.detach()[batch, top], torch.sigmoid(logits[batch, top]), image_shapes):
            boxes = box_ops.clip_boxes_to_image(boxes, shape)
            keep = box_ops.remove_small_boxes(boxes, self.min_size)
            boxes, probs = boxes[keep], probs[keep]
            keep = torch.where(probs.detach() >= self.score_thresh)[0]
            boxes, probs = boxes[keep], probs[keep]
            keep = box_ops.nms(boxes, probs.detach(), self.nms_thresh)[: self.post_nms_top_n()]
            final_boxes.append(boxes[keep])
            final_scores.append(probs[keep])
        return final_boxes, self.proposal_scores(final_scores)


class C4RoIHeads(BoxRoIHeads):
    """Box-only RoI heads: sampled RoIs through the ``sampled_proposals`` tap, box-loss ``beta`` settable.

    Training: torchvision's sampling (``select_training_samples``), RoIAlign, box head, predictor;
    cross-entropy and ``smooth_l1(beta) / R`` on the positives' deltas of their GT class
    (torchvision's ``fastrcnn_loss`` with ``beta`` free). Inference: torchvision's own.
    """

    box_beta: float = 1.0

    def forward(self, features, proposals, image_shapes, targets=None):  # type: ignore[override]
        if not self.training:
            return RoIHeads.forward(self, features, proposals, image_shapes, targets)
        proposals, _, labels, regression_targets = self.select_training_samples(proposals, targets)
        proposals = self.sampled_proposals(proposals)
        box_features = self.box_head(self.box_roi_pool(features, proposals, image_shapes))
        class_logits, box_regression = self.box_predictor(box_features)
        return [], fast_rcnn_losses(class_logits, box_regression, labels, regression_targets, self.box_beta)
