"""The IB and prior terms (methods.md §4.4, §5.1) on hand-built cases, computed by hand."""

from __future__ import annotations

import math

import pytest
import torch
from torchvision.models.detection._utils import BoxCoder

from detbin_bidet.ib import (PriorTerms, class_prior_image, feature_regularizer, feature_regularizer_per_image,
                            normalised_entropy, roi_feature_regularizer, rpn_prior)
from detbin_bidet.batch_terms import frcnn_head_prior, ssd_prior

# seven boxes, columns (background, class 1, class 2)
BOXES = torch.tensor([[0, 0, 10, 10], [20, 0, 30, 10], [40, 0, 50, 10],
                      [1, 0, 11, 10],   # IoU 90 / 110 with box 0: suppressed by NMS 0.45
                      [60, 0, 70, 10],  # class 1 at p = 0.02: below 0.03
                      [0, 40, 10, 50], [20, 40, 30, 50]], dtype=torch.float32)
PROBS = [[0.4, 0.6, 0.0], [0.7, 0.3, 0.0], [0.9, 0.1, 0.0], [0.5, 0.5, 0.0], [0.98, 0.02, 0.0],
         [0.5, 0.0, 0.5], [0.6, 0.0, 0.4]]
GT = torch.tensor([1, 1, 2, 2, 2])  # n_1 = 2, n_2 = 3

H3 = -(0.6 * math.log(0.6) + 0.3 * math.log(0.3) + 0.1 * math.log(0.1))  # class 1 keeps 0.6, 0.3, 0.1; S = 1


def _probs() -> torch.Tensor:
    return torch.tensor(PROBS, requires_grad=True)


def test_entropy_with_detached_normaliser():
    p = torch.tensor([1.2, 0.6, 0.2], requires_grad=True)  # S = 2, u = (0.6, 0.3, 0.1)
    h = normalised_entropy(p)
    assert math.isclose(float(h), H3, rel_tol=1e-6)
    h.backward()
    # u = p / sg(S): dH/dp_j = -(log u_j + 1) / S (a normaliser with gradient would give other values)
    expected = [-(math.log(u) + 1) / 2 for u in (0.6, 0.3, 0.1)]
    assert torch.allclose(p.grad, torch.tensor(expected))


def test_csop_on_a_hand_built_image():
    probs = _probs()
    value, count = class_prior_image(probs, BOXES, GT, "csop", 0.03, 0.45, 200)
    # class 1: 3 kept > n_1 = 2 -> H / 2; class 2: 2 kept <= n_2 = 3 -> skipped
    assert count == 1 and math.isclose(float(value), H3 / 2, rel_tol=1e-6)
    value.backward()
    grad = torch.zeros(7, 3)
    for row, u in ((0, 0.6), (1, 0.3), (2, 0.1)):
        grad[row, 1] = -(math.log(u) + 1) / 1.0 / 2
    assert torch.allclose(probs.grad, grad, atol=1e-6)  # suppressed, sub-threshold and class-2 scores: 0


def test_csop_without_one_over_n_and_sop():
    value, count = class_prior_image(_probs(), BOXES, GT, "csop_no_n", 0.03, 0.45, 200)
    assert count == 1 and math.isclose(float(value), H3, rel_tol=1e-6)
    value, count = class_prior_image(_probs(), BOXES, GT, "sop", 0.03, 0.45, 200)
    kept = [0.6, 0.3, 0.1, 0.5, 0.4]  # every kept box of the image's GT classes, normalised together
    s = sum(kept)
    sop = -sum(p / s * math.log(p / s) for p in kept) / len(kept)
    assert count == 1 and math.isclose(float(value), sop, rel_tol=1e-6)


def test_top_k_comes_before_nms():
    # top 2 of class 1 are 0.6 and its overlapping twin 0.5: NMS leaves 1 <= n_1, nothing contributes
    value, count = class_prior_image(_probs(), BOXES, GT, "csop", 0.03, 0.45, top_k=2)
    assert count == 0 and float(value) == 0.0


@pytest.mark.parametrize("mode", ["csop", "csop_no_n", "sop"])
def test_empty_sets_give_zero_not_nan(mode):
    probs = _probs()
    for labels, thresh in ((torch.zeros(0, dtype=torch.int64), 0.03), (GT, 0.95)):
        value, count = class_prior_image(probs, BOXES, labels, mode, thresh, 0.45, 200)
        assert count == 0 and float(value) == 0.0
        terms = PriorTerms(torch.stack([value, value]), torch.tensor([0, 0]))
        for reduction in ("pairs", "images"):
            batch = terms.batch(reduction)
            assert float(batch) == 0.0
        batch.backward()
    assert torch.equal(probs.grad, torch.zeros(7, 3))


