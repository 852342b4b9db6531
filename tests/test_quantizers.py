"""Binarizers and their backward estimators, against hand-computed values and the formulas."""

from __future__ import annotations

import pytest
import torch

from detbin.binary import quantizers as q
from detbin.core.errors import ConfigError

X = torch.tensor([-2.0, -1.0, -0.5, -0.0, 0.0, 0.25, 0.5, 1.0, 1.2])


def grad_of(quantizer: q.Quantizer, x: torch.Tensor) -> torch.Tensor:
    x = x.clone().requires_grad_(True)
    quantizer(x).sum().backward()
    return x.grad


@pytest.mark.parametrize("name", ["sign", "approx_sign"])
def test_activation_binarizers_output_exactly_plus_minus_one(name):
    x = torch.cat([X, torch.randn(1000), torch.zeros(5)])
    y = q.get(name)(x)
    assert set(y.unique().tolist()) <= {-1.0, 1.0}
    assert torch.equal(y, torch.where(x >= 0, 1.0, -1.0))  # sign(0) = +1 (larq convention)


def test_rsign_outputs_and_shift():
    rsign = q.get("rsign", channels=2)
    with torch.no_grad():
        rsign.shift[0, :, 0, 0] = torch.tensor([0.3, -0.3])
    x = torch.full((1, 2, 1, 1), -0.2)
    # sign(-0.2 + 0.3) = +1, sign(-0.2 - 0.3) = -1
    assert rsign(x).flatten().tolist() == [1.0, -1.0]


def test_clip_ste_gradient_is_indicator_of_abs_le_one():
    # dL/dx = 1[|x| <= 1]: 0 at -2 and 1.2, 1 inside (both ends included, as clamp's gradient)
    assert grad_of(q.SignSTE(), X).tolist() == [0, 1, 1, 1, 1, 1, 1, 1, 0]


def test_approx_sign_gradient_matches_bireal_formula():
    # 2 + 2x on [-1, 0), 2 - 2x on [0, 1), 0 outside: methods.md §6 item 1
    expected = [0.0, 2 + 2 * -1.0, 2 + 2 * -0.5, 2 - 0.0, 2 - 0.0, 2 - 2 * 0.25, 2 - 2 * 0.5, 0.0, 0.0]
    assert torch.allclose(grad_of(q.ApproxSign(), X), torch.tensor(expected))
    assert grad_of(q.ApproxSign(), torch.tensor([-0.5, 0.25, 1.2])).tolist() == [1.0, 1.5, 0.0]


def test_approx_sign_gradient_on_random_points():
    x = torch.empty(10_000).uniform_(-1.5, 1.5)
    formula = torch.where(x.abs() < 1, 2 - 2 * x.abs(), torch.zeros_like(x))
    assert torch.allclose(grad_of(q.ApproxSign(), x), formula, atol=1e-6)


def test_rsign_gradient_reaches_the_shift():
    rsign = q.RSign(channels=1)
    x = torch.tensor([-0.5, 0.25, 1.2]).view(1, 1, 3, 1).requires_grad_(True)
    rsign(x).sum().backward()
    # shift = 0: gradient w.r.t. the shift is the sum of ApproxSign's: 1.0 + 1.5 + 0
    assert rsign.shift.grad.item() == pytest.approx(2.5)
    assert x.grad.flatten().tolist() == [1.0, 1.5, 0.0]


W = torch.tensor([[0.5, 1.5], [2.0, -0.25]])  # two output channels, n = 2 weights each


def test_scaled_sign_forward_is_mean_abs_times_sign():
    alpha = [(0.5 + 1.5) / 2, (2.0 + 0.25) / 2]  # 1.0, 1.125
    expected = torch.tensor([[alpha[0], alpha[0]], [alpha[1], -alpha[1]]])
    for detach in (True, False):
        assert torch.allclose(q.ScaledSign(detach_scale=detach)(W), expected)


def test_scaled_sign_detached_gradient_is_clip_indicator_unscaled():
    # Bi-Real HardBinaryConv: dL/dW = 1[|W| <= 1], alpha is a constant
    assert grad_of(q.ScaledSign(detach_scale=True), W).tolist() == [[1.0, 0.0], [0.0, 1.0]]


