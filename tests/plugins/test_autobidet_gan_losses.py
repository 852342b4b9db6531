"""Non-saturating GAN losses on fixed logits (methods.md §5.4, Eq. 9)."""

from __future__ import annotations

import math

import torch
from detbin_bidet.gan import discriminator_loss, generator_loss

LN3 = math.log(3.0)


def test_discriminator_loss_hand_values() -> None:
    # D = sigmoid(l): l = 0 -> 1/2; l = ln 3 -> 3/4; l = -ln 3 -> 1/4
    real, fake = torch.tensor([0.0, LN3]), torch.tensor([0.0, -LN3])
    # reals: -log(1/2), -log(3/4); fakes: -log(1 - 1/2), -log(1 - 1/4)
    expected = (math.log(2) + math.log(4 / 3)) / 2 + (math.log(2) + math.log(4 / 3)) / 2
    assert discriminator_loss(real, fake).item() == torch.tensor(expected).item()  # ln(8/3)
    assert math.isclose(expected, math.log(8 / 3))


def test_generator_loss_hand_values() -> None:
    fake = torch.tensor([0.0, -LN3])
    expected = (math.log(2) + math.log(4)) / 2  # -log(1/2), -log(1/4)
    assert math.isclose(generator_loss(fake).item(), expected, rel_tol=1e-6)


def test_losses_are_stable_at_extreme_logits() -> None:
    confident_right = discriminator_loss(torch.tensor([100.0]), torch.tensor([-100.0]))
    confident_wrong = discriminator_loss(torch.tensor([-100.0]), torch.tensor([100.0]))
    assert 0 <= confident_right.item() < 1e-40
    assert confident_wrong.item() == 200.0  # the probability form gives -log(sigmoid(-100)) = inf in float32
    assert not torch.isfinite(-torch.log(torch.sigmoid(torch.tensor(-100.0))))
    assert generator_loss(torch.tensor([-100.0])).item() == 100.0


def test_losses_equal_the_probability_form() -> None:
    real, fake = torch.tensor([-2.0, 0.3, 1.7]), torch.tensor([0.9, -1.1, 2.5])
    d_real, d_fake = torch.sigmoid(real), torch.sigmoid(fake)
    torch.testing.assert_close(discriminator_loss(real, fake),
                               -torch.log(d_real).mean() - torch.log(1 - d_fake).mean())
    torch.testing.assert_close(generator_loss(fake), -torch.log(d_fake).mean())