def test_batch_reductions():
    terms = PriorTerms(torch.tensor([0.9, 0.0, 0.3]), torch.tensor([2, 0, 1]))
    assert math.isclose(float(terms.batch("pairs")), (0.9 + 0.3) / 3, rel_tol=1e-6)  # the release: / |Q|
    assert math.isclose(float(terms.batch("images")), (0.9 + 0.3) / 3, rel_tol=1e-6)  # mean over the 3 images
    terms = PriorTerms(torch.tensor([0.9, 0.0]), torch.tensor([3, 0]))
    assert math.isclose(float(terms.batch("pairs")), 0.9 / 3, rel_tol=1e-6)
    assert math.isclose(float(terms.batch("images")), 0.9 / 2, rel_tol=1e-6)


def test_ssd_and_frcnn_adapters_decode_and_select_the_same():
    probs = torch.tensor(PROBS).clamp(min=1e-9)
    logits = probs.log().requires_grad_(True)
    head = {"cls_logits": logits[None], "bbox_regression": torch.zeros(1, 7, 4)}
    ssd = ssd_prior(head, [BOXES], [{"labels": GT}], BoxCoder((10.0, 10.0, 5.0, 5.0)))
    assert math.isclose(float(ssd.batch()), H3 / 2, rel_tol=1e-5) and ssd.counts.tolist() == [1]
    ssd.batch().backward()
    assert logits.grad[:, 1].abs().sum() > 0  # the gradient reaches the logits through the softmax
    deltas = torch.zeros(7, 3 * 4)
    head_terms = frcnn_head_prior(logits.detach(), deltas, [BOXES], [(100, 100)], [{"labels": GT}],
                                  BoxCoder((10.0, 10.0, 5.0, 5.0)), score_thresh=0.03, nms_thresh=0.45)
    # FRCNN: log(u + 1e-6) instead of log(u)
    h = -sum(u * math.log(u + 1e-6) for u in (0.6, 0.3, 0.1))
    assert math.isclose(float(head_terms.batch()), h / 2, rel_tol=1e-5)


def test_feature_regularizer_by_hand():
    first = torch.stack([torch.ones(1, 2, 2), torch.full((1, 2, 2), 2.0)])  # [2, 1, 2, 2]
    second = torch.tensor([[3.0, 0.0], [0.0, 0.0]]).view(2, 2, 1, 1)
    # map means of squares: (1 + 4) / 2 = 2.5 and 9 / 4 = 2.25; L = (2.5 + 2.25) / 2
    assert math.isclose(float(feature_regularizer([first, second])), (2.5 + 2.25) / 2, rel_tol=1e-6)
    # per image: image 0 (1 + 9/2) / 2, image 1 (4 + 0) / 2; their mean is the batch value
    per_image = feature_regularizer_per_image([first, second])
    assert torch.allclose(per_image, torch.tensor([(1 + 4.5) / 2, (4 + 0) / 2]))


def test_roi_regularizer_by_hand():
    features = torch.tensor([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]])
    batch, per_image = roi_feature_regularizer(features, [2, 1, 0])
    assert math.isclose(float(batch), (1 + 4 + 9) / 3, rel_tol=1e-6)
    assert torch.allclose(per_image, torch.tensor([(1 + 4) / 2, 9.0, 0.0]))


def test_rpn_prior_released_and_paper_mode():
    released = rpn_prior([torch.tensor([0.5, 0.5]), torch.zeros(0), torch.tensor([0.9])], [2, 1, 0])
    h = -2 * 0.5 * math.log(0.5 + 1e-6)  # u = (0.5, 0.5); no m <= n skip in the RPN prior
    assert torch.allclose(released.per_image, torch.tensor([h / 2, 0.0, 0.0]))  # no proposal / no GT: 0
    assert math.isclose(float(released.batch("images")), h / 2 / 3, rel_tol=1e-6)  # / batch size
    assert not released.batch("images").requires_grad  # as released: computed on .data
    scores = torch.tensor([0.5, 0.25], requires_grad=True)
    paper = rpn_prior([scores], [1])
    paper.batch("images").backward()
    assert scores.grad is not None and torch.isfinite(scores.grad).all()
