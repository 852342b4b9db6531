"""Detection metrics: PASCAL VOC (07 11-point and 2010+ area AP), and the result types all protocols share.

VOC follows py-faster-rcnn's ``voc_eval`` exactly, the code BiDet and the mmdet-era
repositories score with:

* a detection matches when IoU **> 0.5** with the ground truth of highest IoU;
* IoU uses the devkit's **+1 pixel** convention: ``w = xmax - xmin + 1`` on 1-based
  inclusive pixel boxes (detbin's continuous boxes ``(x1, y1, x2, y2)`` are
  ``(x1 + 1, y1 + 1, x2, y2)`` in devkit pixels);
* **difficult** objects are neither true nor false positives and do not count in recall;
* a second detection of an already matched object is a false positive;
* ``voc07`` is the 11-point interpolated AP (recall 0, 0.1, ..., 1), ``voc12`` the area
  under the monotone precision envelope;
* mAP averages the classes that have at least one non-difficult object (mmdet's rule).

Ties in score are broken by input order (a stable sort); ``voc_eval``'s unstable quicksort
leaves them unspecified.

COCO's protocol is :class:`detbin.evaluation.coco.CocoMAP`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from detbin.core.types import Detections, Target

__all__ = ["ClassAP", "EvalResult", "VocMAP", "voc_ap", "PROTOCOLS"]

# The facts a reader needs to compare a number with a paper's table; printed in report headers.
PROTOCOLS = {
    "voc07": "VOC07 11-point interpolated AP; a match needs IoU > 0.5; difficult objects neither TP nor FP; "
             "+1 pixel widths and areas; mAP over the classes with ground truth (py-faster-rcnn voc_eval)",
    "voc12": "VOC 2010+ area-under-curve AP; a match needs IoU > 0.5; difficult objects neither TP nor FP; "
             "+1 pixel widths and areas; mAP over the classes with ground truth",
    "coco": "COCO AP@[.5:.95]: 101-point interpolated AP over IoU 0.50:0.05:0.95; at most 100 detections per "
            "image; crowd regions ignored; xywh boxes, no +1; mAP over the classes with ground truth "
            "(faster-coco-eval, pycocotools fallback)",
}


@dataclass(frozen=True)
class ClassAP:
    """One class: AP (NaN without ground truth), ground-truth count, detection count, PR curve.

    The curve is the raw one for VOC (one point per detection, by score) and COCO's
    interpolated precision at IoU 0.5 on recall 0, 0.01, ..., 1 (-1 past the last point).
    """

    ap: float
    npos: int
    ndet: int
    recall: np.ndarray = field(repr=False)
    precision: np.ndarray = field(repr=False)


@dataclass(frozen=True)
class EvalResult:
    """What an evaluator returns: the protocol, mAP (0..1) and per-class AP."""

    protocol: str
    mAP: float
    per_class: dict[str, ClassAP]
    num_images: int
    stats: dict[str, float] = field(default_factory=dict)
    backend: str = ""

    def to_dict(self) -> dict:
        """JSON-ready summary (no curves)."""
        return {
            "protocol": self.protocol, "protocol_description": PROTOCOLS.get(self.protocol, ""), "mAP": self.mAP,
            "num_images": self.num_images, "stats": self.stats, **({"backend": self.backend} if self.backend else {}),
            "per_class": {name: {"ap": None if np.isnan(c.ap) else c.ap, "npos": c.npos, "ndet": c.ndet}
                          for name, c in self.per_class.items()},
        }


def voc_ap(recall: np.ndarray, precision: np.ndarray, use_07_metric: bool) -> float:
    """AP from a PR curve, as ``voc_eval.voc_ap``.

    11-point: ``(1/11) * sum_{t in 0, 0.1, ..., 1} max_{r >= t} p(r)`` (0 where no recall
    reaches t); area: ``sum (r_{i+1} - r_i) * p_env(r_{i+1})`` over the points where recall
    changes, ``p_env`` the monotone (non-increasing) envelope.
    """
    if use_07_metric:
        ap = 0.0
        for t in np.arange(0.0, 1.1, 0.1):  # the devkit's very thresholds, float error included
            above = recall >= t
            ap += (np.max(precision[above]) if above.any() else 0.0) / 11.0
        return float(ap)
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([0.0], precision, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    changes = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[changes + 1] - mrec[changes]) * mpre[changes + 1]))


def _devkit_iou(dets: np.ndarray, gts: np.ndarray) -> np.ndarray:
    """IoU ``[D, G]`` of devkit boxes with the +1 convention of ``voc_eval``."""
    ix1 = np.maximum(dets[:, None, 0], gts[None, :, 0])
    iy1 = np.maximum(dets[:, None, 1], gts[None, :, 1])
    ix2 = np.minimum(dets[:, None, 2], gts[None, :, 2])
    iy2 = np.minimum(dets[:, None, 3], gts[None, :, 3])
    inter = np.maximum(ix2 - ix1 + 1.0, 0.0) * np.maximum(iy2 - iy1 + 1.0, 0.0)
    area_d = (dets[:, 2] - dets[:, 0] + 1.0) * (dets[:, 3] - dets[:, 1] + 1.0)
    area_g = (gts[:, 2] - gts[:, 0] + 1.0) * (gts[:, 3] - gts[:, 1] + 1.0)
    return inter / (area_d[:, None] + area_g[None, :] - inter)


def _to_devkit(boxes: np.ndarray) -> np.ndarray:
    out = boxes.astype(np.float64, copy=True)
    out[:, :2] += 1.0
    return out


class VocMAP:
    """PASCAL VOC mAP, accumulated image by image (the detectron2 evaluator protocol).

    Args:
        classes: names of labels 1..K.
        use_07_metric: 11-point AP (``voc07``) or area AP (``voc12``).
        iou_threshold: a match needs IoU strictly greater than this.
    """

    def __init__(self, classes: Sequence[str], use_07_metric: bool = True, iou_threshold: float = 0.5) -> None:
        self.classes = tuple(classes)
        self.use_07_metric = use_07_metric
        self.iou_threshold = iou_threshold
        self.reset()

    @property
    def protocol(self) -> str:
        return "voc07" if self.use_07_metric else "voc12"

    def reset(self) -> None:
        self._gt: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._det: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def process(self, targets: Sequence[Target], detections: Sequence[Detections]) -> None:
        """Add images: continuous xyxy boxes, labels 1..K, ``difficult`` (default all False)."""
        for target, det in zip(targets, detections, strict=True):
            boxes = torch.as_tensor(target["boxes"]).reshape(-1, 4).double().cpu().numpy()
            labels = torch.as_tensor(target["labels"]).cpu().numpy().astype(np.int64)
            difficult = target.get("difficult")
            difficult = (np.zeros(len(labels), bool) if difficult is None
                         else torch.as_tensor(difficult).cpu().numpy().astype(bool))
            self._gt.append((_to_devkit(boxes), labels, difficult))
            self._det.append((
                _to_devkit(torch.as_tensor(det["boxes"]).reshape(-1, 4).double().cpu().numpy()),
                torch.as_tensor(det["scores"]).double().cpu().numpy(),
                torch.as_tensor(det["labels"]).cpu().numpy().astype(np.int64),
            ))

    def _match(self) -> tuple[np.ndarray, ...]:
        """Per detection: image, label, score, best IoU with same-class GT, global id of that GT."""
        columns: list[list[np.ndarray]] = [[], [], [], [], []]
        offset = 0
        for image, ((gt_boxes, gt_labels, _), (boxes, scores, labels)) in enumerate(zip(self._gt, self._det)):
            iou = np.full((len(boxes), max(len(gt_boxes), 1)), -np.inf)
            if len(boxes) and len(gt_boxes):
                iou = np.where(labels[:, None] == gt_labels[None, :], _devkit_iou(boxes, gt_boxes), -np.inf)
            jmax = iou.argmax(axis=1)
            columns[0].append(np.full(len(boxes), image))
            columns[1].append(labels)
            columns[2].append(scores)
            columns[3].append(iou.max(axis=1) if len(boxes) else np.empty(0))
            columns[4].append(jmax + offset)
            offset += len(gt_boxes)
        return tuple(np.concatenate(c) if c else np.empty(0) for c in columns)

    def summarize(self) -> EvalResult:
        """Per-class AP and mAP over the classes with ground truth."""
        images, labels, scores, ovmax, gt_ids = self._match()
        all_gt_labels = np.concatenate([g[1] for g in self._gt]) if self._gt else np.empty(0, np.int64)
        all_difficult = np.concatenate([g[2] for g in self._gt]) if self._gt else np.empty(0, bool)
        per_class = {}
        for k, name in enumerate(self.classes, start=1):
            npos = int(np.sum((all_gt_labels == k) & ~all_difficult))
            mine = np.flatnonzero(labels == k)
            order = mine[np.argsort(-scores[mine], kind="stable")]
            matched = ovmax[order] > self.iou_threshold
            difficult = np.zeros(len(order), bool)
            difficult[matched] = all_difficult[gt_ids[order][matched].astype(np.int64)]
            candidate = matched & ~difficult
            tp = np.zeros(len(order))
            first = np.unique(gt_ids[order][candidate], return_index=True)[1]
            tp[np.flatnonzero(candidate)[first]] = 1.0
            fp = (~difficult).astype(np.float64) - tp  # unmatched and duplicates; difficult counts neither
            tp, fp = np.cumsum(tp), np.cumsum(fp)
            recall = tp / npos if npos else np.full(len(tp), np.nan)
            precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
            ap = voc_ap(recall, precision, self.use_07_metric) if npos else float("nan")
            per_class[name] = ClassAP(ap, npos, len(order), recall, precision)
        valid = [c.ap for c in per_class.values() if c.npos > 0]
        mean = float(np.mean(valid)) if valid else float("nan")
        return EvalResult(self.protocol, mean, per_class, len(self._gt))
