"""Shared by the bidet/autobidet tests: a real tiny teacher, its BiDet student made by the recipe, one step."""

from __future__ import annotations

import math
from typing import Any

import torch

from detbin import Recipe, Step, build_detector, record, tiny_config
from detbin.app.build import layout_spec, make_student, student_base

SSD_WIDTH = 0.0625  # channels 8..64: every layer of SSD300, 300-px input
C4 = dict(width_mult=0.125, rpn_pre_nms_top_n_train=300, rpn_post_nms_top_n_train=100, rpn_pre_nms_top_n_test=100,
          rpn_post_nms_top_n_test=50, box_batch_size_per_image=16)
EMPTY = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}


def teacher(family: str, classes: int = 4):
    """A random real teacher of ``family`` (``ssd`` or ``frcnn``), ``classes`` including background."""
    if family == "ssd":
        return build_detector(tiny_config("ssd300_vgg16", classes, width_mult=SSD_WIDTH, options={"priors": "voc"}))
    return build_detector(tiny_config("fasterrcnnc4_resnet18", classes, **C4))


def student(recipe: Recipe, family: str):
    """``(teacher, student)``: the student architecture named as a recipe file does, built as a run builds it."""
    real = teacher(family)
    arch = "bidetssd300_vgg16" if family == "ssd" else "fasterrcnnc4_resnet18_bidet"
    base = student_base(real, {"arch": arch}, None, "test")
    built, _ = make_student(base, recipe, layout_spec(recipe))
    return real, built


def batch(family: str):
    """Two images: two objects (classes 1 and 1, or 1 and 2) in one, none in the other."""
    if family == "ssd":
        images = [torch.rand(3, 300, 300), torch.rand(3, 240, 280)]
        boxes, labels = [[20.0, 30.0, 120.0, 150.0], [150.0, 100.0, 260.0, 240.0]], [1, 1]
    else:
        images = [torch.rand(3, 128, 128), torch.rand(3, 112, 128)]
        boxes, labels = [[10.0, 12.0, 70.0, 90.0], [60.0, 40.0, 120.0, 110.0]], [1, 2]
    return images, [{"boxes": torch.tensor(boxes), "labels": torch.tensor(labels)}, dict(EMPTY)]


def run_step(recipe: Recipe, detector: Any, data, lr_stage: int, phase: str = "train") -> tuple[dict, dict, Step]:
    """Task + recipe losses of one batch and their backward; checks every value and gradient is finite."""
    images, targets = data
    with record(detector.model, recipe.tap_names(detector)) as taps:
        task = detector.losses(images, targets)
    step = Step(images, targets, task, taps, {}, 0, 10, detector, None, lr_stage=lr_stage, phase=phase)
    extra = recipe.loss(step)
    total = sum(task.values()) + sum(extra.values())
    assert torch.isfinite(total), {**task, **extra}
    total.backward()
    norm = math.sqrt(sum(float(p.grad.pow(2).sum()) for p in detector.model.parameters() if p.grad is not None))
    assert math.isfinite(norm)
    return task, extra, step
