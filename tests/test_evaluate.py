"""VOC metrics: hand-worked cases and an independent straightforward implementation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from detbin.evaluation.metrics import VocMAP, _devkit_iou, voc_ap


def t(boxes, labels, difficult=None):
    out = {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), "labels": torch.tensor(labels)}
    if difficult is not None:
        out["difficult"] = torch.tensor(difficult)
    return out


def d(boxes, scores, labels):
    return {"boxes": torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4), "scores": torch.as_tensor(scores),
            "labels": torch.as_tensor(labels)}


def score(targets, detections, classes=("a", "b"), use_07=True):
    evaluator = VocMAP(classes, use_07_metric=use_07)
    evaluator.process(targets, detections)
    return evaluator.summarize()


GT = [t([[0, 0, 10, 10], [20, 20, 35, 30]], [1, 2]), t([[5, 5, 25, 25]], [1])]


@pytest.mark.parametrize("use_07", [True, False])
def test_perfect_detector_scores_one(use_07):
    dets = [d(g["boxes"], [0.9] * len(g["labels"]), g["labels"]) for g in GT]
    result = score(GT, dets, use_07=use_07)
    # 11 * (1/11) is 1.0000000000000002 in floating point, in voc_eval too
    assert result.mAP == pytest.approx(1.0, abs=1e-12)
    assert all(c.ap == pytest.approx(1.0, abs=1e-12) for c in result.per_class.values())


@pytest.mark.parametrize("use_07", [True, False])
def test_no_detections_score_zero(use_07):
    result = score(GT, [d([], [], []), d([], [], [])], use_07=use_07)
    assert result.mAP == 0.0


def three_box_case():
    """Image A: GT1 and a difficult GT2; image B: GT3, all class 1.

    Detections by score: d1 = GT1 (TP), d2 = GT1 again (duplicate: FP), d3 = GT2 (difficult:
    neither), d4 far from everything (FP), d5 = GT3 (TP). npos = 2.
    cumulative tp = 1 1 1 1 2, fp = 0 1 1 2 2 -> recall .5 .5 .5 .5 1, precision 1 .5 .5 1/3 .5
    """
    targets = [t([[0, 0, 10, 10], [20, 20, 30, 30]], [1, 1], [False, True]), t([[0, 0, 10, 10]], [1], [False])]
    dets = [d([[0, 0, 10, 10], [0, 0, 10, 10], [20, 20, 30, 30]], [0.9, 0.8, 0.7], [1, 1, 1]),
            d([[50, 50, 60, 60], [0, 0, 10, 10]], [0.6, 0.5], [1, 1])]
    return targets, dets


def test_three_box_case_11_point():
    # recall thresholds 0..0.5 (6 of them): max precision 1; 0.6..1.0 (5): only recall 1 -> 0.5
    result = score(*three_box_case(), classes=("a",))
    assert result.per_class["a"].ap == pytest.approx((6 * 1.0 + 5 * 0.5) / 11, abs=1e-12)
    assert (result.per_class["a"].npos, result.per_class["a"].ndet) == (2, 5)


def test_three_box_case_area():
    # envelope: 1 on (0, .5], .5 on (.5, 1] -> 0.5 * 1 + 0.5 * 0.5
    result = score(*three_box_case(), classes=("a",), use_07=False)
    assert result.per_class["a"].ap == pytest.approx(0.75, abs=1e-12)


def test_plus_one_pixel_convention():
    # devkit boxes 1..4 (16 px) and 2..4 (9 px): the devkit's +1 widths give IoU 9/16 > 0.5;
    # plain x2 - x1 on the same numbers would give 4/9 < 0.5.
    gt, det = np.array([[1.0, 1, 4, 4]]), np.array([[2.0, 2, 4, 4]])
    assert _devkit_iou(det, gt)[0, 0] == pytest.approx(9 / 16)
    # detbin's continuous boxes (0, 0, 4, 4) and (1, 1, 4, 4) are exactly those devkit boxes: a match
    result = score([t([[0, 0, 4, 4]], [1])], [d([[1, 1, 4, 4]], [0.9], [1])], classes=("a",))
    assert result.mAP == pytest.approx(1.0, abs=1e-12)


def test_iou_exactly_half_is_not_a_match():
    # continuous (0,0,10,10) vs (0,0,10,5): IoU = 50 / 100 = 0.5, and a match needs > 0.5
    assert score([t([[0, 0, 10, 10]], [1])], [d([[0, 0, 10, 5]], [0.9], [1])], classes=("a",)).mAP == 0.0


def test_class_without_ground_truth_is_left_out_of_the_mean():
    result = score([t([[0, 0, 10, 10]], [1])], [d([[0, 0, 10, 10], [5, 5, 9, 9]], [0.9, 0.8], [1, 2])])
    assert np.isnan(result.per_class["b"].ap) and result.mAP == pytest.approx(1.0, abs=1e-12)


def test_voc_ap_of_a_known_curve():
    recall, precision = np.array([0.2, 0.4, 0.4, 0.8]), np.array([1.0, 1.0, 0.5, 0.6])
    # 11-point: t<=0.4 -> 1.0 (5 points: 0, .1, .2, .3, .4); .5..0.8 -> 0.6 (4 points); .9, 1 -> 0
    assert voc_ap(recall, precision, True) == pytest.approx((5 * 1.0 + 4 * 0.6) / 11)
    # area: 0.4 * 1.0 + 0.4 * 0.6
    assert voc_ap(recall, precision, False) == pytest.approx(0.4 + 0.24)


def reference_voc_eval(targets, dets, k, use_07):
    """py-faster-rcnn's voc_eval, written the straightforward way (loops), for class k."""
    recs, npos = {}, 0
    for i, tg in enumerate(targets):
        mask = tg["labels"].numpy() == k
        boxes = tg["boxes"].numpy()[mask].astype(float)
        boxes[:, :2] += 1
        difficult = tg["difficult"].numpy()[mask] if "difficult" in tg else np.zeros(mask.sum(), bool)
        recs[i] = {"bbox": boxes, "difficult": difficult, "det": [False] * len(boxes)}
        npos += int((~difficult).sum())
    flat = [(i, s, b) for i, dt in enumerate(dets) for b, s, lab in zip(dt["boxes"].numpy(), dt["scores"].numpy(),
                                                                          dt["labels"].numpy()) if lab == k]
    flat.sort(key=lambda x: -x[1])
    tp, fp = np.zeros(len(flat)), np.zeros(len(flat))
    for n, (i, _, box) in enumerate(flat):
        bb = box.astype(float) + np.array([1, 1, 0, 0])
        rec, ovmax, jmax = recs[i], -np.inf, -1
        if len(rec["bbox"]):
            g = rec["bbox"]
            iw = np.maximum(np.minimum(g[:, 2], bb[2]) - np.maximum(g[:, 0], bb[0]) + 1.0, 0.0)
            ih = np.maximum(np.minimum(g[:, 3], bb[3]) - np.maximum(g[:, 1], bb[1]) + 1.0, 0.0)
            inter = iw * ih
            union = (bb[2] - bb[0] + 1.0) * (bb[3] - bb[1] + 1.0) + (g[:, 2] - g[:, 0] + 1.0) * (g[:, 3] - g[:, 1] + 1.0) - inter
            overlaps = inter / union
            ovmax, jmax = overlaps.max(), overlaps.argmax()
        if ovmax > 0.5:
            if not rec["difficult"][jmax]:
                if not rec["det"][jmax]:
                    tp[n], rec["det"][jmax] = 1.0, True
                else:
                    fp[n] = 1.0
        else:
            fp[n] = 1.0
    tp, fp = np.cumsum(tp), np.cumsum(fp)
    return voc_ap(tp / npos, tp / np.maximum(tp + fp, np.finfo(np.float64).eps), use_07)


