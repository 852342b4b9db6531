"""ida-det: hand-computed discrepancy, selection, masks, entropy loss and BiConv gradients."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from detbin.training import plugins
from detbin.app.build import make_student
from detbin.config import validate
from detbin.models.detector import build_detector
from detbin.core.errors import ConfigError
from detbin.binary.layers import BinaryConv2d
from detbin.binary.quantizers import ApproxSign, RSign
from detbin.app.build import layout_spec
from detbin_idadet import BiConvWeight
from detbin_idadet.biconv import biconv_weight
from detbin_idadet.selection import Span, discrepancy, entropy_loss, level_mask, proposal_pairs, select_top, spans
from helpers import toy_config


def patch(values, h, w):
    return torch.tensor(values, dtype=torch.float64).view(1, h, w)


def test_discrepancy_of_two_hand_made_patches():
    # teacher logits [0,0,0,0,0,ln 6]: softmax [1,1,1,1,1,6]/11, mean 1/6,
    #   unbiased var = (5 (5/66)^2 + (25/66)^2) / 5 = 25/726, d_t = (1/36) / (25/726) = 726/900
    # student logits [0,0,0,ln 2,ln 2,ln 2]: softmax [1,1,1,2,2,2]/9, deviations +-1/18,
    #   var = (6/324)/5 = 1/270, d_s = 270/36 = 7.5
    # eps = |d_t - d_s| / h * w with h = 2, w = 3 (the code's precedence: (sum / h) * w)
    teacher = patch([0, 0, 0, 0, 0, math.log(6)], 2, 3)
    student = patch([0, 0, 0, math.log(2), math.log(2), math.log(2)], 2, 3)
    expected = abs(726 / 900 - 7.5) / 2 * 3
    assert discrepancy(teacher, student) == pytest.approx(expected, rel=1e-9)
    # channels add up; swapping teacher and student changes nothing
    both_t, both_s = torch.cat([teacher, teacher]), torch.cat([student, teacher])
    assert discrepancy(both_t, both_s) == pytest.approx(expected, rel=1e-9)
    assert discrepancy(student, teacher) == pytest.approx(expected, rel=1e-9)


def test_discrepancy_of_thin_patches_is_zero():
    assert discrepancy(torch.randn(4, 1, 5), torch.randn(4, 1, 5)) == 0.0
    assert discrepancy(torch.randn(4, 3, 1), torch.randn(4, 3, 1)) == 0.0


def test_top_gamma_selection():
    # N_T + N_S = 5, gamma 0.6 -> round(3.0) = 3 pairs, the most discrepant ones
    assert select_top([0.1, 5.0, 0.3, 2.0, 4.0], 0.6) == [1, 3, 4]
    assert select_top([1.0, 2.0], 0.6) == [1]  # round(1.2) = 1
    assert select_top([], 0.6) == []


def test_top_gamma_selection_keeps_the_highest_indices_on_a_tie():
    # k = round(0.6 * 5) = 3: index 0, then two of the three tied at 1.0 -> the last two, as the released sort
    assert select_top([3.0, 1.0, 1.0, 1.0, 0.5], 0.6) == [0, 2, 3]
    assert select_top([0.0, 0.0], 0.6) == [1]  # round(1.2) = 1
    assert select_top([3.0, 1.0, 1.0, 1.0, 0.5], 0.6, ties="first") == [0, 1, 2]  # box mode: the teacher's first


def test_repo_mode_keeps_the_students_box_on_a_tie_at_the_cut():
    from torchvision.models.detection.image_list import ImageList

    cls = plugins.load("ida-det")
    recipe = cls(cls.Params(mask_mode="repo"))
    # 8x8 level of a 64x64 image: repo rows round(x / 8), columns round(y / 8).
    # teacher box x 8..16 -> rows 1:2, y 8..40 -> columns 1:5; student box x 40..48 -> rows 5:6, same columns.
    # Both spans are one row high, so both discrepancies are 0 (§2.4): a tie, and k = round(0.6 * 2) = 1.
    pairs = [torch.tensor([[8.0, 8, 16, 40], [40.0, 8, 48, 40]])]  # [teacher; student] (§2.3)
    maps = torch.randn(2, 1, 4, 8, 8)
    mask, kept = recipe._mask(maps[0], maps[1], pairs, ImageList(torch.zeros(1, 3, 64, 64), [(64, 64)]))
    assert kept == 1
    # the student's bands: rows 5:6 and (its columns used as rows) 1:5 -> rows 1..5, full width;
    # the teacher's would be rows 1..4 only
    expected = torch.zeros(1, 8, 8, dtype=torch.bool)
    expected[0, 1:6, :] = True
    assert torch.equal(mask, expected)
    box = cls(cls.Params(mask_mode="box"))._mask(maps[0], maps[1], pairs, ImageList(torch.zeros(1, 3, 64, 64),
                                                                                 [(64, 64)]))[0]
    assert box[0, 1:5, 1:2].all() and box.sum() == 4  # box mode keeps the teacher's box: rows 1:5, column 1


LEVEL, IMAGE, PADDED = (8, 10), (60, 75), (64, 80)  # level grid (H, W); image (h, w) before/after padding
BOX_1, BOX_2 = [8.0, 16, 40, 32], [48.0, 4, 72, 20]


def test_repo_spans_swap_x_and_y():
    # rows round(x * 8 / 75), columns round(y * 10 / 60):
    # box 1: x 8 -> 0.853 -> 1, x 40 -> 4.27 -> 4; y 16 -> 2.67 -> 3, y 32 -> 5.33 -> 5
    # box 2: x 48 -> 5.12 -> 5, x 72 -> 7.68 -> 8; y 4 -> 0.67 -> 1, y 20 -> 3.33 -> 3
    got = spans(torch.tensor([BOX_1, BOX_2]), LEVEL, IMAGE, PADDED, "repo")
    assert got == [Span(1, 4, 3, 5), Span(5, 8, 1, 3)]


def test_repo_mask_is_two_full_width_bands_per_box():
    grid = spans(torch.tensor([BOX_1, BOX_2]), LEVEL, IMAGE, PADDED, "repo")
    rows = lambda m: sorted({r for r, _ in m.nonzero().tolist()})  # noqa: E731
    one = level_mask(grid[:1], *LEVEL, "repo", torch.device("cpu"))
    assert rows(one) == [1, 2, 3, 4] and one.sum() == 4 * 10  # rows 1:4 and 3:5, all 10 columns
    both = level_mask(grid, *LEVEL, "repo", torch.device("cpu"))
    assert rows(both) == [1, 2, 3, 4, 5, 6, 7] and bool(both[1:8].all()) and not both[0].any()


def test_box_mask_is_the_boxes():
    # stride 8 both ways: box 1 rows floor(16/8)=2 .. ceil(32/8)=4, columns 1 .. 5
    #                     box 2 rows 0 .. ceil(20/8)=3, columns 6 .. 9
    grid = spans(torch.tensor([BOX_1, BOX_2]), LEVEL, IMAGE, PADDED, "box")
    assert grid == [Span(2, 4, 1, 5), Span(0, 3, 6, 9)]
    mask = level_mask(grid, *LEVEL, "box", torch.device("cpu"))
    expected = torch.zeros(LEVEL, dtype=torch.bool)
    expected[2:4, 1:5] = True
    expected[0:3, 6:9] = True
    assert torch.equal(mask, expected) and mask.sum() == 2 * 4 + 3 * 3


def test_entropy_loss_value():
    teacher = torch.full((1, 1, 2, 2), 2.0)
    adapted = torch.zeros(1, 1, 2, 2)
    mask = torch.tensor([[[True, False], [False, False]]])
    sigma = torch.tensor(2.0)
    # masked sum D^2 = 4; (4 + 4 / sigma^2 + 1e-3 log(sigma^2) * 4 elements) / (1 pixel * 1 channel)
    assert entropy_loss(teacher, adapted, mask, sigma).item() == pytest.approx(4 + 1 + 1e-3 * math.log(4) * 4)
    # no box survives: the count is clamped to 1 and only the (unmasked) log term remains ([Q])
    empty = torch.zeros_like(mask)
    assert entropy_loss(teacher, adapted, empty, sigma).item() == pytest.approx(1e-3 * math.log(4) * 4)


def test_proposal_pairs_filter_dedupe_and_concatenate():
    teacher = ([torch.tensor([[0.0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]])], [torch.tensor([0.9, 0.95, 0.5])])
    student = ([torch.tensor([[30.0, 30, 40, 40]])], [torch.tensor([0.86])])
    # teacher: 0.5 fails the 0.85 threshold; the other two overlap (IoU 0.68 > 0.1) -> keep 0.95
    (pairs,) = proposal_pairs(teacher, student)
    assert pairs.tolist() == [[1.0, 1, 11, 11], [30, 30, 40, 40]]


def test_biconv_forward_and_backward_match_the_formulas():
    torch.manual_seed(3)
    c, mu = 0.02, 1e-4
    w = torch.randn(2, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    s = torch.tensor([40.0, -25.0], dtype=torch.float64, requires_grad=True)
    w_hat = biconv_weight(w, s, c, mu)
    sign = torch.where(w >= 0, 1.0, -1.0).detach()
    expected = c * s.detach().abs().view(-1, 1, 1, 1) * sign
    assert torch.equal(w_hat, expected)
    g = torch.randn_like(w_hat)
    w_hat.backward(g)
    residual = w.detach() - expected
    assert torch.allclose(w.grad, s.detach().abs().view(-1, 1, 1, 1) * g + mu * residual)
    expected_s = (g * w.detach()).sum(dim=(1, 2, 3)) - mu * (residual * c * sign).sum(dim=(1, 2, 3))
    assert torch.allclose(s.grad, expected_s)


def _biconv_case(s_values):
    torch.manual_seed(5)
    w = torch.randn(2, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    s = torch.tensor(s_values, dtype=torch.float64, requires_grad=True)
    g = torch.randn(2, 3, 3, 3, dtype=torch.float64)
    sign = torch.where(w >= 0, 1.0, -1.0).detach()
    return w, s, g, sign


@pytest.mark.parametrize("form", ["repo", "forward", "identity"])
def test_biconv_weight_gradient_forms(form):
    c, mu = 0.02, 1e-4
    w, s, g, sign = _biconv_case([40.0, -25.0])
    biconv_weight(w, s, c, mu, weight_grad=form).backward(g)
    magnitude = torch.tensor([40.0, 25.0], dtype=torch.float64).view(-1, 1, 1, 1)
    task = {"repo": magnitude * g, "forward": c * magnitude * g, "identity": g}[form]
    assert torch.allclose(w.grad, task + mu * (w.detach() - c * magnitude * sign))
    # the forward value and the scale gradient do not depend on the weight-gradient form
    expected_s = (g * w.detach()).sum(dim=(1, 2, 3)) - mu * ((w.detach() - c * magnitude * sign) * c * sign).sum(
        dim=(1, 2, 3))
    assert torch.allclose(s.grad, expected_s)


def test_biconv_exact_scale_gradient_is_the_chain_rule():
    c, mu = 0.02, 1e-4
    w, s, g, sign = _biconv_case([40.0, -25.0])  # a negative scale: the chain rule's sign(s) matters
    biconv_weight(w, s, c, mu, scale_grad="exact").backward(g)
    # independent reference: autograd of <G, W_hat> + (mu/2)||W - W_hat||^2 in s, sign(W) and W constants
    s_ref = s.detach().clone().requires_grad_(True)
    w_hat = c * s_ref.abs().view(-1, 1, 1, 1) * sign
    ((g * w_hat).sum() + mu / 2 * (w.detach() - w_hat).pow(2).sum()).backward()
    assert torch.allclose(s.grad, s_ref.grad)
    # by hand for channel 1 (s = -25): c * (-1) * sum(G sign(W) - mu (W - W_hat) sign(W))
    residual = w.detach()[1] - c * 25.0 * sign[1]
    assert torch.isclose(s.grad[1], -c * ((g[1] - mu * residual) * sign[1]).sum())


def test_biconv_frozen_scale_gets_no_gradient_and_mean_abs_tracks_the_weights():
    weight = torch.randn(4, 2, 3, 3)
    frozen = BiConvWeight(4, scale="frozen")
    frozen.init_from(weight)
    assert not frozen.scale.requires_grad
    w = weight.clone().requires_grad_(True)
    frozen(w).sum().backward()
    assert frozen.scale.grad is None and w.grad is not None
    tracked = BiConvWeight(4, scale="mean_abs", mu=0.0)
    w = (weight * 3).requires_grad_(True)  # not the weight it was initialised from: the scale follows W
    out = tracked(w)
    alpha = w.detach().abs().mean(dim=(1, 2, 3), keepdim=True)
    assert torch.allclose(out, alpha * torch.where(w >= 0, 1.0, -1.0), atol=1e-6)
    out.backward(torch.ones_like(out))
    assert torch.allclose(w.grad, alpha / 0.02)  # repo form |s| G with s = mean|W| / c, mu = 0
    signs, scale = tracked.deploy(w)  # the deployed scale is the same mean|W_o|, not the unused parameter
    assert torch.equal(signs, torch.where(w >= 0, 1.0, -1.0)) and torch.allclose(scale, alpha)


def test_biconv_randn_init_is_the_released_layers():
    quantizer = BiConvWeight(64, init="randn")
    torch.manual_seed(11)
    quantizer.init_from(torch.randn(64, 2, 3, 3))
    torch.manual_seed(11)
    torch.randn(64, 2, 3, 3)  # the weight drawn above
    assert torch.equal(quantizer.scale.detach(), torch.randn(64))
    assert 0 < int((quantizer.scale < 0).sum()) < 64


def test_biconv_options_are_checked():
    with pytest.raises(ConfigError, match="weight_grad must be one of repo, forward, identity"):
        BiConvWeight(4, weight_grad="ste")


def test_biconv_reconstruction_pull_acts_without_task_gradient():
    w = torch.randn(4, 2, 3, 3, requires_grad=True)
    s = torch.full((4,), 10.0, requires_grad=True)
    w_hat = biconv_weight(w, s)
    w_hat.backward(torch.zeros_like(w_hat))
    assert torch.allclose(w.grad, 1e-4 * (w.detach() - w_hat.detach()))
    assert w.grad.abs().sum() > 0


def test_biconv_init_reproduces_the_xnor_weight():
    weight = torch.randn(8, 4, 3, 3)
    quantizer = BiConvWeight(8)
    quantizer.init_from(weight)
    alpha = weight.abs().mean(dim=(1, 2, 3), keepdim=True)
    assert torch.allclose(quantizer(weight), alpha * torch.where(weight >= 0, 1.0, -1.0), atol=1e-6)


def ida_student(**params):
    cls = plugins.load("ida-det")
    recipe = cls(cls.Params(**params))
    teacher = build_detector(toy_config(num_classes=6))
    student, swapped = make_student(teacher, recipe, layout_spec(recipe, validate({"recipe": "ida-det"}, "t")))
    return recipe, student, swapped, teacher


def test_student_architecture_of_section_2_1():
    recipe, student, swapped, _ = ida_student()
    model = student.model
    assert len(swapped) == 16 + 4 + 4 + 1
    convs = {n: m for n, m in model.named_modules() if isinstance(m, BinaryConv2d)}
    assert all(isinstance(m.weight_quantizer, BiConvWeight) and m.bias is not None for m in convs.values())
    assert isinstance(convs["backbone.body.layer1.0.conv1"].input_quantizer, RSign)
    assert isinstance(convs["backbone.fpn.inner_blocks.0.0"].input_quantizer, ApproxSign)
    assert convs["backbone.fpn.inner_blocks.0.0"].kernel_size == (3, 3)  # 3x3 binary laterals
    assert isinstance(model.backbone.fpn.inner_blocks[0][1], nn.PReLU)
    assert isinstance(model.backbone.fpn.layer_blocks[0][1], nn.PReLU)
    assert isinstance(model.rpn.head.conv[0][1], nn.PReLU)
    assert model.rpn.box_beta == model.roi_heads.box_beta == 0.0  # L1 regression
    assert type(model.roi_heads.box_head.fc6) is nn.Linear  # the 2-FC RoI head stays real
    assert recipe.task_weight() == 5.0


def test_frozen_stages_as_the_repository():
    _, student, _, _ = ida_student(frozen_stages=1)
    body = student.model.backbone.body
    assert not any(p.requires_grad for p in [*body.conv1.parameters(), *body.layer1.parameters()])
    assert all(p.requires_grad for p in body.layer2.parameters())


def test_ablation_knobs_weight_quantizer_and_prelu_slope():
    from detbin.binary.quantizers import ScaledSign

    cls = plugins.load("ida-det")
    recipe = cls(cls.Params(prelu_init=1.0))
    spec = layout_spec(recipe, validate({"recipe": "ida-det", "binarize": {"weight": "scaled_sign"}}, "t"))
    student, _ = make_student(build_detector(toy_config(num_classes=6)), recipe, spec)
    conv = student.model.backbone.body.layer1[0].conv1
    assert isinstance(conv.weight_quantizer, ScaledSign)
    assert torch.all(student.model.backbone.fpn.inner_blocks[0][1].weight == 1.0)


def test_biconv_options_reach_every_binary_conv():
    _, student, _, _ = ida_student(scale_init="randn", weight_grad="forward", scale_grad="exact",
                                   scale_mode="frozen", mu=0.0)
    quantizers_ = [m.weight_quantizer for m in student.model.modules() if isinstance(m, BinaryConv2d)]
    assert len(quantizers_) == 25
    assert all((q.init, q.weight_grad, q.scale_grad, q.scale_mode, q.mu) == ("randn", "forward", "exact", "frozen", 0.0)
               for q in quantizers_)


@pytest.mark.parametrize("optimizer, mu, warns", [("Adam", 1e-4, True), ("AdamW", 1e-4, True), ("SGD", 1e-4, False),
                                                   ("Adam", 0.0, False)])
def test_warns_when_the_mu_pull_meets_an_adaptive_optimizer(optimizer, mu, warns, caplog):
    import types

    recipe, student, _, _ = ida_student(mu=mu)
    trainer = types.SimpleNamespace(optimizer=getattr(torch.optim, optimizer)(student.model.parameters(), lr=1e-3))
    with caplog.at_level("WARNING", logger="detbin_idadet"):
        recipe.on_phase("train", trainer)
    assert any("params.mu" in r.getMessage() and optimizer in r.getMessage() for r in caplog.records) == warns


def test_layout_overrides_that_contradict_the_paper_fail():
    cls = plugins.load("ida-det")
    teacher = build_detector(toy_config(num_classes=6))
    spec = layout_spec(cls(), validate({"recipe": "ida-det", "binarize": {"form": "bireal"}}, "t"))
    with pytest.raises(ConfigError, match="keep binarize.form reactnet"):
        make_student(teacher, cls(), spec)
