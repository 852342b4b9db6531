"""BiDet's binary conv (methods.md §4.3) against the released BinarizeConv2d's formula; ZeroSignApprox."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd import Function

from detbin.binary import quantizers
from detbin.binary.layers import is_binary
from detbin.binary.quantizers import ApproxSign, ScaledSign, ZeroSignApprox
from detbin.models.bidet_ssd import bidet_conv


class _SignTwoOrders(Function):
    """The release's activation binarizer, written out as there (``binary_utils.py``)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.sign()

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        grad = torch.zeros_like(g)
        grad = torch.where((x >= 0) & (x < 1), 2 - 2 * x, grad)
        grad = torch.where((x >= -1) & (x < 0), 2 + 2 * x, grad)
        return grad * g


class _SignSTEWeight(Function):
    @staticmethod
    def forward(ctx, w):
        return w.sign()

    @staticmethod
    def backward(ctx, g):
        return g


def _release_conv(x, w, padding, dilation=1):
    """``BinarizeConv2d.forward`` of the release (bias None)."""
    xb = _SignTwoOrders.apply(x)
    wb = w.abs().mean(dim=(1, 2, 3), keepdim=True) * _SignSTEWeight.apply(w)
    return F.conv2d(F.pad(xb, (padding,) * 4, value=-1), wb, None, 1, 0, dilation)


def test_border_is_padded_with_minus_one():
    conv = bidet_conv(1, 1, 3, padding=1)
    with torch.no_grad():
        conv.weight.fill_(0.5)  # alpha = 0.5, sign +1
    x = torch.full((1, 1, 2, 2), 3.0)  # sign +1 everywhere
    # each 3x3 window of the 2x2 map padded to 4x4 holds 4 ones and 5 minus ones: 0.5 * (4 - 5)
    assert torch.equal(conv(x), torch.full((1, 1, 2, 2), 0.5 * (4 - 5)))
    assert is_binary(conv) and conv.bias is None


def test_weight_scale_is_not_detached_and_ste_is_identity():
    q = ScaledSign(detach_scale=False, ste="identity")
    w = torch.tensor([[0.5, -1.5], [2.0, 1.0]]).view(2, 1, 1, 2).requires_grad_(True)
    w_hat = q(w)
    assert torch.equal(w_hat.flatten(), torch.tensor([1.0, -1.0, 1.5, 1.5]))  # alpha = mean |W_o| = (1.0, 1.5)
    g = torch.tensor([[1.0, 2.0], [3.0, -1.0]]).view(2, 1, 1, 2)
    (w_hat * g).sum().backward()
    # dL/dW = alpha_o g + sign(W) <g, sign(W_o)> / n, n = 2:
    # o=0: <g, s> = 1 - 2 = -1 -> (1 - 1/2, 2 + 1/2); o=1: <g, s> = 3 - 1 = 2 -> (4.5 + 1, -1.5 + 1)
    expected = torch.tensor([1 - 0.5, 2 + 0.5, 4.5 + 1.0, -1.5 + 1.0]).view(2, 1, 1, 2)
    assert torch.allclose(w.grad, expected)


def test_forward_and_gradients_equal_the_release():
    torch.manual_seed(3)
    conv = bidet_conv(3, 4, 3, padding=1)
    x1 = (torch.randn(2, 3, 5, 6) * 0.7).requires_grad_(True)
    x2 = x1.detach().clone().requires_grad_(True)
    w2 = conv.weight.detach().clone().requires_grad_(True)
    y1, y2 = conv(x1), _release_conv(x2, w2, 1)
    assert torch.allclose(y1, y2, atol=1e-6)
    g = torch.randn_like(y1)
    (y1 * g).sum().backward()
    (y2 * g).sum().backward()
    assert torch.allclose(x1.grad, x2.grad, atol=1e-6)
    assert torch.allclose(conv.weight.grad, w2.grad, atol=1e-6)


def test_dilated_conv6_geometry_keeps_the_map_size():
    conv = bidet_conv(2, 3, 3, padding=6, dilation=6)
    x = torch.randn(1, 2, 19, 19)
    assert conv(x).shape == (1, 3, 19, 19)
    assert torch.allclose(conv(x), _release_conv(x, conv.weight, 6, dilation=6), atol=1e-6)


def test_zero_sign_keeps_relu_zeros_and_has_the_approx_sign_gradient():
    x = torch.tensor([-1.0, 0.0, 0.5, 1.5], requires_grad=True)
    y = quantizers.get("zero_sign_approx")(x)
    assert isinstance(quantizers.get("zero_sign_approx"), ZeroSignApprox) and y.requires_grad
    assert torch.equal(y, torch.tensor([-1.0, 0.0, 1.0, 1.0]))  # torch.sign, as the release
    y.sum().backward()
    # ApproxSign: 2 + 2x on [-1, 0), 2 - 2x on [0, 1), 0 elsewhere
    assert torch.allclose(x.grad, torch.tensor([2 + 2 * -1.0, 2.0, 2 - 2 * 0.5, 0.0]))
    assert torch.equal(ApproxSign()(torch.tensor([0.0])), torch.tensor([1.0]))  # detbin's sign(0) = +1 instead
