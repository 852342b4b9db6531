"""COCO metrics: hand-worked cases, and the 12 stats against pycocotools run the usual way."""

from __future__ import annotations

import contextlib
import io
import sys

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detbin.evaluation import coco_backend as coco_eval
from detbin.core.errors import ConfigError
from detbin.evaluation.coco import CocoMAP

BACKENDS = ["faster-coco-eval", "pycocotools"]


def t(boxes, labels, iscrowd=None, area=None):
    out = {"boxes": torch.tensor(boxes, dtype=torch.float64).reshape(-1, 4), "labels": torch.tensor(labels)}
    if iscrowd is not None:
        out["iscrowd"] = torch.tensor(iscrowd)
    if area is not None:
        out["area"] = torch.tensor(area, dtype=torch.float64)
    return out


def d(boxes, scores, labels):
    return {"boxes": torch.as_tensor(boxes, dtype=torch.float64).reshape(-1, 4),
            "scores": torch.as_tensor(scores, dtype=torch.float64), "labels": torch.as_tensor(labels, dtype=torch.int64)}


def score(targets, dets, classes=("a", "b"), backend=None):
    evaluator = CocoMAP(classes, backend=backend)
    evaluator.process(targets, dets)
    return evaluator.summarize()


GT = [t([[0, 0, 10, 10], [20, 20, 60, 50]], [1, 2]), t([[5, 5, 125, 105]], [1]), t([], [])]


@pytest.mark.parametrize("backend", BACKENDS)
def test_perfect_detector_scores_one(backend):
    result = score(GT, [d(g["boxes"], [0.9] * len(g["labels"]), g["labels"]) for g in GT], backend=backend)
    # pycocotools divides by tp + fp + eps: 1 / (1 + 2.2e-16) is one ulp under 1
    assert result.mAP == pytest.approx(1.0, abs=1e-12)
    assert all(c.ap == pytest.approx(1.0, abs=1e-12) for c in result.per_class.values())
    # one small, one medium, one large object (areas 100, 1200, 14400 against 32² and 96²)
    assert [result.stats[k] for k in ("APs", "APm", "APl", "AR1", "AR100")] == pytest.approx([1.0] * 5, abs=1e-12)
    assert result.backend == backend and len(result.stats) == 12


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_detections_score_zero(backend):
    result = score(GT, [d([], [], [])] * 3, backend=backend)
    assert result.mAP == 0.0 and all(v == 0.0 for v in result.stats.values())


@pytest.mark.parametrize("backend", BACKENDS)
def test_iou_thresholds_worked_by_hand(backend):
    # GT (0,0,10,10) and a detection (0,0,10,7.9): IoU = 79/100 matches at IoU 0.50..0.75 (6 of
    # the 10 thresholds), where precision is 1 at every recall; at 0.80..0.95 nothing matches.
    result = score([t([[0, 0, 10, 10]], [1])], [d([[0, 0, 10, 7.9]], [0.8], [1])], classes=("a",), backend=backend)
    assert result.mAP == pytest.approx(6 / 10, abs=1e-12)
    assert (result.stats["AP50"], result.stats["AP75"]) == pytest.approx((1.0, 1.0), abs=1e-12)
    assert result.per_class["a"].ap == pytest.approx(0.6, abs=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_crowd_regions_are_ignored(backend):
    # The best detection lies inside region C: IoU with a crowd region is inter / detection area
    # = 400 / 400, so it is ignored and the second detection is a TP at precision 1: AP 1.
    # If C is an ordinary object the same detection has IoU 400 / 1600 with it (an FP), recall
    # stops at 1/2 with precision 1/2: 51 of the 101 recall points (0 .. 0.5) at 0.5.
    boxes = [[0, 0, 20, 20], [140, 140, 180, 180]]
    dets = [d([[150, 150, 170, 170], [0, 0, 20, 20]], [0.9, 0.8], [1, 1])]
    crowd = score([t(boxes, [1, 1], iscrowd=[False, True])], dets, classes=("a",), backend=backend)
    plain = score([t(boxes, [1, 1], iscrowd=[False, False])], dets, classes=("a",), backend=backend)
    assert crowd.mAP == pytest.approx(1.0, abs=1e-12) and crowd.per_class["a"].npos == 1
    assert plain.mAP == pytest.approx(0.5 * 51 / 101, abs=1e-12) and plain.per_class["a"].npos == 2


@pytest.mark.parametrize("backend", BACKENDS)
def test_given_area_decides_the_size_range(backend):
    # a 10x10 box (100 px²: small) whose segment area is said to be 5000 px² (medium)
    result = score([t([[0, 0, 10, 10]], [1], area=[5000.0])], [d([[0, 0, 10, 10]], [0.9], [1])], ("a",), backend)
    assert result.stats["APs"] == -1.0 and result.stats["APm"] == pytest.approx(1.0, abs=1e-12)


def random_set(seed=0, images=220, classes=6):
    """Integer-free boxes, crowd regions, score ties, images without objects, > 100 detections."""
    rng = np.random.default_rng(seed)
    targets, dets = [], []
    for i in range(images):
        n = 0 if i % 9 == 0 else int(rng.integers(1, 7))
        xy = rng.uniform(0, 300, (n, 2)).round(2)
        gt = np.concatenate([xy, xy + rng.uniform(2, 150, (n, 2)).round(2)], axis=1)
        labels = rng.integers(1, classes, n)  # the last class never has ground truth
        area = np.where(rng.random(n) < 0.3, rng.uniform(50, 12000, n).round(1), np.nan)
        targets.append(t(gt, labels, iscrowd=rng.random(n) < 0.08, area=area))
        m = 130 if i % 37 == 0 else int(rng.integers(0, 15))
        source = rng.integers(0, max(n, 1), m)
        boxes = gt[source] + rng.normal(0, 6, (m, 4)) if n else rng.uniform(0, 300, (m, 4))
        boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] + 1)
        det_labels = np.where(rng.random(m) < 0.75, labels[source] if n else 1, rng.integers(1, classes + 1, m))
        dets.append(d(boxes.round(2), rng.random(m).round(2), det_labels))
    return targets, dets


