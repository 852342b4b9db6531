"""The core ``lws`` form and neck, LWS-Det's student (§3.2, §1.7 LWS row): which convs are binary, where the
BNs, PReLUs and shortcuts sit, and that a trained student deploys into a core-only one."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from helpers import toy_config
from lwsdet_helpers import spec, teacher_and_student
from torch import nn

from detbin import BinaryConv2d, ConfigError, apply_layout, build_detector, is_binary, quantizer, tiny_config
from detbin.binary.lws_blocks import LWSBasicBlock, LWSBottleneck, LWSRPNConv
from detbin.binary.quantizers import ApproxSign, DeployedSign
from detbin.models.heads import TORCHVISION_BETA
from detbin.models.layout import add_lws_neck, widen_fpn_laterals
from detbin_lwsdet.dbs import DBSWeight
from detbin_lwsdet.losses import widen_kernel

NECK_RPN = [f"backbone.fpn.inner_blocks.{i}.0" for i in range(4)] + \
           [f"backbone.fpn.layer_blocks.{i}.0" for i in range(4)] + ["rpn.head.conv.0.0"]


def body_convs(blocks: list[int], convs: int) -> list[str]:
    return [f"backbone.body.layer{s + 1}.{b}.conv{c}" for s, n in enumerate(blocks) for b in range(n)
            for c in range(1, convs + 1)]


def binary_conv_names(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if is_binary(m)]


def real_convs(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and not isinstance(m, BinaryConv2d)]


@pytest.mark.parametrize(("arch", "blocks", "convs"), [("fasterrcnn_resnet18_fpn", [2, 2, 2, 2], 2),
                                                       ("fasterrcnn_resnet34_fpn", [3, 4, 6, 3], 2),
                                                       ("fasterrcnn_resnet50_fpn", [3, 4, 6, 3], 3)])
def test_binary_and_real_convs(arch, blocks, convs):
    _, student, names = teacher_and_student(arch)
    expected = body_convs(blocks, convs) + NECK_RPN
    assert sorted(names) == sorted(expected) and binary_conv_names(student.model) == names
    assert len(names) == {18: 16 + 9, 34: 32 + 9, 50: 48 + 9}[student.config.depth]
    shortcuts = ["backbone.body.layer2.0.downsample.0", "backbone.body.layer3.0.downsample.0",
                 "backbone.body.layer4.0.downsample.0"]
    if convs == 3:  # R50: layer1.0 widens 16 -> 64 too, and the strided 3x3s get their own shortcut
        shortcuts += ["backbone.body.layer1.0.downsample.0"] + [f"backbone.body.layer{s}.0.downsample2.0"
                                                                 for s in (2, 3, 4)]
    assert sorted(real_convs(student.model)) == sorted(["backbone.body.conv1", "rpn.head.cls_logits",
                                                        "rpn.head.bbox_pred", *shortcuts])
    for name in names:
        conv = student.model.get_submodule(name)
        assert isinstance(conv.input_quantizer, ApproxSign) and isinstance(conv.weight_quantizer, DBSWeight)
        assert conv.bits == (1, 1) and conv.pad_value == 0.0


def test_r18_block_stem_fpn_rpn_and_head_structure():
    teacher, student, _ = teacher_and_student()
    body = student.model.backbone.body
    assert isinstance(body.relu, nn.PReLU) and body.relu.num_parameters == body.bn1.num_features
    block = body.layer2[0]
    assert isinstance(block, LWSBasicBlock)
    assert [n for n, _ in block.named_children()] == ["bn_in1", "conv1", "act1", "bn_in2", "conv2", "act2",
                                                      "downsample"]
    assert block.bn_in1.num_features == block.conv1.in_channels == 16  # pre-BN over C_in
    assert block.bn_in2.num_features == block.conv2.in_channels == 32
    assert isinstance(block.act1, nn.PReLU) and block.act1.num_parameters == 32
    assert not hasattr(block, "bn1") and not hasattr(block, "bn2")  # alpha replaces the post-conv BNs
    ds = block.downsample  # strided real 1x1 + BN, no AvgPool
    assert [type(m) for m in ds] == [nn.Conv2d, nn.BatchNorm2d] and ds[0].stride == (2, 2)
    assert ds[0].kernel_size == (1, 1) and body.layer2[1].downsample is None
    fpn = student.model.backbone.fpn
    for blocks in (fpn.inner_blocks, fpn.layer_blocks):
        for unit in blocks:
            assert [type(m) for m in unit] == [BinaryConv2d, nn.PReLU] and unit[0].kernel_size == (3, 3)
            assert unit[1].num_parameters == 32 and unit[0].padding == (1, 1)
    rpn = student.model.rpn.head.conv[0]
    assert isinstance(rpn, LWSRPNConv) and [n for n, _ in rpn.named_children()] == ["bn1", "0", "bn2", "1"]
    assert rpn.bn1.num_features == rpn.bn2.num_features == 32 and isinstance(getattr(rpn, "1"), nn.PReLU)
    head = student.model.roi_heads.box_head
    assert [type(m) for m in head.children()] == [nn.Linear, nn.Linear]  # real 2-FC RoI head
    assert student.model.rpn.box_beta == student.model.roi_heads.box_beta == TORCHVISION_BETA == 1 / 9


def test_bottleneck_has_its_own_strided_shortcut_for_the_3x3():
    _, student, _ = teacher_and_student("fasterrcnn_resnet50_fpn")
    first, later = student.model.backbone.body.layer3[0], student.model.backbone.body.layer3[1]
    assert isinstance(first, LWSBottleneck) and later.downsample2 is None
    ds2 = first.downsample2
    assert ds2[0].stride == (2, 2) and ds2[0].kernel_size == (1, 1) and ds2[0].in_channels == 64
    x = torch.randn(1, 64, 6, 6)
    ds2.eval()  # identity-initialised: the strided sub-sampling, / sqrt(1 + eps) by the fresh BN
    torch.testing.assert_close(ds2(x), x[:, :, ::2, ::2] / math.sqrt(1 + 1e-5))


def test_basic_block_shortcuts_by_hand_with_zero_scale():
    _, student, _ = teacher_and_student()
    identity_block, strided = student.model.backbone.body.layer1[1], student.model.backbone.body.layer2[0]
    for block in (identity_block, strided):
        for conv in (block.conv1, block.conv2):
            conv.weight_quantizer.alpha.data.zero_()  # binary branches off: only shortcuts and PReLUs left
        block.eval()
    x = torch.full((1, 16, 4, 4), -4.0)
    x[:, :, 0, 0] = 2.0
    out = identity_block(x)
    # act2(act1(x)) with slope 0.25: -4 -> -1 -> -0.25 ; 2 -> 2 -> 2
    assert torch.equal(out[0, :, 1, 1], torch.full((16,), -0.25)) and torch.equal(out[0, :, 0, 0],
                                                                                   torch.full((16,), 2.0))
    prelu = lambda t: torch.where(t >= 0, t, 0.25 * t)  # noqa: E731
    torch.testing.assert_close(strided(x), prelu(prelu(strided.downsample(x))))


def test_block_forward_is_the_lws_unit_composition():
    _, student, _ = teacher_and_student()
    block = student.model.backbone.body.layer2[0].eval()
    x = torch.randn(1, 16, 8, 8)
    unit1 = block.act1(block.conv1(block.bn_in1(x)) + block.downsample(x))
    expect = block.act2(block.conv2(block.bn_in2(unit1)) + unit1)
    torch.testing.assert_close(block(x), expect)
    conv = block.conv1  # conv(ApproxSign(y), |alpha| o *w) = |alpha| o conv(sign(y), *w)
    y = block.bn_in1(x)
    q = conv.weight_quantizer
    manual = q.alpha.abs().view(1, -1, 1, 1) * nn.functional.conv2d(torch.where(y >= 0, 1.0, -1.0), q.signs(),
                                                                     stride=2, padding=1)
    torch.testing.assert_close(conv(y), manual)
    rpn = student.model.rpn.head.conv[0].eval()
    f = torch.randn(1, 32, 5, 5)
    torch.testing.assert_close(rpn(f), getattr(rpn, "1")(rpn.bn2(getattr(rpn, "0")(rpn.bn1(f)))))


def test_names_line_up_with_the_teacher_and_its_weights_initialise_the_student():
    teacher, student, names = teacher_and_student()
    teacher_modules = dict(teacher.model.named_modules())
    for name in names:
        s_conv, t_conv = student.model.get_submodule(name), teacher_modules[name]
        assert s_conv.weight.shape[:2] == t_conv.weight.shape[:2]
        widened = widen_kernel(t_conv.weight, s_conv.kernel_size)
        assert (t_conv.kernel_size == (1, 1)) == (".inner_blocks." in name)  # only laterals are widened
        q = s_conv.weight_quantizer
        nonzero = widened != 0
        assert torch.equal(q.signs().detach()[nonzero], torch.where(widened >= 0, 1.0, -1.0)[nonzero])
        count = nonzero.flatten(1).sum(1)
        torch.testing.assert_close(q.alpha.detach(), widened.abs().flatten(1).sum(1) / count)
    t_state, s_state = teacher.model.state_dict(), student.model.state_dict()
    copied = [k for k in t_state if k.startswith(("backbone.body.conv1.", "backbone.body.bn1.", "rpn.head.cls_logits",
                                                  "rpn.head.bbox_pred", "roi_heads.")) or ".downsample." in k]
    assert len(copied) > 20 and all(torch.equal(t_state[k], s_state[k]) for k in copied)


def test_widened_laterals_and_slope_1_prelus_keep_the_fpn_function_at_conversion():
    teacher = build_detector(toy_config()).model.eval()
    widened = copy.deepcopy(teacher)
    assert widen_fpn_laterals(widened) == [f"backbone.fpn.inner_blocks.{i}.0" for i in range(4)]
    add_lws_neck(widened, slope=1.0)  # PReLU with slope 1 is the identity
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        for got, want in zip(widened.backbone(x).values(), teacher.backbone(x).values()):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)  # summation order only


def test_real_layers_compute_the_teachers_function_at_conversion():
    teacher, student, _ = teacher_and_student()
    t_model, s_model = teacher.model, student.model.eval()
    pairs = [("backbone.body.conv1", torch.rand(1, 3, 32, 32)), ("backbone.body.bn1", torch.randn(1, 16, 8, 8)),
             ("backbone.body.layer3.0.downsample", torch.rand(1, 32, 6, 6)), ("rpn.head.cls_logits",
             torch.rand(1, 32, 6, 6)), ("rpn.head.bbox_pred", torch.rand(1, 32, 6, 6)),
             ("roi_heads.box_head", torch.rand(7, 32, 7, 7)), ("roi_heads.box_predictor", torch.rand(7, 64))]
    with torch.no_grad():
        for name, inp in pairs:
            got, want = s_model.get_submodule(name)(inp), t_model.get_submodule(name)(inp)
            for g, w in zip(got if isinstance(got, tuple) else (got,), want if isinstance(want, tuple) else (want,)):
                assert torch.equal(g, w), name


def deploy_all(model: nn.Module) -> int:
    """An export's step for every 1-bit conv: ``weight = signs``, weight quantizer core ``deployed_sign(scale)``."""
    convs = [m for m in model.modules() if is_binary(m)]
    with torch.no_grad():
        for conv in convs:
            signs, scale = conv.weight_quantizer.deploy(conv.weight)
            conv.weight.copy_(signs)
            conv.weight_quantizer = quantizer("deployed_sign", channels=conv.out_channels)
            conv.weight_quantizer.scale.copy_(scale)
    return len(convs)


