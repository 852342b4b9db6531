"""The IB and sparse-object-prior terms as the BiDet release optimizes them (methods.md §4.4, §5.1).

Feature regulariser (the ``I(X; F)`` surrogate, a KL to N(0, 1) up to constants; TPAMI §4.4):

    L_reg = (1/K) sum_k mean(F_k^2)      SSD: the six sources; FRCNN: the RPN conv+BN output (K=1),
                                           and separately the 512-d RoI features.

Entropy of normalised confidences (paper Eq. 6 / Eq. 11), with the normaliser detached as in
the release (``score / score.sum().item()``), so ``dH/dp_j = -(log u_j + 1) / S``:

    u_j = p_j / sg(sum_k p_k),   H(u) = -sum_j u_j log(u_j + eps)   (eps: SSD 0, FRCNN 1e-6)

Class prior per image (``mode``):

* ``"csop"`` (the release, = AutoBiDet's C-SOP, Eq. 11): ``sum_c (1/n_c) H(u^c)`` over the image's GT
  classes ``c`` whose post-NMS detection count ``m_c > n_c`` (others skipped);
* ``"csop_no_n"`` (Table 1's "C-SOP w/o 1/n_c"): the same without ``1/n_c``;
* ``"sop"`` (CVPR paper, Eq. 6): ``-(1/m) sum_j s_j log s_j`` over all ``m`` kept boxes of the
  image, normalised across them ([D] no ``m <= n`` skip: Eq. 6 has none).

Batch reduction: ``"pairs"`` (the release: sum over contributing (image, class) pairs divided by
their number) or ``"images"`` (the mean over images of the per-image values). Every division is
guarded: an empty set gives exactly 0, never NaN (the release's FRCNN head divides by an
unguarded ``loss_count``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor
from torchvision.ops import nms

from detbin import ConfigError

__all__ = [
    "PriorMode",
    "PriorTerms",
    "Reduction",
    "class_prior_image",
    "feature_regularizer",
    "feature_regularizer_per_image",
    "kept_scores",
    "normalised_entropy",
    "roi_feature_regularizer",
    "rpn_prior",
]

PriorMode = Literal["csop", "csop_no_n", "sop"]
Reduction = Literal["pairs", "images"]
MODES: tuple[str, ...] = ("csop", "csop_no_n", "sop")


@dataclass(frozen=True)
class PriorTerms:
    """Per-image prior values and the number of (image, class) pairs behind each.

    Attributes:
        per_image: ``[B]`` values, with grad through the scores.
        counts: ``[B]`` contributing pairs (C-SOP: classes; SOP and RPN: 0 or 1).
    """

    per_image: Tensor
    counts: Tensor

    def batch(self, reduction: Reduction = "pairs") -> Tensor:
        """The batch value; 0 (not NaN) when nothing contributed."""
        if reduction == "images":
            return self.per_image.sum() / max(self.per_image.numel(), 1)
        return self.per_image.sum() / self.counts.sum().clamp(min=1).to(self.per_image)


def feature_regularizer(maps: Sequence[Tensor]) -> Tensor:
    """``(1/K) sum_k mean(F_k^2)`` over ``K`` maps ``[B, C_k, H_k, W_k]``; 0 for no maps."""
    if not maps:
        return torch.zeros(())
    return torch.stack([m.pow(2).mean() for m in maps]).mean()


def feature_regularizer_per_image(maps: Sequence[Tensor]) -> Tensor:
    """``[B]``: ``(1/K) sum_k mean_{c,h,w}(F_k[b]^2)``; its mean is :func:`feature_regularizer`."""
    return torch.stack([m.pow(2).flatten(1).mean(1) for m in maps]).mean(0)


def roi_feature_regularizer(features: Tensor, rois_per_image: Sequence[int]) -> tuple[Tensor, Tensor]:
    """``mean(h^2)`` of the RoI features ``[R, D]``: the batch value and ``[B]`` per-image values.

    The batch value is the release's (all RoIs pooled); an image without RoIs gets 0.
    """
    squares = features.pow(2).mean(1)
    per_image = torch.stack([c.mean() if c.numel() else squares.new_zeros(())
                             for c in squares.split(list(rois_per_image))])
    batch = squares.mean() if squares.numel() else squares.new_zeros(())
    return batch, per_image


def normalised_entropy(scores: Tensor, log_eps: float = 0.0) -> Tensor:
    """``-sum_j u_j log(u_j + eps)`` with ``u = scores / sg(sum(scores))``; 0 for no scores."""
    if scores.numel() == 0:
        return scores.sum() * 0.0
    u = scores / scores.sum().detach()
    return -(u * torch.log(u + log_eps)).sum()


def kept_scores(scores: Tensor, boxes: Tensor, score_thresh: float, nms_thresh: float,
                top_k: int | None = None) -> Tensor:
    """Scores (with grad) of one class that survive ``p > thresh``, the top-``k`` and NMS.

    ssd.pytorch's ``nms`` first keeps the ``top_k`` highest scores, then suppresses IoU >
    ``nms_thresh``; the FRCNN head uses no ``top_k``. Selection runs on detached values, so
    the indices carry no gradient and the kept scores do.

    Args:
        scores: ``[A]`` probabilities of the class; boxes: ``[A, 4]`` xyxy (any common frame).
    """
    keep = torch.where(scores.detach() > score_thresh)[0]
    if top_k is not None and keep.numel() > top_k:
        keep = keep[scores.detach()[keep].topk(top_k).indices]
    if keep.numel() == 0:
        return scores[keep]
    survivors = nms(boxes[keep].detach().float(), scores.detach()[keep].float(), nms_thresh)
    return scores[keep[survivors]]


def class_prior_image(probs: Tensor, boxes: Tensor, gt_labels: Tensor, mode: PriorMode = "csop",
                      score_thresh: float = 0.03, nms_thresh: float = 0.45, top_k: int | None = 200,
                      log_eps: float = 0.0, classes: Literal["gt", "all"] = "gt") -> tuple[Tensor, int]:
    """The class-wise prior of one image (module docstring) and its number of contributing pairs.

    Args:
        probs: ``[A, C]`` softmax probabilities, column 0 background (grad flows into them).
        boxes: ``[A, 4]`` (class-agnostic) or ``[A, C, 4]`` decoded boxes (no grad needed).
        gt_labels: ``[n]`` ground-truth labels in 1..C-1 (may be empty).
        classes: ``"gt"`` runs only the image's GT classes (the release's ``DetectPrior``);
            ``"all"`` every foreground class (only meaningful for ``"sop"``).
    """
    if mode not in MODES:
        raise ConfigError(f"params.prior_mode: {mode!r} unknown; valid: {', '.join(MODES)}")
    present = torch.unique(gt_labels[gt_labels > 0]).tolist()
    candidates = present if classes == "gt" else list(range(1, probs.shape[1]))
    value, count, pooled = probs.sum() * 0.0, 0, []
    for c in candidates:
        kept = kept_scores(probs[:, c], boxes if boxes.dim() == 2 else boxes[:, c], score_thresh, nms_thresh, top_k)
        if mode == "sop":
            pooled.append(kept)
            continue
        n = int((gt_labels == c).sum())
        if kept.numel() <= n:  # the release skips a class with no more detections than objects
            continue
        weight = 1.0 / n if mode == "csop" else 1.0
        value = value + weight * normalised_entropy(kept, log_eps)
        count += 1
    if mode == "sop":
        scores = torch.cat(pooled) if pooled else probs.new_zeros(0)
        if scores.numel() == 0:
            return value, 0
        return normalised_entropy(scores, log_eps) / scores.numel(), 1
    return value, count


def rpn_prior(scores: Sequence[Tensor], gt_counts: Sequence[int], log_eps: float = 1e-6) -> PriorTerms:
    """The release's RPN prior: per image ``H(u) / N_gt`` of the post-NMS proposal probabilities.

    No ``m <= n`` skip (the release has none); an image with no GT or no proposal gives 0
    ([D]: the release would divide by zero). Reduce with ``"images"`` (the release divides by
    the batch size). Gradient only if ``scores`` carry one (paper mode; the release detaches).
    """
    values, counts = [], []
    for s, n in zip(scores, gt_counts):
        if n == 0 or s.numel() == 0:
            values.append(s.sum() * 0.0)
            counts.append(0)
            continue
        values.append(normalised_entropy(s, log_eps) / n)
        counts.append(1)
    return PriorTerms(torch.stack(values), torch.tensor(counts))