def pycocotools_reference(targets, dets, classes):
    """pycocotools as users run it: an instances dict, loadRes on a results list, COCOeval."""
    images, annotations, results = [], [], []
    for i, (tg, dt) in enumerate(zip(targets, dets), start=10):  # ids need not start at 1
        images.append({"id": i, "width": 500, "height": 500})
        for box, label, crowd, area in zip(tg["boxes"].tolist(), tg["labels"].tolist(), tg["iscrowd"].tolist(),
                                           tg["area"].tolist()):
            bbox = [box[0], box[1], box[2] - box[0], box[3] - box[1]]
            annotations.append({"id": len(annotations) + 1, "image_id": i, "category_id": label, "bbox": bbox,
                                "area": bbox[2] * bbox[3] if np.isnan(area) else area, "iscrowd": int(crowd)})
        for box, s, label in zip(dt["boxes"].tolist(), dt["scores"].tolist(), dt["labels"].tolist()):
            results.append({"image_id": i, "category_id": label, "bbox": [box[0], box[1], box[2] - box[0],
                                                                          box[3] - box[1]], "score": s})
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = {"images": images, "annotations": annotations,
                      "categories": [{"id": k + 1, "name": n} for k, n in enumerate(classes)]}
        gt.createIndex()
        evaluator = COCOeval(gt, gt.loadRes(results), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator


@pytest.fixture(scope="module")
def random_case():
    classes = tuple("abcdef")
    targets, dets = random_set()
    return classes, targets, dets, pycocotools_reference(targets, dets, classes)


@pytest.mark.parametrize("backend", BACKENDS)
def test_twelve_stats_equal_pycocotools_on_a_random_set(random_case, backend):
    classes, targets, dets, reference = random_case
    result = score(targets, dets, classes, backend)
    assert list(result.stats) == list(coco_eval.STAT_NAMES)
    np.testing.assert_allclose(list(result.stats.values()), reference.stats, rtol=0, atol=1e-9)
    assert 0.05 < result.mAP < 0.95, "a case where AP means something"
    # per-class AP: detectron2's rule on pycocotools' own precision array
    for k, name in enumerate(classes):
        p = reference.eval["precision"][:, :, k, 0, -1]
        expected = np.mean(p[p > -1]) if (p > -1).any() else float("nan")
        assert result.per_class[name].ap == pytest.approx(expected, abs=1e-9, nan_ok=True)
    assert np.isnan(result.per_class["f"].ap) and result.per_class["f"].npos == 0 and result.per_class["f"].ndet > 0


def test_falls_back_to_pycocotools_without_faster_coco_eval(monkeypatch, random_case):
    classes, targets, dets, reference = random_case
    monkeypatch.setitem(sys.modules, "faster_coco_eval", None)  # import now raises ImportError
    assert coco_eval.backend_name() == "pycocotools"
    result = score(targets[:40], dets[:40], classes)
    assert result.backend == "pycocotools"


def test_default_backend_is_faster_coco_eval():
    assert coco_eval.backend_name() == "faster-coco-eval"


def test_unknown_backend_lists_the_choices():
    with pytest.raises(ConfigError, match="choose one of faster-coco-eval, pycocotools"):
        coco_eval.backend_name("detectron2")