def test_a_deployed_student_loads_into_the_core_form_without_the_plugin():
    _, student, _ = teacher_and_student()
    with torch.no_grad():  # searched away from the teacher's signs
        for m in student.model.modules():
            if isinstance(m, DBSWeight):
                m.beta_plus.add_(torch.randn_like(m.beta_plus))
    student.model.eval()
    x = [torch.rand(3, 96, 96)]
    with torch.no_grad():
        before = student.model.backbone(x[0][None])
    assert deploy_all(student.model) == 25
    core = build_detector(student.config)  # core form, core quantizer: no DBS anywhere
    apply_layout(core, spec(weight="deployed_sign"))
    core.model.load_state_dict(student.model.state_dict(), strict=True)
    core.model.eval()
    with torch.no_grad():
        after = core.model.backbone(x[0][None])
        dets = core.model(x)
    assert all(torch.equal(a, b) for a, b in zip(before.values(), after.values()))
    assert not any(isinstance(m, DBSWeight) for m in core.model.modules()) and set(dets[0]) >= {"boxes", "scores"}
    assert all(isinstance(core.model.get_submodule(n).weight_quantizer, DeployedSign)
               for n in binary_conv_names(core.model))


def test_trains_and_evaluates_end_to_end():
    _, student, _ = teacher_and_student()
    images = [torch.rand(3, 96, 96)]
    targets = [{"boxes": torch.tensor([[10.0, 10.0, 60.0, 70.0]]), "labels": torch.tensor([1])}]
    losses = student.losses(images, targets)
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
    assert all(torch.isfinite(v) for v in losses.values())
    assert isinstance(student.predict(images)[0]["boxes"], torch.Tensor)


def test_the_lws_neck_needs_a_faster_rcnn_with_an_fpn():
    with pytest.raises(ConfigError, match="Faster R-CNN with an FPN"):
        apply_layout(build_detector(toy_config("retinanet_resnet18_fpn")), spec(weight="deployed_sign"))


def test_the_tiny_config_quarter_width_student():
    student = build_detector(tiny_config())  # detbin's CPU config: 16-channel stem, 64-channel FPN, 128 px
    names = apply_layout(student, spec())
    assert len(names) == 25 and student.model.backbone.body.layer1[0].bn_in1.num_features == 16
    assert student.model.get_submodule("backbone.fpn.inner_blocks.3.0").weight.shape == (64, 128, 3, 3)
    student.model.train()
    losses = student.losses([torch.rand(3, 128, 128)], [{"boxes": torch.tensor([[8.0, 8.0, 90.0, 100.0]]),
                                                         "labels": torch.tensor([2])}])
    assert all(torch.isfinite(v) for v in losses.values())
