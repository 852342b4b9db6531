"""lws-det's layer losses of §3.3, with the checks methods.md §6.6 item 6 asks for."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

from detbin import BinaryConv2d, DetbinError
from detbin_lwsdet.losses import (ConvGeometry, amplitude_loss, angular_loss, layer_losses, patch_norm, row_norm,
                              weight_reconstruction, widen_kernel)

G3 = ConvGeometry(padding=(1, 1))  # a 3x3, stride 1, padding 1 conv
G1 = ConvGeometry()


def pm1(*shape: int) -> torch.Tensor:
    return torch.where(torch.rand(*shape) < 0.5, -1.0, 1.0)


def flip_first(signs: torch.Tensor, m: int) -> torch.Tensor:
    """``signs`` with the first ``m`` elements of every output channel negated."""
    flat = signs.flatten(1).clone()
    flat[:, :m] *= -1
    return flat.view_as(signs)


def test_patch_norm_by_hand_counts_the_zero_padding():
    x = torch.ones(1, 2, 3, 3)  # all ones, 2 channels
    norm = patch_norm(x, (3, 3), G3)
    # interior: 2*9 ones -> sqrt(18); edge: 2*6 -> sqrt(12); corner: 2*4 -> sqrt(8)
    expect = torch.tensor([[8, 12, 8], [12, 18, 12], [8, 12, 8]], dtype=torch.float32).sqrt()
    torch.testing.assert_close(norm[0, 0], expect)
    torch.testing.assert_close(row_norm(pm1(3, 4, 3, 3)), torch.full((3,), math.sqrt(4 * 9)))


def test_angular_loss_of_one_position_by_hand():
    # 1x1 conv, I = 2, O = 1, one pixel: a = (3, 4), w = (1, 0); student input (-1, 2) -> a^ = (-1, 1), *w = (1, 1)
    a = torch.tensor([3.0, 4.0]).view(1, 2, 1, 1)
    w = torch.tensor([1.0, 0.0]).view(1, 2, 1, 1)
    x = torch.tensor([-1.0, 2.0]).view(1, 2, 1, 1)
    signs = torch.tensor([1.0, 1.0]).view(1, 2, 1, 1)
    teacher_cos = 3 / (1 * 5)  # (3*1 + 4*0) / (||w|| = 1 * ||a|| = 5)
    student_cos = 0 / (math.sqrt(2) * math.sqrt(2))  # (-1 + 1) / (sqrt(I k^2) * ||a^||)
    loss = angular_loss(a, w, x, signs, G1)
    torch.testing.assert_close(loss, torch.tensor((teacher_cos - student_cos) ** 2))


def test_angular_loss_is_non_negative():
    for _ in range(5):
        a, w, x = torch.randn(2, 4, 6, 6), torch.randn(5, 4, 3, 3), torch.randn(2, 4, 6, 6)
        assert angular_loss(a, w, x, pm1(5, 4, 3, 3), G3) >= 0


@pytest.mark.parametrize("c", [0.5, 2.0, 4.0])
def test_angular_loss_is_exactly_zero_for_binary_equal_inputs_and_w_equal_c_signs(c):
    a = pm1(2, 4, 6, 6)  # the teacher's input already +-1 ...
    signs = pm1(5, 4, 3, 3)
    loss = angular_loss(a, c * signs, a.clone(), signs, G3)  # ... equal to the student's, w = c *w
    assert loss.item() == 0.0


def test_angular_loss_is_zero_up_to_rounding_for_any_positive_c():
    a, signs = pm1(2, 4, 6, 6), pm1(5, 4, 3, 3)
    assert angular_loss(a, 0.37 * signs, a, signs, G3).item() < 1e-12


def test_angular_loss_grows_as_signs_flip_away_from_sign_w():
    a, signs = pm1(4, 4, 8, 8), pm1(6, 4, 3, 3)  # n = I k^2 = 36 elements per output channel
    losses = [angular_loss(a, 0.5 * signs, a, flip_first(signs, m), G3).item() for m in (0, 2, 6, 12, 18)]
    assert losses[0] == 0.0
    assert all(b > a_ for a_, b in itertools.pairwise(losses)), losses


def test_angular_loss_grows_with_flips_for_a_real_teacher_too():
    a, w = torch.randn(4, 4, 8, 8), torch.randn(6, 4, 3, 3)
    order = w.abs().flatten(1).argsort(dim=1, descending=True)  # flip the largest weights first
    losses = []
    for m in (0, 3, 9, 18):
        flat = torch.where(w >= 0, 1.0, -1.0).flatten(1)
        flat.scatter_(1, order[:, :m], -flat.gather(1, order[:, :m]))
        losses.append(angular_loss(a, w, a, flat.view_as(w), G3).item())
    assert all(b > a_ for a_, b in itertools.pairwise(losses)), losses


def test_angular_gradient_reaches_only_the_signs():
    a, w = torch.randn(2, 3, 5, 5), torch.randn(4, 3, 3, 3)
    x = torch.randn(2, 3, 5, 5, requires_grad=True)
    signs = pm1(4, 3, 3, 3).requires_grad_(True)
    angular_loss(a, w, x, signs, G3).backward()
    assert x.grad is None and signs.grad is not None and signs.grad.abs().sum() > 0


def all_sign_patterns(channels: int) -> torch.Tensor:
    """``[1, I, 1, 2^I]``: every +-1 vector of length I once, so sum_p a_p a_p^T = 2^I Id exactly."""
    rows = torch.tensor(list(itertools.product([-1.0, 1.0], repeat=channels)))  # [2^I, I]
    return rows.t().reshape(1, channels, 1, -1)


def descend(loss_of, alpha: torch.Tensor, steps: int = 400, lr: float = 0.2) -> torch.Tensor:
    alpha = alpha.clone().requires_grad_(True)
    optimizer = torch.optim.SGD([alpha], lr=lr)
    for _ in range(steps):
        optimizer.zero_grad()
        loss_of(alpha).backward()
        optimizer.step()
    return alpha.detach()


def test_amplitude_minimiser_is_mean_abs_w_when_signs_equal_sign_w():
    a = all_sign_patterns(4)  # binary input, identical for teacher and student
    w = torch.tensor([[0.1, -0.5, 0.3, -0.9], [2.0, 1.0, -1.0, 0.4]]).view(2, 4, 1, 1)
    signs = torch.where(w >= 0, 1.0, -1.0)
    mean_abs = torch.tensor([(0.1 + 0.5 + 0.3 + 0.9) / 4, (2.0 + 1.0 + 1.0 + 0.4) / 4])
    found = descend(lambda al: amplitude_loss(a, w, a, signs, al, G1), torch.ones(2), lr=0.05)
    torch.testing.assert_close(found, mean_abs, atol=1e-4, rtol=0)
    for o in range(2):  # 1-D grid per channel: step 0.01 on [0, 1.5], then 0.0005 around the best point
        def best(grid: torch.Tensor) -> float:
            values = [amplitude_loss(a, w[o:o + 1], a, signs[o:o + 1], g.view(1), G1).item() for g in grid]
            return grid[int(torch.tensor(values).argmin())].item()

        coarse = best(torch.linspace(0, 1.5, 151))
        assert abs(best(torch.linspace(coarse - 0.01, coarse + 0.01, 41)) - mean_abs[o].item()) <= 5e-4


def test_amplitude_minimiser_for_a_3x3_conv_on_a_large_random_binary_input():
    a, w = pm1(2, 4, 32, 32), torch.randn(3, 4, 3, 3)
    signs = torch.where(w >= 0, 1.0, -1.0)
    found = descend(lambda al: amplitude_loss(a, w, a, signs, al, G3), torch.ones(3), steps=60, lr=0.005)
    # patches of a random +-1 map are nearly orthogonal: the optimum is within a few % of mean|w|
    torch.testing.assert_close(found, w.abs().mean(dim=(1, 2, 3)), rtol=0.06, atol=0)


def test_amplitude_gradient_reaches_only_alpha():
    a, w, x = torch.randn(1, 2, 4, 4), torch.randn(3, 2, 3, 3), torch.randn(1, 2, 4, 4, requires_grad=True)
    signs, alpha = pm1(3, 2, 3, 3).requires_grad_(True), torch.ones(3, requires_grad=True)
    amplitude_loss(a, w, x, signs, alpha, G3).backward()
    assert x.grad is None and signs.grad is None and alpha.grad.abs().sum() > 0


def test_weight_reconstruction_by_hand_and_its_minimiser():
    w = torch.tensor([[0.2, -0.4, 0.6, -0.8]]).view(1, 4, 1, 1)
    signs = torch.where(w >= 0, 1.0, -1.0)
    loss = weight_reconstruction(w, signs, torch.tensor([0.5]))
    torch.testing.assert_close(loss, torch.tensor((0.3 ** 2 + 0.1 ** 2 + 0.1 ** 2 + 0.3 ** 2) / 4))
    w2 = torch.randn(5, 3, 3, 3)
    s2 = torch.where(w2 >= 0, 1.0, -1.0)
    found = descend(lambda al: weight_reconstruction(w2, s2, al), torch.ones(5), steps=200, lr=0.5)
    torch.testing.assert_close(found, w2.abs().mean(dim=(1, 2, 3)), atol=1e-5, rtol=0)


def test_widen_kernel_embeds_the_1x1_at_the_centre_and_keeps_the_function():
    w = torch.randn(3, 2, 1, 1)
    wide = widen_kernel(w, (3, 3))
    assert torch.equal(wide[:, :, 1, 1], w[:, :, 0, 0]) and wide.abs().sum() == w.abs().sum()
    x = torch.randn(1, 2, 5, 5)
    torch.testing.assert_close(G3.conv(x, wide), G1.conv(x, w))
    with pytest.raises(DetbinError, match="same-topology"):
        widen_kernel(torch.randn(3, 2, 5, 5), (3, 3))


def test_layer_losses_of_a_conv_called_twice_average_the_calls():
    conv = BinaryConv2d.from_conv(nn.Conv2d(3, 4, 3, padding=1), "approx_sign", "dbs")
    q, teacher_w = conv.weight_quantizer, torch.randn(4, 3, 3, 3)
    calls = [(torch.randn(1, 3, 6, 6), torch.randn(1, 3, 6, 6)), (torch.randn(1, 3, 3, 3), torch.randn(1, 3, 3, 3))]
    geometry = ConvGeometry.of(conv)
    out = layer_losses(teacher_w, [a for a, _ in calls], [x for _, x in calls], q.signs(), q.scale().flatten(),
                       geometry)
    ang = [angular_loss(a, teacher_w, x, q.signs(), geometry) for a, x in calls]
    amp = [amplitude_loss(a, teacher_w, x, q.signs(), q.scale().flatten(), geometry) for a, x in calls]
    torch.testing.assert_close(out["ang"], (ang[0] + ang[1]) / 2)
    torch.testing.assert_close(out["amp"], (amp[0] + amp[1]) / 2)
    torch.testing.assert_close(out["w"], weight_reconstruction(teacher_w, q.signs(), q.scale().flatten()))
    sum(out.values()).backward()
    assert q.beta_plus.grad.abs().sum() > 0 and q.alpha.grad.abs().sum() > 0
    with pytest.raises(DetbinError, match="same batch"):
        layer_losses(teacher_w, [calls[0][0]], [], q.signs(), q.alpha, geometry)
