"""Module surgery and binarization layouts: names kept, keep-real rules honoured."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torchvision.models.resnet import BasicBlock
from torchvision.ops.misc import FrozenBatchNorm2d

from detbin.binary.blocks import BinaryBasicBlock
from detbin.models.detector import build_detector
from detbin.binary.layers import BinaryConv2d, RPReLU
from detbin.models.layout import BinarizeSpec, apply_layout
from detbin.binary.surgery import binarize, fix_activations_before_binary, matches_any, unfreeze
from helpers import toy_config

# Faster R-CNN R18-FPN: 16 backbone 3x3 + 4 FPN lateral 1x1 + 4 FPN output 3x3 + 1 RPN 3x3.
FRCNN_R18_BINARY_CONVS = 16 + 4 + 4 + 1
FRCNN_R18_REAL_CONVS = ["backbone.body.conv1", "backbone.body.layer2.0.downsample.0",
                        "backbone.body.layer3.0.downsample.0", "backbone.body.layer4.0.downsample.0",
                        "rpn.head.cls_logits", "rpn.head.bbox_pred"]


def weighted_names(model: nn.Module) -> set[str]:
    """Modules that own parameters or buffers (convs, norms, linears)."""
    return {n for n, m in model.named_modules() if list(m.parameters(recurse=False)) or list(m.buffers(recurse=False))}


def test_binarize_swaps_in_place_and_keeps_names():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Sequential(nn.Conv2d(8, 8, 3), nn.Conv2d(8, 4, 1)))
    names = [n for n, _ in model.named_modules()]
    swapped = binarize(model, lambda n, c: None if n == "0" else BinaryConv2d.from_conv(c, "sign", "sign"))
    assert swapped == ["2.0", "2.1"]
    assert [n for n, _ in model.named_modules() if n in names] == names
    assert type(model[0]) is nn.Conv2d and isinstance(model[2][0], BinaryConv2d)


def test_matches_any_star_spans_dots():
    assert matches_any("backbone.body.layer2.0.downsample.0", ["backbone.body.layer*.downsample.*"])
    assert not matches_any("backbone.body.layer2.0.conv1", ["backbone.body.layer*.downsample.*"])


@pytest.mark.parametrize("form", ["xnor", "bireal", "reactnet"])
def test_frcnn_r18_layout_counts_and_keep_real(form):
    detector = build_detector(toy_config())
    before = weighted_names(detector.model)
    swapped = apply_layout(detector, BinarizeSpec(form=form))
    assert len(swapped) == FRCNN_R18_BINARY_CONVS
    real = [n for n, m in detector.model.named_modules() if type(m) is nn.Conv2d]
    assert real == FRCNN_R18_REAL_CONVS
    assert before <= weighted_names(detector.model)  # every conv/norm/linear name survives
    assert all(p.requires_grad for p in detector.model.parameters())


def test_extra_keep_real_patterns_and_default_off():
    detector = build_detector(toy_config())
    swapped = apply_layout(detector, BinarizeSpec(keep_real=("backbone.fpn.*",)))
    assert len(swapped) == FRCNN_R18_BINARY_CONVS - 8
    detector = build_detector(toy_config())
    swapped = apply_layout(detector, BinarizeSpec(default_keep_real=False))
    assert len(swapped) == FRCNN_R18_BINARY_CONVS + 6  # stem, 3 downsamples, 2 RPN predictors


def test_fpn_laterals_widened_to_3x3_keep_the_function():
    detector = build_detector(toy_config())
    detector.model.eval()
    x = torch.rand(1, 3, 96, 96)
    with torch.no_grad():
        before = detector.model.backbone(x)
    from detbin.models.layout import widen_fpn_laterals

    assert len(widen_fpn_laterals(detector.model)) == 4
    with torch.no_grad():
        after = detector.model.backbone(x)
    assert all(torch.allclose(before[k], after[k], atol=1e-5) for k in before)
    assert detector.model.backbone.fpn.inner_blocks[0][0].kernel_size == (3, 3)


def test_unfreeze_converts_frozen_batchnorm_exactly():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), FrozenBatchNorm2d(4))
    with torch.no_grad():
        model[1].running_mean.copy_(torch.arange(4.0))
        model[1].running_var.copy_(torch.arange(1.0, 5.0))
        model[1].weight.copy_(torch.tensor([0.5, 1, 2, 3]))
    model[0].weight.requires_grad_(False)
    x = torch.randn(2, 3, 8, 8)
    expected = model(x)
    assert unfreeze(model) == 1
    assert isinstance(model[1], nn.BatchNorm2d) and all(p.requires_grad for p in model.parameters())
    model.eval()
    assert torch.allclose(model(x), expected, atol=1e-5)


def test_activation_before_binary_conv_is_replaced_by_norm_and_form_activation():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), BinaryConv2d(8, 8, 3, input_quantizer="sign",
                          weight_quantizer="sign"), nn.ReLU(), nn.Conv2d(8, 2, 1))
    x = torch.randn(1, 3, 12, 12)
    replaced = fix_activations_before_binary(model, RPReLU, lambda: model(x))
    # the first ReLU feeds a sign (constant +1 otherwise): BN (no norm after the conv) + RPReLU;
    # the second feeds a real conv and stays.
    assert replaced == ["1"]
    assert isinstance(model[1][0], nn.BatchNorm2d) and isinstance(model[1][1], RPReLU)
    assert isinstance(model[3], nn.ReLU)


def test_bireal_block_has_a_shortcut_per_conv():
    block = BasicBlock(8, 8)
    block.eval()
    reference = copy.deepcopy(block)
    converted = BinaryBasicBlock(block, "bireal", lambda c: nn.Identity()).eval()
    x = torch.randn(2, 8, 6, 6)
    r = reference
    out1 = r.bn1(r.conv1(x)) + x          # y1 = BN(conv(x)) + x, no ReLU
    expected = r.bn2(r.conv2(out1)) + out1  # y2 = BN(conv(y1)) + y1
    assert torch.allclose(converted(x), expected, atol=1e-6)


def test_xnor_block_keeps_one_shortcut_and_drops_relus():
    block = BasicBlock(8, 8).eval()
    r = copy.deepcopy(block)
    converted = BinaryBasicBlock(block, "xnor", lambda c: nn.Identity()).eval()
    x = torch.randn(2, 8, 6, 6)
    expected = r.bn2(r.conv2(r.bn1(r.conv1(x)))) + x
    assert torch.allclose(converted(x), expected, atol=1e-6)
