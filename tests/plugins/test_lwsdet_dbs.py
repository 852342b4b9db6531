"""lws-det's DBS weight quantizer (methods.md §3.3, §3.4): hard forward, relaxed backward, teacher init, deploy."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from detbin import BinaryConv2d, DetbinError, quantizer
from detbin.binary.quantizers import DeployedSign
from detbin.cost.profile import profile_module
from detbin_lwsdet.dbs import DBSWeight, dbs_convs


def dbs_from(weight: torch.Tensor) -> DBSWeight:
    q = DBSWeight(weight.shape[0])
    q.init_from(weight)
    return q


def test_registered_in_the_quantizer_table_as_a_1_bit_weight_quantizer():
    q = quantizer("dbs", channels=5)
    assert isinstance(q, DBSWeight) and q.bits == 1 and q.alpha.shape == (5,)


def test_init_from_teacher_signs_relaxed_value_and_alpha_by_hand():
    # row 0: +-1 -> mean 0, population std 1 -> w/(3 sigma) = +-1/3 -> beta+ - beta- = 2 atanh(1/3) = ln 2
    # row 1: +-3 -> 3/(3*sigma) with sigma = std of all 8 values = sqrt((4*1 + 4*9)/8) = sqrt(5)
    w = torch.tensor([[1.0, -1.0, 1.0, -1.0], [3.0, -3.0, -3.0, 3.0]]).view(2, 1, 2, 2)
    q = dbs_from(w)
    d = (q.beta_plus - q.beta_minus).detach()
    sigma = math.sqrt((4 * 1 + 4 * 9) / 8)
    expect_relaxed = torch.tensor([[1, -1, 1, -1], [3, -3, -3, 3]], dtype=torch.float32).view(2, 1, 2, 2) / (3 * sigma)
    torch.testing.assert_close(q.relaxed().detach(), expect_relaxed)
    assert torch.equal(torch.sign(d), torch.sign(w))
    torch.testing.assert_close(q.beta_plus.detach(), -q.beta_minus.detach())  # split symmetrically
    torch.testing.assert_close(q.alpha.detach(), torch.tensor([(1 + 1 + 1 + 1) / 4, (3 + 3 + 3 + 3) / 4]))


def test_init_with_a_unit_std_layer_gives_logit_difference_ln2():
    w = torch.tensor([1.0, -1.0, -1.0, 1.0]).view(1, 1, 2, 2)  # mean 0, population std 1
    q = dbs_from(w)
    d = (q.beta_plus - q.beta_minus).detach()
    torch.testing.assert_close(d.abs(), torch.full_like(d, math.log(2)))  # 2 atanh(1/3) = ln((1+1/3)/(1-1/3))


def test_init_clips_the_relaxed_weight_at_0_9():
    w = torch.tensor([100.0, -100.0] + [0.01, -0.01] * 49).view(2, 1, 5, 10)
    q = dbs_from(w)
    relaxed = q.relaxed().detach().flatten()
    torch.testing.assert_close(relaxed[:2], torch.tensor([0.9, -0.9]))
    assert relaxed.abs().max() <= 0.9 + 1e-6


def test_init_gives_sign_of_a_random_teacher_and_mean_abs_alpha():
    w = torch.randn(8, 4, 3, 3)
    q = dbs_from(w)
    signs = q.signs().detach()
    assert torch.equal(signs, torch.where(w >= 0, 1.0, -1.0))
    torch.testing.assert_close(q.alpha.detach(), w.abs().mean(dim=(1, 2, 3)))


def test_zero_teacher_weights_get_random_signs_with_a_small_relaxed_value():
    w = torch.zeros(16, 8, 3, 3)
    w[:, :, 1, 1] = torch.randn(16, 8)  # a widened 1x1 lateral
    q = dbs_from(w)
    relaxed = q.relaxed().detach()
    border = relaxed.clone()
    border[:, :, 1, 1] = float("nan")
    border = border[~border.isnan()]
    torch.testing.assert_close(border.abs(), torch.full_like(border, 0.01))
    share_positive = float((border > 0).float().mean())
    assert 0.4 < share_positive < 0.6  # 1024 coin flips
    assert torch.equal(q.signs().detach()[:, :, 1, 1], torch.where(w[:, :, 1, 1] >= 0, 1.0, -1.0))
    # alpha: mean |w| over the non-zero (centre) elements only
    torch.testing.assert_close(q.alpha.detach(), w[:, :, 1, 1].abs().mean(dim=1))


def test_forward_is_exactly_plus_minus_alpha():
    w = torch.randn(6, 3, 3, 3)
    q = dbs_from(w)
    with torch.no_grad():
        q.alpha.copy_(torch.tensor([0.3, -0.7, 1.1, 0.05, 2.0, -0.01]))  # |alpha| is the scale
        q.beta_plus.add_(torch.randn_like(q.beta_plus))  # searched away from the teacher's signs
    out = q(w)
    scale = torch.tensor([0.3, 0.7, 1.1, 0.05, 2.0, 0.01]).view(6, 1, 1, 1)
    d = (q.beta_plus - q.beta_minus).detach()
    assert torch.equal(out, scale * torch.where(d >= 0, 1.0, -1.0))
    assert torch.equal((out / scale).abs(), torch.ones_like(out))


def test_backward_to_the_logits_is_the_relaxed_one():
    w = torch.randn(4, 2, 3, 3)
    q = dbs_from(w)
    g = torch.randn(4, 2, 3, 3)
    (q(w) * g).sum().backward()
    hard = (q.beta_plus.grad.clone(), q.beta_minus.grad.clone())
    bp = q.beta_plus.detach().clone().requires_grad_(True)
    bm = q.beta_minus.detach().clone().requires_grad_(True)
    relaxed = q.alpha.detach().abs().view(-1, 1, 1, 1) * torch.tanh((bp - bm) / 2)
    (relaxed * g).sum().backward()
    torch.testing.assert_close(hard[0], bp.grad)
    torch.testing.assert_close(hard[1], bm.grad)
    torch.testing.assert_close(hard[1], -hard[0])


def test_backward_of_one_element_by_hand():
    q = DBSWeight(1)
    q.init_from(torch.tensor([1.0]).view(1, 1, 1, 1))
    with torch.no_grad():
        q.beta_plus.fill_(0.5)
        q.beta_minus.fill_(-0.1)  # d = 0.6
        q.alpha.fill_(2.0)
    q(torch.zeros(1, 1, 1, 1)).sum().backward()
    # d/d beta+ [alpha tanh(d/2)] = alpha (1 - tanh^2(0.3)) / 2 ; alpha's grad is the forward sign, +1
    torch.testing.assert_close(q.beta_plus.grad.flatten(), torch.tensor([2.0 * (1 - math.tanh(0.3) ** 2) / 2]))
    torch.testing.assert_close(q.beta_minus.grad.flatten(), torch.tensor([-2.0 * (1 - math.tanh(0.3) ** 2) / 2]))
    torch.testing.assert_close(q.alpha.grad, torch.tensor([1.0]))


def test_forward_before_init_and_foreign_shapes_fail_with_a_message():
    with pytest.raises(DetbinError, match="init_from"):
        DBSWeight(3)(torch.zeros(3, 1, 1, 1))
    q = dbs_from(torch.randn(3, 2, 1, 1))
    with pytest.raises(DetbinError, match="another conv"):
        q(torch.zeros(3, 2, 3, 3))


def test_deploy_returns_signs_and_scale_whose_product_is_the_forward_bit_for_bit():
    w = torch.randn(5, 3, 3, 3)
    q = dbs_from(w)
    with torch.no_grad():
        q.beta_minus.add_(torch.randn_like(q.beta_minus))
        q.alpha.mul_(-1.5)
    signs, scale = q.deploy(w)
    assert signs.shape == w.shape and scale.shape == (5, 1, 1, 1)
    assert set(signs.unique().tolist()) == {-1.0, 1.0}
    assert torch.equal(scale * signs, q(w).detach())


def deployed(conv: BinaryConv2d) -> BinaryConv2d:
    """What an export does with any 1-bit conv: ``weight = signs``, core ``deployed_sign(scale)``."""
    signs, scale = conv.weight_quantizer.deploy(conv.weight)
    out = BinaryConv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                       bias=conv.bias is not None, input_quantizer=conv.input_quantizer,
                       weight_quantizer=quantizer("deployed_sign", channels=conv.out_channels))
    with torch.no_grad():
        out.weight.copy_(signs)
        out.weight_quantizer.scale.copy_(scale)
        if conv.bias is not None:
            out.bias.copy_(conv.bias)
    return out


def test_deployed_conv_is_a_core_binary_conv_with_identical_outputs():
    conv = nn.Conv2d(4, 6, 3, padding=1, bias=True)
    binary = BinaryConv2d.from_conv(conv, "approx_sign", "dbs")
    with torch.no_grad():
        binary.weight_quantizer.beta_plus.add_(torch.randn_like(binary.weight_quantizer.beta_plus))
    x = torch.randn(2, 4, 7, 7)
    core = deployed(binary)
    assert isinstance(core.weight_quantizer, DeployedSign) and core.bits == (1, 1)
    assert torch.equal(core(x), binary(x).detach())
    assert set(core.weight.detach().unique().tolist()) == {-1.0, 1.0}


def test_state_dict_round_trip_into_a_quantizer_without_logits():
    conv = nn.Conv2d(3, 4, 3, padding=1, bias=False)
    trained = BinaryConv2d.from_conv(conv, "approx_sign", "dbs")
    fresh = BinaryConv2d(3, 4, 3, padding=1, bias=False, input_quantizer="approx_sign", weight_quantizer="dbs")
    fresh.load_state_dict(trained.state_dict())
    x = torch.randn(1, 3, 5, 5)
    assert torch.equal(fresh(x), trained(x))
    assert [n for n, _ in dbs_convs(nn.Sequential(fresh, nn.ReLU()))] == ["0"]


def test_profile_counts_a_dbs_conv_as_its_deployed_form():
    conv = BinaryConv2d.from_conv(nn.Conv2d(4, 6, 3, bias=False), "approx_sign", "dbs")
    cost = profile_module(nn.Sequential(conv), [torch.zeros(1, 4, 8, 8)])
    # deployed: 6*4*3*3 = 216 signs of 1 bit + 6 real scales |alpha|; the 2 * 216 logits are training state
    assert (cost.params_binary, cost.params_real) == (6 * 4 * 3 * 3, 6)
    assert cost.memory_bits == 216 + 32 * 6
    assert (cost.bops, cost.flops) == (6 * 6 * 6 * 4 * 3 * 3, 0)  # 6x6 outputs x 6 channels x 36 MACs, binary


def test_a_quantizer_without_logits_deploys_to_the_signs_it_would_start_from():
    w = torch.randn(3, 2, 3, 3)  # an export probes the spec's deploy form on a fresh quantizer
    signs, scale = DBSWeight(3).deploy(w)
    assert torch.equal(signs, torch.where(w >= 0, 1.0, -1.0)) and torch.equal(scale, torch.ones(3, 1, 1, 1))
    assert torch.equal(dbs_from(w).deploy(w)[0], signs)
