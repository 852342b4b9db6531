"""Shared by the lws-det tests: a toy teacher and its LWS student, a batch, one real trainer step."""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import torch

from detbin import BinarizeSpec, apply_layout, build_detector
from detbin.app.build import layout_spec
from detbin.training.recipe import Plan
from detbin.training.trainer import StepResult, Trainer
from detbin_lwsdet import LWSDet
from helpers import toy_config

LWS_SPEC = layout_spec(LWSDet)  # the recipe's layout: form lws, dbs weights, 3x3 laterals, lws neck


def spec(**changes: Any) -> BinarizeSpec:
    return dataclasses.replace(LWS_SPEC, **changes)


def teacher_and_student(arch: str = "fasterrcnn_resnet18_fpn", weight: Any = "dbs", **overrides: Any):
    """A random real teacher (eval mode, BN statistics made non-trivial) and its LWS student (train mode)."""
    teacher = build_detector(toy_config(arch, **overrides))
    with torch.no_grad():  # non-default BN statistics, so "copied from the teacher" is visible
        for m in teacher.model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    teacher.model.eval()
    student = copy.deepcopy(teacher)
    names = apply_layout(student, spec(weight=weight))
    student.model.train()
    return teacher, student, names


def built(mode: str = "joint", **params: Any):
    """``(recipe, student, teacher, names)``: a toy teacher, the recipe's student, ``prepare`` done."""
    teacher = build_detector(toy_config())
    teacher.model.eval()
    student = copy.deepcopy(teacher)
    recipe = LWSDet(LWSDet.Params(lws_mode=mode, **params))
    names = recipe.binarize(student, LWS_SPEC)
    student.model.train()
    recipe.prepare(student, teacher)
    return recipe, student, teacher, names


def batch() -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    """Two 96x96 images with two and one boxes (xyxy pixels)."""
    images = [torch.rand(3, 96, 96), torch.rand(3, 96, 96)]
    targets = [
        {"boxes": torch.tensor([[10.0, 12.0, 50.0, 60.0], [55.0, 40.0, 90.0, 85.0]]), "labels": torch.tensor([1, 3])},
        {"boxes": torch.tensor([[20.0, 20.0, 70.0, 80.0]]), "labels": torch.tensor([2])},
    ]
    return images, targets


def trainer_step(recipe: LWSDet, student: Any, teacher: Any, lr: float = 0.0,
                 plan: Plan = Plan(10, 10)) -> tuple[Trainer, StepResult]:
    """One step of detbin's own Trainer (taps, teacher, loss, backward, SGD at ``lr``) in the recipe's first phase.

    ``lr`` 0 leaves every parameter where it was, so values logged in the step can be checked against them.
    """
    optimizer = torch.optim.SGD(recipe.param_groups(student), lr=lr)
    trainer = Trainer(student, recipe, [], optimizer, plan.max_iterations, teacher=teacher,
                      phases=recipe.phases(plan))
    recipe.on_phase(trainer.phase.name, trainer)
    return trainer, trainer.run_step(*batch())
