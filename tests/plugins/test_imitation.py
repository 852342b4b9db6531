"""fgfi and defeat: masks on hand-built cases, the loss formula, finite KD terms on a real step."""

from __future__ import annotations

import math

import pytest
import torch

from detbin.training import plugins
from detbin.app.build import make_student
from detbin.config import validate
from detbin.models.detector import build_detector
from detbin.training.recipe import Step
from detbin.app.build import layout_spec
from detbin.data.synthetic import SyntheticDetection
from detbin.models.taps import record
from detbin.training.trainer import freeze
from detbin.distill.imitation import fgfi_mask, gt_mask, map_levels, masked_imitation
from helpers import toy_config


def square_anchors(size: int, stride: int, cells: int) -> torch.Tensor:
    """One ``size`` x ``size`` anchor per cell, centred at ``(x * stride, y * stride)`` (torchvision)."""
    centres = torch.arange(cells, dtype=torch.float32) * stride
    cy, cx = torch.meshgrid(centres, centres, indexing="ij")
    half = size / 2
    return torch.stack([cx - half, cy - half, cx + half, cy + half], dim=-1).view(cells, cells, 1, 4)


def test_fgfi_mask_single_best_anchor():
    # box (8,8,24,24) equals the anchor at cell (2, 2): IoU 1 = max; neighbours reach only
    # 128 / 384 = 1/3 < 0.5 * 1, so the mask is that one cell
    mask = fgfi_mask(square_anchors(16, 8, 8), torch.tensor([[8.0, 8, 24, 24]]), phi=0.5)
    expected = torch.zeros(8, 8, dtype=torch.bool)
    expected[2, 2] = True
    assert torch.equal(mask, expected)


def test_fgfi_mask_plus_shape():
    # box (4,4,28,28): centre anchor IoU 256/576 = 0.444 (max), threshold 0.222; the four
    # edge neighbours 192/640 = 0.3 pass, the diagonals 144/688 = 0.209 do not
    mask = fgfi_mask(square_anchors(16, 8, 8), torch.tensor([[4.0, 4, 28, 28]]), phi=0.5)
    assert sorted(map(tuple, mask.nonzero().tolist())) == [(1, 2), (2, 1), (2, 2), (2, 3), (3, 2)]


def test_fgfi_mask_without_boxes_is_empty():
    assert not fgfi_mask(square_anchors(16, 8, 4), torch.zeros(0, 4)).any()


def test_gt_mask_truncates_like_the_repository():
    # stride 8: x 10..30 -> columns int(1.25)=1 .. int(3.75)=3 (exclusive), rows int(0.5)=0 .. int(2.5)=2
    mask = gt_mask(torch.tensor([[10.0, 4, 30, 20]]), stride=8, height=4, width=6)
    assert sorted(map(tuple, mask.nonzero().tolist())) == [(0, 1), (0, 2), (1, 1), (1, 2)]
    # a box inside one cell marks that cell
    assert gt_mask(torch.tensor([[17.0, 9, 20, 12]]), 8, 4, 6).nonzero().tolist() == [[1, 2]]


def test_level_assignment():
    boxes = torch.tensor([[0.0, 0, 20, 20], [0, 0, 150, 150], [0, 0, 300, 300], [0, 0, 900, 900]])
    # sqrt((w+1)(h+1)) / 56 = 0.375, 2.70, 5.38, 16.1 -> floor(log2) = -2, 1, 2, 4 -> clamp [0, 3]
    assert map_levels(boxes, num_levels=4).tolist() == [0, 1, 2, 3]


def test_masked_imitation_formula():
    student = torch.zeros(1, 2, 2, 2)
    teacher = torch.tensor([1.0, 2, 3, 4, 5, 6, 7, 8]).view(1, 2, 2, 2)
    mask = torch.tensor([[[True, False], [False, True]]])
    # masked squares: channel 0 -> 1 + 16, channel 1 -> 25 + 64; / (2 * C=2 * |M|=2)
    assert masked_imitation(student, teacher, mask).item() == pytest.approx((1 + 16 + 25 + 64) / 8)
    assert masked_imitation(student, teacher, torch.zeros(1, 2, 2, dtype=torch.bool)).item() == 0.0


@pytest.mark.parametrize("name, keys", [("fgfi", {"kd"}), ("defeat", {"kd_fg", "kd_bg"})])
def test_recipe_gives_finite_kd_terms_with_gradients(name, keys):
    teacher = build_detector(toy_config(num_classes=6))
    freeze(teacher)
    recipe = plugins.load(name)()
    student, _ = make_student(teacher, recipe, layout_spec(recipe, validate({"recipe": name}, "test")))
    recipe.prepare(student, teacher)
    assert len(recipe.adapt) == 5  # P2..P5 and the max-pooled P6
    data = SyntheticDetection(2, seed=1)
    images, targets = (list(x) for x in zip(*(data[i] for i in range(2))))
    taps = recipe.tap_names(student)
    with record(student.model, taps) as student_taps:
        task = student.losses(images, targets)
    with record(teacher.model, taps) as teacher_taps, torch.no_grad():
        recipe.teacher_features(images, teacher, student_taps)
    losses = recipe.loss(Step(images, targets, task, student_taps, teacher_taps, 0, 1, student, teacher))
    assert set(losses) == keys and all(math.isfinite(v.item()) and v.item() > 0 for v in losses.values())
    sum(losses.values()).backward()
    assert recipe.adapt[0].weight.grad.abs().sum() > 0
    assert student.model.backbone.fpn.layer_blocks[0][0].weight.grad.abs().sum() > 0


def test_imitation_needs_an_fpn():
    from detbin.core.errors import ConfigError

    teacher = build_detector(toy_config("ssd300_vgg16", num_classes=6))
    recipe = plugins.load("fgfi")()
    with pytest.raises(ConfigError, match="imitates FPN features; ssd300_vgg16 has no FPN"):
        recipe.prepare(teacher, teacher)