def test_scaled_sign_gradient_through_alpha():
    # L = sum_o alpha_o sum_j s(W_oj); dL/dW_oj = alpha_o s'(W_oj) + (sum_k sign W_ok) sign(W_oj) / n
    # row 0: alpha 1.0, sum sign 2 -> [1*1 + 2*1/2, 1*0 + 2*1/2] = [2, 1]
    # row 1: alpha 1.125, sum sign 0 -> [1.125*0, 1.125*1] = [0, 1.125]
    assert torch.allclose(grad_of(q.ScaledSign(detach_scale=False, ste="clip"), W),
                          torch.tensor([[2.0, 1.0], [0.0, 1.125]]))
    # identity STE (BiDet): s'(W) = 1 everywhere -> row 0 [2, 2], row 1 [1.125, 1.125]
    assert torch.allclose(grad_of(q.ScaledSign(detach_scale=False, ste="identity"), W),
                          torch.tensor([[2.0, 2.0], [1.125, 1.125]]))


def test_learned_scale_sign_init_forward_and_gradients():
    quant = q.LearnedScaleSign(channels=2)
    quant.init_from(W)
    assert quant.scale.tolist() == [1.0, 1.125]
    w = W.clone().requires_grad_(True)
    y = quant(w)
    assert torch.allclose(y, torch.tensor([[1.0, 1.0], [1.125, -1.125]]))
    y.sum().backward()
    assert quant.scale.grad.tolist() == [2.0, 0.0]  # sum_j sign(W_oj)
    assert torch.allclose(w.grad, torch.tensor([[1.0, 0.0], [0.0, 1.125]]))  # |alpha| 1[|W| <= 1]


def test_bits_metadata():
    assert q.Identity().bits == 32
    assert {q.get(n, channels=4).bits for n in ("sign", "approx_sign", "rsign", "scaled_sign", "learned_scale_sign")} == {1}


def test_get_accepts_mapping_and_instance():
    quant = q.get({"name": "scaled_sign", "detach_scale": True})
    assert isinstance(quant, q.ScaledSign) and quant.detach_scale
    assert q.get(quant) is quant
    assert isinstance(q.get(None), q.Identity)


def test_get_unknown_name_lists_choices():
    with pytest.raises(ConfigError, match=r"unknown quantizer 'approx_sgn' \(did you mean: approx_sign.*valid: "):
        q.get("approx_sgn")


def test_get_channel_quantizer_without_channels_fails():
    with pytest.raises(ConfigError, match="needs a channel count"):
        q.get("rsign")


def test_derived_scales_counts_xnor_alpha():
    assert q.ScaledSign().derived_scales(torch.Size([64, 32, 3, 3])) == 64
    assert q.LearnedScaleSign(64).derived_scales(torch.Size([64, 32, 3, 3])) == 0  # already a parameter


@pytest.mark.parametrize("spec", [
    "sign", "scaled_sign", {"name": "scaled_sign", "detach_scale": True}, {"name": "scaled_sign", "ste": "identity"},
    "learned_scale_sign", "deployed_sign",
])
def test_every_weight_quantizer_deploys_to_signs_and_a_scale_equal_to_its_forward(spec):
    weight = torch.randn(6, 4, 3, 3)
    weight[0, 0, 0, 0] = 0.0  # sign(0) = +1 in both forms
    quantizer = q.get(spec, channels=6)
    quantizer.init_from(weight)
    if isinstance(quantizer, q.LearnedScaleSign):
        with torch.no_grad():
            quantizer.scale.mul_(torch.linspace(-2, 2, 6))  # a learned scale may turn negative; |s| counts
    signs, scale = quantizer.deploy(weight)
    assert set(signs.unique().tolist()) <= {-1.0, 1.0} and signs[0, 0, 0, 0] == 1.0
    assert torch.equal(signs if scale is None else scale * signs, quantizer(weight))
    deployed = q.DeployedSign(6, scaled=scale is not None)
    if scale is not None:
        deployed.scale.copy_(scale)
    assert torch.equal(deployed(signs), quantizer(weight))  # the deployed layer runs on the signs alone


def test_activation_quantizers_have_no_deploy_form():
    with pytest.raises(TypeError, match="not a 1-bit weight quantizer"):
        q.ApproxSign().deploy(torch.randn(2, 2))


def test_register_quantizer_opens_the_table():
    class Halved(q.Quantizer):
        bits = 1

        def __init__(self, channels: int, factor: float = 0.5) -> None:
            super().__init__()
            self.factor = factor

        def forward(self, w):
            return self.factor * q.sign(w)

    q.register_quantizer("test-halved", Halved, needs_channels=True)
    made = q.get({"name": "test-halved", "factor": 0.25}, channels=3)
    assert isinstance(made, Halved) and made.factor == 0.25 and "test-halved" in q.names()
    with pytest.raises(ConfigError, match="already registered"):
        q.register_quantizer("sign", Halved)
