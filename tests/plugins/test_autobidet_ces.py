"""Complexity estimator architecture (methods.md §5.4): sizes, widths, spectral norm, GAN reals."""

from __future__ import annotations

import math

import pytest
import torch
from detbin_bidet.ces import (
    CESError,
    Discriminator,
    Generator,
    generator_widths,
    output_size,
    real_images,
    up_blocks,
)
from torch import nn
from torch.nn.utils import parametrize


def test_up_blocks_for_both_detectors() -> None:
    assert up_blocks(16, 1 / 2) == 3  # SSD300 fc7 (stride 16) -> 1/2 image: 19 -> 38 -> 76 -> 152
    assert up_blocks(16, 1 / 4) == 2  # FRCNN-C4 layer3 (stride 16) -> 1/4 image
    assert up_blocks(8, 1 / 8) == 0
    with pytest.raises(CESError, match="power of two"):
        up_blocks(16, 1 / 3)


def test_output_size() -> None:
    assert output_size((300, 300), 1 / 2) == (150, 150)
    assert output_size((600, 1000), 1 / 4) == (150, 250)


def test_generator_widths() -> None:
    assert generator_widths(256, 3) == [4 * 256, 2 * 256, 256, 256]
    assert generator_widths(2, 2) == [8, 4, 2]


def test_generator_ssd300_size() -> None:
    torch.manual_seed(0)
    g = Generator(feature_channels=8, n_up=up_blocks(16, 1 / 2), channels=2)
    out = g(torch.randn(2, 8, 19, 19), output_size((300, 300), 1 / 2))
    assert out.shape == (2, 3, 150, 150)  # 19 * 2^3 = 152, cropped to 150
    assert out.abs().max() <= 1.0  # tanh


def test_generator_frcnn_non_square_size() -> None:
    torch.manual_seed(0)
    g = Generator(feature_channels=4, n_up=up_blocks(16, 1 / 4), channels=2)
    feature = torch.randn(1, 4, math.ceil(600 / 16), math.ceil(1000 / 16))  # 38 x 63
    assert g(feature, output_size((600, 1000), 1 / 4)).shape == (1, 3, 150, 250)  # from 152 x 252


def test_generator_refuses_a_size_it_cannot_make() -> None:
    g = Generator(feature_channels=4, n_up=1, channels=2)
    with pytest.raises(CESError, match="smaller than the requested"):
        g(torch.randn(1, 4, 5, 5), (11, 10))


def _sn_layers(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def test_discriminator_output_and_spectral_norm_everywhere() -> None:
    torch.manual_seed(0)
    d = Discriminator(channels=2, blocks=5)
    assert d(torch.randn(2, 3, 150, 150)).shape == (2,)
    assert d(torch.randn(1, 3, 150, 250)).shape == (1,)
    layers = _sn_layers(d)
    assert len(layers) == 5 * 3 + 1  # two 3x3 convs and a 1x1 skip per block, and the linear layer
    for layer in layers:
        assert parametrize.is_parametrized(layer, "weight")
        assert type(layer.parametrizations.weight[0]).__name__ == "_SpectralNorm"


def test_spectral_norm_bounds_the_largest_singular_value() -> None:
    torch.manual_seed(0)
    d = Discriminator(channels=2, blocks=2).train()
    with torch.no_grad():
        for _ in range(200):  # one power iteration per training-mode forward
            d(torch.randn(1, 3, 8, 8))
    d.eval()
    for layer in _sn_layers(d):
        weight = layer.weight.reshape(layer.weight.shape[0], -1)
        assert torch.linalg.matrix_norm(weight, ord=2).item() == pytest.approx(1.0, abs=1e-3)


def test_spectral_norm_in_generator_is_optional() -> None:
    assert not any(parametrize.is_parametrized(m, "weight") for m in _sn_layers(Generator(4, 1, 2)))
    assert all(parametrize.is_parametrized(m, "weight") for m in _sn_layers(Generator(4, 1, 2, spectral=True)))


def test_real_images_area_resize_and_range() -> None:
    unit = torch.tensor([[0.0, 0.5, 1.0, 1.0],
                         [0.5, 1.0, 1.0, 1.0],
                         [0.25, 0.25, 0.0, 0.0],
                         [0.25, 0.25, 0.0, 1.2]])  # 1.2: photometric augmentation overshoot, clamped to 1
    mean, std = [0.5, 0.4, 0.3], [0.25, 0.5, 1.0]
    batch = torch.stack([(unit - m) / s for m, s in zip(mean, std)]).unsqueeze(0)  # the transform's normalisation
    out = real_images(batch, mean, std, (2, 2))
    block_means = torch.tensor([[(0 + 0.5 + 0.5 + 1) / 4, 1.0], [0.25, (0 + 0 + 0 + 1) / 4]])
    assert out.shape == (1, 3, 2, 2)
    for c in range(3):
        torch.testing.assert_close(out[0, c], 2 * block_means - 1, rtol=0, atol=1e-6)
