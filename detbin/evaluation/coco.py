"""COCO box AP@[.5:.95]: the ground truth built in memory from targets, scored by COCOeval.

Any source scores with it (VOC-layout folders, the synthetic set, COCO JSON). COCOeval runs
through :mod:`detbin.evaluation.coco_backend` (faster-coco-eval, or pycocotools when it is
missing; the same numbers).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from detbin.core.types import Detections, Target
from detbin.evaluation import coco_backend as coco_eval
from detbin.evaluation.metrics import ClassAP, EvalResult

__all__ = ["CocoMAP"]


def _numpy(value, dtype, n: int | None = None, fill=None) -> np.ndarray:
    """``value`` as a numpy array; ``fill`` repeated ``n`` times when it is None."""
    if value is None:
        return np.full(n or 0, fill, dtype=dtype)
    return torch.as_tensor(value).cpu().numpy().astype(dtype, copy=False)


class CocoMAP:
    """COCO box AP@[.5:.95] and the 11 other standard numbers, per-class AP as detectron2.

    Targets may carry ``iscrowd`` (``BoolTensor[N]``, ignored regions) and ``area``
    (``FloatTensor[N]`` px², e.g. segment areas of real COCO, for small/medium/large; default
    ``w * h``). ``difficult`` is not a COCO notion and is scored as plain ground truth, as
    pycocotools does with a JSON that has it. Image and category ids are internal (``1..N``,
    ``1..K``), so targets need no ``image_id``.

    Args:
        classes: names of labels 1..K.
        backend: ``faster-coco-eval``, ``pycocotools`` or None (the first importable).
    """

    protocol = "coco"

    def __init__(self, classes: Sequence[str], backend: str | None = None) -> None:
        self.classes = tuple(classes)
        self.backend = backend
        self.reset()

    def reset(self) -> None:
        self._gt: list[tuple[np.ndarray, ...]] = []
        self._det: list[tuple[np.ndarray, ...]] = []

    def process(self, targets: Sequence[Target], detections: Sequence[Detections]) -> None:
        """Add images: continuous xyxy boxes (float64 keeps JSON values exact), labels 1..K."""
        for target, det in zip(targets, detections, strict=True):
            labels = _numpy(target["labels"], np.int64)
            self._gt.append((_numpy(target["boxes"], np.float64).reshape(-1, 4), labels,
                             _numpy(target.get("iscrowd"), bool, len(labels), False),
                             _numpy(target.get("area"), np.float64, len(labels), np.nan)))
            self._det.append((_numpy(det["boxes"], np.float64).reshape(-1, 4), _numpy(det["scores"], np.float64),
                              _numpy(det["labels"], np.int64)))

    @staticmethod
    def _flat(items: list[tuple[np.ndarray, ...]], dtypes: tuple) -> list[np.ndarray]:
        """Columns concatenated over images, the image index of each row first."""
        if not items:
            return [np.empty((0, 4) if i == 1 else 0, dtype) for i, dtype in enumerate((np.int64, *dtypes))]
        image = np.concatenate([np.full(len(item[1]), i, np.int64) for i, item in enumerate(items)])
        return [image, *(np.concatenate(column) for column in zip(*items))]

    def summarize(self) -> EvalResult:
        """Run COCOeval; ``mAP`` is AP@[.5:.95] (NaN when there is no ground truth)."""

        gt_image, gt_boxes, gt_labels, crowd, area = self._flat(self._gt, (np.float64, np.int64, bool, np.float64))
        det_image, det_boxes, det_scores, det_labels = self._flat(self._det, (np.float64, np.float64, np.int64))
        with coco_eval.paused_gc():
            gt = coco_eval.ground_truth(len(self._gt), gt_image, gt_boxes, gt_labels, crowd, area, len(self.classes))
            dt = coco_eval.detections(det_image, det_boxes, det_scores, det_labels)
            scores = coco_eval.score(gt, dt, self.backend)
            del gt, dt  # freed here by reference counting, while collection is still off
        per_class = {}
        for k, name in enumerate(self.classes):
            npos = int(np.sum((gt_labels == k + 1) & ~crowd))
            per_class[name] = ClassAP(scores.class_ap(k), npos, int(np.sum(det_labels == k + 1)),
                                      scores.recall_thresholds, scores.precision[0, :, k, 0, -1])
        stats = {key: float(v) for key, v in zip(coco_eval.STAT_NAMES, scores.stats)}
        mean = stats["AP"] if stats["AP"] >= 0 else float("nan")
        return EvalResult(self.protocol, mean, per_class, len(self._gt), stats, scores.backend)
