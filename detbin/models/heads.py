"""Faster R-CNN heads whose box-regression loss can be L1 as well as smooth-L1.

torchvision hard-codes smooth-L1 with ``beta = 1/9`` in the RPN and the RoI head; mmdet-era
1-bit students (IDa-Det's config) train with plain L1. ``smooth_l1_loss`` with ``beta = 0``
is exactly L1, so each head carries a ``box_beta`` (default 1/9: torchvision's behaviour,
bit for bit) and a recipe may set it to 0. The builders give every Faster R-CNN these heads;
state dicts are unchanged.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.models.detection.rpn import RegionProposalNetwork

from detbin.core.errors import ConfigError

__all__ = ["RPN", "BoxRoIHeads", "fast_rcnn_losses", "use_heads", "set_box_loss", "TORCHVISION_BETA"]

TORCHVISION_BETA = 1.0 / 9.0


class RPN(RegionProposalNetwork):
    """torchvision's RPN with a configurable regression ``box_beta`` (0 = L1)."""

    box_beta: float = TORCHVISION_BETA

    def compute_loss(self, objectness: Tensor, pred_bbox_deltas: Tensor, labels: list[Tensor],
                     regression_targets: list[Tensor]) -> tuple[Tensor, Tensor]:
        """Sampled BCE on objectness and (smooth-)L1 on positive deltas, / sampled anchors."""
        sampled_pos, sampled_neg = self.fg_bg_sampler(labels)
        sampled_pos = torch.where(torch.cat(sampled_pos, dim=0))[0]
        sampled_neg = torch.where(torch.cat(sampled_neg, dim=0))[0]
        sampled = torch.cat([sampled_pos, sampled_neg], dim=0)
        labels_all = torch.cat(labels, dim=0)
        targets = torch.cat(regression_targets, dim=0)
        box_loss = F.smooth_l1_loss(pred_bbox_deltas[sampled_pos], targets[sampled_pos], beta=self.box_beta,
                                    reduction="sum") / sampled.numel()
        objectness_loss = F.binary_cross_entropy_with_logits(objectness.flatten()[sampled], labels_all[sampled])
        return objectness_loss, box_loss


class BoxRoIHeads(RoIHeads):
    """torchvision's box-only RoI heads with a configurable regression ``box_beta`` (0 = L1).

    Training follows ``RoIHeads.forward`` for boxes (sampling, RoIAlign, box head, predictor);
    inference is torchvision's own. Mask and keypoint branches are not supported.
    """

    box_beta: float = TORCHVISION_BETA

    def forward(self, features, proposals, image_shapes, targets=None):  # type: ignore[override]
        if not self.training or self.box_beta == TORCHVISION_BETA:
            return super().forward(features, proposals, image_shapes, targets)
        proposals, _, labels, regression_targets = self.select_training_samples(proposals, targets)
        box_features = self.box_head(self.box_roi_pool(features, proposals, image_shapes))
        class_logits, box_regression = self.box_predictor(box_features)
        return [], fast_rcnn_losses(class_logits, box_regression, labels, regression_targets, self.box_beta)


def fast_rcnn_losses(class_logits: Tensor, box_regression: Tensor, labels: list[Tensor],
                     regression_targets: list[Tensor], beta: float) -> dict[str, Tensor]:
    """torchvision's ``fastrcnn_loss`` with the smooth-L1 ``beta`` as a parameter (0: L1).

    ``class_logits`` ``[R, K]``, ``box_regression`` ``[R, 4K]`` (a class-agnostic head repeats its 4
    deltas), ``labels`` / ``regression_targets`` per image; the box loss is summed over the
    positives and divided by all ``R`` sampled RoIs, as torchvision does.
    """
    labels_all, targets_all = torch.cat(labels, dim=0), torch.cat(regression_targets, dim=0)
    positive = torch.where(labels_all > 0)[0]
    per_class = box_regression.reshape(class_logits.shape[0], -1, 4)
    box_loss = F.smooth_l1_loss(per_class[positive, labels_all[positive]], targets_all[positive],
                                beta=beta, reduction="sum") / max(labels_all.numel(), 1)
    return {"loss_classifier": F.cross_entropy(class_logits, labels_all), "loss_box_reg": box_loss}


def use_heads(model: torch.nn.Module) -> torch.nn.Module:
    """Give a torchvision Faster R-CNN these heads in place (same modules, same weights)."""
    model.rpn.__class__ = RPN
    model.roi_heads.__class__ = BoxRoIHeads
    return model


def set_box_loss(detector: Any, beta: float) -> None:
    """Make a Faster R-CNN's RPN and RoI head regress with ``smooth_l1(beta)`` (``beta = 0``: L1).

    torchvision's own value is 1/9 (:data:`TORCHVISION_BETA`); IDa-Det's student trains with L1.

    Raises:
        ConfigError: the detector has no such heads (not a Faster R-CNN of detbin's builders).
    """
    model = detector.model
    rpn, roi_heads = getattr(model, "rpn", None), getattr(model, "roi_heads", None)
    if not (isinstance(rpn, RPN) and isinstance(roi_heads, BoxRoIHeads)):
        raise ConfigError(f"{detector.config.arch}: box-loss beta applies to Faster R-CNN's RPN and RoI heads only")
    rpn.box_beta = roi_heads.box_beta = float(beta)