@pytest.mark.parametrize("use_07", [True, False])
def test_matches_straightforward_voc_eval_on_a_random_set(use_07):
    rng = np.random.default_rng(0)
    classes = 5
    targets, dets = [], []
    for _ in range(200):
        n = int(rng.integers(0, 6))
        xy = rng.uniform(0, 150, (n, 2))
        gt = np.concatenate([xy, xy + rng.uniform(8, 60, (n, 2))], 1)
        labels = rng.integers(1, classes + 1, n)
        targets.append(t(gt, labels, rng.random(n) < 0.2))
        m = int(rng.integers(0, 12))
        noisy = gt[rng.integers(0, max(n, 1), m)] + rng.normal(0, 5, (m, 4)) if n else rng.uniform(0, 150, (m, 4))
        noisy[:, 2:] = np.maximum(noisy[:, 2:], noisy[:, :2] + 1)
        det_labels = np.where(rng.random(m) < 0.8, labels[rng.integers(0, max(n, 1), m)] if n else 1,
                              rng.integers(1, classes + 1, m))
        dets.append(d(noisy, rng.random(m).round(6), det_labels))
    result = score(targets, dets, classes=tuple("abcde"), use_07=use_07)
    for k, name in enumerate("abcde", start=1):
        assert result.per_class[name].ap == pytest.approx(reference_voc_eval(targets, dets, k, use_07), abs=1e-12)
