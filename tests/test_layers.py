"""BinaryConv2d and RPReLU against nn.Conv2d and hand-written formulas."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from detbin.binary.layers import BinaryConv2d, RPReLU, is_binary
from detbin.binary.quantizers import ApproxSign, Identity, ScaledSign, sign


@pytest.mark.parametrize("geometry", [dict(kernel_size=3, padding=1), dict(kernel_size=1, stride=2),
                                      dict(kernel_size=3, padding=2, dilation=2, groups=2)])
def test_identity_quantizers_equal_conv2d(geometry):
    conv = nn.Conv2d(4, 6, **geometry)
    binary = BinaryConv2d.from_conv(conv, Identity(), Identity())
    x1 = torch.randn(2, 4, 9, 11, requires_grad=True)
    x2 = x1.detach().clone().requires_grad_(True)
    y1, y2 = conv(x1), binary(x2)
    assert torch.equal(y1, y2)
    y1.square().sum().backward()
    y2.square().sum().backward()
    assert torch.equal(x1.grad, x2.grad)
    assert torch.equal(conv.weight.grad, binary.weight.grad)
    assert binary.bits == (32, 32) and not is_binary(binary)


def test_from_conv_copies_weights_and_bias_without_sharing():
    conv = nn.Conv2d(3, 5, 3, padding=1)
    binary = BinaryConv2d.from_conv(conv, "approx_sign", "scaled_sign")
    assert torch.equal(binary.weight, conv.weight) and torch.equal(binary.bias, conv.bias)
    assert binary.weight.data_ptr() != conv.weight.data_ptr()
    assert binary.bits == (1, 1) and is_binary(binary)


def test_binary_forward_is_conv_of_signs():
    torch.manual_seed(1)
    conv = BinaryConv2d(3, 4, 3, padding=1, bias=True, input_quantizer=ApproxSign(), weight_quantizer=ScaledSign())
    x = torch.randn(1, 3, 6, 6)
    alpha = conv.weight.abs().mean(dim=(1, 2, 3), keepdim=True)
    expected = F.conv2d(sign(x), alpha * sign(conv.weight), conv.bias, padding=1)
    assert torch.allclose(conv(x), expected, atol=1e-6)


def test_minus_one_padding_as_bidet():
    conv = BinaryConv2d(2, 3, 3, padding=1, input_quantizer="sign", weight_quantizer="sign", pad_value=-1.0)
    x = torch.randn(1, 2, 5, 5)
    expected = F.conv2d(F.pad(sign(x), (1, 1, 1, 1), value=-1.0), sign(conv.weight), conv.bias)
    assert torch.allclose(conv(x), expected, atol=1e-6)
    # the border differs from zero padding
    zero = BinaryConv2d(2, 3, 3, padding=1, input_quantizer="sign", weight_quantizer="sign")
    zero.load_state_dict(conv.state_dict())
    assert not torch.allclose(conv(x), zero(x))


def test_rprelu_formula():
    act = RPReLU(2)
    with torch.no_grad():
        act.shift_in[0, :, 0, 0] = torch.tensor([0.5, -1.0])
        act.prelu.weight[:] = torch.tensor([0.25, 0.1])
        act.shift_out[0, :, 0, 0] = torch.tensor([1.0, 2.0])
    x = torch.tensor([-1.0, 3.0]).view(1, 2, 1, 1)
    # channel 0: x + 0.5 = -0.5 -> 0.25 * -0.5 = -0.125 -> +1 = 0.875
    # channel 1: x - 1.0 = 2.0 -> 2.0 -> +2 = 4.0
    assert act(x).flatten().tolist() == pytest.approx([0.875, 4.0])
