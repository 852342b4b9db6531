"""The baseline recipes: their layouts, one finite step, and a loss that goes down."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from detbin.training import plugins
from detbin.binary.blocks import BinaryBasicBlock
from detbin.app.build import make_student
from detbin.models.detector import build_detector
from detbin.binary.layers import BinaryConv2d, RPReLU
from detbin.binary.quantizers import ApproxSign, RSign, ScaledSign, SignSTE
from detbin.app.build import layout_spec
from detbin.config import validate
from detbin.data.synthetic import SyntheticDetection
from helpers import toy_config

EXPECTED = {  # recipe: (input quantizer, weight alpha detached, per-conv shortcut, RPReLU)
    "xnor": (SignSTE, False, False, False),
    "bireal": (ApproxSign, True, True, False),
    "reactnet": (RSign, True, True, True),
}


def student_of(name: str):
    recipe = plugins.load(name)()
    teacher = build_detector(toy_config(num_classes=6))
    spec = layout_spec(recipe, validate({"recipe": name}, "test"))
    student, binarized = make_student(teacher, recipe, spec)
    return recipe, student, binarized


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_layout(name):
    activation, detached, shortcut, rprelu = EXPECTED[name]
    _, student, binarized = student_of(name)
    assert len(binarized) == 25
    convs = [m for m in student.model.modules() if isinstance(m, BinaryConv2d)]
    assert all(isinstance(c.input_quantizer, activation) for c in convs)
    assert all(isinstance(c.weight_quantizer, ScaledSign) and c.weight_quantizer.detach_scale == detached
               for c in convs)
    block = student.model.backbone.body.layer1[0]
    assert isinstance(block, BinaryBasicBlock) and (block.form != "xnor") == shortcut
    assert any(isinstance(m, RPReLU) for m in student.model.modules()) == rprelu
    assert not any(isinstance(m, nn.ReLU) for m in student.model.backbone.body.modules())


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_training_lowers_the_loss(name):
    torch.manual_seed(0)
    _, student, _ = student_of(name)
    data = SyntheticDetection(4, seed=3)
    images, targets = zip(*(data[i] for i in range(4)))
    optimizer = torch.optim.Adam(student.model.parameters(), lr=1e-3)
    student.model.train()
    totals = []
    for _ in range(25):
        total = sum(student.losses(list(images), list(targets)).values())
        assert math.isfinite(total.item())
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        totals.append(total.item())
    assert sum(totals[-5:]) / 5 < 0.8 * sum(totals[:5]) / 5
