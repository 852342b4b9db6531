"""COCO box scoring: faster-coco-eval, or pycocotools when it is not installed.

This is the only module that imports either library. Both receive the same in-memory COCO
dicts, built here from flat arrays, and give the same 12 standard numbers (checked to 1e-9
in ``tests/test_coco_eval.py``; the differences seen are float rounding, e.g. pycocotools
divides by ``tp + fp + eps``, so a perfect detector gets ``1 - 2.2e-16`` there and 1.0 from
faster-coco-eval):

* boxes are ``[x, y, w, h]`` with ``w = x2 - x1`` (continuous pixels, no +1);
* AP is the 101-point interpolated precision averaged over IoU 0.50:0.05:0.95, at most 100
  detections per image and category, ``-1`` where no ground truth exists (pycocotools'
  convention, kept so numbers compare as they are);
* crowd ground truth (``iscrowd``) is ignored: matching it is neither a TP nor an FP, and the
  IoU with a crowd region divides by the detection's area only;
* a ground-truth ``area`` (the segment area in real COCO files) decides small/medium/large;
  detections use ``w * h``, as ``COCO.loadRes`` sets it.
"""

from __future__ import annotations

import contextlib
import gc
import io
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from detbin.core.errors import ConfigError

__all__ = ["STAT_NAMES", "BACKENDS", "CocoScores", "backend_name", "ground_truth", "detections", "score",
           "paused_gc"]

log = logging.getLogger(__name__)

STAT_NAMES: tuple[str, ...] = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
BACKENDS: tuple[str, ...] = ("faster-coco-eval", "pycocotools")


@dataclass(frozen=True)
class CocoScores:
    """What COCOeval computed.

    Attributes:
        stats: the 12 standard numbers, in :data:`STAT_NAMES` order (``-1``: no ground truth).
        precision: ``[T=10, R=101, K, A=4, M=3]`` interpolated precision (IoU, recall threshold,
            category, area range all/small/medium/large, max detections 1/10/100); ``-1`` where
            category ``k`` has no ground truth.
        recall_thresholds: ``[R]``, 0, 0.01, ..., 1.
        backend: ``faster-coco-eval`` or ``pycocotools``.
    """

    stats: np.ndarray
    precision: np.ndarray
    recall_thresholds: np.ndarray
    backend: str

    def class_ap(self, k: int) -> float:
        """AP@[.5:.95] of category index ``k`` (area all, 100 dets), NaN without ground truth.

        detectron2's per-category rule: the mean of the valid entries of ``precision[:, :, k, 0, -1]``.
        """
        values = self.precision[:, :, k, 0, -1]
        values = values[values > -1]
        return float(np.mean(values)) if values.size else float("nan")


def _faster_coco_eval():
    try:
        from faster_coco_eval import COCO, COCOeval_faster
    except ImportError:
        return None
    return COCO, COCOeval_faster


def _pycocotools():
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError:
        return None
    return COCO, COCOeval


_LOADERS = {"faster-coco-eval": _faster_coco_eval, "pycocotools": _pycocotools}


def backend_name(preferred: str | None = None) -> str:
    """The backend that :func:`score` will use: ``preferred``, else the first importable one.

    Raises:
        ConfigError: an unknown name, or no backend importable.
    """
    if preferred is not None and preferred not in _LOADERS:
        raise ConfigError(f"COCO backend {preferred!r}: choose one of {', '.join(BACKENDS)}")
    for name in [preferred] if preferred else BACKENDS:
        if _LOADERS[name]() is not None:
            return name
    raise ConfigError(f"COCO scoring needs {preferred or 'faster-coco-eval or pycocotools'}: "
                      f"pip install {preferred or 'faster-coco-eval'}")


def _xywh(boxes: np.ndarray) -> np.ndarray:
    out = np.asarray(boxes, dtype=np.float64).reshape(-1, 4).copy()
    out[:, 2:] -= out[:, :2]
    return out


def ground_truth(num_images: int, image: np.ndarray, boxes: np.ndarray, labels: np.ndarray,
                 iscrowd: np.ndarray, area: np.ndarray, num_classes: int) -> dict:
    """A COCO instances dict; image ids ``1..num_images``, category ids ``1..num_classes``.

    Args:
        image: ``[N]`` image index 0..num_images-1 of each object.
        boxes: ``[N, 4]`` xyxy continuous pixels. labels: ``[N]`` 1..K.
        iscrowd: ``[N]`` bool. area: ``[N]`` area in px², NaN to use ``w * h``.
    """
    xywh = _xywh(boxes)
    area = np.where(np.isnan(area), xywh[:, 2] * xywh[:, 3], area)
    annotations = [
        {"id": i + 1, "image_id": img + 1, "category_id": lab, "bbox": box, "area": a, "iscrowd": crowd}
        for i, (img, lab, box, a, crowd) in enumerate(zip(
            image.tolist(), labels.tolist(), xywh.tolist(), area.tolist(), iscrowd.astype(int).tolist()))
    ]
    return {"images": [{"id": i + 1} for i in range(num_images)], "annotations": annotations,
            "categories": [{"id": k} for k in range(1, num_classes + 1)]}


def detections(image: np.ndarray, boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray) -> list[dict]:
    """COCO results as ``COCO.loadRes`` completes them (ids 1.., ``area = w * h``, not crowd)."""
    xywh = _xywh(boxes)
    return [
        {"id": i + 1, "image_id": img + 1, "category_id": lab, "bbox": box, "score": s, "area": box[2] * box[3],
         "iscrowd": 0}
        for i, (img, lab, box, s) in enumerate(zip(image.tolist(), labels.tolist(), xywh.tolist(), scores.tolist()))
    ]


@contextlib.contextmanager
def paused_gc() -> Iterator[None]:
    """No cyclic garbage collection inside: building and indexing half a million small dicts
    otherwise triggers full collections that find nothing to free (a third of COCO's time)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _index(coco_cls, dataset: dict):
    # Assigning the dict and indexing it is what COCO(file) does after reading; loadRes would
    # refuse an empty results list (pycocotools indexes anns[0]).
    coco = coco_cls()
    coco.dataset = dataset
    coco.createIndex()
    return coco


def score(gt: dict, dt: Sequence[dict], backend: str | None = None) -> CocoScores:
    """Run COCOeval (``bbox``) on a ground-truth dict and a completed results list.

    Args:
        gt: from :func:`ground_truth` (or any COCO instances dict).
        dt: from :func:`detections` (ids, areas and ``iscrowd`` already set).
        backend: ``faster-coco-eval``, ``pycocotools`` or None (the first importable).
    """
    name = backend_name(backend)
    coco_cls, eval_cls = _LOADERS[name]()  # type: ignore[misc]
    dt_dataset = {"images": gt["images"], "annotations": list(dt), "categories": gt["categories"]}
    # pycocotools reports progress with print(); the library never prints.
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator = eval_cls(_index(coco_cls, gt), _index(coco_cls, dt_dataset), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    stats = np.asarray(evaluator.stats, dtype=np.float64)[: len(STAT_NAMES)]
    precision = np.asarray(evaluator.eval["precision"], dtype=np.float64)
    log.debug("COCO scored with %s", name)
    return CocoScores(stats, precision, np.asarray(evaluator.params.recThrs, dtype=np.float64), name)
